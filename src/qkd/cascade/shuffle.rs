//! Public per-pass randomness: the permutation of each shuffled pass and the
//! mask of each pass of halves, both drawn from the shared shuffle seed.
//!
//! The seed is public (both parties hold it, an eavesdropper may too); the
//! shuffles only decorrelate the error positions between passes, so a fast
//! stream cipher is plenty: ChaCha8 keyed with the seed, one stream per pass
//! (stream = pass index + 1), so passes are independent and any pass can be
//! built without drawing the others. Key bits pass through [`gather`] into a
//! caller-owned secret buffer and are not kept here.

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

fn pass_rng(seed: &[u8; 32], pass: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::from_seed(*seed);
    rng.set_stream(pass as u64 + 1);
    rng
}

/// Uniform integer below `s` (> 0), Lemire's multiply-shift with rejection
/// ("Fast random integer generation in an interval", ACM TOMACS 29 (2019)),
/// so the shuffle is exactly uniform.
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

/// The permutation of shuffled pass `pass` over `n` positions, as the
/// key index found at each position of the pass layout (Fisher–Yates).
pub(crate) fn permutation(seed: &[u8; 32], pass: usize, n: usize) -> Vec<u32> {
    debug_assert!(n <= u32::MAX as usize);
    let mut rng = pass_rng(seed, pass);
    let mut sigma: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = below(&mut rng, i as u32 + 1) as usize;
        sigma.swap(i, j);
    }
    sigma
}

/// Inverse of a permutation: the layout position of each key index.
pub(crate) fn inverse(sigma: &[u32]) -> Vec<u32> {
    let mut pi = vec![0u32; sigma.len()];
    for (pos, &x) in sigma.iter().enumerate() {
        pi[x as usize] = pos as u32;
    }
    pi
}

/// The members of the two halves of pass `pass`: `[S, complement of S]`,
/// each as `n` packed bits (bits past `n` are zero).
pub(crate) fn halves(seed: &[u8; 32], pass: usize, n: usize) -> [Vec<u64>; 2] {
    let mut rng = pass_rng(seed, pass);
    let words = n.div_ceil(64);
    let mut set: Vec<u64> = (0..words).map(|_| rng.next_u64()).collect();
    let mut rest: Vec<u64> = set.iter().map(|w| !w).collect();
    if n % 64 != 0 {
        let tail = (1u64 << (n % 64)) - 1;
        set[words - 1] &= tail;
        rest[words - 1] &= tail;
    }
    [set, rest]
}

/// Writes `key` in the order of `sigma` into `out` (`out[pos] = key[sigma[pos]]`).
pub(crate) fn gather(key: &[u64], sigma: &[u32], out: &mut [u64]) {
    for (word, chunk) in out.iter_mut().zip(sigma.chunks(64)) {
        let mut acc = 0u64;
        for (b, &x) in chunk.iter().enumerate() {
            acc |= ((key[x as usize / 64] >> (x % 64)) & 1) << b;
        }
        *word = acc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_deterministic_bijections_and_differ_per_pass() {
        let seed = [9u8; 32];
        let a = permutation(&seed, 1, 1000);
        assert_eq!(a, permutation(&seed, 1, 1000));
        assert_ne!(a, permutation(&seed, 2, 1000));
        assert_ne!(a, permutation(&[8u8; 32], 1, 1000));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert!(sorted.iter().enumerate().all(|(i, &x)| i as u32 == x));
        let pi = inverse(&a);
        assert!((0..1000).all(|x| a[pi[x] as usize] as usize == x));
        // Not the identity, and positions move far: a shuffle, not a rotation.
        let fixed = a
            .iter()
            .enumerate()
            .filter(|&(i, &x)| i as u32 == x)
            .count();
        assert!(fixed < 10, "{fixed} fixed points");
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

    #[test]
    fn gather_follows_the_permutation() {
        let key: Vec<u64> = vec![0xF0F0_0000_FFFF_1234, 0b1011];
        let n = 68;
        let sigma = permutation(&[3u8; 32], 1, n);
        let mut out = vec![0u64; 2];
        gather(&key, &sigma, &mut out);
        for (pos, &x) in sigma.iter().enumerate() {
            let want = (key[x as usize / 64] >> (x % 64)) & 1;
            assert_eq!((out[pos / 64] >> (pos % 64)) & 1, want);
        }
    }
}
