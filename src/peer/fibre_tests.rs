//! Fibre sealing on byte buffers: round trip, tampering, wrong keys,
//! counters, and that a sealed frame hides its pulse records.

use proptest::prelude::*;

use super::*;
use crate::peer::frame::{FrameLimits, Split, split_frame};
use crate::qkd::optics::frame::PulseRecord;
use crate::qkd::optics::{Basis, PulseFrame};

const ND: [u8; 32] = [0x11; 32];
const NA: [u8; 32] = [0x22; 32];

fn base(b: u8) -> FibreBase {
    FibreBase::from_channel_key(&SecretBytes::from_slice(&[b; 32]))
}

fn pair(b: u8) -> (FibreSealer, FibreOpener) {
    (
        FibreSealer::new(base(b).session_key(&ND, &NA)),
        FibreOpener::new(base(b).session_key(&ND, &NA)),
    )
}

fn frame_of(buf: &[u8]) -> RawFrame<'_> {
    match split_frame(buf, &FrameLimits::default()).unwrap() {
        Split::Frame(f) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// A pulse frame with a record in every slot.
fn pulses(n: u32) -> Vec<u8> {
    let records: Vec<PulseRecord> = (0..n)
        .map(|i| PulseRecord {
            offset: i,
            photons: 1,
            basis: if i % 3 == 0 { Basis::X } else { Basis::Z },
            bit: i % 2 == 0,
        })
        .collect();
    PulseFrame::from_records(0, n, &records).unwrap().encode()
}

#[test]
fn sealed_frames_open_to_their_payload_with_the_documented_layout() {
    let (mut s, mut o) = pair(1);
    let plain = pulses(64);
    let f = s.seal(&plain).unwrap();
    assert_eq!(f[3], 0x10, "Fibre type");
    assert_eq!(f[2], 2, "wire version 2");
    let len = u32::from_le_bytes(f[4..8].try_into().unwrap()) as usize;
    assert_eq!(len, plain.len() + FIBRE_TAG_LEN, "length counts the tag");
    assert_eq!(&f[8..16], &1u64.to_le_bytes(), "first counter is 1");
    assert_eq!(f.len(), HEADER_LEN + len);
    assert_eq!(o.open(&frame_of(&f)).unwrap(), plain);
    let g = s.seal(b"").unwrap();
    assert_eq!(&g[8..16], &2u64.to_le_bytes());
    assert_eq!(o.open(&frame_of(&g)).unwrap(), b"");
    assert_eq!(o.last_seq(), 2);
}

#[test]
fn a_sealed_payload_holds_no_decodable_pulse_records() {
    let (mut s, _) = pair(2);
    let plain = pulses(4096);
    assert!(PulseFrame::decode(&plain).is_ok(), "positive control");
    let f = s.seal(&plain).unwrap();
    let payload = frame_of(&f).payload;
    assert!(PulseFrame::decode(payload).is_err());
    assert!(PulseFrame::decode(&payload[..plain.len()]).is_err());
    // The ciphertext shares no long run with the plaintext: no 16-byte
    // window of the records survives sealing.
    let leaked = plain
        .windows(16)
        .any(|w| payload.windows(16).any(|p| p == w));
    assert!(!leaked, "plaintext window found in the sealed payload");
}

#[test]
fn a_frame_under_another_key_or_session_is_refused() {
    let (mut s, _) = pair(3);
    let f = s.seal(b"pulses").unwrap();
    let (_, mut other_epoch) = pair(4);
    assert_eq!(other_epoch.open(&frame_of(&f)), Err(FibreError::BadTag));
    let mut other_session = FibreOpener::new(base(3).session_key(&ND, &[0x23; 32]));
    assert_eq!(other_session.open(&frame_of(&f)), Err(FibreError::BadTag));
    assert_eq!(other_session.last_seq(), 0, "a refused frame moves nothing");
}

#[test]
fn replayed_and_reordered_frames_are_refused_but_gaps_pass() {
    let (mut s, mut o) = pair(5);
    let frames: Vec<Vec<u8>> = (0..4).map(|i| s.seal(&[i; 9]).unwrap()).collect();
    o.open(&frame_of(&frames[0])).unwrap();
    // Frame 2 is dropped in flight: a lossy fibre, allowed.
    o.open(&frame_of(&frames[2])).unwrap();
    assert_eq!(
        o.open(&frame_of(&frames[1])),
        Err(FibreError::Replay { last: 3, got: 2 })
    );
    assert_eq!(
        o.open(&frame_of(&frames[2])),
        Err(FibreError::Replay { last: 3, got: 3 })
    );
    assert_eq!(o.open(&frame_of(&frames[3])).unwrap(), [3; 9]);
}

#[test]
fn lab_reseals_number_above_the_transmitter_and_still_open() {
    let (mut alice, mut bob) = pair(6);
    let mut eve_in = FibreOpener::new(base(6).session_key(&ND, &NA));
    let mut eve_out = FibreSealer::lab_reseal(base(6).session_key(&ND, &NA));
    for i in 0..3u8 {
        let f = alice.seal(&[i; 20]).unwrap();
        let mut plain = eve_in.open(&frame_of(&f)).unwrap();
        plain[0] ^= 1;
        let g = eve_out.seal(&plain).unwrap();
        let seq = u64::from_le_bytes(g[8..16].try_into().unwrap());
        assert_eq!(seq, LAB_RESEAL_OFFSET + i as u64);
        assert_eq!(bob.open(&frame_of(&g)).unwrap()[0], i ^ 1);
    }
}

#[test]
fn key_types_print_redacted() {
    let b = base(0xAB);
    let k = b.session_key(&ND, &NA);
    let (s, o) = pair(0xAB);
    for shown in [
        format!("{b:?}"),
        format!("{k:?}"),
        format!("{s:?}"),
        format!("{o:?}"),
    ] {
        assert!(shown.contains("<redacted>"), "{shown}");
        let raw = b.expose();
        let hex: String = raw[..4].iter().map(|x| format!("{x:02x}")).collect();
        let dec = format!("{}, {}, {}", raw[0], raw[1], raw[2]);
        assert!(!shown.contains(&hex) && !shown.contains(&dec), "{shown}");
    }
}

#[test]
fn the_base_is_a_one_way_function_of_the_channel_key() {
    let key = SecretBytes::from_slice(&[9; 32]);
    let b = FibreBase::from_channel_key(&key);
    assert_ne!(&b.expose()[..], key.expose());
    assert_ne!(
        b.expose(),
        FibreBase::from_channel_key(&SecretBytes::from_slice(&[10; 32])).expose()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_bit_flip_in_a_sealed_frame_is_refused(
        payload in prop::collection::vec(any::<u8>(), 0..300),
        bit in any::<prop::sample::Index>(),
    ) {
        let (mut s, mut o) = pair(7);
        let mut f = s.seal(&payload).unwrap();
        // Bits of the magic, version, type and length make the frame
        // unparseable or change its extent; the rest must fail the tag.
        let i = bit.index((f.len() - 8) * 8) + 64;
        f[i / 8] ^= 1 << (i % 8);
        let opened = o.open(&frame_of(&f));
        prop_assert!(opened.is_err(), "flipped bit {} accepted", i);
        prop_assert_eq!(o.last_seq(), 0);
    }
}
