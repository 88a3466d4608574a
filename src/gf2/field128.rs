//! GF(2^128) = GF(2)\[x\] / (x^128 + x^7 + x^2 + x + 1), and polynomial
//! evaluation over it (the universal hash behind verification and
//! authentication).
//!
//! The modulus is the GCM polynomial (NIST SP 800-38D §6.3), irreducible
//! over GF(2). Unlike GCM we use the natural bit order: bit `i` of the `u128`
//! is the coefficient of `x^i`, and byte strings are read as little-endian
//! 128-bit blocks. This module computes; it does not decide what is secret.
//! Callers that hash key bits keep the key in `crate::secret` types and only
//! hand slices in.

use super::clmul::ClmulBackend;

/// An element of GF(2^128).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Gf128(pub u128);

impl std::fmt::Debug for Gf128 {
    // Field elements are intermediate values of hashes over key bits; the
    // value is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gf128(<redacted>)")
    }
}

/// Reduces the 256-bit product `hi·x^128 + lo` modulo the field polynomial.
///
/// x^128 ≡ x^7 + x^2 + x + 1, so hi·x^128 ≡ hi·(x^7+x^2+x+1). That product
/// has up to 135 bits; the 7 bits above 128 (`over`) are folded once more the
/// same way, which cannot overflow again (7 + 7 < 128). Shifts and XORs
/// only: constant time.
#[inline(always)]
fn reduce(hi: u128, lo: u128) -> u128 {
    let over = (hi >> 127) ^ (hi >> 126) ^ (hi >> 121);
    lo ^ hi ^ (hi << 1) ^ (hi << 2) ^ (hi << 7) ^ over ^ (over << 1) ^ (over << 2) ^ (over << 7)
}

/// 128 × 128 → 256-bit carry-less product with three 64-bit products
/// (Karatsuba), returned as (high, low).
#[inline(always)]
fn clmul128(clmul: impl Fn(u64, u64) -> u128, a: u128, b: u128) -> (u128, u128) {
    let (a0, a1) = (a as u64, (a >> 64) as u64);
    let (b0, b1) = (b as u64, (b >> 64) as u64);
    let lo = clmul(a0, b0);
    let hi = clmul(a1, b1);
    let mid = clmul(a0 ^ a1, b0 ^ b1) ^ lo ^ hi;
    (hi ^ (mid >> 64), lo ^ (mid << 64))
}

impl Gf128 {
    pub const ZERO: Gf128 = Gf128(0);
    pub const ONE: Gf128 = Gf128(1);

    /// Field product with the given backend.
    #[inline]
    pub fn mul(self, rhs: Gf128, backend: ClmulBackend) -> Gf128 {
        let (hi, lo) = clmul128(|a, b| backend.clmul(a, b), self.0, rhs.0);
        Gf128(reduce(hi, lo))
    }

    /// A block from 16 little-endian bytes.
    pub fn from_le_bytes(b: [u8; 16]) -> Self {
        Gf128(u128::from_le_bytes(b))
    }
}

/// Evaluates the polynomial hash H_k(m_1 … m_L) = Σ_{i=1}^{L} m_i · k^{L+1−i}
/// by Horner's rule: acc ← (acc + m_i) · k. Every block is multiplied by a
/// positive power of `k`, so the hash has no constant term (the property the
/// collision bounds in `qkd::verify` and `qkd::auth` rest on).
///
/// `blocks` yields the message blocks in order. Generic over the product so
/// that the whole loop is compiled with the instruction set enabled.
pub fn poly_hash(backend: ClmulBackend, k: Gf128, blocks: impl Iterator<Item = u128>) -> Gf128 {
    match backend {
        #[cfg(target_arch = "x86_64")]
        ClmulBackend::Pclmulqdq | ClmulBackend::Vpclmulqdq => {
            // SAFETY: these backends are only offered after the CPU reported
            // PCLMULQDQ (`ClmulBackend::available`).
            unsafe { poly_hash_pclmul(k, blocks) }
        }
        _ => Gf128(horner(super::clmul::clmul_portable, k.0, blocks)),
    }
}

#[inline(always)]
fn horner(
    clmul: impl Fn(u64, u64) -> u128 + Copy,
    k: u128,
    blocks: impl Iterator<Item = u128>,
) -> u128 {
    let mut acc = 0u128;
    for m in blocks {
        let (hi, lo) = clmul128(clmul, acc ^ m, k);
        acc = reduce(hi, lo);
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq")]
unsafe fn poly_hash_pclmul(k: Gf128, blocks: impl Iterator<Item = u128>) -> Gf128 {
    // SAFETY: the caller guarantees PCLMULQDQ.
    let product = |a, b| unsafe { super::clmul::x86::clmul_one(a, b) };
    Gf128(horner(product, k.0, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Shift-and-add multiplication modulo the field polynomial, bit by bit.
    fn mul_reference(a: u128, b: u128) -> u128 {
        let (mut a, mut r) = (a, 0u128);
        for i in 0..128 {
            if (b >> i) & 1 == 1 {
                r ^= a;
            }
            let carry = a >> 127;
            a <<= 1;
            if carry == 1 {
                a ^= 0x87;
            }
        }
        r
    }

    fn random(rng: &mut ChaCha8Rng) -> u128 {
        (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())
    }

    #[test]
    fn multiplication_matches_reference_on_every_backend() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut cases = vec![
            (0, 0),
            (1, u128::MAX),
            (u128::MAX, u128::MAX),
            (1 << 127, 1 << 127),
        ];
        cases.extend((0..1000).map(|_| (random(&mut rng), random(&mut rng))));
        for backend in ClmulBackend::available() {
            for &(a, b) in &cases {
                assert_eq!(
                    Gf128(a).mul(Gf128(b), backend).0,
                    mul_reference(a, b),
                    "{backend:?}"
                );
            }
        }
    }

    #[test]
    fn field_axioms_hold_on_samples() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let be = ClmulBackend::detect();
        for _ in 0..200 {
            let (a, b, c) = (
                Gf128(random(&mut rng)),
                Gf128(random(&mut rng)),
                Gf128(random(&mut rng)),
            );
            assert_eq!(a.mul(b, be), b.mul(a, be));
            assert_eq!(a.mul(b, be).mul(c, be), a.mul(b.mul(c, be), be));
            assert_eq!(
                a.mul(Gf128(b.0 ^ c.0), be).0,
                a.mul(b, be).0 ^ a.mul(c, be).0
            );
            assert_eq!(a.mul(Gf128::ONE, be), a);
        }
        // a^(2^128) = a in GF(2^128): 128 squarings return to the start.
        let a = Gf128(random(&mut rng));
        let mut x = a;
        for _ in 0..128 {
            x = x.mul(x, be);
        }
        assert_eq!(x, a);
    }

    #[test]
    fn debug_is_redacted() {
        let shown = format!("{:?}", Gf128(0xA5A5_A5A5_A5A5_A5A5_A5A5_A5A5_A5A5_A5A5));
        assert_eq!(shown, "Gf128(<redacted>)");
    }

    #[test]
    fn poly_hash_is_horner_on_every_backend() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let k = Gf128(random(&mut rng));
        let blocks: Vec<u128> = (0..37).map(|_| random(&mut rng)).collect();
        // Σ m_i k^{L+1-i}, term by term.
        let mut expect = 0u128;
        for (i, m) in blocks.iter().enumerate() {
            let mut pow = 1u128;
            for _ in 0..(blocks.len() - i) {
                pow = mul_reference(pow, k.0);
            }
            expect ^= mul_reference(*m, pow);
        }
        for backend in ClmulBackend::available() {
            assert_eq!(
                poly_hash(backend, k, blocks.iter().copied()).0,
                expect,
                "{backend:?}"
            );
        }
    }
}
