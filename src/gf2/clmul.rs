//! One 64 × 64 → 128-bit carry-less product, and the choice of how to
//! compute it on this CPU.
//!
//! Every caller of carry-less arithmetic in the crate picks a
//! [`ClmulBackend`] once (normally [`ClmulBackend::detect`]) and passes it
//! down, so the hot loops can be compiled per instruction set. The portable
//! product is constant-time (no table lookups or branches on operands): the
//! operands are often key bits.

use std::sync::OnceLock;

/// How carry-less products are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClmulBackend {
    /// Integer multiplications with "holes" (BearSSL's `ghash_ctmul64`
    /// technique); works everywhere, several times slower.
    Portable,
    /// x86_64 `PCLMULQDQ`: one 64 × 64 product per instruction.
    Pclmulqdq,
    /// x86_64 `VPCLMULQDQ` on 512-bit registers (needs AVX-512F): four
    /// products per instruction.
    Vpclmulqdq,
}

impl ClmulBackend {
    /// The fastest backend this CPU supports (detected once, then cached).
    pub fn detect() -> Self {
        static DETECTED: OnceLock<ClmulBackend> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            Self::available()
                .into_iter()
                .last()
                .unwrap_or(ClmulBackend::Portable)
        })
    }

    /// Every backend this CPU can run, slowest first. Tests run all of them
    /// against each other.
    pub fn available() -> Vec<Self> {
        let mut v = vec![ClmulBackend::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("pclmulqdq") {
                v.push(ClmulBackend::Pclmulqdq);
                if std::arch::is_x86_feature_detected!("vpclmulqdq")
                    && std::arch::is_x86_feature_detected!("avx512f")
                {
                    v.push(ClmulBackend::Vpclmulqdq);
                }
            }
        }
        v
    }

    /// The carry-less product of `a` and `b` (bit `i` of the result is the
    /// coefficient of `x^i`).
    #[inline]
    pub fn clmul(self, a: u64, b: u64) -> u128 {
        match self {
            ClmulBackend::Portable => clmul_portable(a, b),
            #[cfg(target_arch = "x86_64")]
            ClmulBackend::Pclmulqdq | ClmulBackend::Vpclmulqdq => {
                // SAFETY: these variants are only constructed by `available`
                // after the CPU reported PCLMULQDQ.
                unsafe { x86::clmul_one(a, b) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => clmul_portable(a, b),
        }
    }
}

/// Low 64 bits of the carry-less product of `x` and `y`, with integer
/// multiplications only (BearSSL `ghash_ctmul64.c`, `bmul64`).
///
/// Why it is exact: `x & 0x1111…` keeps the bits at positions ≡ 0 (mod 4),
/// and so on for the other three masks. An integer product of two masked
/// operands has its partial products only at positions of one residue class
/// mod 4, and at most ⌊p/4⌋ + 1 ≤ 15 of them land on a position p < 60, so
/// each base-16 digit of the integer product is exactly the count at that
/// position, and its low bit is the XOR we want. Counts of 16 only occur at
/// p ≥ 60, where the carry leaves the 64-bit word. XOR-ing the four products
/// of one class and masking assembles the carry-less product.
#[inline]
fn bmul64_low(x: u64, y: u64) -> u64 {
    const M0: u64 = 0x1111_1111_1111_1111;
    const M1: u64 = 0x2222_2222_2222_2222;
    const M2: u64 = 0x4444_4444_4444_4444;
    const M3: u64 = 0x8888_8888_8888_8888;
    let (x0, x1, x2, x3) = (x & M0, x & M1, x & M2, x & M3);
    let (y0, y1, y2, y3) = (y & M0, y & M1, y & M2, y & M3);
    let m = u64::wrapping_mul;
    let z0 = m(x0, y0) ^ m(x1, y3) ^ m(x2, y2) ^ m(x3, y1);
    let z1 = m(x0, y1) ^ m(x1, y0) ^ m(x2, y3) ^ m(x3, y2);
    let z2 = m(x0, y2) ^ m(x1, y1) ^ m(x2, y0) ^ m(x3, y3);
    let z3 = m(x0, y3) ^ m(x1, y2) ^ m(x2, y1) ^ m(x3, y0);
    (z0 & M0) | (z1 & M1) | (z2 & M2) | (z3 & M3)
}

/// Full 128-bit carry-less product without special instructions.
///
/// The high half comes from bit reversal: if P = x·y has degree ≤ 126, then
/// rev64(x)·rev64(y) is P reversed within 127 bits, whose low 64 bits
/// reversed are P's coefficients 63..126; shifting right by one leaves
/// 64..126.
#[inline]
pub fn clmul_portable(a: u64, b: u64) -> u128 {
    let lo = bmul64_low(a, b);
    let hi = bmul64_low(a.reverse_bits(), b.reverse_bits()).reverse_bits() >> 1;
    (u128::from(hi) << 64) | u128::from(lo)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// One product with PCLMULQDQ.
    ///
    /// # Safety
    /// The CPU must support PCLMULQDQ.
    #[inline]
    #[target_feature(enable = "pclmulqdq")]
    pub unsafe fn clmul_one(a: u64, b: u64) -> u128 {
        let r = _mm_clmulepi64_si128(_mm_cvtsi64_si128(a as i64), _mm_cvtsi64_si128(b as i64), 0);
        // SAFETY: __m128i and u128 are both 16 plain bytes; x86 is little
        // endian, so lane 0 is the low half.
        unsafe { std::mem::transmute::<__m128i, u128>(r) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Schoolbook shift-and-XOR: the definition, slow and obviously right.
    fn clmul_reference(a: u64, b: u64) -> u128 {
        let mut r = 0u128;
        for i in 0..64 {
            if (b >> i) & 1 == 1 {
                r ^= u128::from(a) << i;
            }
        }
        r
    }

    #[test]
    fn every_backend_matches_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut cases: Vec<(u64, u64)> = vec![
            (0, 0),
            (1, 1),
            (u64::MAX, u64::MAX),
            (1 << 63, 1 << 63),
            (u64::MAX, 1),
            (0x8000_0000_0000_0001, u64::MAX),
        ];
        cases.extend((0..2000).map(|_| (rng.next_u64(), rng.next_u64())));
        for backend in ClmulBackend::available() {
            for &(a, b) in &cases {
                assert_eq!(
                    backend.clmul(a, b),
                    clmul_reference(a, b),
                    "{backend:?} a={a:#x} b={b:#x}"
                );
            }
        }
    }

    #[test]
    fn detect_picks_an_available_backend() {
        assert!(ClmulBackend::available().contains(&ClmulBackend::detect()));
    }
}
