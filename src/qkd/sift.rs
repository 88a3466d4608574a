//! Sifting: from raw detections to a sifted key and the test statistics.
//!
//! Per frame of the optics, two messages:
//!
//! 1. [`DetectionReport`] (Bob → Alice): the slots where Bob's detectors
//!    clicked, his basis for each, and his bits where he measured X. X-basis
//!    outcomes never become key, so revealing them costs nothing; it lets
//!    Alice count test errors herself.
//! 2. [`SiftReply`] (Alice → Bob): Alice's basis and intensity class for
//!    each reported slot, and her bits where both measured X.
//!
//! Then both hold the same public statistics ([`SiftStats`]): Z–Z
//! coincidences become the key (in slot order, all classes, as in Lim et al.
//! 2014 step 4), X–X coincidences are test bits whose errors per class feed
//! the phase-error estimate. The key is returned as [`SecretWords`]; nothing
//! here logs or prints a bit.
//!
//! Encodings are canonical (see [`crate::qkd::wire`]) and bounded by
//! [`MAX_SIFT_SLOTS`]; decoding untrusted bytes never panics.

use std::ops::AddAssign;

use thiserror::Error;

use crate::qkd::optics::slots::{get_slot_gaps, put_slot_gaps};
use crate::qkd::optics::{AlicePulses, Basis, Detections, Intensity};
use crate::qkd::wire::{WireError, WireReader, WireWriter};
use crate::secret::SecretWords;

/// Detections one report may carry: a frame of 2^30 slots at the highest
/// click rates of the simulator, and far above any real frame.
pub const MAX_SIFT_SLOTS: usize = 1 << 24;

const TAG_REPORT: u8 = 0x51;
const TAG_REPLY: u8 = 0x52;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SiftError {
    #[error("sifting message: {0}")]
    Wire(#[from] WireError),
    #[error("sifting message tag {found:#04x}, expected {expected:#04x}")]
    Tag { found: u8, expected: u8 },
    #[error("{what}: {found} entries, expected {expected}")]
    Length {
        what: &'static str,
        found: u64,
        expected: u64,
    },
    #[error("the reply covers slots from {found}, but the detections start at {expected}")]
    Frame { found: u64, expected: u64 },
    #[error("Alice's pulses are not the slots of this report; resolve them from the report")]
    Mismatch,
}

/// Bob → Alice: what clicked, in which basis.
#[derive(Clone, PartialEq, Eq)]
pub struct DetectionReport {
    first_slot: u64,
    end_slot: u64,
    slots: Vec<u64>,
    /// Bit i set: Bob measured slot i in X.
    x_basis: Vec<u64>,
    /// Bob's bits at his X-basis slots, in order.
    x_bits: Vec<u64>,
    x_count: u64,
}

/// Alice → Bob: her basis and class for each reported slot.
#[derive(Clone, PartialEq, Eq)]
pub struct SiftReply {
    first_slot: u64,
    count: u64,
    /// Bit i set: Alice prepared slot i in X.
    x_basis: Vec<u64>,
    /// Two bits per slot: the intensity class index (0..=2).
    classes: Vec<u64>,
    /// Alice's bits where both bases are X, in order.
    x_bits: Vec<u64>,
    x_count: u64,
}

/// Public counts per intensity class, identical on both sides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SiftStats {
    /// Every reported detection (any bases).
    pub detections: [u64; 3],
    /// Z–Z coincidences: key bits.
    pub key: [u64; 3],
    /// X–X coincidences: test bits.
    pub test: [u64; 3],
    /// Disagreeing test bits.
    pub test_errors: [u64; 3],
}

impl AddAssign for SiftStats {
    fn add_assign(&mut self, o: Self) {
        for k in 0..3 {
            self.detections[k] += o.detections[k];
            self.key[k] += o.key[k];
            self.test[k] += o.test[k];
            self.test_errors[k] += o.test_errors[k];
        }
    }
}

impl SiftStats {
    /// The block's counts for [`crate::qkd::estimate::finite_key_length`],
    /// once reconciliation has counted the key errors and the leak.
    pub fn block_counts(
        &self,
        key_errors: u64,
        leaked_bits: u64,
    ) -> crate::qkd::estimate::BlockCounts {
        crate::qkd::estimate::BlockCounts {
            key_detections: self.key,
            test_detections: self.test,
            test_errors: self.test_errors,
            key_errors,
            leaked_bits,
        }
    }
}

/// One side's sifted key with the class of each bit and the statistics.
pub struct SiftedKey {
    pub key: SecretWords,
    /// Intensity class of each key bit (public: Alice announced it).
    pub key_classes: Vec<Intensity>,
    pub stats: SiftStats,
}

impl std::fmt::Debug for SiftedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiftedKey")
            .field("key", &self.key)
            .field("stats", &self.stats)
            .finish()
    }
}

fn get_bit(words: &[u64], i: usize) -> bool {
    (words[i / 64] >> (i % 64)) & 1 == 1
}

/// Packs bits into words, LSB first (the layout of [`WireWriter::bits`]).
#[derive(Default)]
struct BitPacker {
    words: Vec<u64>,
    len: u64,
}

impl BitPacker {
    fn push(&mut self, b: bool) {
        if self.len.is_multiple_of(64) {
            self.words.push(0);
        }
        if b {
            *self.words.last_mut().expect("pushed above") |= 1 << (self.len % 64);
        }
        self.len += 1;
    }
}

impl Drop for BitPacker {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.words);
    }
}

/// Bob's report for one frame's detections.
pub fn report(det: &Detections) -> DetectionReport {
    let mut bases = BitPacker::default();
    let mut x_bits = BitPacker::default();
    for i in 0..det.len() {
        let x = det.basis(i).is_x();
        bases.push(x);
        if x {
            x_bits.push(det.bit(i));
        }
    }
    DetectionReport {
        first_slot: det.first_slot(),
        end_slot: det.end_slot(),
        slots: det.slots().to_vec(),
        x_basis: std::mem::take(&mut bases.words),
        x_count: x_bits.len,
        x_bits: std::mem::take(&mut x_bits.words),
    }
}

impl DetectionReport {
    /// The reported slots: what Alice resolves her choices for.
    pub fn slots(&self) -> &[u64] {
        &self.slots
    }

    pub fn first_slot(&self) -> u64 {
        self.first_slot
    }

    pub fn end_slot(&self) -> u64 {
        self.end_slot
    }

    fn bob_basis(&self, i: usize) -> Basis {
        Basis::from_bit(get_bit(&self.x_basis, i))
    }

    pub fn encode(&self) -> Vec<u8> {
        let n = self.slots.len() as u64;
        let mut w = WireWriter::with_capacity(40 + self.slots.len() * 2);
        w.u8(TAG_REPORT)
            .u64(self.first_slot)
            .u64(self.end_slot)
            .u32(n as u32);
        put_slot_gaps(&mut w, self.first_slot, self.slots.iter().copied());
        w.bits(n, &self.x_basis);
        w.bits(self.x_count, &self.x_bits);
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, SiftError> {
        let mut r = WireReader::new(buf);
        expect_tag(&mut r, TAG_REPORT)?;
        let first_slot = r.u64("report first_slot")?;
        let end_slot = r.u64("report end_slot")?;
        if end_slot < first_slot {
            return Err(WireError::Invalid("report slot range").into());
        }
        let n = r.u32("report count")? as usize;
        if n > MAX_SIFT_SLOTS {
            return Err(WireError::TooLong {
                what: "report count",
                len: n as u64,
                max: MAX_SIFT_SLOTS as u64,
            }
            .into());
        }
        let slots = get_slot_gaps(&mut r, "report slots", first_slot, end_slot, n)?;
        let (nb, x_basis) = r.bits("report bases", MAX_SIFT_SLOTS as u64)?;
        check_len("report bases", nb, n as u64)?;
        let xs = x_basis.iter().map(|w| w.count_ones() as u64).sum::<u64>();
        let (x_count, x_bits) = r.bits("report x bits", MAX_SIFT_SLOTS as u64)?;
        check_len("report x bits", x_count, xs)?;
        r.finish()?;
        Ok(Self {
            first_slot,
            end_slot,
            slots,
            x_basis,
            x_bits,
            x_count,
        })
    }
}

impl std::fmt::Debug for DetectionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DetectionReport {{ slots: {}..{}, detections: {} }}",
            self.first_slot,
            self.end_slot,
            self.slots.len()
        )
    }
}

impl SiftReply {
    /// The first slot of the frame this reply answers.
    pub fn first_slot(&self) -> u64 {
        self.first_slot
    }

    fn alice_basis(&self, i: usize) -> Basis {
        Basis::from_bit(get_bit(&self.x_basis, i))
    }

    fn class(&self, i: usize) -> usize {
        ((self.classes[i / 32] >> (2 * (i % 32))) & 3) as usize
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::with_capacity(40 + self.count as usize / 2);
        w.u8(TAG_REPLY).u64(self.first_slot).u32(self.count as u32);
        w.bits(self.count, &self.x_basis);
        w.bits(2 * self.count, &self.classes);
        w.bits(self.x_count, &self.x_bits);
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, SiftError> {
        let mut r = WireReader::new(buf);
        expect_tag(&mut r, TAG_REPLY)?;
        let first_slot = r.u64("reply first_slot")?;
        let count = r.u32("reply count")? as u64;
        if count > MAX_SIFT_SLOTS as u64 {
            return Err(WireError::TooLong {
                what: "reply count",
                len: count,
                max: MAX_SIFT_SLOTS as u64,
            }
            .into());
        }
        let (nb, x_basis) = r.bits("reply bases", MAX_SIFT_SLOTS as u64)?;
        check_len("reply bases", nb, count)?;
        let (nc, classes) = r.bits("reply classes", 2 * MAX_SIFT_SLOTS as u64)?;
        check_len("reply classes", nc, 2 * count)?;
        // Class 3 does not exist: a pair of set bits is invalid.
        if classes
            .iter()
            .any(|w| w & (w >> 1) & 0x5555_5555_5555_5555 != 0)
        {
            return Err(WireError::Invalid("reply class").into());
        }
        let (x_count, x_bits) = r.bits("reply x bits", MAX_SIFT_SLOTS as u64)?;
        r.finish()?;
        Ok(Self {
            first_slot,
            count,
            x_basis,
            classes,
            x_bits,
            x_count,
        })
    }
}

impl std::fmt::Debug for SiftReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SiftReply {{ first_slot: {}, slots: {} }}",
            self.first_slot, self.count
        )
    }
}

impl Drop for SiftReply {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.x_bits);
    }
}

impl Drop for DetectionReport {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.x_bits);
    }
}

fn expect_tag(r: &mut WireReader<'_>, expected: u8) -> Result<(), SiftError> {
    let found = r.u8("tag")?;
    if found == expected {
        Ok(())
    } else {
        Err(SiftError::Tag { found, expected })
    }
}

fn check_len(what: &'static str, found: u64, expected: u64) -> Result<(), SiftError> {
    if found == expected {
        Ok(())
    } else {
        Err(SiftError::Length {
            what,
            found,
            expected,
        })
    }
}

/// Collects key bits straight into locked memory.
fn key_from(bits: impl Iterator<Item = bool>, n: usize) -> SecretWords {
    let mut key = SecretWords::zeroed(n);
    let words = key.expose_mut();
    for (i, b) in bits.enumerate() {
        words[i / 64] |= (b as u64) << (i % 64);
    }
    key
}

/// Alice's side: answers Bob's report and keeps her sifted key. `alice`
/// must be [`crate::qkd::optics::Source::resolve`]d for `report.slots()`.
pub fn alice_sift(
    report: &DetectionReport,
    alice: &AlicePulses,
) -> Result<(SiftReply, SiftedKey), SiftError> {
    if alice.slots() != report.slots() {
        return Err(SiftError::Mismatch);
    }
    let n = report.slots.len();
    let mut bases = BitPacker::default();
    let mut classes = vec![0u64; (2 * n).div_ceil(64)];
    let mut x_bits = BitPacker::default();
    let mut stats = SiftStats::default();
    let mut key_classes = Vec::new();
    let mut bob_x = 0usize;
    for i in 0..n {
        let (a, b, k) = (alice.basis(i), report.bob_basis(i), alice.class(i));
        bases.push(a.is_x());
        classes[i / 32] |= (k as u64) << (2 * (i % 32));
        stats.detections[k.index()] += 1;
        match (a, b) {
            (Basis::Z, Basis::Z) => {
                stats.key[k.index()] += 1;
                key_classes.push(k);
            }
            (Basis::X, Basis::X) => {
                let bob_bit = get_bit(&report.x_bits, bob_x);
                x_bits.push(alice.bit(i));
                stats.test[k.index()] += 1;
                stats.test_errors[k.index()] += (bob_bit != alice.bit(i)) as u64;
            }
            _ => {}
        }
        if b.is_x() {
            bob_x += 1;
        }
    }
    let key_bits =
        (0..n).filter(|&i| alice.basis(i) == Basis::Z && report.bob_basis(i) == Basis::Z);
    let key = key_from(key_bits.map(|i| alice.bit(i)), key_classes.len());
    let reply = SiftReply {
        first_slot: report.first_slot,
        count: n as u64,
        x_basis: std::mem::take(&mut bases.words),
        classes,
        x_count: x_bits.len,
        x_bits: std::mem::take(&mut x_bits.words),
    };
    Ok((
        reply,
        SiftedKey {
            key,
            key_classes,
            stats,
        },
    ))
}

/// Bob's side: reads Alice's reply to the report of `det` and keeps his
/// sifted key.
pub fn bob_sift(det: &Detections, reply: &SiftReply) -> Result<SiftedKey, SiftError> {
    if reply.first_slot != det.first_slot() {
        return Err(SiftError::Frame {
            found: reply.first_slot,
            expected: det.first_slot(),
        });
    }
    let n = det.len();
    check_len("reply slots", reply.count, n as u64)?;
    let xx = (0..n)
        .filter(|&i| reply.alice_basis(i).is_x() && det.basis(i).is_x())
        .count();
    check_len("reply x bits", reply.x_count, xx as u64)?;
    let mut stats = SiftStats::default();
    let mut key_classes = Vec::new();
    let mut alice_x = 0usize;
    for i in 0..n {
        let k = reply.class(i);
        stats.detections[k] += 1;
        match (reply.alice_basis(i), det.basis(i)) {
            (Basis::Z, Basis::Z) => {
                stats.key[k] += 1;
                key_classes.push(Intensity::from_index(k as u8).expect("validated on decode"));
            }
            (Basis::X, Basis::X) => {
                stats.test[k] += 1;
                stats.test_errors[k] += (get_bit(&reply.x_bits, alice_x) != det.bit(i)) as u64;
                alice_x += 1;
            }
            _ => {}
        }
    }
    let key_bits = (0..n).filter(|&i| reply.alice_basis(i) == Basis::Z && det.basis(i) == Basis::Z);
    let key = key_from(key_bits.map(|i| det.bit(i)), key_classes.len());
    Ok(SiftedKey {
        key,
        key_classes,
        stats,
    })
}

impl SiftedKey {
    /// Joins the sifted keys of consecutive frames into one block.
    pub fn concat(parts: Vec<SiftedKey>) -> SiftedKey {
        let total: usize = parts.iter().map(|p| p.key.bits()).sum();
        let mut key = SecretWords::zeroed(total);
        let mut key_classes = Vec::with_capacity(total);
        let mut stats = SiftStats::default();
        let mut at = 0usize;
        for p in parts {
            append_bits(key.expose_mut(), at, p.key.expose(), p.key.bits());
            at += p.key.bits();
            key_classes.extend_from_slice(&p.key_classes);
            stats += p.stats;
        }
        SiftedKey {
            key,
            key_classes,
            stats,
        }
    }
}

/// Copies `len` bits of `src` to `dst` starting at bit `at` (dst zero there).
fn append_bits(dst: &mut [u64], at: usize, src: &[u64], len: usize) {
    let shift = at % 64;
    let base = at / 64;
    for (j, &w) in src.iter().enumerate().take(len.div_ceil(64)) {
        dst[base + j] |= w << shift;
        if shift != 0 && base + j + 1 < dst.len() {
            dst[base + j + 1] |= w >> (64 - shift);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qkd::optics::{ChoiceRng, Detector, LinkParams, NoiseRng, Source};
    use proptest::prelude::*;

    /// One frame through source, detector and both sides of sifting, with
    /// both messages passed through their byte encodings.
    fn run_frame(km: f64, slots: u32, seed: u64) -> (SiftedKey, SiftedKey, Vec<u8>, Vec<u8>) {
        let p = LinkParams::gys(km);
        let mut src = Source::new(
            &p,
            ChoiceRng::insecure_from_fixed_seed(seed),
            NoiseRng::from_seed(seed + 1),
        )
        .unwrap();
        let mut det = Detector::new(
            &p,
            ChoiceRng::insecure_from_fixed_seed(seed + 2),
            NoiseRng::from_seed(seed + 3),
        )
        .unwrap();
        let (frame, log) = src.emit(slots).unwrap();
        let d = det.detect(&frame);
        let rep_bytes = report(&d).encode();
        let rep = DetectionReport::decode(&rep_bytes).unwrap();
        let alice = src.resolve(log, rep.slots()).unwrap();
        let (reply, a) = alice_sift(&rep, &alice).unwrap();
        let reply_bytes = reply.encode();
        let b = bob_sift(&d, &SiftReply::decode(&reply_bytes).unwrap()).unwrap();
        (a, b, rep_bytes, reply_bytes)
    }

    #[test]
    fn both_sides_agree_on_everything_public() {
        let (a, b, rep, reply) = run_frame(0.0, 2_000_000, 11);
        assert_eq!(a.stats, b.stats);
        assert_eq!(a.key_classes, b.key_classes);
        assert_eq!(a.key.bits(), b.key.bits());
        assert!(a.key.bits() > 1000, "{:?}", a.stats);
        // Key bits agree up to the link's QBER (≈ 3.3 % misalignment here).
        let diff: u32 = a
            .key
            .expose()
            .iter()
            .zip(b.key.expose())
            .map(|(x, y)| (x ^ y).count_ones())
            .sum();
        let q = diff as f64 / a.key.bits() as f64;
        assert!(q > 0.01 && q < 0.06, "key QBER {q}");
        let t = a.stats.test_errors.iter().sum::<u64>() as f64
            / a.stats.test.iter().sum::<u64>() as f64;
        assert!(t > 0.01 && t < 0.06, "test QBER {t}");
        // Re-encoding decoded messages reproduces them byte for byte.
        assert_eq!(DetectionReport::decode(&rep).unwrap().encode(), rep);
        assert_eq!(SiftReply::decode(&reply).unwrap().encode(), reply);
    }

    #[test]
    fn concat_preserves_bits_and_counts() {
        let parts: Vec<_> = (0..3)
            .map(|i| run_frame(10.0, 300_000, 100 + 10 * i))
            .collect();
        let expect: Vec<bool> = parts
            .iter()
            .flat_map(|(a, ..)| (0..a.key.bits()).map(|i| a.key.get(i)).collect::<Vec<_>>())
            .collect();
        let mut stats = SiftStats::default();
        for (a, ..) in &parts {
            stats += a.stats;
        }
        let joined = SiftedKey::concat(parts.into_iter().map(|(a, ..)| a).collect());
        assert_eq!(joined.key.bits(), expect.len());
        assert!((0..expect.len()).all(|i| joined.key.get(i) == expect[i]));
        assert_eq!(joined.stats, stats);
        assert_eq!(joined.key_classes.len(), expect.len());
    }

    #[test]
    fn mismatched_inputs_are_refused() {
        let p = LinkParams::gys(0.0);
        let mut src = Source::new(
            &p,
            ChoiceRng::insecure_from_fixed_seed(1),
            NoiseRng::from_seed(2),
        )
        .unwrap();
        let mut det = Detector::new(
            &p,
            ChoiceRng::insecure_from_fixed_seed(3),
            NoiseRng::from_seed(4),
        )
        .unwrap();
        let (f1, l1) = src.emit(100_000).unwrap();
        let (f2, l2) = src.emit(100_000).unwrap();
        let (d1, d2) = (det.detect(&f1), det.detect(&f2));
        let (r1, r2) = (report(&d1), report(&d2));
        // Alice cannot resolve one frame's log with another frame's slots.
        assert!(src.resolve(l2, r1.slots()).is_err());
        let (_, l3) = src.emit(10).unwrap();
        let empty = src.resolve(l3, &[]).unwrap();
        assert_eq!(alice_sift(&r1, &empty).unwrap_err(), SiftError::Mismatch);
        // A reply for frame 1 does not fit frame 2's detections.
        let alice = src.resolve(l1, r1.slots()).unwrap();
        let (reply, _) = alice_sift(&r1, &alice).unwrap();
        assert!(bob_sift(&d2, &reply).is_err());
        assert!(r2.slots().iter().all(|&s| s >= f2.first_slot()));
        assert!(bob_sift(&d1, &reply).is_ok());
    }

    proptest! {
        #[test]
        fn hostile_reports_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = DetectionReport::decode(&bytes);
            let _ = SiftReply::decode(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(pos in any::<usize>(), val in any::<u8>(), seed in 0u64..4) {
            let (_, _, rep, reply) = run_frame(50.0, 200_000, seed);
            for mut m in [rep, reply] {
                let i = pos % m.len();
                m[i] = val;
                if let Ok(r) = DetectionReport::decode(&m) {
                    prop_assert_eq!(r.encode(), m.clone());
                }
                if let Ok(r) = SiftReply::decode(&m) {
                    prop_assert_eq!(r.encode(), m.clone());
                }
            }
        }
    }
}
