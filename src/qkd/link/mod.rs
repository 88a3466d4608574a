//! One QKD link: the block protocol that chains every post-processing stage,
//! as two sans-IO state machines, [`AliceLink`] (transmitter) and
//! [`BobLink`] (receiver).
//!
//! A block, message by message (A = Alice, B = Bob; `~>` is the fibre):
//!
//! ```text
//!  A ~> B  PulseFrame                         (optics; repeated per frame)
//!  B -> A  Detections   slots, bases, X bits  (sift)
//!  A -> B  Sift         last?, bases, classes (sift; if not last, next frame)
//!          both: test-basis QBER check, Cascade QBER estimate
//!  B -> A  CascadeStart shuffle seed, parity request
//!  A -> B  Parities     ...                   (Cascade rounds)
//!  B -> A  Reconciled   errors, leak, verification hash
//!          both: finite-key length (Lim et al. 2014)
//!  A -> B  Amplify      ℓ, Toeplitz seed      (verified; privacy amplification)
//!  A -> B  TagA         auth key reference, Wegman–Carter tag
//!  B -> A  TagB         Wegman–Carter tag
//!  A -> B  Confirm                            (both now hold the final key)
//! ```
//!
//! Every classical message of a block (not the tags, not the fibre) goes
//! into the block's [`Transcript`]; each side's tag covers all of it, so a
//! block whose transcript was changed in either direction yields no key.
//! The quantum channel is not authenticated (it cannot be: that is what the
//! test-basis and decoy statistics are for).
//!
//! Authentication keys come from the caller through [`AuthKeys`]: Alice
//! takes fresh key and sends a public reference; Bob fetches the same bytes
//! by reference. The in-process driver backs it with
//! [`crate::qkd::auth::InMemoryAuthKeys`]; the agent backs it with the key
//! pool. A block that aborts before the tags consumes no authentication key.
//!
//! Decisions both sides must reach identically (abort on test QBER, the
//! Cascade QBER estimate, the key length) are computed by both from the same
//! public counts; a disagreement is an abort, never a guess. This module does
//! no I/O and reads no clock; it owns the key bits of one block at a time.

mod alice;
mod bob;
mod driver;
mod messages;
mod report;

#[cfg(test)]
mod tests;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use thiserror::Error;

use crate::qkd::auth::{AuthError, AuthKeySource};
use crate::qkd::cascade::{CascadeConfig, CascadeError};
use crate::qkd::estimate::{EstimateError, EstimateParams};
use crate::qkd::optics::{ChoiceRng, LinkParams, NoiseRng, OpticsError, PulseFrame};
use crate::qkd::verify::VerifyConfig;
use crate::qkd::wire::WireError;
use crate::secret::{SecretBytes, SecretWords};

pub use alice::AliceLink;
pub use bob::BobLink;
pub use driver::{InProcessLink, SimulatedBlock};
pub use messages::{LinkMessage, MessageKind};
pub use report::{AbortCause, BlockReport};

/// Parameters both sides of a link must share.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockConfig {
    /// Optics of the link. Alice uses the source and fibre, Bob the
    /// detector; both use the source's intensities for estimation.
    pub link: LinkParams,
    /// Slots (pulses) per fibre frame at most.
    pub max_frame_slots: u32,
    /// A block closes once its sifted key reaches this many bits.
    pub target_sifted_bits: usize,
    pub cascade: CascadeConfig,
    /// ε_sec, ε_cor and abort thresholds.
    pub estimate: EstimateParams,
}

impl BlockConfig {
    /// A block config for `link` with the estimate's defaults
    /// (ε_sec = 1e-10, ε_cor = 1e-15, 11 % QBER thresholds).
    pub fn new(link: LinkParams, target_sifted_bits: usize) -> Self {
        let estimate = EstimateParams::new(link.source.intensities, link.source.probabilities);
        Self {
            link,
            // 2^24 slots: a few MB per frame at 25 km, well inside the
            // peer channel's fibre frame limit.
            max_frame_slots: 1 << 24,
            target_sifted_bits,
            cascade: CascadeConfig::default(),
            estimate,
        }
    }

    /// Checks what both state machines rely on.
    pub fn validate(&self) -> Result<(), LinkError> {
        self.link.validate()?;
        self.estimate.validate()?;
        if self.estimate.intensities != self.link.source.intensities
            || self.estimate.probabilities != self.link.source.probabilities
        {
            return Err(LinkError::Config(
                "estimate intensities/probabilities must equal the source's",
            ));
        }
        if self.max_frame_slots < 1024 {
            return Err(LinkError::Config("max_frame_slots must be at least 1024"));
        }
        if self.target_sifted_bits < 1024 || self.target_sifted_bits > self.cascade.max_key_bits {
            return Err(LinkError::Config(
                "target_sifted_bits must lie between 1024 and the Cascade key limit",
            ));
        }
        VerifyConfig::new(self.estimate.eps_cor)
            .map_err(|_| LinkError::Config("estimate.eps_cor is outside the verifier's range"))?;
        Ok(())
    }

    /// A digest of every parameter that both sides must agree on, carried in
    /// each sift message so a misconfigured pair fails loudly, not subtly.
    pub fn agreement_digest(&self) -> u64 {
        let mut w = crate::qkd::wire::WireWriter::new();
        for x in self.link.source.intensities {
            w.f64(x);
        }
        for x in self.link.source.probabilities {
            w.f64(x);
        }
        w.f64(self.link.source.p_z);
        w.f64(self.estimate.eps_sec).f64(self.estimate.eps_cor);
        w.f64(self.estimate.max_qber_key)
            .f64(self.estimate.max_qber_test);
        w.f64(self.estimate.max_phase_error);
        w.bytes(self.cascade.variant.name().as_bytes());
        w.u64(self.target_sifted_bits as u64);
        fnv1a(&w.finish())
    }
}

/// FNV-1a: a non-cryptographic digest for a configuration cross-check.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Where authentication key comes from (see the module doc).
pub trait AuthKeys {
    /// Alice: `len` bytes of fresh key and a public reference to them.
    fn take(&mut self, len: usize) -> Result<(Vec<u8>, SecretBytes), LinkError>;
    /// Bob: the bytes Alice's `reference` names; never the same bytes twice.
    fn take_at(&mut self, reference: &[u8], len: usize) -> Result<SecretBytes, LinkError>;
}

/// What a state machine asks its driver to do.
pub enum LinkOutput {
    /// Alice: put this frame on the fibre.
    Fibre(PulseFrame),
    /// Send these bytes (one [`LinkMessage`]) to the peer.
    Send(Vec<u8>),
    /// The block produced a key, identical on both sides.
    Key(FinalKey),
    /// The block ended without key.
    Aborted(BlockReport),
}

impl std::fmt::Debug for LinkOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkOutput::Fibre(fr) => write!(f, "Fibre({} slots)", fr.slot_count()),
            LinkOutput::Send(b) => write!(f, "Send({} bytes)", b.len()),
            LinkOutput::Key(k) => write!(f, "Key(block {}, {:?})", k.block_id, k.key),
            LinkOutput::Aborted(r) => write!(f, "Aborted(block {})", r.block_id),
        }
    }
}

/// A block's final key and its figures.
pub struct FinalKey {
    pub block_id: u64,
    pub key: SecretWords,
    pub report: BlockReport,
}

/// Why a state machine could not process an input. Protocol violations by
/// the peer abort the block (reported as [`LinkOutput::Aborted`]); these
/// errors are for inputs that cannot be attributed to a block at all.
#[derive(Debug, Error)]
pub enum LinkError {
    #[error("link configuration: {0}")]
    Config(&'static str),
    #[error(transparent)]
    Optics(#[from] OpticsError),
    #[error(transparent)]
    Estimate(#[from] EstimateError),
    #[error(transparent)]
    Cascade(#[from] CascadeError),
    #[error("malformed link message: {0}")]
    Wire(#[from] WireError),
    #[error("malformed {kind:?} message: {reason}")]
    Malformed { kind: MessageKind, reason: String },
    #[error("unexpected {0:?} message from the peer in this state")]
    Unexpected(MessageKind),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("authentication key: {0}")]
    AuthKeys(String),
    #[error("random source: {0}")]
    Random(String),
    #[error(
        "fibre frame of {slots} slots refused: this link's frames cover at most {max} slots \
         (frame_slots on both gateways must agree)"
    )]
    FrameTooLarge { slots: u32, max: u32 },
}

/// The three kinds of randomness a link side needs: key-bearing optics
/// choices, channel noise, and protocol seeds (Cascade shuffle,
/// verification hash, Toeplitz seed).
pub struct LinkRng {
    pub choices: ChoiceRng,
    pub noise: NoiseRng,
    pub protocol: ChaCha20Rng,
}

impl LinkRng {
    /// Seeded from the operating system: the only choice for keys in use.
    pub fn from_os() -> Result<Self, LinkError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| LinkError::Random(e.to_string()))?;
        let protocol = ChaCha20Rng::from_seed(seed);
        zeroize::Zeroize::zeroize(&mut seed);
        Ok(Self {
            choices: ChoiceRng::from_os()?,
            noise: NoiseRng::from_os()?,
            protocol,
        })
    }

    /// Reproducible randomness for tests and simulations whose keys are
    /// thrown away (see [`ChoiceRng::insecure_from_fixed_seed`]).
    pub fn insecure_from_fixed_seed(seed: u64) -> Self {
        Self {
            choices: ChoiceRng::insecure_from_fixed_seed(seed),
            noise: NoiseRng::from_seed(seed ^ 0x9E37_79B9_7F4A_7C15),
            protocol: ChaCha20Rng::seed_from_u64(seed ^ 0xD1B5_4A32_D192_ED03),
        }
    }
}

/// Hands a [`crate::qkd::auth::BlockAuthenticator`] exactly the bytes
/// fetched through [`AuthKeys`] for one block, in order, each byte once.
struct OneShotAuthKeys {
    key: SecretBytes,
    taken: usize,
}

impl OneShotAuthKeys {
    fn new(key: SecretBytes) -> Self {
        Self { key, taken: 0 }
    }
}

impl AuthKeySource for OneShotAuthKeys {
    fn take(&mut self, len: usize) -> Result<SecretBytes, AuthError> {
        if len > self.available() {
            return Err(AuthError::KeyExhausted {
                needed: len,
                available: self.available(),
            });
        }
        let out = SecretBytes::from_slice(&self.key.expose()[self.taken..self.taken + len]);
        zeroize::Zeroize::zeroize(&mut self.key.expose_mut()[self.taken..self.taken + len]);
        self.taken += len;
        Ok(out)
    }

    fn available(&self) -> usize {
        self.key.len() - self.taken
    }
}

/// Bits the verification tag reveals beyond the log2(2/ε_cor) that Lim et
/// al.'s Eq. (1) already charges for it (the tag is a whole number of bits).
fn verify_extra_leak(verify: &VerifyConfig, eps_cor: f64) -> u64 {
    (verify.leak_bits() as f64 - (2.0 / eps_cor).log2())
        .max(0.0)
        .ceil() as u64
}

/// The Cascade QBER estimate from the revealed test bits, the same `f64` on
/// both sides (integer counts, one correctly rounded division). Clamped
/// below so an error-free test sample still gets a sensible first block
/// size, and above at the estimate's abort threshold.
fn cascade_qber_estimate(report: &BlockReport, max: f64) -> f64 {
    report.qber_test().clamp(0.005, max)
}
