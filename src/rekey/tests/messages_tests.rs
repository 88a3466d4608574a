//! Message encoding: round trips, canonical form, and hostile input
//! (truncation, trailing bytes, bad codes, out-of-range fields) refused
//! without a panic.

use proptest::prelude::*;

use crate::keys::{BlockId, KeyPool, KeyRef, KeyUse, Role};
use crate::qkd::wire::{WireReader, WireWriter};
use crate::rekey::keying::SEALED_LEN;
use crate::rekey::messages::{
    KeyMaterial, MAX_MESSAGE_LEN, MessageBody, NackReason, RekeyMessage, RequestReason,
};
use crate::rekey::{ExchangeId, MIN_SPI};
use crate::secret::SecretBytes;

const ID: ExchangeId = ExchangeId {
    epoch: 0x1122_3344_5566_7788,
    generation: 9,
};

/// A reference of `len` bytes over three segments (several blocks).
fn key_ref(len: u32) -> KeyRef {
    let mut pool = KeyPool::new(Role::Transmitter);
    for id in 0..3 {
        pool.append(BlockId(id), SecretBytes::from_slice(&[7u8; 60]))
            .unwrap();
    }
    pool.take(KeyUse::SaKey, len).unwrap().0
}

fn samples() -> Vec<RekeyMessage> {
    let bodies = vec![
        MessageBody::Start {
            id: ID,
            initiator_spi: 0xC000_0001,
            keys: KeyMaterial::Direct {
                key_ref: key_ref(72),
            },
        },
        MessageBody::Start {
            id: ID,
            initiator_spi: MIN_SPI,
            keys: KeyMaterial::Wrapped {
                wrap_ref: key_ref(32),
                sealed: (0..SEALED_LEN as u8).collect(),
            },
        },
        MessageBody::Ack {
            id: ID,
            responder_spi: u32::MAX,
        },
        MessageBody::Done { id: ID },
        MessageBody::Nack {
            id: ID,
            reason: NackReason::KeysRefused,
            released: true,
        },
        MessageBody::Nack {
            id: ID,
            reason: NackReason::Retry,
            released: false,
        },
        MessageBody::Request {
            reason: RequestReason::Acquire,
            about: Some(ID),
        },
        MessageBody::Request {
            reason: RequestReason::Restarted,
            about: None,
        },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| RekeyMessage {
            sender_epoch: ID.epoch,
            sender_out: (i % 2 == 0).then_some(ExchangeId {
                epoch: 5,
                generation: 4,
            }),
            body,
        })
        .collect()
}

#[test]
fn every_kind_round_trips_and_every_truncation_fails() {
    for msg in samples() {
        let bytes = msg.encode();
        assert_eq!(RekeyMessage::decode(&bytes).unwrap(), msg);
        for cut in 0..bytes.len() {
            assert!(
                RekeyMessage::decode(&bytes[..cut]).is_err(),
                "{msg:?} cut {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(RekeyMessage::decode(&longer).is_err());
    }
}

/// Header + `body` bytes as a writer would put them.
fn raw(kind: u8, body: impl FnOnce(&mut WireWriter)) -> Vec<u8> {
    let mut w = WireWriter::new();
    w.u8(1).u8(kind).u64(ID.epoch).u8(0);
    body(&mut w);
    w.finish()
}

#[test]
fn out_of_range_fields_are_refused() {
    let id = |w: &mut WireWriter| {
        w.u64(ID.epoch).u64(ID.generation);
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown kind", raw(9, |_| {})),
        (
            "generation 0",
            raw(3, |w| {
                w.u64(ID.epoch).u64(0);
            }),
        ),
        (
            "reserved SPI",
            raw(2, |w| {
                id(w);
                w.u32(255);
            }),
        ),
        (
            "nack reason",
            raw(4, |w| {
                id(w);
                w.u8(9).u8(0);
            }),
        ),
        (
            "nack flag",
            raw(4, |w| {
                id(w);
                w.u8(1).u8(2);
            }),
        ),
        (
            "request reason",
            raw(5, |w| {
                w.u8(0).u8(0);
            }),
        ),
        (
            "option tag",
            raw(5, |w| {
                w.u8(1).u8(2);
            }),
        ),
        (
            "start epoch differs from sender",
            raw(1, |w| {
                w.u64(ID.epoch + 1).u64(1).u32(MIN_SPI).u8(1);
                key_ref(72).encode(w);
            }),
        ),
        (
            "short key reference",
            raw(1, |w| {
                id(w);
                w.u32(MIN_SPI).u8(1);
                key_ref(71).encode(w);
            }),
        ),
        (
            "keying mode",
            raw(1, |w| {
                id(w);
                w.u32(MIN_SPI).u8(3);
                key_ref(72).encode(w);
            }),
        ),
        (
            "short sealed keys",
            raw(1, |w| {
                id(w);
                w.u32(MIN_SPI).u8(2);
                key_ref(32).encode(w);
                w.bytes(&[0; SEALED_LEN - 1]);
            }),
        ),
        (
            "empty segment",
            raw(1, |w| {
                id(w);
                w.u32(MIN_SPI).u8(1);
                w.u32(2).u64(0).u32(0).u32(72).u64(1).u32(0).u32(0);
            }),
        ),
    ];
    for (what, bytes) in cases {
        assert!(RekeyMessage::decode(&bytes).is_err(), "{what} accepted");
    }
    let mut version = samples()[3].encode();
    version[0] = 2;
    assert!(RekeyMessage::decode(&version).is_err());
    assert!(RekeyMessage::decode(&vec![0; MAX_MESSAGE_LEN + 1]).is_err());
    // A huge segment count is refused before anything is allocated for it.
    let huge = raw(1, |w| {
        id(w);
        w.u32(MIN_SPI).u8(1).u32(u32::MAX);
    });
    assert!(RekeyMessage::decode(&huge).is_err());
}

#[test]
fn direct_start_carries_positions_not_key_bytes() {
    let mut pool = KeyPool::new(Role::Transmitter);
    let block: Vec<u8> = (0..=255u8).cycle().take(400).collect();
    pool.append(BlockId(1), SecretBytes::from_slice(&block))
        .unwrap();
    let (key_ref, key) = pool.take(KeyUse::SaKey, 72).unwrap();
    let msg = RekeyMessage {
        sender_epoch: ID.epoch,
        sender_out: None,
        body: MessageBody::Start {
            id: ID,
            initiator_spi: MIN_SPI,
            keys: KeyMaterial::Direct { key_ref },
        },
    };
    let bytes = msg.encode();
    assert!(
        !bytes
            .windows(8)
            .any(|w| key.expose().windows(8).any(|k| k == w)),
        "8 consecutive key bytes appear in the message"
    );
    let mut r = WireReader::new(&bytes);
    r.u8("v").unwrap();
    assert_eq!(r.u8("kind").unwrap(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = RekeyMessage::decode(&bytes);
    }

    /// A mutated message is either refused or decodes to a message whose
    /// encoding is exactly the mutated bytes (one encoding per message).
    #[test]
    fn decoding_is_canonical(which in 0usize..8, at in any::<prop::sample::Index>(), xor in 1u8..) {
        let mut bytes = samples()[which].encode();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        if let Ok(msg) = RekeyMessage::decode(&bytes) {
            prop_assert_eq!(msg.encode(), bytes);
        }
    }
}
