//! The pulse frame: what travels on the simulated fibre.
//!
//! A frame covers a contiguous range of time slots and lists only the slots
//! whose pulse, after the fibre's loss, still holds at least one photon; a
//! slot not listed is vacuum at the fibre's output. Each record is the
//! quantum state on the fibre: photon number, polarisation basis and bit.
//! The class (intensity) is not on the fibre — decoy-state security rests on
//! it being invisible to the channel. This module owns the in-memory frame,
//! its invariants and its byte encoding; it draws no randomness.
//!
//! Because the record names the state outright, an eavesdropper process fed
//! with frames must restrict itself to what a measurement could learn (see
//! [`super::InterceptResend`]); the frame is a simulation device, not a real
//! channel.
//!
//! Byte format (all integers little-endian, see [`crate::qkd::wire`]):
//!
//! | field          | type   | meaning                                           |
//! |----------------|--------|---------------------------------------------------|
//! | `version`      | u8     | [`FRAME_VERSION`]                                 |
//! | `first_slot`   | u64    | absolute index of the first slot covered          |
//! | `slot_count`   | u32    | slots covered, 1..=[`MAX_FRAME_SLOTS`]            |
//! | `record_count` | u32    | records, ≤ min(`slot_count`, [`MAX_FRAME_RECORDS`]) |
//! | records        |        | `record_count` × (varint gap, u8 state)           |
//!
//! A record's gap is its slot offset for the first record and
//! (offset − previous offset − 1) after it, as a minimal LEB128 varint
//! ([`super::slots`]), so offsets are strictly increasing and below
//! `slot_count`. The state byte is `photons << 2 | basis << 1 | bit` with
//! photons in 1..=63 and basis 0 = Z, 1 = X. Typical size: two bytes per
//! non-vacuum pulse. Any other byte string is rejected without panicking.

use crate::qkd::wire::{WireError, WireReader, WireWriter};

use super::params::Basis;
use super::slots::{get_slot_gaps, put_varint};

pub const FRAME_VERSION: u8 = 1;
/// Slots one frame may cover (≈ 1 s at 1 GHz).
pub const MAX_FRAME_SLOTS: u32 = 1 << 30;
/// Records one frame may carry (bounds a decoder's allocation to ≈ 20 MiB).
pub const MAX_FRAME_RECORDS: u32 = 1 << 22;
/// Photon numbers fit in the six high bits of the state byte.
pub const MAX_PHOTONS: u8 = 63;

/// One non-vacuum pulse at the fibre's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PulseRecord {
    /// Slot offset from the frame's `first_slot`.
    pub offset: u32,
    /// Photons in the pulse, 1..=63.
    pub photons: u8,
    pub basis: Basis,
    pub bit: bool,
}

impl PulseRecord {
    #[inline]
    pub(crate) fn state_byte(photons: u8, basis: Basis, bit: bool) -> u8 {
        (photons << 2) | ((basis as u8) << 1) | bit as u8
    }

    #[inline]
    fn from_parts(offset: u32, state: u8) -> Self {
        PulseRecord {
            offset,
            photons: state >> 2,
            basis: Basis::from_bit(state & 2 != 0),
            bit: state & 1 != 0,
        }
    }
}

/// Non-vacuum pulses of the slot range `[first_slot, first_slot + slot_count)`.
#[derive(Clone, PartialEq, Eq)]
pub struct PulseFrame {
    first_slot: u64,
    slot_count: u32,
    offsets: Vec<u32>,
    states: Vec<u8>,
}

/// Why a frame could not be built or decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("pulse frame: {0}")]
    Wire(#[from] WireError),
    #[error("pulse frame version {0} is not supported (expected {FRAME_VERSION})")]
    Version(u8),
    #[error("pulse frame covers {0} slots; allowed 1..={MAX_FRAME_SLOTS}")]
    SlotCount(u32),
    #[error("pulse frame slot range overflows u64")]
    SlotRange,
    #[error("pulse frame record {index} is invalid: {reason}")]
    Record { index: usize, reason: &'static str },
}

impl PulseFrame {
    /// An empty frame (every slot vacuum) over the given range.
    pub fn empty(first_slot: u64, slot_count: u32) -> Result<Self, FrameError> {
        if slot_count == 0 || slot_count > MAX_FRAME_SLOTS {
            return Err(FrameError::SlotCount(slot_count));
        }
        first_slot
            .checked_add(slot_count as u64)
            .ok_or(FrameError::SlotRange)?;
        Ok(Self {
            first_slot,
            slot_count,
            offsets: Vec::new(),
            states: Vec::new(),
        })
    }

    /// A frame from records, checked against every invariant of the format.
    pub fn from_records(
        first_slot: u64,
        slot_count: u32,
        records: &[PulseRecord],
    ) -> Result<Self, FrameError> {
        let mut f = Self::empty(first_slot, slot_count)?;
        for (i, r) in records.iter().enumerate() {
            let bad = |reason| FrameError::Record { index: i, reason };
            if r.offset >= slot_count {
                return Err(bad("offset beyond the frame"));
            }
            if f.offsets.last().is_some_and(|&p| p >= r.offset) {
                return Err(bad("offsets not strictly increasing"));
            }
            if r.photons == 0 || r.photons > MAX_PHOTONS {
                return Err(bad("photon number outside 1..=63"));
            }
            if f.offsets.len() >= MAX_FRAME_RECORDS as usize {
                return Err(bad("too many records"));
            }
            f.push_unchecked(r.offset, PulseRecord::state_byte(r.photons, r.basis, r.bit));
        }
        Ok(f)
    }

    /// For the source, which produces records in order by construction.
    #[inline]
    pub(crate) fn push_unchecked(&mut self, offset: u32, state: u8) {
        debug_assert!(offset < self.slot_count);
        debug_assert!(state >> 2 != 0);
        self.offsets.push(offset);
        self.states.push(state);
    }

    pub(crate) fn reserve(&mut self, n: usize) {
        self.offsets.reserve(n);
        self.states.reserve(n);
    }

    pub fn first_slot(&self) -> u64 {
        self.first_slot
    }

    pub fn slot_count(&self) -> u32 {
        self.slot_count
    }

    /// One past the last slot covered.
    pub fn end_slot(&self) -> u64 {
        self.first_slot + self.slot_count as u64
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    pub fn record(&self, i: usize) -> PulseRecord {
        PulseRecord::from_parts(self.offsets[i], self.states[i])
    }

    pub fn records(&self) -> impl ExactSizeIterator<Item = PulseRecord> + '_ {
        self.offsets
            .iter()
            .zip(&self.states)
            .map(|(&o, &s)| PulseRecord::from_parts(o, s))
    }

    /// Replaces the polarisation of record `i`, keeping its photon number:
    /// what an intercept–resend attacker does.
    pub fn repolarise(&mut self, i: usize, basis: Basis, bit: bool) {
        let photons = self.states[i] >> 2;
        self.states[i] = PulseRecord::state_byte(photons, basis, bit);
    }

    pub(crate) fn raw(&self) -> (&[u32], &[u8]) {
        (&self.offsets, &self.states)
    }

    /// The canonical byte encoding described in the module documentation.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::with_capacity(17 + 2 * self.len());
        w.u8(FRAME_VERSION)
            .u64(self.first_slot)
            .u32(self.slot_count)
            .u32(self.len() as u32);
        // Gap and state interleave per record, as documented.
        let mut prev: Option<u32> = None;
        for (&o, &s) in self.offsets.iter().zip(&self.states) {
            let gap = match prev {
                None => o as u64,
                Some(p) => (o - p - 1) as u64,
            };
            put_varint(&mut w, gap);
            w.u8(s);
            prev = Some(o);
        }
        w.finish()
    }

    /// Decodes and validates a frame from untrusted bytes.
    pub fn decode(buf: &[u8]) -> Result<Self, FrameError> {
        let mut r = WireReader::new(buf);
        let version = r.u8("frame version")?;
        if version != FRAME_VERSION {
            return Err(FrameError::Version(version));
        }
        let first_slot = r.u64("frame first_slot")?;
        let slot_count = r.u32("frame slot_count")?;
        let mut f = Self::empty(first_slot, slot_count)?;
        let count = r.u32("frame record_count")?;
        if count > MAX_FRAME_RECORDS || count > slot_count {
            return Err(WireError::TooLong {
                what: "frame record_count",
                len: count as u64,
                max: MAX_FRAME_RECORDS.min(slot_count) as u64,
            }
            .into());
        }
        // Two bytes at least per record: refuse a count the input cannot hold
        // before reserving memory for it.
        if count as usize * 2 > r.remaining() {
            return Err(WireError::Truncated("frame records").into());
        }
        f.reserve(count as usize);
        let mut next_min = 0u64;
        for index in 0..count as usize {
            let got = get_slot_gaps(&mut r, "frame record gap", next_min, slot_count as u64, 1)?;
            let offset = got[0];
            let state = r.u8("frame record state")?;
            if state >> 2 == 0 {
                return Err(FrameError::Record {
                    index,
                    reason: "photon number 0 (vacuum slots are not listed)",
                });
            }
            f.push_unchecked(offset as u32, state);
            next_min = offset + 1;
        }
        r.finish()?;
        Ok(f)
    }
}

impl std::fmt::Debug for PulseFrame {
    // The states are Alice's bits in flight: print only the shape.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PulseFrame {{ first_slot: {}, slot_count: {}, records: {} }}",
            self.first_slot,
            self.slot_count,
            self.len()
        )
    }
}

impl Drop for PulseFrame {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.states);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_frame() -> impl Strategy<Value = PulseFrame> {
        (
            0u64..1 << 50,
            1u32..5_000,
            prop::collection::vec(
                (any::<u16>(), 1u8..=63, any::<bool>(), any::<bool>()),
                0..300,
            ),
        )
            .prop_map(|(first, count, raw)| {
                let mut offs: Vec<u32> = raw.iter().map(|r| r.0 as u32 % count).collect();
                offs.sort_unstable();
                offs.dedup();
                let recs: Vec<PulseRecord> = offs
                    .iter()
                    .zip(&raw)
                    .map(|(&offset, r)| PulseRecord {
                        offset,
                        photons: r.1,
                        basis: Basis::from_bit(r.2),
                        bit: r.3,
                    })
                    .collect();
                PulseFrame::from_records(first, count, &recs).unwrap()
            })
    }

    proptest! {
        #[test]
        fn encode_decode_roundtrip(f in arb_frame()) {
            let bytes = f.encode();
            let back = PulseFrame::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &f);
            // Canonical: re-encoding gives the same bytes.
            prop_assert_eq!(back.encode(), bytes);
        }

        #[test]
        fn hostile_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(f) = PulseFrame::decode(&bytes) {
                // Whatever decodes is valid and re-encodes to the same bytes.
                prop_assert_eq!(f.encode(), bytes);
            }
        }

        #[test]
        fn mutated_frames_never_panic(f in arb_frame(), pos in any::<usize>(), val in any::<u8>()) {
            let mut bytes = f.encode();
            let i = pos % bytes.len();
            bytes[i] = val;
            if let Ok(g) = PulseFrame::decode(&bytes) {
                prop_assert_eq!(g.encode(), bytes);
            }
        }
    }

    #[test]
    fn specific_rejections() {
        let f = PulseFrame::from_records(
            10,
            100,
            &[PulseRecord {
                offset: 5,
                photons: 1,
                basis: Basis::Z,
                bit: true,
            }],
        )
        .unwrap();
        let good = f.encode();
        assert_eq!(good.len(), 1 + 8 + 4 + 4 + 2);
        let mut bad = good.clone();
        bad[0] = 2;
        assert_eq!(PulseFrame::decode(&bad), Err(FrameError::Version(2)));
        let mut bad = good.clone();
        *bad.last_mut().unwrap() = 0b0000_0011; // zero photons
        assert!(matches!(
            PulseFrame::decode(&bad),
            Err(FrameError::Record { .. })
        ));
        let mut bad = good.clone();
        bad[17] = 100; // offset beyond slot_count
        assert!(PulseFrame::decode(&bad).is_err());
        let mut bad = good.clone();
        bad.push(0);
        assert!(matches!(
            PulseFrame::decode(&bad),
            Err(FrameError::Wire(WireError::Trailing(1)))
        ));
        // A huge record count with no data behind it is refused up front.
        let mut bad = good[..13].to_vec();
        bad.extend_from_slice(&100u32.to_le_bytes());
        assert!(PulseFrame::decode(&bad).is_err());
        // Slot range overflowing u64.
        assert_eq!(PulseFrame::empty(u64::MAX, 2), Err(FrameError::SlotRange));
        assert!(
            PulseFrame::from_records(
                0,
                10,
                &[
                    PulseRecord {
                        offset: 3,
                        photons: 1,
                        basis: Basis::Z,
                        bit: false
                    },
                    PulseRecord {
                        offset: 3,
                        photons: 1,
                        basis: Basis::Z,
                        bit: false
                    },
                ]
            )
            .is_err()
        );
    }
}
