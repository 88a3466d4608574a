//! Bisection trees over packed bit strings, and what is known about them.
//!
//! A top-level block is the root of a binary tree: node 1 is the whole block,
//! node `i` has children `2i` (left, the first ⌈len/2⌉ positions) and `2i+1`
//! (the rest). A node is therefore named by (block, heap id) on both sides
//! without sending positions, and a range parity is a masked XOR-fold over
//! the words of the pass layout followed by one popcount.
//!
//! This module computes over key words it is handed but never stores,
//! formats or logs them; the [`NodeTable`] holds only parities the responder
//! has disclosed (public once sent).

use std::collections::HashMap;

/// Bits `lo..hi` of a word-aligned bit string, as (first word, last word,
/// mask of the first, mask of the last). `lo < hi` required.
#[inline]
fn span(lo: usize, hi: usize) -> (usize, usize, u64, u64) {
    let (wl, wh) = (lo / 64, (hi - 1) / 64);
    let first = u64::MAX << (lo % 64);
    let last = u64::MAX >> (63 - (hi - 1) % 64);
    (wl, wh, first, last)
}

/// Parity of bits `lo..hi` of `words`.
#[inline]
pub(crate) fn range_parity(words: &[u64], lo: usize, hi: usize) -> bool {
    if lo >= hi {
        return false;
    }
    let (wl, wh, first, last) = span(lo, hi);
    if wl == wh {
        return (words[wl] & first & last).count_ones() & 1 == 1;
    }
    let mut acc = (words[wl] & first) ^ (words[wh] & last);
    for w in &words[wl + 1..wh] {
        acc ^= w;
    }
    acc.count_ones() & 1 == 1
}

/// Parity of bits `lo..hi` of `words & filter`.
#[inline]
pub(crate) fn masked_range_parity(words: &[u64], filter: &[u64], lo: usize, hi: usize) -> bool {
    if lo >= hi {
        return false;
    }
    let (wl, wh, first, last) = span(lo, hi);
    if wl == wh {
        return (words[wl] & filter[wl] & first & last).count_ones() & 1 == 1;
    }
    let mut acc = (words[wl] & filter[wl] & first) ^ (words[wh] & filter[wh] & last);
    for (w, f) in words[wl + 1..wh].iter().zip(&filter[wl + 1..wh]) {
        acc ^= w & f;
    }
    acc.count_ones() & 1 == 1
}

/// Number of set bits of `filter` in `lo..hi`.
#[inline]
pub(crate) fn range_count(filter: &[u64], lo: usize, hi: usize) -> usize {
    if lo >= hi {
        return 0;
    }
    let (wl, wh, first, last) = span(lo, hi);
    if wl == wh {
        return (filter[wl] & first & last).count_ones() as usize;
    }
    let mut c = (filter[wl] & first).count_ones() + (filter[wh] & last).count_ones();
    for f in &filter[wl + 1..wh] {
        c += f.count_ones();
    }
    c as usize
}

/// Position of the first set bit of `filter` in `lo..hi`, if any.
pub(crate) fn first_member(filter: &[u64], lo: usize, hi: usize) -> Option<usize> {
    if lo >= hi {
        return None;
    }
    let (wl, wh, first, last) = span(lo, hi);
    for (w, &word) in filter.iter().enumerate().take(wh + 1).skip(wl) {
        let mut m = word;
        if w == wl {
            m &= first;
        }
        if w == wh {
            m &= last;
        }
        if m != 0 {
            return Some(w * 64 + m.trailing_zeros() as usize);
        }
    }
    None
}

/// Where a block is split: the left child takes the first ⌈len/2⌉ positions.
#[inline]
pub(crate) fn split(lo: usize, hi: usize) -> usize {
    lo + (hi - lo).div_ceil(2)
}

/// Depth of heap id `id` (root = 1 has depth 0).
#[inline]
pub(crate) fn node_depth(id: u32) -> u32 {
    31 - id.leading_zeros()
}

/// The positions `lo..hi` of node `id` in the tree over `root`, or `None`
/// when `id` is 0 or descends below a leaf (a node of length < 2).
pub(crate) fn node_interval(root: (usize, usize), id: u32) -> Option<(usize, usize)> {
    if id == 0 {
        return None;
    }
    let (mut lo, mut hi) = root;
    if lo >= hi {
        return None;
    }
    let len = hi - lo;
    let depth = node_depth(id);
    if len.is_power_of_two() && (len >> depth) > 0 {
        // Halving a power of two is exact: node (depth d, rank r) spans
        // len/2^d positions starting at r·len/2^d.
        let part = len >> depth;
        let start = lo + (id as usize - (1usize << depth)) * part;
        return Some((start, start + part));
    }
    for level in (0..node_depth(id)).rev() {
        if hi - lo < 2 {
            return None;
        }
        let mid = split(lo, hi);
        if (id >> level) & 1 == 0 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some((lo, hi))
}

/// Parities the responder has disclosed (or that follow from disclosed ones),
/// plus the requests in flight, per node of one pass. Dense bitsets for
/// passes with many small blocks (every bisection touches them), a hash map
/// for passes of halves (a handful of nodes in trees of depth log2 n).
pub(crate) struct NodeTable {
    shift: u32,
    repr: Repr,
}

enum Repr {
    /// Two bits per node in `state` (known, value), one in `asked`.
    Dense {
        state: Vec<u64>,
        asked: Vec<u64>,
    },
    Sparse(HashMap<u64, u8>),
}

const KNOWN: u8 = 1;
const VALUE: u8 = 2;
const ASKED: u8 = 4;

impl NodeTable {
    /// A table for `blocks` trees of depth `depth`.
    pub fn new(blocks: usize, depth: u32, dense: bool) -> Self {
        let shift = depth + 1;
        let repr = if dense {
            let nodes = blocks << shift;
            Repr::Dense {
                state: vec![0; nodes.div_ceil(32)],
                asked: vec![0; nodes.div_ceil(64)],
            }
        } else {
            Repr::Sparse(HashMap::new())
        };
        Self { shift, repr }
    }

    #[inline(always)]
    fn index(&self, block: usize, id: u32) -> usize {
        (block << self.shift) | id as usize
    }

    /// The disclosed parity of a node, if known.
    #[inline(always)]
    pub fn get(&self, block: usize, id: u32) -> Option<bool> {
        let i = self.index(block, id);
        let f = match &self.repr {
            Repr::Dense { state, .. } => (state[i / 32] >> (2 * (i % 32))) as u8,
            Repr::Sparse(m) => *m.get(&(i as u64)).unwrap_or(&0),
        };
        (f & KNOWN != 0).then_some(f & VALUE != 0)
    }

    /// Records a node's parity.
    #[inline(always)]
    pub fn set(&mut self, block: usize, id: u32, parity: bool) {
        let i = self.index(block, id);
        let f = KNOWN | if parity { VALUE } else { 0 };
        match &mut self.repr {
            Repr::Dense { state, .. } => {
                let sh = 2 * (i % 32);
                let w = &mut state[i / 32];
                *w = (*w & !(3 << sh)) | (u64::from(f) << sh);
            }
            Repr::Sparse(m) => {
                let e = m.entry(i as u64).or_insert(0);
                *e = (*e & ASKED) | f;
            }
        }
    }

    /// Whether the node's parity has been requested and not yet answered.
    #[inline(always)]
    pub fn asked(&self, block: usize, id: u32) -> bool {
        let i = self.index(block, id);
        match &self.repr {
            Repr::Dense { asked, .. } => bit(asked, i),
            Repr::Sparse(m) => m.get(&(i as u64)).is_some_and(|f| f & ASKED != 0),
        }
    }

    #[inline(always)]
    pub fn set_asked(&mut self, block: usize, id: u32, on: bool) {
        let i = self.index(block, id);
        match &mut self.repr {
            Repr::Dense { asked, .. } => set_bit(asked, i, on),
            Repr::Sparse(m) => {
                let f = m.entry(i as u64).or_insert(0);
                if on { *f |= ASKED } else { *f &= !ASKED }
            }
        }
    }
}

#[inline]
fn bit(v: &[u64], i: usize) -> bool {
    (v[i / 64] >> (i % 64)) & 1 == 1
}

#[inline]
fn set_bit(v: &mut [u64], i: usize, on: bool) {
    let m = 1u64 << (i % 64);
    if on { v[i / 64] |= m } else { v[i / 64] &= !m }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_parity(words: &[u64], filter: Option<&[u64]>, lo: usize, hi: usize) -> bool {
        (lo..hi).fold(false, |acc, i| {
            let b = bit(words, i) && filter.is_none_or(|f| bit(f, i));
            acc ^ b
        })
    }

    #[test]
    fn range_helpers_match_bit_by_bit() {
        let words: Vec<u64> = (0..5u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF)
            .collect();
        let filter: Vec<u64> = (0..5u64)
            .map(|i| (i + 7).wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
            .collect();
        for lo in 0..320 {
            for hi in lo..=320 {
                assert_eq!(
                    range_parity(&words, lo, hi),
                    naive_parity(&words, None, lo, hi)
                );
                assert_eq!(
                    masked_range_parity(&words, &filter, lo, hi),
                    naive_parity(&words, Some(&filter), lo, hi)
                );
                let count = (lo..hi).filter(|&i| bit(&filter, i)).count();
                assert_eq!(range_count(&filter, lo, hi), count);
                assert_eq!(
                    first_member(&filter, lo, hi),
                    (lo..hi).find(|&i| bit(&filter, i))
                );
            }
        }
    }

    #[test]
    fn node_intervals_bisect_and_stop_at_leaves() {
        let root = (100, 105); // length 5: left 3, right 2
        assert_eq!(node_interval(root, 1), Some((100, 105)));
        assert_eq!(node_interval(root, 2), Some((100, 103)));
        assert_eq!(node_interval(root, 3), Some((103, 105)));
        assert_eq!(node_interval(root, 4), Some((100, 102)));
        assert_eq!(node_interval(root, 5), Some((102, 103)));
        assert_eq!(node_interval(root, 10), None); // child of a leaf
        assert_eq!(node_interval(root, 0), None);
        assert_eq!(node_interval((3, 3), 1), None);
        assert_eq!(node_depth(1), 0);
        assert_eq!(node_depth(5), 2);
    }

    #[test]
    fn node_interval_fast_path_equals_the_descent() {
        fn descend(root: (usize, usize), id: u32) -> Option<(usize, usize)> {
            let (mut lo, mut hi) = root;
            for level in (0..node_depth(id)).rev() {
                if hi - lo < 2 {
                    return None;
                }
                let mid = split(lo, hi);
                if (id >> level) & 1 == 0 {
                    hi = mid
                } else {
                    lo = mid
                }
            }
            Some((lo, hi))
        }
        for len in 1..=70usize {
            for id in 1..512u32 {
                let root = (1000, 1000 + len);
                assert_eq!(
                    node_interval(root, id),
                    descend(root, id),
                    "len={len} id={id}"
                );
            }
        }
    }

    #[test]
    fn tables_remember_parities_and_requests() {
        for dense in [true, false] {
            let mut t = NodeTable::new(3, 4, dense);
            assert_eq!(t.get(2, 7), None);
            t.set_asked(2, 7, true);
            assert!(t.asked(2, 7) && !t.asked(1, 7));
            t.set(2, 7, true);
            t.set(0, 1, false);
            assert_eq!(t.get(2, 7), Some(true));
            assert_eq!(t.get(0, 1), Some(false));
            t.set_asked(2, 7, false);
            assert!(!t.asked(2, 7));
            assert_eq!(t.get(2, 7), Some(true));
        }
    }
}
