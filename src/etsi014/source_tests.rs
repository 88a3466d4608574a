//! Master and slave in memory: the order in which blocks enter the pools,
//! replayed key_IDs, and back-off.

use super::*;
use crate::keys::{KeyPool, Role};

fn cfg() -> SourceConfig {
    SourceConfig {
        key_size_bits: 256,
        batch: 4,
        pool_target_bytes: 256,
        retry_max: Duration::from_secs(8),
        ack_timeout: Duration::from_secs(30),
    }
}

fn keys(first: u128, n: u128, byte: u8) -> Vec<KeyItem> {
    (first..first + n)
        .map(|i| KeyItem::new(Uuid::from_u128(i), SecretBytes::from_slice(&[byte; 32])))
        .collect()
}

/// The same keys as the slave's KME would give them back.
fn same(offer: &KeyOffer, byte: u8) -> Vec<KeyItem> {
    offer
        .key_ids
        .iter()
        .map(|id| KeyItem::new(*id, SecretBytes::from_slice(&[byte; 32])))
        .collect()
}

#[test]
fn the_master_appends_only_after_the_slaves_ack() {
    let now = Instant::now();
    let (mut m, s) = (Master::new(cfg()), Slave::new(cfg()));
    let (mut seen_m, mut seen_s) = (SeenKeyIds::in_memory(), SeenKeyIds::in_memory());
    let (mut pool_m, mut pool_s) = (
        KeyPool::new(Role::Transmitter),
        KeyPool::new(Role::Receiver),
    );
    assert_eq!(
        m.poll(now, false, 0),
        MasterAction::Wait(None),
        "not agreed"
    );
    assert_eq!(m.poll(now, true, 0), MasterAction::Fetch { number: 4 });
    assert_eq!(
        m.poll(now, true, 0),
        MasterAction::Wait(None),
        "one fetch at a time"
    );
    let offer = m
        .fetched(now, Ok(keys(1, 4, 7)), pool_m.next_block_id(), &mut seen_m)
        .unwrap();
    assert_eq!(offer.block, BlockId(0));
    assert_eq!(offer.key_ids.len(), 4);
    assert!(matches!(m.poll(now, true, 0), MasterAction::Wait(Some(_))));
    // Nothing in the master's pool yet.
    assert_eq!(pool_m.available(), 0);

    s.check_offer(&offer, pool_s.next_block_id(), &seen_s)
        .unwrap();
    let block = s.accept(&offer, same(&offer, 7), &mut seen_s).unwrap();
    pool_s.append(offer.block, block).unwrap();
    let ack = KeyOfferAck {
        block: offer.block,
        accepted: true,
    };
    let (id, bytes) = m.acked(now, ack).unwrap();
    assert_eq!(id, offer.block);
    assert_eq!(bytes.expose(), &[7u8; 128][..]);
    pool_m.append(id, bytes).unwrap();
    assert_eq!(pool_m.available(), pool_s.available());
    // A second ack for the same block is not taken twice.
    assert!(matches!(
        m.acked(now, ack),
        Err(SourceError::UnexpectedAck(_))
    ));
    // The pool is at its target: no fetch.
    assert_eq!(m.poll(now, true, 256), MasterAction::Wait(None));
}

#[test]
fn replayed_key_ids_are_refused_on_both_sides() {
    let now = Instant::now();
    let (mut m, s) = (Master::new(cfg()), Slave::new(cfg()));
    let (mut seen_m, mut seen_s) = (SeenKeyIds::in_memory(), SeenKeyIds::in_memory());
    let offer = m
        .fetched(now, Ok(keys(1, 4, 1)), BlockId(1), &mut seen_m)
        .unwrap();
    s.check_offer(&offer, BlockId(1), &seen_s).unwrap();
    s.accept(&offer, same(&offer, 1), &mut seen_s).unwrap();
    m.acked(
        now,
        KeyOfferAck {
            block: offer.block,
            accepted: true,
        },
    )
    .unwrap();

    // The KME hands the master a key_ID again.
    let e = m
        .fetched(now, Ok(keys(4, 4, 2)), BlockId(2), &mut seen_m)
        .unwrap_err();
    assert!(
        matches!(e, SourceError::Replayed(id) if id == Uuid::from_u128(4)),
        "{e}"
    );
    // The same offer replayed to the slave (a new block ID, old key_IDs).
    let replay = KeyOffer {
        block: BlockId(5),
        ..offer.clone()
    };
    let e = s.check_offer(&replay, BlockId(2), &seen_s).unwrap_err();
    assert!(matches!(e, SourceError::Replayed(_)), "{e}");
    // Even if the check were skipped, accept refuses it.
    assert!(s.accept(&replay, same(&replay, 1), &mut seen_s).is_err());
    // A key_ID twice within one offer.
    let twice = KeyOffer {
        block: BlockId(6),
        size_bits: 256,
        key_ids: vec![Uuid::from_u128(90), Uuid::from_u128(90)],
    };
    assert!(s.check_offer(&twice, BlockId(2), &seen_s).is_err());
}

#[test]
fn bad_offers_and_answers_are_refused() {
    let s = Slave::new(cfg());
    let seen = SeenKeyIds::in_memory();
    let offer = KeyOffer {
        block: BlockId(3),
        size_bits: 256,
        key_ids: vec![Uuid::from_u128(1)],
    };
    let wrong_size = KeyOffer {
        size_bits: 128,
        ..offer.clone()
    };
    assert!(s.check_offer(&wrong_size, BlockId(0), &seen).is_err());
    assert!(
        s.check_offer(&offer, BlockId(4), &seen).is_err(),
        "old block ID"
    );
    let empty = KeyOffer {
        key_ids: vec![],
        ..offer.clone()
    };
    assert!(s.check_offer(&empty, BlockId(0), &seen).is_err());
    let huge = KeyOffer {
        key_ids: (0..2000).map(Uuid::from_u128).collect(),
        ..offer.clone()
    };
    assert!(s.check_offer(&huge, BlockId(0), &seen).is_err());
    // dec_keys answered with other IDs or a short key.
    let mut seen = SeenKeyIds::in_memory();
    assert!(s.accept(&offer, keys(2, 1, 0), &mut seen).is_err());
    let short = vec![KeyItem::new(
        Uuid::from_u128(1),
        SecretBytes::from_slice(&[0; 31]),
    )];
    assert!(s.accept(&offer, short, &mut seen).is_err());
    assert!(seen.is_empty(), "nothing recorded from a refused answer");
}

#[test]
fn failures_back_off_exponentially_up_to_retry_max_and_success_resets() {
    let t0 = Instant::now();
    let mut m = Master::new(cfg());
    let mut seen = SeenKeyIds::in_memory();
    let mut now = t0;
    let mut delays = Vec::new();
    for _ in 0..6 {
        assert_eq!(m.poll(now, true, 0), MasterAction::Fetch { number: 4 });
        let err = KmeError::Status {
            call: super::super::client::KmeCall::EncKeys,
            code: 503,
            message: "no key".into(),
        };
        assert!(
            m.fetched(now, Err(err.into()), BlockId(1), &mut seen)
                .is_err()
        );
        let MasterAction::Wait(Some(until)) = m.poll(now, true, 0) else {
            panic!("must wait after a failure");
        };
        delays.push((until - now).as_secs());
        now = until;
    }
    assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
    // A success resets the back-off.
    assert_eq!(m.poll(now, true, 0), MasterAction::Fetch { number: 4 });
    let offer = m
        .fetched(now, Ok(keys(1, 4, 3)), BlockId(1), &mut seen)
        .unwrap();
    m.acked(
        now,
        KeyOfferAck {
            block: offer.block,
            accepted: true,
        },
    )
    .unwrap();
    assert_eq!(m.backoff().failures(), 0);
    assert_eq!(m.poll(now, true, 0), MasterAction::Fetch { number: 4 });
}

#[test]
fn a_refusal_or_a_missing_ack_drops_the_block_and_its_id() {
    let now = Instant::now();
    let mut m = Master::new(cfg());
    let mut seen = SeenKeyIds::in_memory();
    m.poll(now, true, 0);
    let first = m
        .fetched(now, Ok(keys(1, 4, 1)), BlockId(1), &mut seen)
        .unwrap();
    let e = m
        .acked(
            now,
            KeyOfferAck {
                block: first.block,
                accepted: false,
            },
        )
        .unwrap_err();
    assert!(matches!(e, SourceError::PeerRefused { .. }));
    assert!(m.pending().is_none());
    // The pool's next ID is still 1, but 1 was offered: the next offer
    // uses 2.
    let later = now + Duration::from_secs(2);
    assert_eq!(m.poll(later, true, 0), MasterAction::Fetch { number: 4 });
    let second = m
        .fetched(later, Ok(keys(10, 4, 1)), BlockId(1), &mut seen)
        .unwrap();
    assert_eq!(second.block, BlockId(2));
    // No ack within the timeout.
    let overdue = later + cfg().ack_timeout;
    assert!(matches!(
        m.poll(overdue, true, 0),
        MasterAction::AckOverdue {
            block: BlockId(2),
            ..
        }
    ));
    assert!(m.pending().is_none());
    // A late ack is not taken.
    assert!(
        m.acked(
            overdue,
            KeyOfferAck {
                block: BlockId(2),
                accepted: true
            }
        )
        .is_err()
    );
    // The session ends while an offer is pending.
    let t = overdue + Duration::from_secs(10);
    assert_eq!(m.poll(t, true, 0), MasterAction::Fetch { number: 4 });
    m.fetched(t, Ok(keys(20, 4, 1)), BlockId(1), &mut seen)
        .unwrap();
    assert_eq!(m.abandon(), Some(BlockId(3)));
}

/// A relay's refusal of the pending key drops the offer at once (no key
/// waits for an ack that will never come) and starts the back-off; a
/// refusal naming another key changes nothing.
#[test]
fn a_refused_pending_key_is_dropped_and_backs_off() {
    let now = Instant::now();
    let mut m = Master::new(cfg());
    let mut seen = SeenKeyIds::in_memory();
    assert_eq!(m.poll(now, true, 0), MasterAction::Fetch { number: 4 });
    let offer = m
        .fetched(now, Ok(keys(1, 4, 5)), BlockId(1), &mut seen)
        .unwrap();
    assert!(!m.refused(now, &Uuid::from_u128(99)), "not the pending key");
    assert!(m.pending().is_some());
    assert!(m.refused(now, &offer.key_ids[2]));
    assert!(m.pending().is_none());
    assert!(
        matches!(m.poll(now, true, 0), MasterAction::Wait(Some(_))),
        "backs off"
    );
    // The slave's late refusal is for a block no longer pending.
    let late = m.acked(
        now,
        KeyOfferAck {
            block: offer.block,
            accepted: false,
        },
    );
    assert!(matches!(late, Err(SourceError::UnexpectedAck(_))));
}
