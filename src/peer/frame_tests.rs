//! Codec tests on byte buffers: no sockets.

use proptest::prelude::*;

use super::*;
use crate::peer::fibre::{FibreBase, FibreOpener, FibreSealer};

/// A fibre sealer/opener pair of one made-up session.
fn fibre_pair() -> (FibreSealer, FibreOpener) {
    let base = FibreBase::from_channel_key(&crate::secret::SecretBytes::from_slice(&[4; 32]));
    let key = || base.session_key(&[1; 32], &[2; 32]);
    (FibreSealer::new(key()), FibreOpener::new(key()))
}

fn key(b: u8) -> Secret<32> {
    Secret::from_slice(&[b; 32]).unwrap()
}

fn pair(b: u8) -> (Sealer, Opener) {
    (Sealer::new(key(b)), Opener::new(key(b)))
}

fn limits() -> FrameLimits {
    FrameLimits {
        fibre: 4096,
        qkd: 4096,
        control: 1024,
    }
}

fn frame_of(buf: &[u8]) -> RawFrame<'_> {
    match split_frame(buf, &limits()).unwrap() {
        Split::Frame(f) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

#[test]
fn header_layout_is_as_documented() {
    let (mut s, _) = pair(1);
    let f = s.seal(FrameType::Qkd, b"abc").unwrap();
    assert_eq!(&f[0..2], b"QK");
    assert_eq!(f[2], 2, "version");
    assert_eq!(f[3], 0x11, "type");
    assert_eq!(&f[4..8], &3u32.to_le_bytes(), "length");
    assert_eq!(&f[8..16], &1u64.to_le_bytes(), "first sequence number is 1");
    assert_eq!(&f[16..19], b"abc");
    assert_eq!(f.len(), 16 + 3 + 32);
    let hello = encode_plain(FrameType::Hello, b"xy");
    assert_eq!(hello.len(), 18, "handshake frames have no session tag");
    assert_eq!(hello[3], 0x01);
    assert_eq!(&hello[8..16], &[0; 8]);
}

#[test]
fn sealed_frames_open_in_order_and_replays_are_rejected() {
    let (mut s, mut o) = pair(7);
    let frames: Vec<Vec<u8>> = (0..3)
        .map(|i| s.seal(FrameType::Control, &[i; 5]).unwrap())
        .collect();
    o.open(&frame_of(&frames[0])).unwrap();
    o.open(&frame_of(&frames[1])).unwrap();
    // Replaying frame 1 (valid MAC, old number) is refused...
    assert_eq!(
        o.open(&frame_of(&frames[0])),
        Err(FrameError::Replay {
            expected: 3,
            got: 1
        })
    );
    // ...without disturbing the sequence: the real next frame still opens.
    o.open(&frame_of(&frames[2])).unwrap();
    assert_eq!(o.next_seq(), 4);
}

#[test]
fn skipped_frames_are_rejected() {
    let (mut s, mut o) = pair(7);
    let _dropped = s.seal(FrameType::Qkd, b"one").unwrap();
    let second = s.seal(FrameType::Qkd, b"two").unwrap();
    assert!(matches!(
        o.open(&frame_of(&second)),
        Err(FrameError::Replay {
            expected: 1,
            got: 2
        })
    ));
}

#[test]
fn wrong_key_is_a_mac_failure() {
    let mut s = Sealer::new(key(1));
    let mut o = Opener::new(key(2));
    let f = s.seal(FrameType::Link, b"ping").unwrap();
    assert_eq!(
        o.open(&frame_of(&f)),
        Err(FrameError::BadMac(FrameType::Link))
    );
}

#[test]
fn rekey_keeps_the_sequence() {
    let (mut s, mut o) = pair(1);
    let a = s.seal(FrameType::Qkd, b"a").unwrap();
    o.open(&frame_of(&a)).unwrap();
    s.rekey(key(9));
    let b = s.seal(FrameType::Qkd, b"b").unwrap();
    assert!(matches!(o.open(&frame_of(&b)), Err(FrameError::BadMac(_))));
    o.rekey(key(9));
    o.open(&frame_of(&b)).unwrap();
    assert_eq!(o.next_seq(), 3);
}

#[test]
fn oversized_length_is_rejected_from_the_header_alone() {
    for (t, max) in [
        (FrameType::Qkd, 4096u32),
        (FrameType::Control, 1024),
        (FrameType::Fibre, 4096),
        (FrameType::Hello, MAX_HANDSHAKE_PAYLOAD),
        (FrameType::Link, MAX_LINK_PAYLOAD),
    ] {
        for len in [max + 1, u32::MAX] {
            let h = FrameHeader {
                frame_type: t,
                len,
                seq: 0,
            }
            .to_bytes();
            // Only the 16 header bytes exist: the decision needs no body.
            assert_eq!(
                split_frame(&h, &limits()),
                Err(FrameError::TooLong {
                    frame_type: t,
                    len,
                    max
                })
            );
        }
    }
    // Handshake-only limits refuse any data frame with a body.
    let h = FrameHeader {
        frame_type: FrameType::Fibre,
        len: 1,
        seq: 0,
    }
    .to_bytes();
    assert!(matches!(
        split_frame(&h, &FrameLimits::handshake_only()),
        Err(FrameError::TooLong { .. })
    ));
}

#[test]
fn structural_garbage_is_rejected() {
    assert!(matches!(
        split_frame(b"GET / HTTP/1.1\r\n\r\n", &limits()),
        Err(FrameError::BadMagic(_))
    ));
    // A wrong magic is caught from the first two bytes.
    assert!(matches!(
        split_frame(b"\x16\x03", &limits()),
        Err(FrameError::BadMagic(_))
    ));
    let mut h = FrameHeader {
        frame_type: FrameType::Qkd,
        len: 0,
        seq: 1,
    }
    .to_bytes();
    // Version 1 sent the fibre in clear; it is refused.
    h[2] = 1;
    assert_eq!(split_frame(&h, &limits()), Err(FrameError::BadVersion(1)));
    h[2] = VERSION;
    h[3] = 0x7f;
    assert_eq!(
        split_frame(&h, &limits()),
        Err(FrameError::UnknownType(0x7f))
    );
    // Handshake frames must not carry a sequence number.
    let mut f = encode_plain(FrameType::Finish, b"");
    f[8] = 1;
    assert_eq!(
        split_frame(&f, &limits()),
        Err(FrameError::UnexpectedSequence(FrameType::Finish))
    );
}

#[test]
fn fibre_frames_are_left_to_the_fibre_opener() {
    // The MAC opener neither checks nor numbers fibre frames: their GCM tag
    // and counter are the fibre opener's (see `peer::fibre`).
    let (mut fs, mut fo) = fibre_pair();
    let f = fs.seal(&[0u8; 10]).unwrap();
    let raw = frame_of(&f);
    let (_, mut o) = pair(3);
    assert_eq!(o.open(&raw), Ok(()));
    assert_eq!(o.next_seq(), 1, "fibre frames take no MAC sequence number");
    assert_eq!(fo.open(&raw).unwrap(), [0u8; 10]);
}

fn any_authenticated_type() -> impl Strategy<Value = FrameType> {
    prop_oneof![
        Just(FrameType::Qkd),
        Just(FrameType::Control),
        Just(FrameType::Link)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip_many_frames_in_one_stream(
        payloads in prop::collection::vec((any_authenticated_type(), prop::collection::vec(any::<u8>(), 0..600)), 1..8),
        fibre_at in 0usize..8,
    ) {
        let (mut s, mut o) = pair(42);
        let (mut fs, mut fo) = fibre_pair();
        let mut stream = Vec::new();
        for (i, (t, p)) in payloads.iter().enumerate() {
            if i == fibre_at {
                stream.extend_from_slice(&fs.seal(b"pulses").unwrap());
            }
            stream.extend_from_slice(&s.seal(*t, p).unwrap());
        }
        let mut at = 0;
        let mut got = Vec::new();
        while at < stream.len() {
            let Split::Frame(f) = split_frame(&stream[at..], &limits()).unwrap() else {
                panic!("whole stream present");
            };
            o.open(&f).unwrap();
            if f.header.frame_type == FrameType::Fibre {
                prop_assert_eq!(fo.open(&f).unwrap(), b"pulses");
            } else {
                got.push((f.header.frame_type, f.payload.to_vec()));
            }
            at += f.total_len();
        }
        prop_assert_eq!(got, payloads);
    }

    #[test]
    fn any_bit_flip_in_an_authenticated_frame_is_never_accepted(
        t in any_authenticated_type(),
        payload in prop::collection::vec(any::<u8>(), 0..300),
        bit in any::<prop::sample::Index>(),
    ) {
        let (mut s, mut o) = pair(5);
        let mut f = s.seal(t, &payload).unwrap();
        let bit = bit.index(f.len() * 8);
        f[bit / 8] ^= 1 << (bit % 8);
        match split_frame(&f, &limits()) {
            // Header damage: refused structurally, or the length now claims
            // more bytes than exist (the reader would wait, then time out).
            Err(_) | Ok(Split::Incomplete { .. }) => prop_assert!(bit < HEADER_LEN * 8),
            // A type bit that turns Qkd into Fibre leaves the frame to the
            // fibre opener, whose GCM tag the bytes do not carry.
            Ok(Split::Frame(raw)) if raw.header.frame_type == FrameType::Fibre => {
                prop_assert!(fibre_pair().1.open(&raw).is_err());
            }
            Ok(Split::Frame(raw)) => {
                // Anything that still parses (payload, tag, sequence, type
                // changed to another authenticated type, shorter length)
                // fails the MAC.
                prop_assert!(matches!(o.open(&raw), Err(FrameError::BadMac(_))));
            }
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete(
        t in any_authenticated_type(),
        payload in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let (mut s, _) = pair(5);
        let f = s.seal(t, &payload).unwrap();
        for cut in 0..f.len() {
            match split_frame(&f[..cut], &limits()).unwrap() {
                Split::Incomplete { need } => prop_assert!(need > cut && need <= f.len()),
                Split::Frame(_) => prop_assert!(false, "prefix of {cut} bytes decoded"),
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_authenticate(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let (_, mut o) = pair(9);
        if let Ok(Split::Frame(f)) = split_frame(&bytes, &limits())
            && f.header.frame_type.is_authenticated() {
                prop_assert!(o.open(&f).is_err());
            }
    }
}
