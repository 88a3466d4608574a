//! The two kinds of randomness of the simulation and the exact samplers
//! built on them.
//!
//! [`ChoiceRng`] (ChaCha20) draws what becomes or protects key: Alice's bits,
//! bases and intensity classes, Bob's bases and double-click bits. For real
//! runs it is seeded from the operating system; a fixed seed exists for tests
//! and is named so that nobody mistakes it for a secure choice.
//! [`NoiseRng`] (xoshiro256++) draws channel physics — photon numbers,
//! losses, dark counts, misalignment, the eavesdropper's coin — where only
//! statistical quality and speed matter. Neither type prints its state.

use std::fmt;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::OpticsError;

/// Key-bearing randomness: ChaCha20 (RFC 8439 core) from rand_chacha.
pub struct ChoiceRng(ChaCha20Rng);

impl ChoiceRng {
    /// Seeded from the operating system's CSPRNG: the only constructor for
    /// runs whose keys are used.
    pub fn from_os() -> Result<Self, OpticsError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| OpticsError::OsRandom(e.to_string()))?;
        let rng = ChaCha20Rng::from_seed(seed);
        zeroize::Zeroize::zeroize(&mut seed);
        Ok(Self(rng))
    }

    /// A reproducible generator for tests, benches and simulations whose keys
    /// are thrown away. Keys drawn from it are known to anyone who knows the
    /// seed: never use it for a link that feeds IPsec.
    pub fn insecure_from_fixed_seed(seed: u64) -> Self {
        Self(ChaCha20Rng::seed_from_u64(seed))
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

impl fmt::Debug for ChoiceRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChoiceRng(<redacted>)")
    }
}

/// Channel-noise randomness: xoshiro256++.
pub struct NoiseRng(Xoshiro256PlusPlus);

impl NoiseRng {
    pub fn from_seed(seed: u64) -> Self {
        Self(Xoshiro256PlusPlus::seed_from_u64(seed))
    }

    pub fn from_os() -> Result<Self, OpticsError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| OpticsError::OsRandom(e.to_string()))?;
        Ok(Self(Xoshiro256PlusPlus::from_seed(seed)))
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1) with 53 random bits.
    #[inline]
    pub(crate) fn uniform(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }

    /// A fair coin.
    #[inline]
    pub(crate) fn coin(&mut self) -> bool {
        (self.next_u64() >> 63) == 1
    }
}

impl fmt::Debug for NoiseRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NoiseRng(<redacted>)")
    }
}

/// The top 53 bits of `x` as a float in [0, 1).
#[inline]
pub(crate) fn unit_f64(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A probability as a threshold on a 32-bit uniform: `u32 < threshold`
/// happens with probability `p` up to 2^-32 (the quantisation is far below
/// anything a simulated block can resolve). `p = 1` maps to 2^32.
pub(crate) fn threshold32(p: f64) -> u64 {
    (p.clamp(0.0, 1.0) * 4_294_967_296.0).round() as u64
}

/// Geometric skipping: the number of failures before the first success of
/// independent Bernoulli(p) trials, sampled by inversion,
/// ⌊ln U / ln(1 − p)⌋ with U uniform on (0, 1]. `ln_q` is ln(1 − p) < 0;
/// `ln_q = −∞` (p = 1) gives 0 and `ln_q = 0` (p = 0) gives u64::MAX.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GeometricSkip {
    inv_ln_q: f64,
}

impl GeometricSkip {
    pub(crate) fn new(p: f64) -> Self {
        let ln_q = (-p).ln_1p();
        Self {
            inv_ln_q: 1.0 / ln_q,
        }
    }

    #[inline]
    pub(crate) fn sample(&self, rng: &mut NoiseRng) -> u64 {
        // 1 − u lies in (0, 1], so ln is finite and ≤ 0.
        let u = 1.0 - rng.uniform();
        let g = u.ln() * self.inv_ln_q;
        // inv_ln_q = −0.0 when p = 0: g is NaN or 0·∞; treat as "never".
        if g.is_nan() || g >= 1.8e19 {
            u64::MAX
        } else {
            g as u64
        }
    }
}

/// Photon numbers of a Poisson(m) pulse conditioned on n ≥ 1, sampled by
/// inversion of the cumulative table (n = 1 is the first comparison, so the
/// common case costs one branch).
#[derive(Debug, Clone)]
pub(crate) struct TruncatedPoisson {
    /// cdf[i] = P(n ≤ i + 1 | n ≥ 1); the last entry is forced to 1.
    cdf: Vec<f64>,
}

impl TruncatedPoisson {
    pub(crate) fn new(m: f64, max_n: u32) -> Self {
        let mut cdf = Vec::with_capacity(max_n as usize);
        if m <= 0.0 {
            // Never sampled (a class of zero intensity is never non-vacuum),
            // but keep the table well-formed.
            cdf.resize(max_n as usize, 1.0);
            return Self { cdf };
        }
        let norm = -(-m).exp_m1(); // P(n ≥ 1) = 1 − e^{−m}
        let mut term = (-m).exp(); // P(n = 0)
        let mut acc = 0.0;
        for n in 1..=max_n {
            term *= m / n as f64;
            acc += term;
            cdf.push((acc / norm).min(1.0));
        }
        *cdf.last_mut().expect("max_n ≥ 1") = 1.0;
        Self { cdf }
    }

    #[inline]
    pub(crate) fn sample(&self, rng: &mut NoiseRng) -> u8 {
        let u = rng.uniform();
        for (i, &c) in self.cdf.iter().enumerate() {
            if u < c {
                return (i + 1) as u8;
            }
        }
        self.cdf.len() as u8
    }
}

/// A categorical choice among three classes from 31 uniform bits of a
/// ChaCha word: thresholds are cumulative probabilities scaled to 2^31
/// (quantisation ≤ 5e-10 per class).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassChooser {
    cum: [u64; 2],
}

impl ClassChooser {
    /// `weights` need not be normalised; all zero is not allowed.
    pub(crate) fn new(weights: [f64; 3]) -> Self {
        let total: f64 = weights.iter().sum();
        let c0 = weights[0] / total;
        let c1 = (weights[0] + weights[1]) / total;
        let scale = |c: f64| (c.clamp(0.0, 1.0) * 2_147_483_648.0).round() as u64;
        Self {
            cum: [scale(c0), scale(c1)],
        }
    }

    /// `u31` must be uniform on [0, 2^31).
    #[inline]
    pub(crate) fn choose(&self, u31: u64) -> u8 {
        (u31 >= self.cum[0]) as u8 + (u31 >= self.cum[1]) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometric_mean_matches() {
        let mut rng = NoiseRng::from_seed(1);
        let p = 0.01;
        let g = GeometricSkip::new(p);
        let n = 200_000;
        let sum: f64 = (0..n).map(|_| g.sample(&mut rng) as f64).sum();
        let mean = sum / n as f64;
        let expect = (1.0 - p) / p; // 99
        // sd of the mean: sqrt((1-p)/p²/n) ≈ 0.22
        assert!((mean - expect).abs() < 5.0 * 0.23, "mean {mean}");
        assert_eq!(GeometricSkip::new(0.0).sample(&mut rng), u64::MAX);
        assert_eq!(GeometricSkip::new(1.0).sample(&mut rng), 0);
    }

    #[test]
    fn truncated_poisson_mean_matches() {
        let mut rng = NoiseRng::from_seed(2);
        let m: f64 = 0.8;
        let tp = TruncatedPoisson::new(m, 63);
        let n = 200_000;
        let sum: f64 = (0..n).map(|_| tp.sample(&mut rng) as f64).sum();
        let expect = m / (1.0 - (-m).exp());
        // variance of the truncated Poisson is below m + m², so sd of mean < 0.006
        assert!((sum / n as f64 - expect).abs() < 0.03, "{}", sum / n as f64);
    }

    #[test]
    fn debug_does_not_print_state() {
        let c = ChoiceRng::insecure_from_fixed_seed(7);
        assert_eq!(format!("{c:?}"), "ChoiceRng(<redacted>)");
    }
}
