//! Public per-pass randomness: the permutation of each shuffled pass and the
//! mask of each pass of halves, both drawn from the shared shuffle seed.
//!
//! The seed is public (both parties hold it, an eavesdropper may too); the
//! shuffles only decorrelate error positions between passes, so their cost
//! matters more than their pedigree. Randomness is ChaCha8 keyed with the
//! seed, one stream per pass (stream = pass index + 1), so passes are
//! independent and any pass can be built without drawing the others.
//!
//! Keys of 4096 bits or more are permuted word-wise ([`RowShuffle`]), which
//! needs tables of n/64 entries instead of n and gathers 64 bits per output
//! word; shorter keys get an exact Fisher–Yates shuffle. Key bits pass
//! through [`Shuffle::gather`] into caller-owned secret buffers only.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::secret::SecretWords;

/// Keys at least this long use [`RowShuffle`]: 64 rows of 64 bits, so the 64
/// column shifts can all differ.
pub(crate) const ROW_SHUFFLE_MIN_BITS: usize = 64 * 64;

fn pass_rng(seed: &[u8; 32], pass: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::from_seed(*seed);
    rng.set_stream(pass as u64 + 1);
    rng
}

/// Uniform integer below `s` (> 0), Lemire's multiply-shift with rejection
/// ("Fast random integer generation in an interval", ACM TOMACS 29 (2019)).
#[inline]
fn below(rng: &mut ChaCha8Rng, s: u32) -> u32 {
    let mut m = u64::from(rng.next_u32()) * u64::from(s);
    if (m as u32) < s {
        let threshold = s.wrapping_neg() % s;
        while (m as u32) < threshold {
            m = u64::from(rng.next_u32()) * u64::from(s);
        }
    }
    (m >> 32) as u32
}

/// A uniformly random permutation of `0..n` (Fisher–Yates).
fn fisher_yates(rng: &mut ChaCha8Rng, n: usize) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = below(rng, i as u32 + 1) as usize;
        v.swap(i, j);
    }
    v
}

fn inverse(p: &[u32]) -> Vec<u32> {
    let mut inv = vec![0u32; p.len()];
    for (i, &x) in p.iter().enumerate() {
        inv[x as usize] = i as u32;
    }
    inv
}

/// The permutation of one shuffled pass: which key index sits at each
/// position of the pass layout, and back.
pub(crate) enum Shuffle {
    /// Exact Fisher–Yates for short keys: `sigma[pos]` = key index,
    /// `pi[x]` = position.
    Table {
        sigma: Vec<u32>,
        pi: Vec<u32>,
    },
    Rows(Box<RowShuffle>),
}

impl Shuffle {
    /// The permutation of pass `pass` over `n` bits.
    pub fn new(seed: &[u8; 32], pass: usize, n: usize) -> Self {
        let mut rng = pass_rng(seed, pass);
        if n >= ROW_SHUFFLE_MIN_BITS {
            Self::Rows(Box::new(RowShuffle::new(&mut rng, n)))
        } else {
            let sigma = fisher_yates(&mut rng, n);
            let pi = inverse(&sigma);
            Self::Table { sigma, pi }
        }
    }

    /// The key index at layout position `pos`.
    #[inline]
    pub fn key_index(&self, pos: usize) -> usize {
        match self {
            Self::Table { sigma, .. } => sigma[pos] as usize,
            Self::Rows(r) => r.key_index(pos),
        }
    }

    /// The layout position of key index `x`.
    #[inline]
    pub fn position(&self, x: usize) -> usize {
        match self {
            Self::Table { pi, .. } => pi[x] as usize,
            Self::Rows(r) => r.position(x),
        }
    }

    /// Writes `key` in layout order into `out` (same length).
    pub fn gather(&self, key: &SecretWords, out: &mut SecretWords) {
        match self {
            Self::Table { sigma, .. } => {
                let key = key.expose();
                for (word, chunk) in out.expose_mut().iter_mut().zip(sigma.chunks(64)) {
                    let mut acc = 0u64;
                    for (b, &x) in chunk.iter().enumerate() {
                        acc |= ((key[x as usize / 64] >> (x % 64)) & 1) << b;
                    }
                    *word = acc;
                }
            }
            Self::Rows(r) => r.gather(key, out),
        }
    }
}

/// A permutation of `n ≥ 4096` bit positions built from word operations.
///
/// Write a key index as row w = x / 64, column b = x % 64 over the R = ⌊n/64⌋
/// full rows. Key bit (w, b) moves
/// 1. to row w1 = ρ1(w), column b1 = b + r1(w1) mod 64 (random row
///    permutation and per-row rotation);
/// 2. to row w2 = w1 − s(b1) mod R (a distinct random shift per column, so
///    the 64 bits of a row land in 64 different rows and each row collects
///    bits from 64 different rows);
/// 3. to row w3 = ρ2(w2), column b3 = b1 + r2(w3) mod 64 (another random row
///    permutation and rotation, which break the regularity of step 2);
///
/// and the n mod 64 bits of the last, partial row swap places with as many
/// random positions of the full rows. Two bits of one block of an earlier
/// pass (same or nearby rows) thus end up in unrelated rows. Every map is a
/// table of R entries or fewer, so both directions cost O(1) and the gather
/// reads 64 words per output word.
pub(crate) struct RowShuffle {
    rows: usize,
    rho1_inv: Vec<u32>,
    rho1: Vec<u32>,
    rot1: Vec<u8>,
    shift: [u32; 64],
    rho2: Vec<u32>,
    rho2_inv: Vec<u32>,
    rot2: Vec<u8>,
    /// For tail bit i (key index 64R + i): the full-row position it swaps
    /// with.
    tail_slot: Vec<u32>,
    /// The same slots sorted, with their tail bit.
    slot_tail: Vec<(u32, u8)>,
}

impl RowShuffle {
    fn new(rng: &mut ChaCha8Rng, n: usize) -> Self {
        let rows = n / 64;
        debug_assert!(rows >= 64);
        let rho1 = fisher_yates(rng, rows);
        let rot1 = (0..rows).map(|_| (rng.next_u32() & 63) as u8).collect();
        // 64 distinct shifts: the first 64 entries of a random permutation.
        let shifts = fisher_yates(rng, rows);
        let shift = std::array::from_fn(|b| shifts[b]);
        let rho2 = fisher_yates(rng, rows);
        let rot2 = (0..rows).map(|_| (rng.next_u32() & 63) as u8).collect();
        let full = (rows * 64) as u32;
        let mut tail_slot: Vec<u32> = Vec::with_capacity(n % 64);
        while tail_slot.len() < n % 64 {
            let slot = below(rng, full);
            if !tail_slot.contains(&slot) {
                tail_slot.push(slot);
            }
        }
        let mut slot_tail: Vec<(u32, u8)> = tail_slot
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, i as u8))
            .collect();
        slot_tail.sort_unstable();
        Self {
            rows,
            rho1_inv: inverse(&rho1),
            rho1,
            rot1,
            shift,
            rho2_inv: inverse(&rho2),
            rho2,
            rot2,
            tail_slot,
            slot_tail,
        }
    }

    /// Steps 1–3 forward: key position → layout position, full rows only.
    #[inline]
    fn forward(&self, x: usize) -> usize {
        let (w, b) = (x / 64, x % 64);
        let w1 = self.rho1[w] as usize;
        let b1 = (b + self.rot1[w1] as usize) % 64;
        let w2 = (w1 + self.rows - self.shift[b1] as usize) % self.rows;
        let w3 = self.rho2[w2] as usize;
        w3 * 64 + (b1 + self.rot2[w3] as usize) % 64
    }

    /// Steps 3–1 backward: layout position → key position, full rows only.
    #[inline]
    fn backward(&self, pos: usize) -> usize {
        let (w3, b3) = (pos / 64, pos % 64);
        let b1 = (b3 + 64 - self.rot2[w3] as usize) % 64;
        let w2 = self.rho2_inv[w3] as usize;
        let w1 = (w2 + self.shift[b1] as usize) % self.rows;
        let w = self.rho1_inv[w1] as usize;
        w * 64 + (b1 + 64 - self.rot1[w1] as usize) % 64
    }

    fn tail_at_slot(&self, slot: usize) -> Option<usize> {
        self.slot_tail
            .binary_search_by_key(&(slot as u32), |&(s, _)| s)
            .ok()
            .map(|i| self.slot_tail[i].1 as usize)
    }

    fn key_index(&self, pos: usize) -> usize {
        let full = self.rows * 64;
        if pos >= full {
            return self.backward(self.tail_slot[pos - full] as usize);
        }
        match self.tail_at_slot(pos) {
            Some(i) => full + i,
            None => self.backward(pos),
        }
    }

    fn position(&self, x: usize) -> usize {
        let full = self.rows * 64;
        if x >= full {
            return self.tail_slot[x - full] as usize;
        }
        let pos = self.forward(x);
        match self.tail_at_slot(pos) {
            Some(i) => full + i,
            None => pos,
        }
    }

    fn gather(&self, key: &SecretWords, out: &mut SecretWords) {
        let rows = self.rows;
        // Step 1 as whole words, stored twice over so that step 2 needs no
        // wrap-around: row w1 (and w1 + R) = key row ρ1⁻¹(w1) rotated by r1(w1).
        let mut moved = SecretWords::zeroed(2 * rows * 64);
        {
            let (src, dst) = (key.expose(), moved.expose_mut());
            for w1 in 0..rows {
                let word = src[self.rho1_inv[w1] as usize].rotate_left(u32::from(self.rot1[w1]));
                dst[w1] = word;
                dst[w1 + rows] = word;
            }
        }
        // Step 2 column by column: row w2 takes column b1 from row w2 + s(b1)
        // (sequential, vectorisable sweeps over R words).
        let mut skewed = SecretWords::zeroed(rows * 64);
        {
            let (src, acc) = (moved.expose(), skewed.expose_mut());
            for (b1, &s) in self.shift.iter().enumerate() {
                let bit = 1u64 << b1;
                let s = s as usize;
                for (a, &w) in acc.iter_mut().zip(&src[s..s + rows]) {
                    *a |= w & bit;
                }
            }
        }
        // Step 3 as whole words.
        let (src, dst) = (skewed.expose(), out.expose_mut());
        for (w2, &word) in src.iter().enumerate() {
            let w3 = self.rho2[w2] as usize;
            dst[w3] = word.rotate_left(u32::from(self.rot2[w3]));
        }
        // The partial last row: tail bit i trades places with its slot.
        if let Some(&last) = key.expose().get(rows) {
            dst[rows] = last;
            for (i, &slot) in self.tail_slot.iter().enumerate() {
                let (t, s) = (rows * 64 + i, slot as usize);
                let (tb, sb) = ((dst[t / 64] >> (t % 64)) & 1, (dst[s / 64] >> (s % 64)) & 1);
                if tb != sb {
                    dst[t / 64] ^= 1 << (t % 64);
                    dst[s / 64] ^= 1 << (s % 64);
                }
            }
        }
    }
}

/// The members of the two halves of pass `pass`: `[S, complement of S]`,
/// each as `n` packed bits (bits past `n` are zero).
pub(crate) fn halves(seed: &[u8; 32], pass: usize, n: usize) -> [Vec<u64>; 2] {
    let mut rng = pass_rng(seed, pass);
    let words = n.div_ceil(64);
    let mut set: Vec<u64> = (0..words).map(|_| rng.next_u64()).collect();
    let mut rest: Vec<u64> = set.iter().map(|w| !w).collect();
    if !n.is_multiple_of(64) {
        let tail = (1u64 << (n % 64)) - 1;
        set[words - 1] &= tail;
        rest[words - 1] &= tail;
    }
    [set, rest]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_key(n: usize, seed: u64) -> SecretWords {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut k = SecretWords::zeroed(n);
        for w in k.expose_mut() {
            *w = rng.next_u64();
        }
        if !n.is_multiple_of(64) {
            let last = k.expose().len() - 1;
            k.expose_mut()[last] &= (1u64 << (n % 64)) - 1;
        }
        k
    }

    #[test]
    fn shuffles_are_bijections_consistent_with_their_gather() {
        for n in [1, 2, 63, 64, 100, 4095, 4096, 4097, 4160, 10_000, 70_001] {
            let s = Shuffle::new(&[9u8; 32], 1, n);
            let mut seen = vec![false; n];
            for pos in 0..n {
                let x = s.key_index(pos);
                assert!(x < n && !seen[x], "n={n}: not a bijection at {pos}");
                seen[x] = true;
                assert_eq!(s.position(x), pos, "n={n}: inverse differs at {pos}");
            }
            let key = random_key(n, n as u64);
            let mut out = SecretWords::zeroed(n);
            s.gather(&key, &mut out);
            for pos in 0..n {
                assert_eq!(out.get(pos), key.get(s.key_index(pos)), "n={n} pos={pos}");
            }
            // Bits past n stay zero.
            if n % 64 != 0 {
                assert_eq!(out.expose()[n / 64] >> (n % 64), 0);
            }
        }
    }

    #[test]
    fn shuffles_differ_per_pass_and_seed() {
        let n = 10_000;
        let a: Vec<usize> = (0..n)
            .map(|p| Shuffle::new(&[9u8; 32], 1, n).key_index(p))
            .collect();
        let b: Vec<usize> = (0..n)
            .map(|p| Shuffle::new(&[9u8; 32], 2, n).key_index(p))
            .collect();
        let c: Vec<usize> = (0..n)
            .map(|p| Shuffle::new(&[8u8; 32], 1, n).key_index(p))
            .collect();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    /// What Cascade needs from a shuffle: bits that shared a block of the
    /// previous pass are spread over distinct blocks. For 64-bit blocks of
    /// the identity pass and 256-bit blocks after the shuffle, no two bits of
    /// one input block may share an output block more often than a uniform
    /// permutation would allow (expected ≈ 64·63/2 · 256/n per input block).
    #[test]
    fn row_shuffle_spreads_the_bits_of_a_block() {
        let n = 1 << 16;
        let s = Shuffle::new(&[4u8; 32], 1, n);
        let mut pairs = 0usize;
        for block in 0..n / 64 {
            let mut out_blocks: Vec<usize> =
                (0..64).map(|i| s.position(block * 64 + i) / 256).collect();
            out_blocks.sort_unstable();
            pairs += out_blocks.windows(2).filter(|w| w[0] == w[1]).count();
        }
        // Uniform: 64 − E[distinct blocks] = 64 − 256·(1 − (255/256)^64)
        // ≈ 7.4 per input block, ≈ 7600 in all; the row construction puts a
        // row's 64 bits in 64 distinct rows, so it does at least as well.
        assert!(
            pairs < 9000,
            "{pairs} pairs of one block share a block after shuffling"
        );
    }

    #[test]
    fn halves_partition_the_key() {
        let [s, c] = halves(&[1u8; 32], 5, 1000);
        let members: u32 = s.iter().map(|w| w.count_ones()).sum();
        let others: u32 = c.iter().map(|w| w.count_ones()).sum();
        assert_eq!(members + others, 1000);
        assert!((400..600).contains(&members), "{members}");
        assert!(s.iter().zip(&c).all(|(a, b)| a & b == 0));
    }
}
