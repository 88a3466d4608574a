//! Toeplitz matrix × vector over GF(2), computed as a slice of a polynomial
//! product ("middle product") with word-level transposed Karatsuba.
//!
//! This module owns the arithmetic only: it takes the seed and the key as
//! word slices and writes into caller-provided memory, so the caller decides
//! where key-derived intermediates live (`qkd::amplify` hands it
//! `SecretWords`). It allocates one public buffer, the rearranged seed.
//!
//! # The product computed
//!
//! For a seed `s` of `n + m − 1` bits and an input `x` of `n` bits,
//! `y_i = ⊕_{j<n} s[n−1+i−j] · x_j` for `i < m`, i.e. `y = T·x` with the
//! Toeplitz matrix `T[i][j] = s[n−1+i−j]`. In GF(2)\[z\] this is coefficients
//! `n−1 … n+m−2` of `S(z)·X(z)`: the middle of the product, which is why
//! the outer coefficients are never computed.
//!
//! # Word level
//!
//! Let `b_j` be the key words and, for `u < M` (`M ≥ ⌈m/64⌉ + 1` rows,
//! padded to whole blocks), `r_u` the 128-bit sums
//! `r_u = ⊕_j R[M−1−u+j] ⊗ b_j` (⊗ = carry-less 64 × 64 product), where
//! `R[i]` is the 64-bit window of seed bits starting at
//! `64·(M−2−i) + n − 1` (bits outside the seed read as 0). Expanding the
//! windows shows output word `v` of `y` is `lo(r_{v+1}) ⊕ hi(r_v)`, so the
//! unaligned bit offset `n − 1` costs nothing but the window extraction.
//! The `r_u` are a Toeplitz product with 64-bit entries, split into square
//! `N × N` blocks, each computed by `middle_product`.
//!
//! # Cost
//!
//! Transposed Karatsuba (Hanrot, Quercia, Zimmermann, "The middle product
//! algorithm I", AAECC 14, 2004, §3) computes an `N × N` Toeplitz product
//! with three of size `N/2`, like Karatsuba multiplication, down to a
//! schoolbook base case of at most [`BASE_MAX`] words that runs on the
//! carry-less multiply instructions. An `m × n` product costs
//! `⌈n/N⌉·⌈m/N⌉` blocks with `N` near `min(n, m)/64` words ([`ToeplitzPlan::new`]
//! picks it with a cost model).

use super::clmul::ClmulBackend;

/// Largest schoolbook base case (words) the plan considers.
pub const BASE_MAX: usize = 64;

/// Words in front of every seed operand handed to a base case. The vector
/// kernels read up to 7 words before a block's seed window when computing
/// the last, partial group of outputs (those products only reach outputs
/// that are discarded), so every seed operand is passed as a slice that
/// starts `SEED_PAD` readable words early, whatever they contain. This
/// avoids copying the window into a padded buffer in every base case.
pub const SEED_PAD: usize = 8;

/// Estimated nanoseconds of one schoolbook base case of `h` words. Measured
/// (CPU time, profiled) on an AMD EPYC (Zen 5): one PCLMULQDQ or
/// VPCLMULQDQ instruction ≈ 0.5 ns in these loops, a portable 64-bit product
/// ≈ 15 ns. The x86 kernels work on groups of 8 (PCLMULQDQ) or 16
/// (VPCLMULQDQ) outputs, so a partial group costs as much as a full one.
fn base_cost(backend: ClmulBackend, h: usize) -> f64 {
    let h_f = h as f64;
    match backend {
        ClmulBackend::Portable => 15.0 * h_f * h_f + 20.0,
        ClmulBackend::Pclmulqdq => 0.5 * (8 * h * h.div_ceil(8)) as f64 + 0.5 * h_f + 20.0,
        ClmulBackend::Vpclmulqdq => 0.5 * (4 * h * h.div_ceil(16)) as f64 + 0.5 * h_f + 20.0,
    }
}

/// Estimated nanoseconds of one `N × N` block with `levels` Karatsuba levels
/// above base cases of `h` words: 3^levels base cases plus about 3.5 word
/// XORs per word of every internal node (≈ 0.17 ns each).
fn block_cost(backend: ClmulBackend, h: usize, levels: u32) -> f64 {
    let n = (h << levels) as f64;
    let xor_words: f64 = (0..levels).map(|l| 3.5 * n * 1.5f64.powi(l as i32)).sum();
    3f64.powi(levels as i32) * base_cost(backend, h) + 0.17 * xor_words
}

/// Sizes of one `m × n` Toeplitz product (all in 64-bit words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ToeplitzPlan {
    pub n_bits: usize,
    pub m_bits: usize,
    /// Key words, `⌈n/64⌉`.
    key_words: usize,
    /// Output words, `⌈m/64⌉`.
    out_words: usize,
    /// Block size `N = base · 2^levels`.
    block: usize,
    /// Karatsuba levels above the base case.
    levels: u32,
    /// Block rows × columns.
    rows: usize,
    cols: usize,
    backend: ClmulBackend,
}

impl ToeplitzPlan {
    /// Plans `y = T·x` for `n` input and `m` output bits (both ≥ 1).
    ///
    /// The `(M + 1) × Q` word matrix (`M`, `Q` output and key words) is
    /// covered by square blocks of `N = base · 2^levels` words; the plan
    /// takes the `(base, levels)` with the lowest estimated cost, which
    /// weighs Karatsuba's savings against padding of the last block row and
    /// column and against partial vector groups in the base case.
    pub fn new(n_bits: usize, m_bits: usize, backend: ClmulBackend) -> Self {
        assert!(n_bits >= 1 && m_bits >= 1, "empty Toeplitz product");
        let key_words = n_bits.div_ceil(64);
        let out_words = m_bits.div_ceil(64);
        // One extra row: output word v needs r_v and r_{v+1}.
        let r_rows = out_words + 1;
        let longest = r_rows.max(key_words);
        let mut best: Option<(f64, usize, u32)> = None;
        for levels in 0..usize::BITS {
            if (1usize << levels) > longest {
                break;
            }
            for base in 1..=BASE_MAX {
                let block = base << levels;
                let blocks = (r_rows.div_ceil(block) * key_words.div_ceil(block)) as f64;
                let cost = blocks * block_cost(backend, base, levels);
                if best.is_none_or(|(c, _, _)| cost < c) {
                    best = Some((cost, base, levels));
                }
            }
        }
        let (_, base, levels) = best.expect("at least one candidate");
        let block = base << levels;
        Self {
            n_bits,
            m_bits,
            key_words,
            out_words,
            block,
            levels,
            rows: r_rows.div_ceil(block),
            cols: key_words.div_ceil(block),
            backend,
        }
    }

    /// Words of caller-provided scratch [`Self::multiply`] needs. It will
    /// hold key-derived values.
    pub fn scratch_words(&self) -> usize {
        let padded_key = self.cols * self.block;
        let folded = self.rows * self.block + 1;
        let block_out = self.block + 1;
        padded_key + folded + block_out + recursion_scratch(self.block, self.levels)
    }

    /// Number of square blocks (for cost estimates).
    pub fn blocks(&self) -> usize {
        self.rows * self.cols
    }

    /// Computes `y = T·x`: `seed` holds `n + m − 1` bits (bits past them
    /// are ignored), `key` `n` bits (bits past `n` are ignored), `out` receives `⌈m/64⌉` words with the
    /// bits past `m` cleared. `scratch` must have [`Self::scratch_words`]
    /// words; its contents on return are key-derived.
    pub fn multiply(&self, seed: &[u64], key: &[u64], out: &mut [u64], scratch: &mut [u64]) {
        let (n, m, nb) = (self.n_bits, self.m_bits, self.block);
        assert!(seed.len() * 64 >= n + m - 1, "seed too short");
        assert_eq!(key.len(), self.key_words, "key length");
        assert_eq!(out.len(), self.out_words, "output length");
        assert!(scratch.len() >= self.scratch_words(), "scratch too short");

        let padded_rows = self.rows * nb;
        let padded_cols = self.cols * nb;
        // R[i] = seed window at 64·(Mp−2−i) + n − 1 (see the module docs),
        // behind SEED_PAD zero words.
        let mut windows = vec![0u64; SEED_PAD];
        windows.extend((0..padded_rows + padded_cols - 1).map(|i| {
            let start = 64 * (padded_rows as i64 - 2 - i as i64) + n as i64 - 1;
            bit_window(seed, n + m - 1, start)
        }));

        let (padded_key, rest) = scratch.split_at_mut(padded_cols);
        let (folded, rest) = rest.split_at_mut(padded_rows + 1);
        let (block_out, rest) = rest.split_at_mut(nb + 1);
        padded_key[..key.len()].copy_from_slice(key);
        padded_key[key.len()..].fill(0);
        // Bits past n would meet seed bits of other rows; clear them rather
        // than trust the caller's padding.
        if n % 64 != 0 {
            padded_key[key.len() - 1] &= (1u64 << (n % 64)) - 1;
        }
        folded.fill(0);

        let kernels = kernels(self.backend);
        for row in 0..self.rows {
            for col in 0..self.cols {
                let offset = nb * (self.rows - 1 - row + col);
                middle_product(
                    kernels,
                    self.levels,
                    &windows[offset..offset + SEED_PAD + 2 * nb - 1],
                    &padded_key[col * nb..(col + 1) * nb],
                    block_out,
                    rest,
                );
                (kernels.xor_into)(&mut folded[row * nb..row * nb + nb + 1], block_out);
            }
        }
        out.copy_from_slice(&folded[1..=self.out_words]);
        if m % 64 != 0 {
            out[self.out_words - 1] &= (1u64 << (m % 64)) - 1;
        }
    }
}

/// The 64 bits of `bits` (packed, `len` bits valid) starting at bit `start`,
/// which may be negative or run past the end (those bits read as zero).
fn bit_window(bits: &[u64], len: usize, start: i64) -> u64 {
    let bit = |i: i64| -> u64 {
        if i < 0 || i as usize >= len {
            0
        } else {
            bits[i as usize / 64] >> (i as usize % 64) & 1
        }
    };
    if start >= 0 && start as usize + 64 <= len {
        // Fast path: two aligned words and a shift.
        let (w, s) = (start as usize / 64, start as usize % 64);
        if s == 0 {
            return bits[w];
        }
        return (bits[w] >> s) | (bits[w + 1] << (64 - s));
    }
    (0..64).fold(0, |acc, k| acc | (bit(start + k) << k))
}

/// Scratch words the recursion needs for a block of `n` words.
fn recursion_scratch(n: usize, levels: u32) -> usize {
    if levels == 0 {
        0
    } else {
        let h = n / 2;
        (SEED_PAD + 2 * h - 1) + h + (h + 1) + recursion_scratch(h, levels - 1)
    }
}

#[inline]
pub(crate) fn xor_into(dst: &mut [u64], src: &[u64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

#[inline]
pub(crate) fn xor_to(dst: &mut [u64], a: &[u64], b: &[u64]) {
    for ((d, x), y) in dst.iter_mut().zip(a).zip(b) {
        *d = x ^ y;
    }
}

/// Schoolbook block: `r_u = ⊕_{j<h} ar[h−1−u+j] ⊗ b[j]` for `u < h`, folded
/// into `out[u] = lo(r_u) ⊕ hi(r_{u−1})` (`h + 1` words, overwritten).
/// The first argument is `ar` preceded by [`SEED_PAD`] words
/// (`SEED_PAD + 2h − 1` in all).
pub(crate) type BaseKernel = fn(&[u64], &[u64], &mut [u64]);

/// The routines one backend runs: the base case, and the word XORs of the
/// Karatsuba levels (compiled for wider registers where the CPU has them).
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    base: BaseKernel,
    xor_to: fn(&mut [u64], &[u64], &[u64]),
    xor_into: fn(&mut [u64], &[u64]),
}

fn kernels(backend: ClmulBackend) -> Kernels {
    match backend {
        #[cfg(target_arch = "x86_64")]
        ClmulBackend::Pclmulqdq => Kernels {
            base: super::base_x86::base_pclmul_checked,
            xor_to,
            xor_into,
        },
        #[cfg(target_arch = "x86_64")]
        ClmulBackend::Vpclmulqdq => Kernels {
            base: super::base_x86::base_vpclmul_checked,
            xor_to: super::base_x86::xor_to_avx512,
            xor_into: super::base_x86::xor_into_avx512,
        },
        _ => Kernels {
            base: base_portable,
            xor_to,
            xor_into,
        },
    }
}

pub(crate) fn base_portable(padded_ar: &[u64], b: &[u64], out: &mut [u64]) {
    let ar = &padded_ar[SEED_PAD..];
    let h = b.len();
    let mut carry = 0u64;
    for u in 0..h {
        let window = &ar[h - 1 - u..2 * h - 1 - u];
        let acc = window.iter().zip(b).fold(0u128, |acc, (&a, &b)| {
            acc ^ super::clmul::clmul_portable(a, b)
        });
        out[u] = acc as u64 ^ carry;
        carry = (acc >> 64) as u64;
    }
    out[h] = carry;
}

/// The `N × N` Toeplitz product `r_u = ⊕_{j<N} ar[N−1−u+j] ⊗ b[j]`, folded
/// into `out` (`N + 1` words, overwritten). `padded_ar` is `ar` (`2N − 1`
/// words) preceded by [`SEED_PAD`] readable words; `N` must be divisible by
/// `2^levels`, and `scratch` hold `recursion_scratch(N, levels)` words.
///
/// Splitting N = 2h, the matrix is `[[T_h, T_2h], [T_0, T_h]]` where `T_o`
/// is the h × h Toeplitz block on `ar[o .. o+2h−1]`. With
/// P1 = T_h·(b_lo + b_hi), P2 = (T_2h + T_h)·b_hi, P3 = (T_0 + T_h)·b_lo,
/// the top half is P1 + P2 and the bottom half P1 + P3 (over GF(2), − = +).
/// Three half-size products instead of four; adding two `T` blocks costs
/// only `2h − 1` word XORs because they are Toeplitz.
pub(crate) fn middle_product(
    k: Kernels,
    levels: u32,
    padded_ar: &[u64],
    b: &[u64],
    out: &mut [u64],
    scratch: &mut [u64],
) {
    let n = b.len();
    debug_assert_eq!(padded_ar.len(), SEED_PAD + 2 * n - 1);
    debug_assert_eq!(out.len(), n + 1);
    if levels == 0 {
        (k.base)(padded_ar, b, out);
        return;
    }
    assert!(n.is_multiple_of(2), "Karatsuba level on an odd block");
    let h = n / 2;
    // The sum's own SEED_PAD words are left as they are: only discarded
    // outputs read them.
    let (seed_sum, rest) = scratch.split_at_mut(SEED_PAD + 2 * h - 1);
    let (key_sum, rest) = rest.split_at_mut(h);
    let (shared, rest) = rest.split_at_mut(h + 1);
    let (b_lo, b_hi) = b.split_at(h);
    // T_o with its SEED_PAD words in front: ar[o − SEED_PAD .. o + 2h − 1].
    let t = |o: usize| &padded_ar[o..o + SEED_PAD + 2 * h - 1];
    let unpadded = |o: usize| &padded_ar[SEED_PAD + o..SEED_PAD + o + 2 * h - 1];

    // P2 → top half.
    (k.xor_to)(&mut seed_sum[SEED_PAD..], unpadded(2 * h), unpadded(h));
    middle_product(k, levels - 1, seed_sum, b_hi, &mut out[..=h], rest);
    // P3 → bottom half; out[h] belongs to both halves.
    let overlap = out[h];
    (k.xor_to)(&mut seed_sum[SEED_PAD..], unpadded(0), unpadded(h));
    middle_product(k, levels - 1, seed_sum, b_lo, &mut out[h..], rest);
    out[h] ^= overlap;
    // P1 → both halves.
    (k.xor_to)(key_sum, b_lo, b_hi);
    middle_product(k, levels - 1, t(h), key_sum, shared, rest);
    (k.xor_into)(&mut out[..=h], shared);
    (k.xor_into)(&mut out[h..], shared);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_words(rng: &mut ChaCha8Rng, n: usize) -> Vec<u64> {
        (0..n).map(|_| rng.next_u64()).collect()
    }

    /// `ar` behind SEED_PAD random words: the result must not depend on them.
    fn padded(rng: &mut ChaCha8Rng, ar: &[u64]) -> Vec<u64> {
        let mut v = random_words(rng, SEED_PAD);
        v.extend_from_slice(ar);
        v
    }

    /// The block product by definition, one 64 × 64 product per entry.
    fn middle_product_reference(ar: &[u64], b: &[u64]) -> Vec<u64> {
        let h = b.len();
        let mut out = vec![0u64; h + 1];
        for u in 0..h {
            let r = (0..h).fold(0u128, |acc, j| {
                acc ^ super::super::clmul::clmul_portable(ar[h - 1 - u + j], b[j])
            });
            out[u] ^= r as u64;
            out[u + 1] ^= (r >> 64) as u64;
        }
        out
    }

    #[test]
    fn karatsuba_blocks_match_definition_on_every_backend() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for backend in ClmulBackend::available() {
            let kernel = kernels(backend);
            // Sizes that hit the base case directly, odd splits, and several
            // Karatsuba levels with small thresholds.
            for (n, levels) in [
                (1, 0),
                (7, 0),
                (9, 0),
                (16, 2),
                (24, 3),
                (40, 3),
                (96, 5),
                (128, 4),
                (192, 2),
            ] {
                let ar = random_words(&mut rng, 2 * n - 1);
                let b = random_words(&mut rng, n);
                let mut out = vec![0u64; n + 1];
                let mut scratch = vec![0u64; recursion_scratch(n, levels)];
                middle_product(
                    kernel,
                    levels,
                    &padded(&mut rng, &ar),
                    &b,
                    &mut out,
                    &mut scratch,
                );
                assert_eq!(
                    out,
                    middle_product_reference(&ar, &b),
                    "{backend:?} n={n} levels={levels}"
                );
            }
        }
    }

    #[test]
    fn every_base_case_size_matches_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        for backend in ClmulBackend::available() {
            let kernel = kernels(backend);
            for h in 1..=64 {
                let ar = random_words(&mut rng, 2 * h - 1);
                let b = random_words(&mut rng, h);
                let mut out = vec![0u64; h + 1];
                (kernel.base)(&padded(&mut rng, &ar), &b, &mut out);
                assert_eq!(out, middle_product_reference(&ar, &b), "{backend:?} h={h}");
            }
        }
    }

    #[test]
    fn bit_windows_read_zero_outside_the_seed() {
        let bits = [u64::MAX, 0b1011];
        assert_eq!(bit_window(&bits, 68, 0), u64::MAX);
        assert_eq!(bit_window(&bits, 68, -4), u64::MAX << 4);
        assert_eq!(bit_window(&bits, 68, 62), 0b10_1111);
        assert_eq!(bit_window(&bits, 66, 62), 0b11_11);
        assert_eq!(bit_window(&bits, 68, 200), 0);
        assert_eq!(bit_window(&bits, 68, 4), (u64::MAX >> 4) | (0b1011 << 60));
    }
}
