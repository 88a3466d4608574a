//! Canonical, compact encoding of strictly increasing slot indices.
//!
//! Pulse frames and sifting announcements both carry sorted lists of time
//! slots. They are written as LEB128 varints of the gaps: the first slot
//! relative to a base the message already fixes, then each later slot as
//! (gap − 1), so that every byte string decodes to exactly one list and no
//! list has two encodings (minimal varints only). This module owns only that
//! encoding; it knows nothing about what the slots mean.

use crate::qkd::wire::{WireError, WireReader, WireWriter};

/// Appends `v` as a minimal LEB128 varint.
pub fn put_varint(w: &mut WireWriter, mut v: u64) {
    while v >= 0x80 {
        w.u8((v as u8) | 0x80);
        v >>= 7;
    }
    w.u8(v as u8);
}

/// Reads a minimal LEB128 varint of at most 10 bytes.
pub fn get_varint(r: &mut WireReader<'_>, what: &'static str) -> Result<u64, WireError> {
    let mut v = 0u64;
    for i in 0..10 {
        let b = r.u8(what)?;
        let bits = (b & 0x7F) as u64;
        if i == 9 && b > 1 {
            return Err(WireError::Invalid(what)); // overflows 64 bits
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            // A trailing zero byte would be a second encoding of the same value.
            if b == 0 && i > 0 {
                return Err(WireError::Invalid(what));
            }
            return Ok(v);
        }
    }
    Err(WireError::Invalid(what))
}

/// Writes `slots` (strictly increasing, all ≥ `base`) as gaps. The count is
/// not written; the caller frames it.
pub fn put_slot_gaps(w: &mut WireWriter, base: u64, slots: impl IntoIterator<Item = u64>) {
    let mut prev: Option<u64> = None;
    for s in slots {
        let v = match prev {
            None => s - base,
            Some(p) => s - p - 1,
        };
        put_varint(w, v);
        prev = Some(s);
    }
}

/// Reads `count` slots written by [`put_slot_gaps`], each below `end`
/// (exclusive). Allocates no more than the input can hold.
pub fn get_slot_gaps(
    r: &mut WireReader<'_>,
    what: &'static str,
    base: u64,
    end: u64,
    count: usize,
) -> Result<Vec<u64>, WireError> {
    // Each slot takes at least one byte, so a count beyond the remaining
    // bytes is truncated input: refuse before allocating for it.
    if count > r.remaining() {
        return Err(WireError::Truncated(what));
    }
    let mut out = Vec::with_capacity(count);
    let mut next_min = base;
    for _ in 0..count {
        let gap = get_varint(r, what)?;
        let s = next_min.checked_add(gap).ok_or(WireError::Invalid(what))?;
        if s >= end {
            return Err(WireError::Invalid(what));
        }
        out.push(s);
        next_min = s + 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn non_minimal_varints_are_rejected() {
        // 0 written in two bytes.
        let buf = [0x80u8, 0x00];
        assert!(get_varint(&mut WireReader::new(&buf), "v").is_err());
        // 2^64 does not fit.
        let buf = [0xFFu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02];
        assert!(get_varint(&mut WireReader::new(&buf), "v").is_err());
        let buf = [0xFFu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
        assert_eq!(
            get_varint(&mut WireReader::new(&buf), "v").unwrap(),
            u64::MAX
        );
    }

    proptest! {
        #[test]
        fn varint_roundtrip(v in any::<u64>()) {
            let mut w = WireWriter::new();
            put_varint(&mut w, v);
            let buf = w.finish();
            let mut r = WireReader::new(&buf);
            prop_assert_eq!(get_varint(&mut r, "v").unwrap(), v);
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn slot_gaps_roundtrip(base in 0u64..1 << 40, gaps in prop::collection::vec(0u64..1 << 20, 0..200)) {
            let mut slots = Vec::new();
            let mut next = base;
            for g in gaps {
                next += g;
                slots.push(next);
                next += 1;
            }
            let mut w = WireWriter::new();
            put_slot_gaps(&mut w, base, slots.iter().copied());
            let buf = w.finish();
            let mut r = WireReader::new(&buf);
            let back = get_slot_gaps(&mut r, "s", base, u64::MAX, slots.len()).unwrap();
            prop_assert_eq!(back, slots);
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn slot_gaps_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), count in 0usize..100) {
            let mut r = WireReader::new(&bytes);
            if let Ok(s) = get_slot_gaps(&mut r, "s", 5, 1_000, count) {
                prop_assert!(s.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(s.iter().all(|&x| (5..1_000).contains(&x)));
            }
        }
    }
}
