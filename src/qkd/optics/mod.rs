//! Simulated optics of a decoy-state BB84 link with weak coherent pulses.
//!
//! Three stages, each a plain value fed with frames, so that the fibre can
//! be a byte stream between two agents and an eavesdropper a process that
//! rewrites it:
//!
//! ```text
//!  Source (Alice) ──PulseFrame──▶ [InterceptResend] ──PulseFrame──▶ Detector (Bob)
//!    │ EmissionLog                                                    │ Detections
//!    └──────── resolve(detected slots) ◀── Bob's report (sift) ◀───────┘
//! ```
//!
//! * [`Source`] emits the fibre's output directly (a coherent state through
//!   transmittance t is a coherent state of mean tμ): only non-vacuum slots
//!   become records, found by geometric skipping, so simulation cost scales
//!   with photons, not with pulses. It keeps Alice's (class, basis, bit) in an
//!   [`EmissionLog`] and [`Source::resolve`]s them for the slots Bob reports,
//!   drawing the choices of reported vacuum slots (dark counts) lazily from
//!   their exact conditional law.
//! * [`InterceptResend`] measures a fraction of the records and resends them.
//! * [`Detector`] thins photons by the detector efficiency, applies
//!   misalignment, adds dark counts by geometric skipping over all slots and
//!   resolves double clicks with a random bit.
//!
//! The frame format (header, record layout, limits) is documented in
//! [`frame`]. Randomness comes in two kinds, made explicit by type:
//! [`ChoiceRng`] (ChaCha20, OS-seeded for real runs, fixed seed only through
//! [`ChoiceRng::insecure_from_fixed_seed`]) for everything that becomes or
//! protects key, and [`NoiseRng`] (xoshiro256++) for channel physics.
//!
//! This module does no I/O and owns no key: sifting ([`crate::qkd::sift`])
//! turns its outputs into key material in secret types.

mod detector;
mod eve;
pub mod frame;
mod params;
mod rng;
pub mod slots;
mod source;

#[cfg(test)]
mod physics_tests;

pub use detector::{Detections, Detector};
pub use eve::InterceptResend;
pub use frame::{FrameError, PulseFrame, PulseRecord};
pub use params::{
    Basis, DetectorParams, FibreParams, Intensity, LinkParams, MAX_INTENSITY, SourceParams,
};
pub use rng::{ChoiceRng, NoiseRng};
pub use source::{AlicePulses, EmissionLog, Source};

/// Why an optics stage refused to work.
#[derive(Debug, thiserror::Error)]
pub enum OpticsError {
    #[error("link parameter {name} = {value} is invalid: {reason}")]
    InvalidParameter {
        name: &'static str,
        value: f64,
        reason: &'static str,
    },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(
        "reported detections are not strictly increasing slots within {first_slot}..{end_slot}; \
         the report does not belong to this frame"
    )]
    DetectedSlots { first_slot: u64, end_slot: u64 },
    #[error("cannot seed from the operating system's random source: {0}")]
    OsRandom(String),
}
