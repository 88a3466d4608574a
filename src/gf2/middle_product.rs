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
//! Toeplitz matrix `T[i][j] = s[n−1+i−j]`. In GF(2)[z] this is coefficients
//! `n−1 … n+m−2` of `S(z)·X(z)`: the middle of the product, which is why
//! the outer coefficients are never computed.
//!
//! # Word level
//!
//! Let `b_j` be the key words and `r_u` the 128-bit sums
//! `r_u = ⊕_j R[M−1−u+j] ⊗ b_j` (⊗ = carry-less 64 × 64 product), where
//! `R[i]` is the 64-bit window of seed bits starting at
//! `64·(M−2−i) + n − 1` (bits outside the seed read as 0). Expanding the
//! windows shows output word `v` of `y` is `lo(r_{v+1}) ⊕ hi(r_v)`, so the
//! unaligned bit offset `n − 1` costs nothing but the window extraction.
//! The `r_u` are a Toeplitz product with 64-bit entries, split into square
//! `N × N` blocks, each computed by [`middle_product`].
//!
//! # Cost
//!
//! Transposed Karatsuba (Hanrot, Quercia, Zimmermann, "The middle product
//! algorithm I", AAECC 14, 2004, §3) computes an `N × N` Toeplitz product
//! with three of size `N/2`, like Karatsuba multiplication, down to a
//! schoolbook base case of fewer than [`base_max`] words that runs on the
//! carry-less multiply instructions. An `m × n` product costs
//! `⌈n/N⌉·⌈m/N⌉` blocks with `N ≈ min(n, m)/64` words.

use super::clmul::ClmulBackend;

/// Base-case size (words) below which schoolbook beats another Karatsuba
/// level. Tuned with `benches/amplify.rs` on an AMD EPYC (Zen 5); the wider
/// the multiplier, the later Karatsuba pays off.
pub fn base_max(backend: ClmulBackend) -> usize {
    match backend {
        ClmulBackend::Portable => 16,
        ClmulBackend::Pclmulqdq => 32,
        ClmulBackend::Vpclmulqdq => 64,
    }
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
    /// Block size `N`.
    block: usize,
    /// Block rows × columns.
    rows: usize,
    cols: usize,
    backend: ClmulBackend,
}

impl ToeplitzPlan {
    /// Plans `y = T·x` for `n` input and `m` output bits (both ≥ 1).
    pub fn new(n_bits: usize, m_bits: usize, backend: ClmulBackend) -> Self {
        assert!(n_bits >= 1 && m_bits >= 1, "empty Toeplitz product");
        let key_words = n_bits.div_ceil(64);
        let out_words = m_bits.div_ceil(64);
        // One extra row: output word v needs r_v and r_{v+1}.
        let r_rows = out_words + 1;
        let short = r_rows.min(key_words);
        let limit = base_max(backend);
        let block = if short <= limit {
            short
        } else {
            // N = base · 2^k with base ≤ limit, as small as possible above
            // `short`, so that padding wastes less than 2^k words.
            let mut k = 0;
            while short.div_ceil(1 << k) > limit {
                k += 1;
            }
            short.div_ceil(1 << k) << k
        };
        Self {
            n_bits,
            m_bits,
            key_words,
            out_words,
            block,
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
        padded_key + folded + block_out + recursion_scratch(self.block, base_max(self.backend))
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
        // R[i] = seed window at 64·(Mp−2−i) + n − 1 (see the module docs).
        let windows: Vec<u64> = (0..padded_rows + padded_cols - 1)
            .map(|i| {
                let start = 64 * (padded_rows as i64 - 2 - i as i64) + n as i64 - 1;
                bit_window(seed, n + m - 1, start)
            })
            .collect();

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

        let base = base_kernel(self.backend);
        for row in 0..self.rows {
            for col in 0..self.cols {
                let offset = nb * (self.rows - 1 - row + col);
                middle_product(
                    base,
                    base_max(self.backend),
                    &windows[offset..offset + 2 * nb - 1],
                    &padded_key[col * nb..(col + 1) * nb],
                    block_out,
                    rest,
                );
                xor_into(&mut folded[row * nb..row * nb + nb + 1], block_out);
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
fn recursion_scratch(n: usize, base_max: usize) -> usize {
    if n <= base_max || n % 2 == 1 {
        0
    } else {
        let h = n / 2;
        (2 * h - 1) + h + (h + 1) + recursion_scratch(h, base_max)
    }
}

fn xor_into(dst: &mut [u64], src: &[u64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

fn xor_to(dst: &mut [u64], a: &[u64], b: &[u64]) {
    for ((d, x), y) in dst.iter_mut().zip(a).zip(b) {
        *d = x ^ y;
    }
}

/// Schoolbook block: `r_u = ⊕_{j<h} ar[h−1−u+j] ⊗ b[j]` for `u < h`, folded
/// into `out[u] = lo(r_u) ⊕ hi(r_{u−1})` (`h + 1` words, overwritten).
type BaseKernel = fn(&[u64], &[u64], &mut [u64]);

fn base_kernel(backend: ClmulBackend) -> BaseKernel {
    match backend {
        #[cfg(target_arch = "x86_64")]
        ClmulBackend::Pclmulqdq => x86::base_pclmul_checked,
        #[cfg(target_arch = "x86_64")]
        ClmulBackend::Vpclmulqdq => x86::base_vpclmul_checked,
        _ => base_portable,
    }
}

fn base_portable(ar: &[u64], b: &[u64], out: &mut [u64]) {
    let h = b.len();
    let mut carry = 0u64;
    for u in 0..h {
        let window = &ar[h - 1 - u..2 * h - 1 - u];
        let acc = window
            .iter()
            .zip(b)
            .fold(0u128, |acc, (&a, &b)| acc ^ super::clmul::clmul_portable(a, b));
        out[u] = acc as u64 ^ carry;
        carry = (acc >> 64) as u64;
    }
    out[h] = carry;
}

/// The `N × N` Toeplitz product `r_u = ⊕_{j<N} ar[N−1−u+j] ⊗ b[j]`, folded
/// into `out` (`N + 1` words, overwritten). `ar` has `2N − 1` words.
///
/// Splitting N = 2h, the matrix is `[[T_h, T_2h], [T_0, T_h]]` where `T_o`
/// is the h × h Toeplitz block on `ar[o .. o+2h−1]`. With
/// P1 = T_h·(b_lo + b_hi), P2 = (T_2h + T_h)·b_hi, P3 = (T_0 + T_h)·b_lo,
/// the top half is P1 + P2 and the bottom half P1 + P3 (over GF(2), − = +).
/// Three half-size products instead of four; adding two `T` blocks costs
/// only `2h − 1` word XORs because they are Toeplitz.
pub fn middle_product(
    base: BaseKernel,
    base_max: usize,
    ar: &[u64],
    b: &[u64],
    out: &mut [u64],
    scratch: &mut [u64],
) {
    let n = b.len();
    debug_assert_eq!(ar.len(), 2 * n - 1);
    debug_assert_eq!(out.len(), n + 1);
    if n <= base_max || n % 2 == 1 {
        base(ar, b, out);
        return;
    }
    let h = n / 2;
    let (seed_sum, rest) = scratch.split_at_mut(2 * h - 1);
    let (key_sum, rest) = rest.split_at_mut(h);
    let (shared, rest) = rest.split_at_mut(h + 1);
    let (b_lo, b_hi) = b.split_at(h);
    let t = |o: usize| &ar[o..o + 2 * h - 1];

    // P2 → top half.
    xor_to(seed_sum, t(2 * h), t(h));
    middle_product(base, base_max, seed_sum, b_hi, &mut out[..=h], rest);
    // P3 → bottom half; out[h] belongs to both halves.
    let overlap = out[h];
    xor_to(seed_sum, t(0), t(h));
    middle_product(base, base_max, seed_sum, b_lo, &mut out[h..], rest);
    out[h] ^= overlap;
    // P1 → both halves.
    xor_to(key_sum, b_lo, b_hi);
    middle_product(base, base_max, t(h), key_sum, shared, rest);
    xor_into(&mut out[..=h], shared);
    xor_into(&mut out[h..], shared);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    pub fn base_pclmul_checked(ar: &[u64], b: &[u64], out: &mut [u64]) {
        let h = b.len();
        assert!(ar.len() == 2 * h - 1 && out.len() == h + 1);
        // SAFETY: lengths checked above; this kernel is only selected for
        // `ClmulBackend::Pclmulqdq`, which `available()` offers only when the
        // CPU has PCLMULQDQ.
        unsafe { base_pclmul(ar, b, out) }
    }

    pub fn base_vpclmul_checked(ar: &[u64], b: &[u64], out: &mut [u64]) {
        let h = b.len();
        assert!(ar.len() == 2 * h - 1 && out.len() == h + 1);
        // SAFETY: as above, for VPCLMULQDQ + AVX-512F.
        unsafe { base_vpclmul(ar, b, out) }
    }

    #[target_feature(enable = "pclmulqdq")]
    unsafe fn base_pclmul(ar: &[u64], b: &[u64], out: &mut [u64]) {
        let h = b.len();
        let pairs = h / 2;
        let mut carry = 0u64;
        for u in 0..h {
            let w = &ar[h - 1 - u..2 * h - 1 - u];
            let mut even = _mm_setzero_si128();
            let mut odd = _mm_setzero_si128();
            for p in 0..pairs {
                // SAFETY: 2p + 1 < h = w.len() = b.len().
                let (x, y) = unsafe {
                    (
                        _mm_loadu_si128(w.as_ptr().add(2 * p).cast()),
                        _mm_loadu_si128(b.as_ptr().add(2 * p).cast()),
                    )
                };
                even = _mm_xor_si128(even, _mm_clmulepi64_si128(x, y, 0x00));
                odd = _mm_xor_si128(odd, _mm_clmulepi64_si128(x, y, 0x11));
            }
            if h % 2 == 1 {
                let x = _mm_cvtsi64_si128(w[h - 1] as i64);
                let y = _mm_cvtsi64_si128(b[h - 1] as i64);
                even = _mm_xor_si128(even, _mm_clmulepi64_si128(x, y, 0x00));
            }
            // SAFETY: plain 16-byte reinterpretation (little endian).
            let acc: u128 = unsafe { std::mem::transmute(_mm_xor_si128(even, odd)) };
            out[u] = acc as u64 ^ carry;
            carry = (acc >> 64) as u64;
        }
        out[h] = carry;
    }

    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq")]
    unsafe fn base_vpclmul(ar: &[u64], b: &[u64], out: &mut [u64]) {
        let h = b.len();
        let full = h / 8;
        let tail = h % 8;
        let tail_mask: __mmask8 = ((1u16 << tail) - 1) as u8;
        let mut carry = 0u64;
        for u in 0..h {
            let w = &ar[h - 1 - u..2 * h - 1 - u];
            let mut even = _mm512_setzero_si512();
            let mut odd = _mm512_setzero_si512();
            for c in 0..full {
                // SAFETY: 8c + 7 < h = w.len() = b.len().
                let (x, y) = unsafe {
                    (
                        _mm512_loadu_si512(w.as_ptr().add(8 * c).cast()),
                        _mm512_loadu_si512(b.as_ptr().add(8 * c).cast()),
                    )
                };
                even = _mm512_xor_si512(even, _mm512_clmulepi64_epi128(x, y, 0x00));
                odd = _mm512_xor_si512(odd, _mm512_clmulepi64_epi128(x, y, 0x11));
            }
            if tail != 0 {
                // SAFETY: the mask limits the loads to the `tail` words that
                // remain in both slices; masked-off lanes are not accessed.
                let (x, y) = unsafe {
                    (
                        _mm512_maskz_loadu_epi64(tail_mask, w.as_ptr().add(8 * full).cast()),
                        _mm512_maskz_loadu_epi64(tail_mask, b.as_ptr().add(8 * full).cast()),
                    )
                };
                even = _mm512_xor_si512(even, _mm512_clmulepi64_epi128(x, y, 0x00));
                odd = _mm512_xor_si512(odd, _mm512_clmulepi64_epi128(x, y, 0x11));
            }
            let acc = _mm512_xor_si512(even, odd);
            let quarters = _mm_xor_si128(
                _mm_xor_si128(
                    _mm512_extracti32x4_epi32::<0>(acc),
                    _mm512_extracti32x4_epi32::<1>(acc),
                ),
                _mm_xor_si128(
                    _mm512_extracti32x4_epi32::<2>(acc),
                    _mm512_extracti32x4_epi32::<3>(acc),
                ),
            );
            // SAFETY: plain 16-byte reinterpretation (little endian).
            let acc: u128 = unsafe { std::mem::transmute(quarters) };
            out[u] = acc as u64 ^ carry;
            carry = (acc >> 64) as u64;
        }
        out[h] = carry;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_words(rng: &mut ChaCha8Rng, n: usize) -> Vec<u64> {
        (0..n).map(|_| rng.next_u64()).collect()
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
            let kernel = base_kernel(backend);
            // Sizes that hit the base case directly, odd splits, and several
            // Karatsuba levels with small thresholds.
            for (n, limit) in [(1, 4), (7, 4), (9, 16), (16, 4), (24, 2), (40, 5), (96, 3), (128, 8)] {
                let ar = random_words(&mut rng, 2 * n - 1);
                let b = random_words(&mut rng, n);
                let mut out = vec![0u64; n + 1];
                let mut scratch = vec![0u64; recursion_scratch(n, limit)];
                middle_product(kernel, limit, &ar, &b, &mut out, &mut scratch);
                assert_eq!(out, middle_product_reference(&ar, &b), "{backend:?} n={n} limit={limit}");
            }
        }
    }

    #[test]
    fn bit_windows_read_zero_outside_the_seed() {
        let bits = [u64::MAX, 0b1011];
        assert_eq!(bit_window(&bits, 68, 0), u64::MAX);
        assert_eq!(bit_window(&bits, 68, -4), u64::MAX << 4);
        assert_eq!(bit_window(&bits, 68, 62), 0b1011_11);
        assert_eq!(bit_window(&bits, 66, 62), 0b11_11);
        assert_eq!(bit_window(&bits, 68, 200), 0);
        assert_eq!(bit_window(&bits, 68, 4), (u64::MAX >> 4) | (0b1011 << 60));
    }
}
