//! Sets of byte ranges within one key block: which bytes are consumed.
//!
//! A [`RangeSet`] is a sorted list of disjoint, non-adjacent half-open
//! intervals `[start, end)` over `u32` offsets. It holds positions only,
//! never key bytes, so it may be logged, persisted in the clear header and
//! sent to the peer. Canonical form (sorted, merged) matters: two pools agree
//! exactly when their sets are equal, and the agreement digest hashes them.

/// Sorted, disjoint, merged half-open byte ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u32, u32)>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set from ranges that must already be canonical (sorted,
    /// non-empty, disjoint and non-adjacent): the form every encoder writes.
    /// Returns `None` otherwise, so a decoder can reject a non-canonical input.
    pub fn from_canonical(ranges: Vec<(u32, u32)>) -> Option<Self> {
        let mut prev_end: Option<u32> = None;
        for &(s, e) in &ranges {
            if s >= e || prev_end.is_some_and(|p| s <= p) {
                return None;
            }
            prev_end = Some(e);
        }
        Some(Self { ranges })
    }

    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.ranges
    }

    /// Number of disjoint intervals (fragmentation).
    pub fn interval_count(&self) -> usize {
        self.ranges.len()
    }

    /// Total bytes covered.
    pub fn covered(&self) -> u64 {
        self.ranges.iter().map(|&(s, e)| u64::from(e - s)).sum()
    }

    /// Whether `[start, end)` shares at least one byte with the set.
    pub fn intersects(&self, start: u32, end: u32) -> bool {
        if start >= end {
            return false;
        }
        // First interval whose end is past `start`.
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        self.ranges.get(i).is_some_and(|&(s, _)| s < end)
    }

    /// Whether every byte of `[start, end)` is in the set.
    pub fn contains_range(&self, start: u32, end: u32) -> bool {
        if start >= end {
            return true;
        }
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        self.ranges
            .get(i)
            .is_some_and(|&(s, e)| s <= start && end <= e)
    }

    /// Adds `[start, end)`, merging with overlapping or adjacent intervals.
    pub fn insert(&mut self, start: u32, end: u32) {
        if start >= end {
            return;
        }
        // Intervals that touch [start, end) (overlap or adjacency) are
        // the contiguous run lo..hi.
        let lo = self.ranges.partition_point(|&(_, e)| e < start);
        let hi = self.ranges.partition_point(|&(s, _)| s <= end);
        if lo == hi {
            self.ranges.insert(lo, (start, end));
            return;
        }
        let s = start.min(self.ranges[lo].0);
        let e = end.max(self.ranges[hi - 1].1);
        self.ranges.drain(lo + 1..hi);
        self.ranges[lo] = (s, e);
    }

    /// Adds every interval of `other`.
    pub fn union_with(&mut self, other: &RangeSet) {
        for &(s, e) in &other.ranges {
            self.insert(s, e);
        }
    }

    /// The parts of `[start, end)` not in the set, in ascending order.
    pub fn gaps(&self, start: u32, end: u32) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let mut cursor = start;
        let i = self.ranges.partition_point(|&(_, e)| e <= start);
        for &(s, e) in &self.ranges[i..] {
            if s >= end {
                break;
            }
            if s > cursor {
                out.push((cursor, s));
            }
            cursor = cursor.max(e);
        }
        if cursor < end {
            out.push((cursor, end));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn insert_merges_overlapping_and_adjacent() {
        let mut r = RangeSet::new();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(20, 25); // adjacent to the first
        assert_eq!(r.ranges(), &[(10, 25), (30, 40)]);
        r.insert(5, 35); // swallows both
        assert_eq!(r.ranges(), &[(5, 40)]);
        r.insert(50, 50); // empty: ignored
        assert_eq!(r.covered(), 35);
        assert!(r.intersects(39, 41) && !r.intersects(40, 45));
        assert!(r.contains_range(5, 40) && !r.contains_range(4, 6));
        assert_eq!(r.gaps(0, 60), vec![(0, 5), (40, 60)]);
    }

    #[test]
    fn from_canonical_rejects_unsorted_overlapping_adjacent_or_empty() {
        assert!(RangeSet::from_canonical(vec![(0, 2), (3, 4)]).is_some());
        assert!(RangeSet::from_canonical(vec![(0, 2), (2, 4)]).is_none());
        assert!(RangeSet::from_canonical(vec![(3, 4), (0, 2)]).is_none());
        assert!(RangeSet::from_canonical(vec![(1, 1)]).is_none());
        assert!(RangeSet::from_canonical(vec![(0, 5), (2, 3)]).is_none());
    }

    proptest! {
        /// The set behaves like a bitmap of the inserted bytes.
        #[test]
        fn matches_a_bitmap(ops in proptest::collection::vec((0u32..200, 0u32..40), 0..40),
                            q in (0u32..240, 0u32..40)) {
            let mut set = RangeSet::new();
            let mut bits = [false; 300];
            for (s, l) in ops {
                set.insert(s, s + l);
                for b in &mut bits[s as usize..(s + l) as usize] { *b = true; }
            }
            prop_assert!(RangeSet::from_canonical(set.ranges().to_vec()).is_some());
            prop_assert_eq!(set.covered(), bits.iter().filter(|b| **b).count() as u64);
            let (qs, qe) = (q.0, q.0 + q.1);
            let slice = &bits[qs as usize..qe as usize];
            prop_assert_eq!(set.intersects(qs, qe), slice.iter().any(|b| *b));
            prop_assert_eq!(set.contains_range(qs, qe), slice.iter().all(|b| *b));
            let gap_bytes: u32 = set.gaps(qs, qe).iter().map(|(s, e)| e - s).sum();
            prop_assert_eq!(gap_bytes as usize, slice.iter().filter(|b| !**b).count());
        }
    }
}
