//! Cascade variants, configuration and the per-pass block-size schedule.
//!
//! Both parties derive the same [`Schedule`] from public data only: the key
//! length, the agreed QBER estimate and the variant. Nothing here sees key
//! bits. The block-size formulas are those of the papers named on each
//! variant, as compared by Martinez-Mateo, Pacher, Peev, Ciurana, Martin,
//! "Demystifying the information reconciliation protocol Cascade",
//! Quantum Inf. Comput. 15 (2015), arXiv:1407.3257, and as transcribed (with
//! the paper's option numbers) in Bruno Rijsman's reference implementation
//! github.com/brunorijsman/cascade-cpp, `src/algorithm.cpp`.

use super::CascadeError;

/// QBER estimates below this are raised to it before block sizes are chosen,
/// so that `1/Q` stays finite; block sizes are capped at the key length
/// anyway. Same floor as cascade-cpp (`min_estimated_bit_error_rate`).
pub const MIN_QBER_FOR_SCHEDULE: f64 = 1e-5;

/// Hard upper bound on the key length, whatever the configuration says:
/// bisection trees then have depth ≤ 30, so heap ids (2i + 1 included) fit
/// the u32 of the wire format.
pub const MAX_KEY_BITS: usize = 1 << 30;

/// Which Cascade schedule to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CascadeVariant {
    /// Brassard–Salvail 1993 ("Secret-key reconciliation by public
    /// discussion", EUROCRYPT '93): k1 = ⌈0.73/Q⌉, k_i = 2·k_{i−1}, four
    /// passes, the first without shuffling. (Known sub-block parities are
    /// still never asked twice, so it leaks a little less than the paper's.)
    Original,
    /// "Cascade opt. (7)" of Demystifying (2015): k1 = 2^⌈log2(1/Q)⌉,
    /// k2 = 4·k1, k_i = n/2 for i ≥ 3, 14 passes, known sub-block parities
    /// reused.
    Option7,
    /// "Cascade opt. (8)" of Demystifying (2015): with α = log2(1/Q) − 1/2,
    /// k1 = 2^⌈α⌉, k2 = 2^⌈(α+12)/2⌉, k3 = 4096, k_i = n/2 for i ≥ 4,
    /// 14 passes, known sub-block parities reused. The paper's
    /// recommendation and the default here.
    #[default]
    Option8,
}

impl CascadeVariant {
    /// Every variant, for benches and sweeps.
    pub const ALL: [CascadeVariant; 3] = [Self::Original, Self::Option7, Self::Option8];

    /// Stable lower-case name (CLI, JSON, bench labels).
    pub fn name(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Option7 => "option7",
            Self::Option8 => "option8",
        }
    }

    /// Inverse of [`Self::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// Configuration shared by the corrector and the responder. Both sides must
/// use the same `variant`; the limits may differ.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeConfig {
    /// Block-size schedule.
    pub variant: CascadeVariant,
    /// Longest key accepted (bits). Bounds memory and message sizes.
    pub max_key_bits: usize,
    /// The responder refuses to reveal more than this fraction of the key
    /// length in parity bits and fails the block instead. Honest Cascade
    /// stays far below the default 0.75 wherever BB84 can yield key (QBER up
    /// to about 11 %, where h(Q) = 1/2 — Shor–Preskill 1 − 2h(Q) = 0 — and
    /// f·h(Q) ≈ 0.6 at f = 1.2); the tail of honest runs at 8 % QBER and
    /// n = 10^4 reaches about 0.56. A corrector asking for more is broken or
    /// trying to learn the key.
    pub max_leak_fraction: f64,
    /// QBER estimates above this are refused (Cascade would leak more than
    /// it could ever leave; BB84 aborts near 11 % anyway).
    pub max_qber: f64,
}

impl Default for CascadeConfig {
    fn default() -> Self {
        Self {
            variant: CascadeVariant::default(),
            max_key_bits: 1 << 26,
            max_leak_fraction: 0.75,
            max_qber: 0.25,
        }
    }
}

impl CascadeConfig {
    /// The responder's leak cap for a key of `n` bits.
    pub fn leak_cap(&self, n: usize) -> u64 {
        (self.max_leak_fraction.clamp(0.0, 1.0) * n as f64).floor() as u64
    }
}

/// How one pass lays out and splits the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PassKind {
    /// Blocks are consecutive runs of the key as it is (pass 1 of every
    /// variant: Brassard–Salvail do not shuffle the first pass).
    Identity,
    /// Blocks are consecutive runs of a pseudo-random permutation of the key.
    Shuffled,
    /// Block size n/2: the key is split into a pseudo-random subset S and its
    /// complement, S chosen by a public random mask (each bit independently).
    /// This is a uniformly random bipartition like the halves of a random
    /// permutation, with binomial instead of exactly equal sizes, and it costs
    /// a mask instead of a permuted copy of the key.
    Halves,
}

/// One pass of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PassPlan {
    pub kind: PassKind,
    /// Top-level block length in bits (for `Halves`: n, both "blocks" span
    /// the whole index range and a mask selects the members).
    pub block_size: usize,
    /// Number of top-level blocks (2 for `Halves`).
    pub blocks: usize,
    /// Depth of the bisection tree of one block: ⌈log2(block_size)⌉.
    pub depth: u32,
}

impl PassPlan {
    fn new(kind: PassKind, block_size: usize, n: usize) -> Self {
        let (block_size, blocks) = match kind {
            PassKind::Halves => (n, 2),
            _ => {
                let k = block_size.clamp(1, n.max(1));
                (k, n.div_ceil(k))
            }
        };
        Self {
            kind,
            block_size,
            blocks,
            depth: ceil_log2(block_size),
        }
    }

    /// Start and end (exclusive) of top-level block `b` in the pass layout.
    pub fn root(&self, b: usize, n: usize) -> (usize, usize) {
        match self.kind {
            PassKind::Halves => (0, n),
            _ => {
                let lo = b * self.block_size;
                (lo, (lo + self.block_size).min(n))
            }
        }
    }
}

/// The passes both parties run, derived from public data.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Schedule {
    pub n: usize,
    pub passes: Vec<PassPlan>,
}

impl Schedule {
    /// Largest number of passes of any variant; message decoders reject pass
    /// numbers at or above it before looking at the schedule.
    pub const MAX_PASSES: usize = 14;

    pub fn new(n: usize, qber: f64, cfg: &CascadeConfig) -> Result<Self, CascadeError> {
        let max = cfg.max_key_bits.min(MAX_KEY_BITS);
        if n == 0 || n > max {
            return Err(CascadeError::KeyLength { bits: n, max });
        }
        if !qber.is_finite() || !(0.0..=cfg.max_qber).contains(&qber) {
            return Err(CascadeError::QberOutOfRange {
                qber,
                max: cfg.max_qber,
            });
        }
        let q = qber.max(MIN_QBER_FOR_SCHEDULE);
        let sizes = block_sizes(cfg.variant, q);
        let passes = sizes
            .into_iter()
            .enumerate()
            .map(|(i, k)| {
                let kind = match k {
                    _ if i == 0 => PassKind::Identity,
                    BlockSize::Half => PassKind::Halves,
                    BlockSize::Bits(_) => PassKind::Shuffled,
                };
                let bits = match k {
                    BlockSize::Bits(b) => b,
                    BlockSize::Half => n.div_ceil(2),
                };
                PassPlan::new(kind, bits, n)
            })
            .collect();
        Ok(Self { n, passes })
    }
}

#[derive(Debug, Clone, Copy)]
enum BlockSize {
    Bits(usize),
    Half,
}

/// The block sizes of every pass (see [`CascadeVariant`] for the sources).
fn block_sizes(variant: CascadeVariant, q: f64) -> Vec<BlockSize> {
    use BlockSize::{Bits, Half};
    let pow2 = |e: f64| -> usize { 1usize << (e.ceil().clamp(0.0, 40.0) as u32) };
    match variant {
        CascadeVariant::Original => {
            // Brassard–Salvail 1993: k1 ≈ 0.73/Q, doubling, 4 passes.
            let k1 = (0.73 / q).ceil() as usize;
            (0..4).map(|i| Bits(k1.saturating_mul(1 << i))).collect()
        }
        CascadeVariant::Option7 => {
            let k1 = pow2((1.0 / q).log2());
            let mut v = vec![Bits(k1), Bits(k1.saturating_mul(4))];
            v.extend(std::iter::repeat_n(Half, 12));
            v
        }
        CascadeVariant::Option8 => {
            let alpha = (1.0 / q).log2() - 0.5;
            let mut v = vec![
                Bits(pow2(alpha)),
                Bits(pow2((alpha + 12.0) / 2.0)),
                Bits(4096),
            ];
            v.extend(std::iter::repeat_n(Half, 11));
            v
        }
    }
}

/// ⌈log2(x)⌉ for x ≥ 1 (0 for x ≤ 1).
pub(crate) fn ceil_log2(x: usize) -> u32 {
    if x <= 1 {
        0
    } else {
        usize::BITS - (x - 1).leading_zeros()
    }
}

pub use crate::qkd::estimate::binary_entropy;

/// Reconciliation efficiency f = leaked / (n·h(Q)) (DESIGN.md); 1.0 is the
/// Shannon limit. Infinite when the QBER is zero and something leaked.
pub fn efficiency(leaked_bits: u64, n: usize, qber: f64) -> f64 {
    leaked_bits as f64 / (n as f64 * binary_entropy(qber))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(v: CascadeVariant, n: usize, q: f64) -> Vec<(PassKind, usize)> {
        let cfg = CascadeConfig {
            variant: v,
            ..Default::default()
        };
        Schedule::new(n, q, &cfg)
            .unwrap()
            .passes
            .iter()
            .map(|p| (p.kind, p.block_size))
            .collect()
    }

    #[test]
    fn original_schedule_doubles_from_073_over_q() {
        let s = sizes(CascadeVariant::Original, 100_000, 0.02);
        // ⌈0.73/0.02⌉ = 37 (cascade-cpp gives the same).
        assert_eq!(
            s,
            vec![
                (PassKind::Identity, 37),
                (PassKind::Shuffled, 74),
                (PassKind::Shuffled, 148),
                (PassKind::Shuffled, 296)
            ]
        );
    }

    #[test]
    fn option7_and_option8_schedules_match_the_paper() {
        let s7 = sizes(CascadeVariant::Option7, 100_000, 0.02);
        assert_eq!(s7.len(), 14);
        // 1/0.02 = 50 → 2^6 = 64, then 4·64.
        assert_eq!(s7[0], (PassKind::Identity, 64));
        assert_eq!(s7[1], (PassKind::Shuffled, 256));
        assert!(s7[2..].iter().all(|&p| p == (PassKind::Halves, 100_000)));

        let s8 = sizes(CascadeVariant::Option8, 100_000, 0.02);
        assert_eq!(s8.len(), 14);
        // α = log2(50) − 0.5 = 5.14 → 2^6; (α+12)/2 = 8.57 → 2^9; then 4096.
        assert_eq!(
            &s8[..3],
            &[
                (PassKind::Identity, 64),
                (PassKind::Shuffled, 512),
                (PassKind::Shuffled, 4096)
            ]
        );
        assert!(s8[3..].iter().all(|&p| p.0 == PassKind::Halves));
        // Q = 8 %: α = 3.14 → 16; (15.14)/2 = 7.57 → 256.
        let s8 = sizes(CascadeVariant::Option8, 100_000, 0.08);
        assert_eq!(s8[0].1, 16);
        assert_eq!(s8[1].1, 256);
    }

    #[test]
    fn block_sizes_are_capped_at_the_key_length() {
        let s = sizes(CascadeVariant::Original, 50, 0.001);
        assert!(s.iter().all(|&(_, k)| k == 50));
        let cfg = CascadeConfig::default();
        let sch = Schedule::new(50, 0.0, &cfg).unwrap();
        assert!(sch.passes.iter().all(|p| p.blocks >= 1));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let cfg = CascadeConfig::default();
        assert!(Schedule::new(0, 0.02, &cfg).is_err());
        assert!(Schedule::new(100, f64::NAN, &cfg).is_err());
        assert!(Schedule::new(100, 0.3, &cfg).is_err());
        assert!(Schedule::new(100, -0.1, &cfg).is_err());
        assert!(Schedule::new(cfg.max_key_bits + 1, 0.02, &cfg).is_err());
        let huge = CascadeConfig {
            max_key_bits: usize::MAX,
            ..Default::default()
        };
        assert!(Schedule::new(MAX_KEY_BITS + 1, 0.02, &huge).is_err());
    }

    #[test]
    fn entropy_and_logs() {
        assert!((binary_entropy(0.5) - 1.0).abs() < 1e-12);
        assert!((binary_entropy(0.02) - 0.141_441).abs() < 1e-5);
        assert_eq!(ceil_log2(1), 0);
        assert_eq!(ceil_log2(2), 1);
        assert_eq!(ceil_log2(3), 2);
        assert_eq!(ceil_log2(64), 6);
        assert_eq!(ceil_log2(65), 7);
        assert_eq!(
            CascadeVariant::from_name("option7"),
            Some(CascadeVariant::Option7)
        );
    }
}
