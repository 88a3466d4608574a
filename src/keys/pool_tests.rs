//! Tests of the in-memory pool, the agreement and their encodings (no files).

use super::agreement::{AgreementCheck, PoolSummary, agree};
use super::codec::{decode_pool, encode_pool};
use super::pool::*;
use crate::qkd::wire::{WireReader, WireWriter};
use crate::secret::SecretBytes;

/// Deterministic, distinct-looking block contents.
pub(super) fn block_bytes(id: u64, len: usize) -> SecretBytes {
    let mut b = SecretBytes::zeroed(len);
    for (i, x) in b.expose_mut().iter_mut().enumerate() {
        *x = (id as u8)
            .wrapping_mul(31)
            .wrapping_add((i as u8).wrapping_mul(7))
            | 1;
    }
    b
}

/// A transmitter and a receiver pool holding the same `n` blocks of `len`.
fn pair(n: u64, len: usize) -> (KeyPool, KeyPool) {
    let mut tx = KeyPool::new(Role::Transmitter);
    let mut rx = KeyPool::new(Role::Receiver);
    for id in 0..n {
        tx.append(BlockId(id), block_bytes(id, len)).unwrap();
        rx.append(BlockId(id), block_bytes(id, len)).unwrap();
    }
    (tx, rx)
}

/// Test-only views of a pool.
impl KeyPool {
    /// Every still-available byte, block by block, for comparing two pools
    /// in tests.
    pub(super) fn available_bytes(&self) -> SecretBytes {
        let mut out = SecretBytes::zeroed(self.available() as usize);
        let mut at = 0;
        for b in self.blocks.values() {
            for (s, e) in b.consumed.gaps(0, b.len()) {
                let n = (e - s) as usize;
                out.expose_mut()[at..at + n]
                    .copy_from_slice(&b.data.expose()[s as usize..e as usize]);
                at += n;
            }
        }
        out
    }

    /// Whether every consumed byte of every block is zero in memory.
    pub(super) fn consumed_bytes_are_zero(&self) -> bool {
        self.blocks.values().all(|b| {
            b.consumed.ranges().iter().all(|&(s, e)| {
                b.data.expose()[s as usize..e as usize]
                    .iter()
                    .all(|x| *x == 0)
            })
        })
    }
}

#[test]
fn lockstep_takes_give_both_sides_the_same_bytes() {
    let (mut tx, mut rx) = pair(4, 100);
    // Transmitter-initiated, within one block.
    let (r, k) = tx.take(KeyUse::SaKey, 36).unwrap();
    assert_eq!(
        r.segments(),
        &[Segment {
            block: BlockId(0),
            offset: 0,
            len: 36
        }]
    );
    assert!(rx.take_at(&r, KeyUse::SaKey).unwrap().ct_eq(&k));
    // Receiver-initiated: drawn from the second half.
    let (r, k) = rx.take(KeyUse::Auth, 20).unwrap();
    assert_eq!(
        r.segments(),
        &[Segment {
            block: BlockId(0),
            offset: 50,
            len: 20
        }]
    );
    assert!(tx.take_at(&r, KeyUse::Auth).unwrap().ct_eq(&k));
    // Larger than what is left of one half: spans blocks.
    let (r, k) = tx.take(KeyUse::Wrap, 72).unwrap();
    assert_eq!(
        r.segments(),
        &[
            Segment {
                block: BlockId(0),
                offset: 36,
                len: 14
            },
            Segment {
                block: BlockId(1),
                offset: 0,
                len: 50
            },
            Segment {
                block: BlockId(2),
                offset: 0,
                len: 8
            },
        ]
    );
    assert!(rx.take_at(&r, KeyUse::Wrap).unwrap().ct_eq(&k));
    assert_eq!(tx.holdings_digest(), rx.holdings_digest());
    assert!(tx.consumed_bytes_are_zero() && rx.consumed_bytes_are_zero());
    let c = tx.counters();
    assert_eq!(c.for_use(KeyUse::SaKey).initiated_bytes, 36);
    assert_eq!(c.for_use(KeyUse::Auth).accepted_takes, 1);
    assert_eq!(c.for_use(KeyUse::Wrap).initiated_bytes, 72);
    assert_eq!(rx.counters().for_use(KeyUse::Auth).initiated_bytes, 20);
    assert_eq!(tx.available(), 400 - 36 - 20 - 72);
}

#[test]
fn take_at_refuses_and_changes_nothing() {
    let (mut tx, mut rx) = pair(2, 100);
    let (r, _) = tx.take(KeyUse::SaKey, 10).unwrap();
    rx.take_at(&r, KeyUse::SaKey).unwrap();
    let before = (rx.summary(), rx.available_bytes());
    let seg = |block, offset, len| {
        KeyRef::decode(&mut WireReader::new(&encode_ref(&[(block, offset, len)]))).unwrap()
    };
    type IsExpected = fn(&PoolError) -> bool;
    let cases: Vec<(KeyRef, IsExpected)> = vec![
        (r.clone(), |e| {
            matches!(e, PoolError::AlreadyConsumed { .. })
        }),
        (seg(0, 5, 10), |e| {
            matches!(e, PoolError::AlreadyConsumed { .. })
        }),
        (seg(9, 0, 4), |e| matches!(e, PoolError::NotHeld { .. })),
        // The receiver's own half: only its own takes may draw from it.
        (seg(1, 50, 4), |e| {
            matches!(e, PoolError::OutsideRegion { .. })
        }),
        (seg(1, 48, 4), |e| {
            matches!(e, PoolError::OutsideRegion { .. })
        }),
        (seg(1, 98, 4), |e| {
            matches!(e, PoolError::OutOfBounds { .. })
        }),
        (seg(1, u32::MAX, 2), |e| {
            matches!(e, PoolError::OutOfBounds { .. })
        }),
        (seg(1, 3, 0), |e| {
            matches!(e, PoolError::BadTakeLength { .. })
        }),
    ];
    for (bad, is_expected) in cases {
        let err = rx.take_at(&bad, KeyUse::SaKey).unwrap_err();
        assert!(is_expected(&err), "{bad:?}: {err}");
    }
    // Two segments overlapping each other, each free on its own.
    let overlap =
        KeyRef::decode(&mut WireReader::new(&encode_ref(&[(1, 0, 8), (1, 4, 8)]))).unwrap();
    assert!(matches!(
        rx.take_at(&overlap, KeyUse::SaKey),
        Err(PoolError::AlreadyConsumed { .. })
    ));
    // A good segment followed by a bad one: all or nothing.
    let half_bad =
        KeyRef::decode(&mut WireReader::new(&encode_ref(&[(1, 0, 8), (7, 0, 8)]))).unwrap();
    assert!(rx.take_at(&half_bad, KeyUse::SaKey).is_err());
    assert_eq!(rx.summary(), before.0);
    assert!(rx.available_bytes().ct_eq(&before.1));
    assert_eq!(rx.counters().for_use(KeyUse::SaKey).accepted_takes, 1);
}

fn encode_ref(segs: &[(u64, u32, u32)]) -> Vec<u8> {
    let mut w = WireWriter::new();
    w.u32(segs.len() as u32);
    for &(b, o, l) in segs {
        w.u64(b).u32(o).u32(l);
    }
    w.finish()
}

#[test]
fn used_up_blocks_are_dropped_and_ids_never_reused() {
    let (mut tx, mut rx) = pair(1, 10);
    let (r, _) = tx.take(KeyUse::Channel, 5).unwrap();
    rx.take_at(&r, KeyUse::Channel).unwrap();
    let (r, _) = rx.take(KeyUse::Channel, 5).unwrap();
    tx.take_at(&r, KeyUse::Channel).unwrap();
    assert_eq!((tx.block_count(), rx.block_count()), (0, 0));
    assert!(matches!(
        tx.append(BlockId(0), block_bytes(0, 10)),
        Err(PoolError::BlockIdNotIncreasing { .. })
    ));
    assert_eq!(tx.next_block_id(), BlockId(1));
    assert!(matches!(
        tx.append(BlockId(1), SecretBytes::zeroed(0)),
        Err(PoolError::EmptyBlock { .. })
    ));
    assert!(matches!(
        tx.append(
            BlockId(1),
            SecretBytes::zeroed(MAX_BLOCK_BYTES as usize + 1)
        ),
        Err(PoolError::BlockTooLarge { .. })
    ));
    assert!(matches!(
        tx.take(KeyUse::SaKey, 1),
        Err(PoolError::Exhausted { .. })
    ));
}

#[test]
fn exhaustion_and_low_water_concern_this_sides_half() {
    let (mut tx, _) = pair(2, 64);
    tx.set_low_water(40);
    assert!(!tx.is_below_low_water());
    assert_eq!(tx.status().available_to_initiate, 64);
    tx.take(KeyUse::SaKey, 36).unwrap();
    let st = tx.status();
    assert!(st.below_low_water && tx.is_below_low_water());
    assert_eq!((st.available_to_initiate, st.available_to_accept), (28, 64));
    // 28 left in this side's halves; the peer's 64 are not usable.
    let err = tx.take(KeyUse::SaKey, 36).unwrap_err();
    assert_eq!(
        err,
        PoolError::Exhausted {
            key_use: KeyUse::SaKey,
            wanted: 36,
            available: 28
        }
    );
    assert!(matches!(
        tx.take(KeyUse::SaKey, 0),
        Err(PoolError::BadTakeLength { .. })
    ));
}

#[test]
fn codec_roundtrip_keeps_bytes_positions_and_counters() {
    let (mut tx, mut rx) = pair(3, 90);
    for _ in 0..3 {
        let (r, _) = tx.take(KeyUse::SaKey, 20).unwrap();
        rx.take_at(&r, KeyUse::SaKey).unwrap();
    }
    let (r, _) = rx.take(KeyUse::Application, 50).unwrap();
    tx.take_at(&r, KeyUse::Application).unwrap();
    let back = decode_pool(encode_pool(&tx).expose(), Role::Transmitter, 2).unwrap();
    assert_eq!(back.summary(), tx.summary());
    assert!(back.available_bytes().ct_eq(&tx.available_bytes()));
    assert_eq!(back.counters(), tx.counters());
    assert_eq!(back.high_water(), tx.high_water());
    assert!(back.consumed_bytes_are_zero());
}

/// A format-version-1 snapshot counted five key uses (no `relay`): it
/// still loads, with its counters in the right places.
#[test]
fn codec_reads_version_1_snapshots_without_relay_counters() {
    let (mut tx, mut rx) = pair(3, 90);
    let (r, _) = tx.take(KeyUse::Channel, 20).unwrap();
    rx.take_at(&r, KeyUse::Channel).unwrap();
    let v2 = encode_pool(&tx);
    // Drop the relay use's four counters: high water (8 bytes), then five
    // uses of four u64 each.
    let relay_at = 8 + 5 * 4 * 8;
    let mut v1 = v2.expose()[..relay_at].to_vec();
    v1.extend_from_slice(&v2.expose()[relay_at + 4 * 8..]);
    let back = decode_pool(&v1, Role::Transmitter, 1).unwrap();
    assert_eq!(back.counters(), tx.counters());
    assert_eq!(back.summary(), tx.summary());
    assert!(decode_pool(&v1, Role::Transmitter, 2).is_err());
}

#[test]
fn agreement_keeps_the_intersection_and_unites_consumption() {
    let (mut tx, mut rx) = pair(4, 40);
    // Lost frame: the receiver never saw this take.
    let (_lost, _) = tx.take(KeyUse::SaKey, 30).unwrap();
    // Block 4 reached only the transmitter, block 5 only the receiver.
    tx.append(BlockId(4), block_bytes(4, 40)).unwrap();
    rx.append(BlockId(5), block_bytes(5, 40)).unwrap();
    // Same ID, different length on the two sides (a bug somewhere).
    tx.append(BlockId(6), block_bytes(6, 40)).unwrap();
    rx.append(BlockId(6), block_bytes(6, 48)).unwrap();
    let (ts, rs) = (tx.summary(), rx.summary());
    assert_eq!(agree(&ts, &rs), agree(&rs, &ts));
    let a = tx.apply_agreement(&rs);
    let b = rx.apply_agreement(&ts);
    assert_eq!(a.digest, b.digest);
    assert_eq!(tx.holdings_digest(), rx.holdings_digest());
    assert!(tx.available_bytes().ct_eq(&rx.available_bytes()));
    assert_eq!((a.discarded_blocks, b.discarded_blocks), (2, 2));
    assert_eq!(b.newly_consumed_bytes, 30);
    assert_eq!(tx.high_water(), Some(BlockId(6)));
    assert_eq!(rx.next_block_id(), BlockId(7));
    assert!(rx.consumed_bytes_are_zero());
    // Lockstep works again afterwards.
    let (r, k) = rx.take(KeyUse::SaKey, 36).unwrap();
    assert!(tx.take_at(&r, KeyUse::SaKey).unwrap().ct_eq(&k));
}

#[test]
fn a_block_used_up_between_the_two_sides_counts_as_consumed() {
    let (mut tx, mut rx) = pair(2, 20);
    // Each side used its own half of block 0; both messages were lost.
    tx.take(KeyUse::Auth, 10).unwrap();
    rx.take(KeyUse::Auth, 10).unwrap();
    let (ts, rs) = (tx.summary(), rx.summary());
    let a = tx.apply_agreement(&rs);
    let b = rx.apply_agreement(&ts);
    for out in [a, b] {
        assert_eq!((out.discarded_blocks, out.discarded_bytes), (0, 0));
        assert_eq!((out.kept_blocks, out.newly_consumed_bytes), (1, 10));
    }
    assert_eq!(a.digest, b.digest);
}

#[test]
fn summary_and_check_messages_roundtrip_and_refuse_non_canonical_input() {
    let (mut tx, _) = pair(3, 40);
    tx.take(KeyUse::SaKey, 25).unwrap();
    let s = tx.summary();
    assert_eq!(PoolSummary::decode(&s.encode()).unwrap(), s);
    let check = AgreementCheck { digest: s.digest() };
    assert_eq!(AgreementCheck::decode(&check.encode()).unwrap(), check);

    type Ranges<'a> = &'a [(u32, u32)];
    let encode = |high: u64, blocks: &[(u64, u32, Ranges)]| {
        let mut w = WireWriter::new();
        w.u8(1).u64(high).u32(blocks.len() as u32);
        for (id, len, ranges) in blocks {
            w.u64(*id).u32(*len).u32(ranges.len() as u32);
            for (a, b) in *ranges {
                w.u32(*a).u32(*b);
            }
        }
        w.finish()
    };
    assert!(PoolSummary::decode(&encode(10, &[(1, 8, &[(0, 2)]), (3, 8, &[])])).is_ok());
    for bad in [
        encode(10, &[(3, 8, &[]), (1, 8, &[])]),      // unsorted
        encode(10, &[(1, 8, &[]), (1, 8, &[])]),      // duplicate
        encode(2, &[(3, 8, &[])]),                    // above high water
        encode(0, &[(0, 8, &[])]),                    // blocks without high water
        encode(10, &[(1, 8, &[(0, 9)])]),             // range past the end
        encode(10, &[(1, 8, &[(0, 8)])]),             // used up
        encode(10, &[(1, 8, &[(0, 2), (2, 3)])]),     // adjacent ranges
        encode(10, &[(1, 0, &[])]),                   // empty block
        encode(10, &[(1, MAX_BLOCK_BYTES + 1, &[])]), // oversized block
    ] {
        assert!(PoolSummary::decode(&bad).is_err());
    }
    let mut too_many = WireWriter::new();
    too_many.u8(1).u64(1).u32(MAX_BLOCKS as u32 + 1);
    assert!(PoolSummary::decode(&too_many.finish()).is_err());
    let mut trailing = s.encode();
    trailing.push(0);
    assert!(PoolSummary::decode(&trailing).is_err());
    let long_ref = encode_ref(&vec![(0, 0, 1); MAX_SEGMENTS + 1]);
    assert!(KeyRef::decode(&mut WireReader::new(&long_ref)).is_err());
}

#[test]
fn debug_output_never_shows_key_bytes() {
    let mut tx = KeyPool::new(Role::Transmitter);
    let mut block = SecretBytes::zeroed(64);
    for c in block.expose_mut().chunks_mut(4) {
        c.copy_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF]);
    }
    tx.append(BlockId(3), block).unwrap();
    let (r, key) = tx.take(KeyUse::SaKey, 8).unwrap();
    let summary = tx.summary();
    let outcome = tx.apply_agreement(&summary);
    let shown = [
        format!("{tx:?}"),
        format!("{tx:#?}"),
        format!("{key:?}"),
        format!("{r:?}"),
        format!("{summary:?}"),
        format!("{outcome:?}"),
        format!("{:?}", tx.status()),
    ];
    for s in shown {
        let lower = s.to_lowercase();
        for leak in ["dead", "beef", "222, 173", "190, 239", "0xde"] {
            assert!(!lower.contains(leak), "key bytes in Debug: {s}");
        }
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Summaries roundtrip, and decoding arbitrary bytes never panics.
        #[test]
        fn summary_decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = PoolSummary::decode(&bytes);
            let _ = KeyRef::decode(&mut WireReader::new(&bytes));
            let _ = AgreementCheck::decode(&bytes);
        }

        /// Whatever the two sides' consumption, agreeing is symmetric and
        /// leaves byte-identical pools.
        #[test]
        fn agreement_makes_pools_identical(
            takes in proptest::collection::vec((any::<bool>(), 1u32..40, any::<bool>()), 0..30),
            extra_tx in any::<bool>(),
            extra_rx in any::<bool>(),
        ) {
            let (mut tx, mut rx) = pair(3, 60);
            // Blocks that reached one side only: takes may draw from them and
            // the peer must refuse those references.
            if extra_tx {
                tx.append(BlockId(3), block_bytes(3, 60)).unwrap();
            }
            if extra_rx {
                rx.append(BlockId(4), block_bytes(4, 60)).unwrap();
            }
            for (from_tx, len, delivered) in takes {
                let (a, b) = if from_tx { (&mut tx, &mut rx) } else { (&mut rx, &mut tx) };
                let Ok((r, k)) = a.take(KeyUse::SaKey, len) else { continue };
                if delivered {
                    match b.take_at(&r, KeyUse::SaKey) {
                        Ok(k2) => prop_assert!(k2.ct_eq(&k)),
                        Err(e) => prop_assert!(
                            r.segments().iter().any(|s| s.block.0 >= 3),
                            "refused a shared block: {}", e
                        ),
                    }
                }
            }
            let (ts, rs) = (tx.summary(), rx.summary());
            prop_assert_eq!(agree(&ts, &rs), agree(&rs, &ts));
            let (a, b) = (tx.apply_agreement(&rs), rx.apply_agreement(&ts));
            prop_assert_eq!(a.digest, b.digest);
            prop_assert!(tx.available_bytes().ct_eq(&rx.available_bytes()));
            prop_assert!(tx.consumed_bytes_are_zero() && rx.consumed_bytes_are_zero());
        }
    }

    /// Positions handed out so far: (block, offset) → which take.
    pub(crate) type Ledger = HashMap<(u64, u32), usize>;

    /// Records a take's positions, failing if any byte was handed out before.
    pub(crate) fn record(ledger: &mut Ledger, r: &KeyRef, take: usize) -> Result<(), String> {
        for s in r.segments() {
            for o in s.offset..s.offset + s.len {
                if let Some(prev) = ledger.insert((s.block.0, o), take) {
                    return Err(format!(
                        "block {} byte {o} reused: takes {prev} and {take}",
                        s.block
                    ));
                }
            }
        }
        Ok(())
    }
}

pub(crate) use properties::{Ledger, record};
