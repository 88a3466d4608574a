//! Error verification: after reconciliation, one side hashes its key with a
//! fresh random universal hash and sends seed and tag; the other side
//! compares. Unequal tags mean the reconciled keys differ and the block is
//! discarded.
//!
//! This stage owns the hash, its bound and its two messages. It reads keys
//! only through [`SecretWords`], never stores them, and does not decide what
//! happens to a discarded block (the driver does).
//!
//! # Hash and tag length
//!
//! With `t` = [`VerifyConfig::tag_bits`], the tag of key `x` (split into
//! `L = ⌈n/128⌉` little-endian 128-bit blocks `x_1 … x_L`, the last padded
//! with zeros) under a public seed `(k, s)` of two uniform GF(2^128)
//! elements is
//!
//! ```text
//! tag = trunc_t( s · H_k(x) ),   H_k(x) = Σ_{i=1}^{L} x_i · k^{L+1−i}
//! ```
//!
//! where `trunc_t` keeps the low `t` bits. The tag is the only key-dependent
//! data sent, so it reveals at most `t` bits about the key (chain rule for
//! smooth min-entropy); parameter estimation must subtract exactly
//! [`VerifyConfig::leak_bits`] = `t`. Lim et al., PRA 89, 022307 (2014),
//! Eq. (1), budget `log2(2/ε_cor)` bits for this; `t` is the smallest integer
//! with `2^−t + L_max·2^−128 ≤ ε_cor` (`L_max` = 2^25 blocks, keys up to
//! 2^32 bits), so `t ≤ ⌈log2(2/ε_cor)⌉` and `t < log2(2/ε_cor) + 0.012`:
//! the driver should subtract `t` itself rather than the real-valued term.
//!
//! # Collision bound (proof)
//!
//! Claim: for fixed keys `x ≠ x'` of the same length `n`, and `(k, s)`
//! uniform and independent of them, `Pr[tag(x) = tag(x')] ≤ L/2^128 + 2^−t`.
//!
//! 1. `H_k(x) − H_k(x') = D(k) = Σ (x_i − x'_i) k^{L+1−i}` is a polynomial in
//!    `k` of degree ≤ L. It is nonzero because some `x_i ≠ x'_i` and the
//!    powers `k^{L+1−i}` are distinct monomials. A nonzero polynomial of
//!    degree ≤ L over a field has at most L roots, so
//!    `Pr_k[D(k) = 0] ≤ L/2^128`.
//! 2. If `D(k) = δ ≠ 0`: `trunc_t` is GF(2)-linear, so the tags are equal iff
//!    `trunc_t(s·δ) = 0`. Multiplication by `δ ≠ 0` is a bijection of the
//!    field, so `s·δ` is uniform and `Pr_s[trunc_t(s·δ) = 0] = 2^{128−t}/2^128
//!    = 2^−t`.
//! 3. Union of the two cases: `≤ L/2^128 + 2^−t ≤ ε_cor` by the choice of `t`.
//!
//! The seed is drawn after reconciliation has fixed both keys, from a CSPRNG
//! the adversary does not control, which is the independence step 1 and 2
//! need. This is ε_cor-correctness in the sense of Lim et al.: the
//! probability that verification passes with different keys is ≤ ε_cor.

use rand_core::CryptoRng;
use thiserror::Error;

use super::wire::{WireError, WireReader, WireWriter};
use crate::gf2::{ClmulBackend, Gf128, poly_hash};
use crate::secret::{SecretWords, ct_eq};

/// First byte of an encoded [`VerifyRequest`].
pub const VERIFY_REQUEST_KIND: u8 = 0x56;
/// First byte of an encoded [`VerifyReply`].
pub const VERIFY_REPLY_KIND: u8 = 0x57;
/// Longest key the collision bound is stated for (2^32 bits).
pub const MAX_KEY_BITS: u64 = 1 << 32;
/// Hash blocks in the longest key, `L_max = MAX_KEY_BITS / 128 = 2^25`.
const MAX_BLOCKS_LOG2: i32 = 25;
/// Smallest ε_cor supported: below it `L_max·2^−128` would no longer be
/// negligible next to ε_cor (and tags would exceed 96 bits).
pub const MIN_EPS_COR: f64 = f64::from_bits((1023 - 96) << 52); // 2^-96

/// Why verification failed or could not run.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum VerifyError {
    #[error("ε_cor = {0} is outside [2^-96, 0.5]; choose a correctness parameter in that range")]
    EpsCor(f64),
    #[error("the reconciled keys differ (verification tags do not match): discard the block")]
    Mismatch,
    #[error("this key has {ours} bits but the peer verified {theirs}")]
    KeyLength { ours: u64, theirs: u64 },
    #[error(
        "the peer used a {theirs}-bit tag but this side is configured for {ours} bits; both must use the same ε_cor"
    )]
    TagLength { ours: u32, theirs: u32 },
    #[error("a key of {0} bits is longer than verification supports (2^32 bits)")]
    KeyTooLong(u64),
    #[error("message kind {0:#04x} is not a verification message")]
    Kind(u8),
    #[error("malformed verification message: {0}")]
    Wire(#[from] WireError),
}

/// The correctness parameter and the tag length derived from it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VerifyConfig {
    eps_cor: f64,
    tag_bits: u32,
}

impl VerifyConfig {
    /// Verification with collision probability at most `eps_cor`.
    pub fn new(eps_cor: f64) -> Result<Self, VerifyError> {
        if !(MIN_EPS_COR..=0.5).contains(&eps_cor) {
            return Err(VerifyError::EpsCor(eps_cor));
        }
        let poly_term = 2f64.powi(MAX_BLOCKS_LOG2 - 128);
        // `eps_cor − 2^−t` is exact once 2^−t ≤ eps_cor ≤ 2^{1−t} (Sterbenz),
        // which is where the first t that passes lies, so no rounding lets a
        // too-short tag through.
        let tag_bits = (1..=128)
            .find(|&t| eps_cor - 2f64.powi(-t) >= poly_term)
            .expect("eps_cor >= 2^-96 is reachable with t <= 97") as u32;
        Ok(Self { eps_cor, tag_bits })
    }

    pub fn eps_cor(&self) -> f64 {
        self.eps_cor
    }

    /// Tag length `t` in bits.
    pub fn tag_bits(&self) -> u32 {
        self.tag_bits
    }

    /// Bits of the key revealed by verification: the tag length. This is the
    /// term parameter estimation subtracts for verification.
    pub fn leak_bits(&self) -> u64 {
        u64::from(self.tag_bits)
    }

    /// The collision bound `⌈n/128⌉·2^−128 + 2^−t` for a key of `key_bits`.
    pub fn collision_bound(&self, key_bits: u64) -> f64 {
        key_bits.div_ceil(128) as f64 * 2f64.powi(-128) + 2f64.powi(-(self.tag_bits as i32))
    }
}

/// The message the verifying side sends: key length, seed `(k, s)`, tag.
/// Public by construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyRequest {
    key_bits: u64,
    tag_bits: u32,
    point: u128,
    scale: u128,
    tag: u128,
}

/// The answer: whether the responder's key produced the same tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyReply {
    pub keys_match: bool,
}

fn tag_of(
    backend: ClmulBackend,
    key: &SecretWords,
    point: u128,
    scale: u128,
    tag_bits: u32,
) -> u128 {
    let words = key.expose();
    let tail_mask = match key.bits() % 64 {
        0 => u64::MAX,
        r => (1u64 << r) - 1,
    };
    let last = words.len().saturating_sub(1);
    let word = |i: usize| -> u64 {
        match words.get(i) {
            Some(&w) if i == last => w & tail_mask,
            Some(&w) => w,
            None => 0,
        }
    };
    let blocks = (0..words.len().div_ceil(2))
        .map(|b| u128::from(word(2 * b)) | u128::from(word(2 * b + 1)) << 64);
    let hash = poly_hash(backend, Gf128(point), blocks);
    let scaled = hash.mul(Gf128(scale), backend).0;
    if tag_bits >= 128 {
        scaled
    } else {
        scaled & ((1u128 << tag_bits) - 1)
    }
}

fn random_u128<R: CryptoRng + ?Sized>(rng: &mut R) -> u128 {
    u128::from(rng.next_u64()) | u128::from(rng.next_u64()) << 64
}

impl VerifyRequest {
    /// Draws a fresh seed and tags `key`. Call once reconciliation is over;
    /// send [`Self::encode`] to the peer.
    pub fn new<R: CryptoRng + ?Sized>(
        config: &VerifyConfig,
        key: &SecretWords,
        rng: &mut R,
    ) -> Result<Self, VerifyError> {
        let key_bits = key.bits() as u64;
        if key_bits > MAX_KEY_BITS {
            return Err(VerifyError::KeyTooLong(key_bits));
        }
        let (point, scale) = (random_u128(rng), random_u128(rng));
        let tag = tag_of(ClmulBackend::detect(), key, point, scale, config.tag_bits);
        Ok(Self {
            key_bits,
            tag_bits: config.tag_bits,
            point,
            scale,
            tag,
        })
    }

    /// The responder's side: recomputes the tag on its own key and answers.
    /// `Ok(reply)` with `keys_match == false` is the normal "discard the
    /// block" outcome; `Err` is a protocol violation (lengths disagree),
    /// which also discards the block.
    pub fn check(
        &self,
        config: &VerifyConfig,
        key: &SecretWords,
    ) -> Result<VerifyReply, VerifyError> {
        if self.tag_bits != config.tag_bits {
            return Err(VerifyError::TagLength {
                ours: config.tag_bits,
                theirs: self.tag_bits,
            });
        }
        if key.bits() as u64 != self.key_bits {
            return Err(VerifyError::KeyLength {
                ours: key.bits() as u64,
                theirs: self.key_bits,
            });
        }
        let ours = tag_of(
            ClmulBackend::detect(),
            key,
            self.point,
            self.scale,
            self.tag_bits,
        );
        Ok(VerifyReply {
            keys_match: ct_eq(&ours.to_le_bytes(), &self.tag.to_le_bytes()),
        })
    }

    /// Kind byte, key bits (u64), tag bits (u8), k, s, tag (16 bytes each,
    /// little endian; tag bits above `t` zero).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::with_capacity(58);
        w.u8(VERIFY_REQUEST_KIND)
            .u64(self.key_bits)
            .u8(self.tag_bits as u8);
        for v in [self.point, self.scale, self.tag] {
            w.u64(v as u64).u64((v >> 64) as u64);
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, VerifyError> {
        let mut r = WireReader::new(bytes);
        let kind = r.u8("verify kind")?;
        if kind != VERIFY_REQUEST_KIND {
            return Err(VerifyError::Kind(kind));
        }
        let key_bits = r.u64("key bits")?;
        if key_bits > MAX_KEY_BITS {
            return Err(VerifyError::KeyTooLong(key_bits));
        }
        let tag_bits = u32::from(r.u8("tag bits")?);
        if !(1..=128).contains(&tag_bits) {
            return Err(WireError::Invalid("tag bits").into());
        }
        let mut field = |what| -> Result<u128, WireError> {
            Ok(u128::from(r.u64(what)?) | u128::from(r.u64(what)?) << 64)
        };
        let (point, scale, tag) = (field("hash point")?, field("hash scale")?, field("tag")?);
        if tag_bits < 128 && tag >> tag_bits != 0 {
            return Err(WireError::Invalid("tag").into());
        }
        r.finish()?;
        Ok(Self {
            key_bits,
            tag_bits,
            point,
            scale,
            tag,
        })
    }
}

impl VerifyReply {
    /// `Err(Mismatch)` when the keys differ: discard the block.
    pub fn result(&self) -> Result<(), VerifyError> {
        if self.keys_match {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        vec![VERIFY_REPLY_KIND, u8::from(self.keys_match)]
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, VerifyError> {
        let mut r = WireReader::new(bytes);
        let kind = r.u8("verify reply kind")?;
        if kind != VERIFY_REPLY_KIND {
            return Err(VerifyError::Kind(kind));
        }
        let keys_match = match r.u8("keys match")? {
            0 => false,
            1 => true,
            _ => return Err(WireError::Invalid("keys match").into()),
        };
        r.finish()?;
        Ok(Self { keys_match })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, RngExt, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn random_key(rng: &mut ChaCha20Rng, bits: usize) -> SecretWords {
        let mut k = SecretWords::zeroed(bits);
        for w in k.expose_mut() {
            *w = rng.next_u64();
        }
        if !bits.is_multiple_of(64) {
            *k.expose_mut().last_mut().unwrap() &= (1u64 << (bits % 64)) - 1;
        }
        k
    }

    fn round_trip(
        cfg: &VerifyConfig,
        alice: &SecretWords,
        bob: &SecretWords,
        rng: &mut ChaCha20Rng,
    ) -> bool {
        let req = VerifyRequest::new(cfg, alice, rng).unwrap();
        let received = VerifyRequest::decode(&req.encode()).unwrap();
        assert_eq!(received, req);
        let reply = received.check(cfg, bob).unwrap();
        let back = VerifyReply::decode(&reply.encode()).unwrap();
        assert_eq!(back.result().is_ok(), reply.keys_match);
        reply.keys_match
    }

    #[test]
    fn tag_length_follows_eps_cor() {
        // ε = 2^-50: smallest t with 2^-t + 2^-103 ≤ 2^-50 is 51 = log2(2/ε).
        assert_eq!(VerifyConfig::new(2f64.powi(-50)).unwrap().tag_bits(), 51);
        // ε = 1e-15: log2(1/ε) = 49.83, so t = 50 ≤ log2(2/ε) = 50.83.
        let c = VerifyConfig::new(1e-15).unwrap();
        assert_eq!(c.tag_bits(), 50);
        assert_eq!(c.leak_bits(), 50);
        for eps in [
            0.5,
            0.1,
            1e-6,
            1e-10,
            1e-12,
            1e-15,
            1e-20,
            1e-25,
            MIN_EPS_COR,
        ] {
            let c = VerifyConfig::new(eps).unwrap();
            assert!(c.collision_bound(MAX_KEY_BITS) <= eps, "{eps}");
            assert!(
                f64::from(c.tag_bits()) < (2.0 / eps).log2() + 0.012,
                "{eps}"
            );
            // t is the smallest such length.
            assert!(
                2f64.powi(1 - c.tag_bits() as i32) > eps * (1.0 - 1e-9),
                "{eps}"
            );
        }
        assert_eq!(MIN_EPS_COR, 2f64.powi(-96));
        assert_eq!(VerifyConfig::new(0.5).unwrap().tag_bits(), 2);
        assert!(VerifyConfig::new(0.6).is_err());
        assert!(VerifyConfig::new(1e-30).is_err());
        assert!(VerifyConfig::new(f64::NAN).is_err());
    }

    #[test]
    fn equal_keys_are_accepted_on_every_backend() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let cfg = VerifyConfig::new(1e-12).unwrap();
        for bits in [1, 63, 64, 65, 127, 128, 129, 1000, 100_000] {
            let a = random_key(&mut rng, bits);
            assert!(round_trip(&cfg, &a, &a.duplicate(), &mut rng), "{bits}");
        }
        // The backends agree, so two agents on different CPUs interoperate.
        let a = random_key(&mut rng, 4321);
        let tags: Vec<u128> = ClmulBackend::available()
            .into_iter()
            .map(|b| {
                tag_of(
                    b,
                    &a,
                    0x1234_5678_9abc_def0_0fed_cba9_8765_4321,
                    0xdead_beef,
                    40,
                )
            })
            .collect();
        assert!(tags.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn every_single_bit_difference_is_rejected() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let cfg = VerifyConfig::new(1e-12).unwrap();
        for bits in [1, 64, 130, 300] {
            let a = random_key(&mut rng, bits);
            for i in 0..bits {
                let mut b = a.duplicate();
                b.flip(i);
                assert!(
                    !round_trip(&cfg, &a, &b, &mut rng),
                    "bits={bits} flipped {i}"
                );
                assert!(
                    !round_trip(&cfg, &b, &a, &mut rng),
                    "bits={bits} flipped {i}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_differences_are_rejected(bits in 1usize..20_000, flips in 1usize..8, seed: u64) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let cfg = VerifyConfig::new(1e-10).unwrap();
            let a = random_key(&mut rng, bits);
            let mut b = a.duplicate();
            for _ in 0..flips {
                b.flip(rng.random_range(0..bits));
            }
            let differ = !a.ct_eq(&b);
            prop_assert_eq!(round_trip(&cfg, &a, &b, &mut rng), !differ);
        }
    }

    #[test]
    fn mismatched_parameters_and_hostile_messages_are_errors() {
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let cfg = VerifyConfig::new(1e-12).unwrap();
        let a = random_key(&mut rng, 500);
        let req = VerifyRequest::new(&cfg, &a, &mut rng).unwrap();
        let other = VerifyConfig::new(1e-6).unwrap();
        assert!(matches!(
            req.check(&other, &a),
            Err(VerifyError::TagLength { .. })
        ));
        assert!(matches!(
            req.check(&cfg, &random_key(&mut rng, 499)),
            Err(VerifyError::KeyLength { .. })
        ));
        let good = req.encode();
        for cut in 0..good.len() {
            assert!(VerifyRequest::decode(&good[..cut]).is_err());
        }
        let mut bad = good.clone();
        bad[9] = 0; // tag bits = 0
        assert!(VerifyRequest::decode(&bad).is_err());
        let mut bad = good.clone();
        bad[9] = 200;
        assert!(VerifyRequest::decode(&bad).is_err());
        let mut bad = good.clone();
        *bad.last_mut().unwrap() = 0xFF; // tag bits above t
        assert!(VerifyRequest::decode(&bad).is_err());
        let mut bad = good.clone();
        bad[1..9].copy_from_slice(&(MAX_KEY_BITS + 1).to_le_bytes());
        assert_eq!(
            VerifyRequest::decode(&bad),
            Err(VerifyError::KeyTooLong(MAX_KEY_BITS + 1))
        );
        let mut long = good.clone();
        long.push(0);
        assert!(VerifyRequest::decode(&long).is_err());
        assert_eq!(
            VerifyReply::decode(&[VERIFY_REPLY_KIND, 2]),
            Err(WireError::Invalid("keys match").into())
        );
        assert_eq!(VerifyReply::decode(&[0x00, 1]), Err(VerifyError::Kind(0)));
        assert!(VerifyReply::decode(&[VERIFY_REPLY_KIND]).is_err());
        assert_eq!(
            VerifyReply { keys_match: false }.result(),
            Err(VerifyError::Mismatch)
        );
    }
}
