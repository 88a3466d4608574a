//! Handshake state machines run against each other in memory.

use super::*;
use crate::peer::frame::{FrameLimits, Opener, Sealer, Split, split_frame};

fn raw(buf: &[u8]) -> RawFrame<'_> {
    match split_frame(buf, &FrameLimits::handshake_only()).unwrap() {
        Split::Frame(f) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn hello(epoch: u64, nonce: u8) -> Hello {
    Hello {
        dialer: "gw-a".into(),
        acceptor: "gw-b".into(),
        epoch,
        nonce: [nonce; NONCE_LEN],
    }
}

/// Runs a whole handshake; returns both sides' results.
fn run(
    dialer_key: &SecretBytes,
    acceptor_key: &SecretBytes,
    nonces: (u8, u8),
) -> (
    Result<Established, HandshakeError>,
    Result<Established, HandshakeError>,
) {
    let (d, hello_frame) = DialerHandshake::start(hello(3, nonces.0)).unwrap();
    let hello_raw = raw(&hello_frame);
    let h = Hello::decode(&hello_raw).unwrap();
    let (a, reply) = AcceptorHandshake::respond(&hello_raw, &h, acceptor_key, [nonces.1; 32]);
    match d.on_reply(&raw(&reply), dialer_key) {
        Ok((finish, dialer)) => (Ok(dialer), a.on_finish(&raw(&finish))),
        Err(e) => (Err(e), Err(HandshakeError::Closed)),
    }
}

#[test]
fn both_sides_derive_matching_direction_keys() {
    let k = SecretBytes::random(32).unwrap();
    let (d, a) = run(&k, &k, (1, 2));
    let (d, a) = (d.unwrap(), a.unwrap());
    assert_eq!(d.epoch, 3);
    assert_eq!(d.context, a.context);
    let (d_send, d_recv) = d.keys.for_side(true);
    let (a_send, a_recv) = a.keys.for_side(false);
    assert!(d_send.ct_eq(&a_recv));
    assert!(a_send.ct_eq(&d_recv));
    // The two directions use different keys, so a frame reflected back to
    // its sender does not authenticate.
    assert!(!d_send.ct_eq(&d_recv));
    let mut sealer = Sealer::new(d_send);
    let f = sealer.seal(FrameType::Qkd, b"x").unwrap();
    let Split::Frame(rf) = split_frame(&f, &FrameLimits::default()).unwrap() else {
        panic!()
    };
    assert!(Opener::new(d_recv).open(&rf).is_err());
    assert!(Opener::new(a_recv).open(&rf).is_ok());
}

#[test]
fn fresh_nonces_give_fresh_keys_and_epochs_separate_keys() {
    let k = SecretBytes::random(32).unwrap();
    let one = run(&k, &k, (1, 2)).0.unwrap();
    let two = run(&k, &k, (1, 3)).0.unwrap();
    assert!(
        !one.keys
            .dialer_to_acceptor
            .ct_eq(&two.keys.dialer_to_acceptor)
    );
    let e4 = frame_keys(&k, 4, &one.context);
    assert!(!e4.dialer_to_acceptor.ct_eq(&one.keys.dialer_to_acceptor));
}

#[test]
fn dialer_with_the_wrong_key_is_refused_by_the_acceptor_confirmation() {
    let (good, bad) = (
        SecretBytes::random(32).unwrap(),
        SecretBytes::random(32).unwrap(),
    );
    let (d, _) = run(&bad, &good, (1, 2));
    assert!(matches!(d, Err(HandshakeError::BadConfirmation)));
}

#[test]
fn forged_finish_is_refused() {
    // An impostor without the key cannot check the reply; it sends some
    // Finish anyway.
    let k = SecretBytes::random(32).unwrap();
    let (_, hello_frame) = DialerHandshake::start(hello(0, 1)).unwrap();
    let hello_raw = raw(&hello_frame);
    let h = Hello::decode(&hello_raw).unwrap();
    let (a, _) = AcceptorHandshake::respond(&hello_raw, &h, &k, [2; 32]);
    let forged = encode_plain(FrameType::Finish, &[0x55; 32]);
    let err = a.on_finish(&raw(&forged)).unwrap_err();
    assert!(err.is_auth_failure(), "{err}");
}

#[test]
fn recorded_finish_fails_against_a_new_acceptor_nonce() {
    let k = SecretBytes::random(32).unwrap();
    // Record a real session's Hello and Finish.
    let (d, hello_frame) = DialerHandshake::start(hello(0, 1)).unwrap();
    let hello_raw = raw(&hello_frame);
    let h = Hello::decode(&hello_raw).unwrap();
    let (_, reply) = AcceptorHandshake::respond(&hello_raw, &h, &k, [2; 32]);
    let (finish, _) = d.on_reply(&raw(&reply), &k).unwrap();
    // Replay them; the acceptor picks a new nonce.
    let (a, _) = AcceptorHandshake::respond(&hello_raw, &h, &k, [9; 32]);
    assert!(matches!(
        a.on_finish(&raw(&finish)),
        Err(HandshakeError::BadConfirmation)
    ));
}

#[test]
fn reply_for_another_epoch_is_refused() {
    let k = SecretBytes::random(32).unwrap();
    let (d, _) = DialerHandshake::start(hello(5, 1)).unwrap();
    let (_, other_hello) = DialerHandshake::start(hello(6, 1)).unwrap();
    let hr = raw(&other_hello);
    let h = Hello::decode(&hr).unwrap();
    let (_, reply) = AcceptorHandshake::respond(&hr, &h, &k, [2; 32]);
    assert!(matches!(
        d.on_reply(&raw(&reply), &k),
        Err(HandshakeError::EpochMismatch { sent: 5, got: 6 })
    ));
}

#[test]
fn hello_decoding_rejects_bad_input() {
    assert!(valid_name("gw-b.example_1"));
    for bad in ["", "a b", "x\n", "é", &"n".repeat(65)] {
        assert!(!valid_name(bad), "{bad:?}");
    }
    let mut h = hello(0, 1);
    h.dialer = "bad name".into();
    assert!(matches!(
        DialerHandshake::start(h),
        Err(HandshakeError::BadName)
    ));
    // Hand-built Hello with a control character in a name.
    let mut w = WireWriter::new();
    w.bytes(b"gw\x1b[2J").bytes(b"gw-b").u64(0);
    let mut p = w.finish();
    p.extend_from_slice(&[0; 32]);
    let f = encode_plain(FrameType::Hello, &p);
    assert!(matches!(
        Hello::decode(&raw(&f)),
        Err(HandshakeError::BadName)
    ));
    // Truncated nonce, trailing bytes, wrong frame type.
    let good = encode_plain(FrameType::Hello, &hello(0, 1).encode());
    let mut short = hello(0, 1).encode();
    short.pop();
    assert!(matches!(
        Hello::decode(&raw(&encode_plain(FrameType::Hello, &short))),
        Err(HandshakeError::Malformed(_))
    ));
    let mut long = hello(0, 1).encode();
    long.push(0);
    assert!(matches!(
        Hello::decode(&raw(&encode_plain(FrameType::Hello, &long))),
        Err(HandshakeError::Malformed(_))
    ));
    assert_eq!(Hello::decode(&raw(&good)).unwrap(), hello(0, 1));
    let fin = encode_plain(FrameType::Finish, &[0; 32]);
    assert!(matches!(
        Hello::decode(&raw(&fin)),
        Err(HandshakeError::UnexpectedFrame { .. })
    ));
}

#[test]
fn errors_name_no_key_bytes() {
    let e = HandshakeError::UnknownEpoch {
        theirs: 0,
        current: 5,
        next: Some(6),
    };
    let msg = e.to_string();
    assert!(msg.contains("epoch 0") && msg.contains("epoch 5") && msg.contains("6 pending"));
}
