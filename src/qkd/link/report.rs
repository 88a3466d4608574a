//! Per-block figures and abort causes, identical in shape on both sides.
//! Public numbers only: counts, rates, bounds — never key bits.

use crate::qkd::cascade::efficiency;
use crate::qkd::estimate::{
    AbortReason, AsymptoticEstimate, DecoyObservation, FiniteKeyEstimate, asymptotic_estimate,
};
use crate::qkd::sift::SiftStats;

/// Why a block yielded no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortCause {
    /// The revealed test-basis bits have too many errors (eavesdropping or a
    /// faulty link).
    TestQber,
    /// Reconciliation corrected too many errors.
    KeyQber,
    /// The decoy bounds certify no single-photon events.
    NoSinglePhotons,
    /// The phase-error bound reached its tolerance.
    PhaseError,
    /// The finite-key length is not positive.
    NonPositiveLength,
    /// The key would not pay for its own authentication.
    TooShortForAuth,
    /// The verification hashes differ: reconciliation left errors.
    VerifyMismatch,
    /// A Wegman–Carter tag did not verify: the transcript was altered.
    AuthFailed,
    /// Cascade failed (leak cap, inconsistent parities, bad request).
    Reconciliation,
    /// The peers' link parameters differ.
    ConfigMismatch,
    /// The peers computed different estimates from the same counts.
    EstimateMismatch,
    /// A message that does not fit the protocol state.
    Protocol,
    /// No authentication key was available.
    AuthKeys,
    /// A newer block started before this one ended.
    Superseded,
}

impl AbortCause {
    const ALL: [AbortCause; 14] = [
        AbortCause::TestQber,
        AbortCause::KeyQber,
        AbortCause::NoSinglePhotons,
        AbortCause::PhaseError,
        AbortCause::NonPositiveLength,
        AbortCause::TooShortForAuth,
        AbortCause::VerifyMismatch,
        AbortCause::AuthFailed,
        AbortCause::Reconciliation,
        AbortCause::ConfigMismatch,
        AbortCause::EstimateMismatch,
        AbortCause::Protocol,
        AbortCause::AuthKeys,
        AbortCause::Superseded,
    ];

    pub fn code(self) -> u8 {
        Self::ALL.iter().position(|&c| c == self).expect("listed") as u8 + 1
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(code.checked_sub(1)? as usize).copied()
    }

    /// Short stable name for logs, status and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            AbortCause::TestQber => "test_qber",
            AbortCause::KeyQber => "key_qber",
            AbortCause::NoSinglePhotons => "no_single_photons",
            AbortCause::PhaseError => "phase_error",
            AbortCause::NonPositiveLength => "non_positive_length",
            AbortCause::TooShortForAuth => "too_short_for_auth",
            AbortCause::VerifyMismatch => "verify_mismatch",
            AbortCause::AuthFailed => "auth_failed",
            AbortCause::Reconciliation => "reconciliation",
            AbortCause::ConfigMismatch => "config_mismatch",
            AbortCause::EstimateMismatch => "estimate_mismatch",
            AbortCause::Protocol => "protocol",
            AbortCause::AuthKeys => "auth_keys",
            AbortCause::Superseded => "superseded",
        }
    }

    /// Whether this cause is a security alarm (possible eavesdropping or
    /// tampering) rather than an operational hiccup.
    pub fn is_alarm(self) -> bool {
        matches!(
            self,
            AbortCause::TestQber
                | AbortCause::KeyQber
                | AbortCause::PhaseError
                | AbortCause::AuthFailed
                | AbortCause::VerifyMismatch
        )
    }

    pub(crate) fn from_estimate(reason: AbortReason) -> Self {
        match reason {
            AbortReason::KeyQber { .. } => AbortCause::KeyQber,
            AbortReason::TestQber { .. } => AbortCause::TestQber,
            AbortReason::NoSinglePhotons => AbortCause::NoSinglePhotons,
            AbortReason::PhaseError { .. } => AbortCause::PhaseError,
            AbortReason::NonPositiveLength => AbortCause::NonPositiveLength,
        }
    }
}

impl std::fmt::Display for AbortCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything a block did, for the CLI, status and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlockReport {
    pub block_id: u64,
    pub frames: u32,
    /// Pulses (slots) the block spans.
    pub slots: u64,
    /// Sifting counts per intensity class.
    pub stats: SiftStats,
    /// The QBER estimate both sides fed to Cascade.
    pub cascade_qber_estimate: f64,
    /// Errors reconciliation corrected (known once Cascade finished).
    pub key_errors: Option<u64>,
    /// Parity bits Cascade disclosed.
    pub cascade_leaked_bits: u64,
    /// Bits the verification tag disclosed.
    pub verify_bits: u64,
    pub cascade_rounds: u32,
    /// The finite-key estimate (Lim et al. 2014), when reached.
    pub estimate: Option<FiniteKeyEstimate>,
    /// Ma et al. 2005 vacuum + weak bounds from this block's counts.
    pub asymptotic: Option<AsymptoticEstimate>,
    /// Final key bits (0 on abort).
    pub final_bits: u64,
    /// One-time authentication key this block consumed.
    pub auth_key_bits: u64,
    /// `None` when the block produced key.
    pub aborted: Option<AbortCause>,
    /// The abort was announced by the peer.
    pub aborted_by_peer: bool,
}

impl BlockReport {
    pub fn detections(&self) -> u64 {
        self.stats.detections.iter().sum()
    }

    pub fn sifted_bits(&self) -> u64 {
        self.stats.key.iter().sum()
    }

    pub fn test_bits(&self) -> u64 {
        self.stats.test.iter().sum()
    }

    pub fn qber_test(&self) -> f64 {
        ratio(self.stats.test_errors.iter().sum(), self.test_bits())
    }

    pub fn qber_key(&self) -> Option<f64> {
        self.key_errors.map(|e| ratio(e, self.sifted_bits()))
    }

    /// f = leak / (n·h(Q)) of Cascade, when Q > 0.
    pub fn efficiency(&self) -> Option<f64> {
        let q = self.qber_key()?;
        (q > 0.0).then(|| efficiency(self.cascade_leaked_bits, self.sifted_bits() as usize, q))
    }

    /// Net key: final bits minus the authentication key they cost.
    pub fn net_bits(&self) -> i64 {
        self.final_bits as i64 - self.auth_key_bits as i64
    }

    /// Ma et al.'s bounds from the block's own gains and test QBERs (pulses
    /// per class taken as slots·p_k).
    pub(crate) fn fill_asymptotic(&mut self, intensities: [f64; 3], probabilities: [f64; 3]) {
        if self.slots == 0 {
            return;
        }
        let gains = std::array::from_fn(|k| {
            self.stats.detections[k] as f64 / (self.slots as f64 * probabilities[k])
        });
        let qbers = std::array::from_fn(|k| ratio(self.stats.test_errors[k], self.stats.test[k]));
        let obs = DecoyObservation {
            intensities,
            gains,
            qbers,
        };
        self.asymptotic = asymptotic_estimate(&obs, 1.0, 1.0).ok();
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}
