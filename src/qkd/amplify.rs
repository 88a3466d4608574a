//! Privacy amplification: Toeplitz hashing of the verified key down to the
//! secret length that parameter estimation allows.
//!
//! Alice draws a public seed from a CSPRNG and sends it ([`ToeplitzSeed`]);
//! both sides compute `final = T·key` with the same Toeplitz matrix. Toeplitz
//! matrices with a uniform seed form a 2-universal family (Krawczyk,
//! CRYPTO '94, §3), which is what the leftover hash lemma behind the
//! finite-key bound of Lim et al., PRA 89, 022307 (2014), requires.
//!
//! This module owns the seed, its message encoding and the convention below;
//! the arithmetic lives in [`crate::gf2::middle_product`]. It reads the key
//! only through `crate::secret` types and writes the result and every
//! key-derived intermediate into them. It does not choose the output length
//! (parameter estimation does) and does not authenticate the seed (the
//! transcript tag does).
//!
//! # Convention
//!
//! Input `x` has `n` bits, output `y` has `m ≤ n` bits, the seed `s` has
//! `n + m − 1` bits, all packed as in [`SecretWords`] (bit `i` is bit
//! `i % 64` of word `i / 64`). The matrix is `T[i][j] = s[n − 1 + i − j]`:
//! the top-left entry is seed bit `n − 1`; row 0 reads seed bits
//! `n − 1, n − 2, …, 0` from left to right; column 0 reads seed bits
//! `n − 1, n, …, n + m − 2` from top to bottom. Then
//! `y_i = ⊕_j s[n − 1 + i − j] · x_j`, which is coefficient `n − 1 + i` of
//! the polynomial product `S(z)·X(z)` over GF(2).
//!
//! # Speed
//!
//! Only those `m` middle coefficients are computed, with transposed
//! Karatsuba over 64-bit words and carry-less multiply instructions
//! ([`crate::gf2::middle_product`]), about `O(n · m^0.585)` word operations.
//! A prime-field NTT was the alternative: a throwaway probe (not kept;
//! plain scalar radix-2, p = 998244353, length 2^21) took ~280 ms at
//! n = 10^6 against ~3 ms here, and even a vectorised NTT needs one field
//! element per key bit (sums up to n must not wrap), so carry-less
//! arithmetic, which packs 64 bits per word, wins.

use rand_core::CryptoRng;
use thiserror::Error;

use super::wire::{WireError, WireReader, WireWriter};
use crate::gf2::{ClmulBackend, ToeplitzPlan};
use crate::secret::SecretWords;

/// First byte of an encoded [`ToeplitzSeed`], so a message of another stage
/// can never be mistaken for one.
pub const SEED_MESSAGE_KIND: u8 = 0x50;

/// Default bound on the input length accepted from the network (2^26 bits,
/// about 6.7 × 10^7: the largest block the driver is configured for is
/// 10^7). Callers with other block sizes pass their own bound to
/// [`ToeplitzSeed::decode`].
pub const MAX_INPUT_BITS: u64 = 1 << 26;

/// Why privacy amplification could not run.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AmplifyError {
    #[error(
        "output length {output_bits} is not in 1..={input_bits} (input bits); \
         parameter estimation should have aborted the block"
    )]
    OutputLength { input_bits: u64, output_bits: u64 },
    #[error("the key has {key_bits} bits but the seed was drawn for {seed_input_bits}")]
    KeyLength {
        key_bits: usize,
        seed_input_bits: usize,
    },
    #[error(
        "Alice's seed produces {seed_output_bits} bits but this side computed \
         {expected_output_bits}: the two parameter estimates disagree"
    )]
    OutputMismatch {
        seed_output_bits: usize,
        expected_output_bits: usize,
    },
    #[error("seed has {got} bits, expected n + m - 1 = {expected}")]
    SeedLength { got: u64, expected: u64 },
    #[error("seed message kind {0:#04x} is not a Toeplitz seed")]
    Kind(u8),
    #[error("malformed seed message: {0}")]
    Wire(#[from] WireError),
}

/// The public seed of one Toeplitz hash: `input_bits + output_bits − 1`
/// bits. Public by design (it is sent in the clear), so it derives `Clone`;
/// `Debug` shows only the sizes because the bits are megabytes long.
#[derive(Clone, PartialEq, Eq)]
pub struct ToeplitzSeed {
    input_bits: usize,
    output_bits: usize,
    words: Vec<u64>,
}

impl std::fmt::Debug for ToeplitzSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ToeplitzSeed({} -> {} bits)",
            self.input_bits, self.output_bits
        )
    }
}

fn check_lengths(input_bits: u64, output_bits: u64) -> Result<(), AmplifyError> {
    if output_bits == 0 || output_bits > input_bits {
        return Err(AmplifyError::OutputLength {
            input_bits,
            output_bits,
        });
    }
    Ok(())
}

impl ToeplitzSeed {
    /// A fresh uniform seed for hashing `input_bits` down to `output_bits`.
    pub fn random<R: CryptoRng + ?Sized>(
        input_bits: usize,
        output_bits: usize,
        rng: &mut R,
    ) -> Result<Self, AmplifyError> {
        check_lengths(input_bits as u64, output_bits as u64)?;
        let seed_bits = input_bits + output_bits - 1;
        let mut words: Vec<u64> = (0..seed_bits.div_ceil(64))
            .map(|_| rng.next_u64())
            .collect();
        clear_tail(&mut words, seed_bits);
        Ok(Self {
            input_bits,
            output_bits,
            words,
        })
    }

    /// A seed from given bits (tests, benches, known-answer vectors).
    /// Bits past `input_bits + output_bits − 1` are cleared.
    pub fn from_words(
        input_bits: usize,
        output_bits: usize,
        mut words: Vec<u64>,
    ) -> Result<Self, AmplifyError> {
        check_lengths(input_bits as u64, output_bits as u64)?;
        let seed_bits = input_bits + output_bits - 1;
        if words.len() != seed_bits.div_ceil(64) {
            return Err(AmplifyError::SeedLength {
                got: words.len() as u64 * 64,
                expected: seed_bits as u64,
            });
        }
        clear_tail(&mut words, seed_bits);
        Ok(Self {
            input_bits,
            output_bits,
            words,
        })
    }

    pub fn input_bits(&self) -> usize {
        self.input_bits
    }

    pub fn output_bits(&self) -> usize {
        self.output_bits
    }

    /// `n + m − 1`.
    pub fn seed_bits(&self) -> usize {
        self.input_bits + self.output_bits - 1
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Seed bit `k` (`k < n + m − 1`).
    pub fn bit(&self, k: usize) -> bool {
        assert!(k < self.seed_bits(), "seed bit {k} out of range");
        self.words[k / 64] >> (k % 64) & 1 == 1
    }

    /// The message Alice sends: kind byte, `n` (u64), `m` (u64), then the
    /// seed as a bit string (see [`WireWriter::bits`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::with_capacity(32 + 8 * self.words.len());
        w.u8(SEED_MESSAGE_KIND)
            .u64(self.input_bits as u64)
            .u64(self.output_bits as u64)
            .bits(self.seed_bits() as u64, &self.words);
        w.finish()
    }

    /// Decodes a seed from the network, refusing inputs longer than
    /// `max_input_bits` before allocating anything.
    pub fn decode(bytes: &[u8], max_input_bits: u64) -> Result<Self, AmplifyError> {
        let mut r = WireReader::new(bytes);
        let kind = r.u8("seed kind")?;
        if kind != SEED_MESSAGE_KIND {
            return Err(AmplifyError::Kind(kind));
        }
        let n = r.u64("input bits")?;
        let m = r.u64("output bits")?;
        if n > max_input_bits {
            return Err(WireError::TooLong {
                what: "input bits",
                len: n,
                max: max_input_bits,
            }
            .into());
        }
        check_lengths(n, m)?;
        let (seed_bits, words) = r.bits("seed", n + m - 1)?;
        if seed_bits != n + m - 1 {
            return Err(AmplifyError::SeedLength {
                got: seed_bits,
                expected: n + m - 1,
            });
        }
        r.finish()?;
        Ok(Self {
            input_bits: n as usize,
            output_bits: m as usize,
            words,
        })
    }
}

fn clear_tail(words: &mut [u64], bits: usize) {
    if let (false, Some(last)) = (bits.is_multiple_of(64), words.last_mut()) {
        *last &= (1u64 << (bits % 64)) - 1;
    }
}

/// `T·key` with the fastest carry-less multiply this CPU has.
pub fn toeplitz_hash(seed: &ToeplitzSeed, key: &SecretWords) -> Result<SecretWords, AmplifyError> {
    toeplitz_hash_with(ClmulBackend::detect(), seed, key)
}

/// `T·key` with a chosen backend (tests compare backends; benches measure
/// them).
pub fn toeplitz_hash_with(
    backend: ClmulBackend,
    seed: &ToeplitzSeed,
    key: &SecretWords,
) -> Result<SecretWords, AmplifyError> {
    if key.bits() != seed.input_bits {
        return Err(AmplifyError::KeyLength {
            key_bits: key.bits(),
            seed_input_bits: seed.input_bits,
        });
    }
    let plan = ToeplitzPlan::new(seed.input_bits, seed.output_bits, backend);
    // The scratch holds the padded key and partial products: key-derived,
    // so it lives (and is zeroised) in a secret type.
    let mut scratch = SecretWords::zeroed(plan.scratch_words() * 64);
    let mut out = SecretWords::zeroed(seed.output_bits);
    plan.multiply(
        &seed.words,
        key.expose(),
        out.expose_mut(),
        scratch.expose_mut(),
    );
    Ok(out)
}

/// Alice's side: draws the seed for `output_bits` (from parameter
/// estimation) and hashes her verified key. Send `seed.encode()` to Bob.
pub fn alice_amplify<R: CryptoRng + ?Sized>(
    key: &SecretWords,
    output_bits: usize,
    rng: &mut R,
) -> Result<(ToeplitzSeed, SecretWords), AmplifyError> {
    let seed = ToeplitzSeed::random(key.bits(), output_bits, rng)?;
    let out = toeplitz_hash(&seed, key)?;
    Ok((seed, out))
}

/// Bob's side: checks that Alice's seed matches his key length and his own
/// parameter estimate, then hashes his verified key.
pub fn bob_amplify(
    key: &SecretWords,
    expected_output_bits: usize,
    seed: &ToeplitzSeed,
) -> Result<SecretWords, AmplifyError> {
    if seed.output_bits != expected_output_bits {
        return Err(AmplifyError::OutputMismatch {
            seed_output_bits: seed.output_bits,
            expected_output_bits,
        });
    }
    toeplitz_hash(seed, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn random_key(rng: &mut ChaCha20Rng, bits: usize) -> SecretWords {
        let mut k = SecretWords::zeroed(bits);
        for w in k.expose_mut() {
            *w = rng.next_u64();
        }
        clear_tail(k.expose_mut(), bits);
        k
    }

    /// The definition, bit by bit: `y_i = ⊕_j s[n−1+i−j]·x_j`.
    fn oracle_bitwise(seed: &ToeplitzSeed, key: &SecretWords) -> Vec<u64> {
        let (n, m) = (seed.input_bits(), seed.output_bits());
        let mut out = vec![0u64; m.div_ceil(64)];
        for i in 0..m {
            let bit = (0..n).fold(false, |acc, j| acc ^ (seed.bit(n - 1 + i - j) & key.get(j)));
            out[i / 64] |= u64::from(bit) << (i % 64);
        }
        out
    }

    /// Naive O(n·m/64) product, independent of the fast path: row `i` of
    /// `T` is the bit-reversed seed read from position `m − 1 − i`.
    fn oracle_rows(seed: &ToeplitzSeed, key: &SecretWords) -> Vec<u64> {
        let (m, len) = (seed.output_bits(), seed.seed_bits());
        let mut reversed = vec![0u64; len.div_ceil(64) + 1];
        for k in 0..len {
            if seed.bit(len - 1 - k) {
                reversed[k / 64] |= 1 << (k % 64);
            }
        }
        let x = key.expose();
        let mut out = vec![0u64; m.div_ceil(64)];
        for i in 0..m {
            let start = m - 1 - i;
            let (w0, sh) = (start / 64, start % 64);
            let mut acc = 0u64;
            for (w, xw) in x.iter().enumerate() {
                let lo = reversed[w0 + w] >> sh;
                let hi = if sh == 0 {
                    0
                } else {
                    reversed.get(w0 + w + 1).map_or(0, |v| v << (64 - sh))
                };
                acc ^= (lo | hi) & xw;
            }
            // Row bits past n meet key bits past n, which are zero.
            out[i / 64] |= u64::from(acc.count_ones() & 1) << (i % 64);
        }
        out
    }

    fn check(n: usize, m: usize, rng_seed: u64, bitwise: bool) {
        let mut rng = ChaCha20Rng::seed_from_u64(rng_seed);
        let key = random_key(&mut rng, n);
        let seed = ToeplitzSeed::random(n, m, &mut rng).unwrap();
        let expect = oracle_rows(&seed, &key);
        if bitwise {
            assert_eq!(
                expect,
                oracle_bitwise(&seed, &key),
                "oracles disagree n={n} m={m}"
            );
        }
        for backend in ClmulBackend::available() {
            let got = toeplitz_hash_with(backend, &seed, &key).unwrap();
            assert_eq!(got.bits(), m);
            assert_eq!(got.expose(), &expect[..], "{backend:?} n={n} m={m}");
        }
    }

    #[test]
    fn convention_row_zero_and_column_zero() {
        // With only seed bit k set and only key bit j set, output bit i is
        // set exactly when k = n − 1 + i − j.
        let (n, m) = (70usize, 5usize);
        for (k, j) in [(n - 1, 0), (0, n - 1), (n - 1 + 4, 0), (n + 1, 3), (10, 12)] {
            let mut words = vec![0u64; (n + m - 1).div_ceil(64)];
            words[k / 64] |= 1 << (k % 64);
            let seed = ToeplitzSeed::from_words(n, m, words).unwrap();
            let mut key = SecretWords::zeroed(n);
            key.set(j, true);
            let y = toeplitz_hash(&seed, &key).unwrap();
            for i in 0..m {
                assert_eq!(y.get(i), k + j == n - 1 + i, "k={k} j={j} i={i}");
            }
        }
    }

    #[test]
    fn edge_sizes_match_the_oracle() {
        for (t, (n, m)) in [
            (1, 1),
            (2, 1),
            (2, 2),
            (63, 1),
            (64, 1),
            (64, 64),
            (65, 1),
            (65, 65),
            (127, 127),
            (128, 1),
            (129, 64),
            (1280, 1280),
            (1000, 999),
            (4097, 1),
            (4097, 4097),
            (9000, 4500),
            (20_000, 3),
        ]
        .into_iter()
        .enumerate()
        {
            check(n, m, t as u64, n * m <= 2_000_000);
        }
    }

    #[test]
    fn large_block_matches_the_oracle() {
        check(100_003, 50_001, 99, false);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn fast_toeplitz_equals_naive(n in 1usize..700, frac in 0.0f64..=1.0, rng_seed: u64) {
            let m = ((n as f64 * frac) as usize).clamp(1, n);
            check(n, m, rng_seed, true);
        }
    }

    #[test]
    fn alice_and_bob_agree_and_check_lengths() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let key = random_key(&mut rng, 5000);
        let bob_key = key.duplicate();
        let (seed, alice_out) = alice_amplify(&key, 1234, &mut rng).unwrap();
        let received = ToeplitzSeed::decode(&seed.encode(), MAX_INPUT_BITS).unwrap();
        assert_eq!(received, seed);
        let bob_out = bob_amplify(&bob_key, 1234, &received).unwrap();
        assert!(alice_out.ct_eq(&bob_out));
        assert!(matches!(
            bob_amplify(&bob_key, 1233, &received),
            Err(AmplifyError::OutputMismatch { .. })
        ));
        let short = random_key(&mut rng, 4999);
        assert!(matches!(
            bob_amplify(&short, 1234, &received),
            Err(AmplifyError::KeyLength { .. })
        ));
        assert!(matches!(
            alice_amplify(&key, 0, &mut rng),
            Err(AmplifyError::OutputLength { .. })
        ));
        assert!(matches!(
            alice_amplify(&key, 5001, &mut rng),
            Err(AmplifyError::OutputLength { .. })
        ));
    }

    #[test]
    fn hostile_seed_messages_are_rejected() {
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let good = ToeplitzSeed::random(100, 40, &mut rng).unwrap().encode();
        let decode = |b: &[u8]| ToeplitzSeed::decode(b, 1000);
        assert!(decode(&good).is_ok());
        let mut bad = good.clone();
        bad[0] = 0x51;
        assert_eq!(decode(&bad), Err(AmplifyError::Kind(0x51)));
        let header = |n: u64, m: u64, seed_bits: u64| {
            let mut w = WireWriter::new();
            w.u8(SEED_MESSAGE_KIND).u64(n).u64(m).u64(seed_bits);
            w.finish()
        };
        assert!(matches!(
            decode(&header(100, 0, 99)),
            Err(AmplifyError::OutputLength { .. })
        ));
        assert!(matches!(
            decode(&header(100, 101, 200)),
            Err(AmplifyError::OutputLength { .. })
        ));
        assert!(matches!(
            decode(&header(u64::MAX, 1, 0)),
            Err(AmplifyError::Wire(WireError::TooLong { .. }))
        ));
        let mut short_seed = header(100, 40, 138);
        short_seed.extend_from_slice(&[0u8; 24]);
        assert_eq!(
            decode(&short_seed),
            Err(AmplifyError::SeedLength {
                got: 138,
                expected: 139
            })
        );
        assert!(matches!(
            decode(&header(100, 40, 139)),
            Err(AmplifyError::Wire(WireError::Truncated(_)))
        ));
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(AmplifyError::Wire(WireError::Truncated(_)))
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            decode(&long),
            Err(AmplifyError::Wire(WireError::Trailing(1)))
        ));
        // Every truncation fails cleanly, none panics.
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err());
        }
    }

    #[test]
    fn debug_shows_sizes_only() {
        let seed = ToeplitzSeed::from_words(64, 1, vec![0xA5A5_A5A5_A5A5_A5A5]).unwrap();
        assert_eq!(format!("{seed:?}"), "ToeplitzSeed(64 -> 1 bits)");
    }
}
