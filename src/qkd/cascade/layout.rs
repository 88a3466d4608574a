//! One pass as a party sees it: its block plan, the key laid out in the
//! pass's order, and (for passes of halves) the member masks.
//!
//! A shuffled pass keeps a permuted copy of the key in a [`SecretWords`], so
//! every block and sub-block is a contiguous range and its parity a masked
//! XOR-fold over words; flipping a key bit costs one bit flip per shuffled
//! pass. Identity passes and passes of halves read the key itself. The
//! permutation and masks are public; the copy is secret and zeroised on drop.

use crate::secret::SecretWords;

use super::params::{PassKind, PassPlan};
use super::shuffle::{self, Shuffle};
use super::tree::{first_member, masked_range_parity, range_count, range_parity};

pub(crate) struct PassLayout {
    pub plan: PassPlan,
    /// Shuffled passes: the permutation and the key in layout order.
    shuffled: Option<(Shuffle, SecretWords)>,
    /// Passes of halves: members of block 0 (S) and block 1 (the rest).
    halves: Option<[Vec<u64>; 2]>,
}

impl PassLayout {
    /// Builds pass `index` of `key`. The key is read only by shuffled passes
    /// (to fill their copy).
    pub fn build(plan: PassPlan, index: usize, seed: &[u8; 32], key: &SecretWords) -> Self {
        let n = key.bits();
        let mut layout = Self {
            plan,
            shuffled: None,
            halves: None,
        };
        match plan.kind {
            PassKind::Identity => {}
            PassKind::Shuffled => {
                let shuffle = Shuffle::new(seed, index, n);
                let mut copy = SecretWords::zeroed(n);
                shuffle.gather(key, &mut copy);
                layout.shuffled = Some((shuffle, copy));
            }
            PassKind::Halves => layout.halves = Some(shuffle::halves(seed, index, n)),
        }
        layout
    }

    /// The key's words in this pass's order.
    #[inline]
    pub fn words<'a>(&'a self, key: &'a SecretWords) -> &'a [u64] {
        match &self.shuffled {
            Some((_, copy)) => copy.expose(),
            None => key.expose(),
        }
    }

    /// Parity of the members of block `block` in layout positions `lo..hi`.
    #[inline]
    pub fn parity(&self, key: &SecretWords, block: usize, lo: usize, hi: usize) -> bool {
        let words = self.words(key);
        match &self.halves {
            Some(h) => masked_range_parity(words, &h[block], lo, hi),
            None => range_parity(words, lo, hi),
        }
    }

    /// Number of members of block `block` in layout positions `lo..hi`.
    #[inline]
    pub fn members(&self, block: usize, lo: usize, hi: usize) -> usize {
        match &self.halves {
            Some(h) => range_count(&h[block], lo, hi),
            None => hi - lo,
        }
    }

    /// The first member of block `block` in `lo..hi`, as a layout position.
    pub fn first_member(&self, block: usize, lo: usize, hi: usize) -> Option<usize> {
        match &self.halves {
            Some(h) => first_member(&h[block], lo, hi),
            None => (lo < hi).then_some(lo),
        }
    }

    /// The key index at layout position `pos`.
    #[inline]
    pub fn key_index(&self, pos: usize) -> usize {
        match &self.shuffled {
            Some((shuffle, _)) => shuffle.key_index(pos),
            None => pos,
        }
    }

    /// Keeps the permuted copy in step with a flip of key bit `x`; returns
    /// the block holding `x` and `x`'s layout position.
    #[inline]
    pub fn follow_flip(&mut self, x: usize) -> (usize, usize) {
        if let Some(h) = &self.halves {
            return (usize::from((h[0][x / 64] >> (x % 64)) & 1 == 0), x);
        }
        let pos = match &mut self.shuffled {
            Some((shuffle, copy)) => {
                let pos = shuffle.position(x);
                copy.flip(pos);
                pos
            }
            None => x,
        };
        (pos / self.plan.block_size, pos)
    }
}
