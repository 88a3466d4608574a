use super::*;
use crate::keys::{BlockId, KeyPool, KeyUse, Role};

fn pool(role: Role, bytes: &[u8]) -> KeyPool {
    let mut p = KeyPool::new(role);
    p.append(BlockId(1), SecretBytes::from_slice(bytes))
        .unwrap();
    p
}

fn header(len: u32) -> RelayHeader {
    RelayHeader {
        key_id: Uuid::new_v4(),
        share: 0,
        shares: 1,
        path: vec!["gw-a".into(), "gw-b".into(), "gw-c".into()],
        hop: 0,
        len,
    }
}

fn encoded(hop: &RelayHop) -> Vec<u8> {
    let mut w = WireWriter::new();
    hop.encode(&mut w);
    w.finish()
}

fn decoded(bytes: &[u8]) -> Result<RelayHop, HopError> {
    let mut r = WireReader::new(bytes);
    let hop = RelayHop::decode(&mut r)?;
    r.finish()?;
    Ok(hop)
}

/// Sender and receiver take the same pad from their pools; the receiver
/// opens the share; the pad cannot be taken again.
#[test]
fn a_hop_opens_with_the_same_pool_bytes_once() {
    let mut bytes = vec![0u8; 4096];
    getrandom::fill(&mut bytes).unwrap();
    let (mut a, mut b) = (
        pool(Role::Transmitter, &bytes),
        pool(Role::Receiver, &bytes),
    );
    let key = SecretBytes::from_slice(&[0x5a; 32]);
    let h = header(32);
    let (pad_ref, pad) = a.take(KeyUse::Relay, pad_len(32)).unwrap();
    let hop = RelayHop::seal(h.clone(), &key, pad_ref, pad).unwrap();
    assert_ne!(hop.sealed, key.expose(), "the share is padded");
    let wire = encoded(&hop);
    let got = decoded(&wire).unwrap();
    assert_eq!(got, hop);
    let pad = b.take_at(&got.pad, KeyUse::Relay).unwrap();
    assert!(got.open(pad).unwrap().ct_eq(&key));
    assert!(
        b.take_at(&got.pad, KeyUse::Relay).is_err(),
        "a replay finds its pad consumed"
    );
    assert_eq!(
        a.counters().for_use(KeyUse::Relay).initiated_bytes,
        b.counters().for_use(KeyUse::Relay).accepted_bytes
    );
    // Every byte of the message is covered by the tag or its structure:
    // flipped, it fails to decode, names pad the receiver cannot take, or
    // fails the tag (checked on a fresh copy of the receiver's pool).
    let mut tag_failures = 0;
    for i in 0..wire.len() {
        let mut bad = wire.clone();
        bad[i] ^= 0x01;
        let Ok(hop) = decoded(&bad) else { continue };
        let Ok(pad) = pool(Role::Receiver, &bytes).take_at(&hop.pad, KeyUse::Relay) else {
            continue;
        };
        assert_eq!(
            hop.open(pad).unwrap_err(),
            HopError::Tag,
            "byte {i} flipped"
        );
        tag_failures += 1;
    }
    assert!(
        tag_failures > 32,
        "the sealed share and tag bytes reach the tag check"
    );
}

#[test]
fn hostile_headers_are_refused_before_any_pad_is_taken() {
    let ok = header(16);
    assert!(ok.validate().is_ok());
    let cases = [
        RelayHeader {
            shares: 0,
            ..ok.clone()
        },
        RelayHeader {
            share: 1,
            ..ok.clone()
        },
        RelayHeader {
            shares: MAX_SHARES + 1,
            share: 0,
            ..ok.clone()
        },
        RelayHeader {
            hop: 2,
            ..ok.clone()
        },
        RelayHeader {
            len: 0,
            ..ok.clone()
        },
        RelayHeader {
            len: MAX_RELAYED_KEY_BYTES + 1,
            ..ok.clone()
        },
    ];
    for h in cases {
        assert!(h.validate().is_err(), "{h:?}");
    }
    let mut w = WireWriter::new();
    ok.encode(&mut w);
    let good = w.finish();
    assert!(RelayHeader::decode(&mut WireReader::new(&good)).is_ok());
    for cut in 0..good.len() {
        assert!(RelayHeader::decode(&mut WireReader::new(&good[..cut])).is_err());
    }
    for path in [
        vec!["gw-a".to_string()],
        vec!["gw-a".into(), "gw-a".into()],
        vec!["gw-a".into(), "bad name".into()],
        (0..=MAX_PATH_NODES).map(|i| format!("n{i}")).collect(),
    ] {
        let h = RelayHeader { path, ..ok.clone() };
        let mut w = WireWriter::new();
        h.encode(&mut w);
        assert!(RelayHeader::decode(&mut WireReader::new(&w.finish())).is_err());
    }
}

#[test]
fn refusals_roundtrip_bounded() {
    let r = RelayRefusal {
        key_id: Uuid::new_v4(),
        share: 1,
        path: vec!["gw-a".into(), "gw-b".into(), "gw-c".into()],
        at: 1,
        reason: "é".repeat(200),
    };
    let mut w = WireWriter::new();
    r.encode(&mut w);
    let bytes = w.finish();
    let back = RelayRefusal::decode(&mut WireReader::new(&bytes)).unwrap();
    assert!(back.reason.len() <= MAX_REASON_BYTES);
    assert!(r.reason.starts_with(&back.reason));
    assert_eq!(back.refused_by(), "gw-b");
    let at0 = RelayRefusal { at: 0, ..r.clone() };
    let mut w = WireWriter::new();
    at0.encode(&mut w);
    assert!(RelayRefusal::decode(&mut WireReader::new(&w.finish())).is_err());
}
