//! Tests of the durable pool: restarts, crashes, tampering, permissions.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::pool_tests::{Ledger, block_bytes, record};
use super::store::locate_for_test;
use super::*;
use crate::secret::file::{SecretFileError, TestDir};
use crate::secret::{Secret, SecretBytes, write_secret_file};

fn pool_key(fill: u8) -> PoolKey {
    PoolKey::from_secret(Secret::<32>::from_slice(&[fill; 32]).unwrap())
}

/// One gateway's pool directory; the peer name is the other side's.
struct Side {
    dir: TestDir,
    role: Role,
    pool: Option<PersistedPool>,
}

impl Side {
    fn new(role: Role) -> Self {
        let dir = TestDir::new("pool");
        let pool =
            Some(PersistedPool::open(dir.path(), Self::peer_of(role), role, &pool_key(7)).unwrap());
        Self { dir, role, pool }
    }

    fn peer_of(role: Role) -> &'static str {
        match role {
            Role::Transmitter => "gw-b",
            Role::Receiver => "gw-a",
        }
    }

    fn p(&mut self) -> &mut PersistedPool {
        self.pool.as_mut().expect("open")
    }

    fn reopen(&mut self) -> Result<(), StoreError> {
        self.pool = None;
        self.pool = Some(PersistedPool::open(
            self.dir.path(),
            Self::peer_of(self.role),
            self.role,
            &pool_key(7),
        )?);
        Ok(())
    }

    fn files(&self) -> [PathBuf; 2] {
        let peer = Self::peer_of(self.role);
        [
            self.dir.path().join(format!("{peer}.pool")),
            self.dir.path().join(format!("{peer}.journal")),
        ]
    }

    /// Copies of the files as they are on disk now (None: absent).
    fn backup(&self) -> Vec<Option<Vec<u8>>> {
        self.files().iter().map(|f| fs::read(f).ok()).collect()
    }

    fn restore(&self, backup: &[Option<Vec<u8>>]) {
        for (f, b) in self.files().iter().zip(backup) {
            match b {
                Some(bytes) => write_0600(f, bytes),
                None => {
                    let _ = fs::remove_file(f);
                }
            }
        }
    }
}

/// What a crash or an operator leaves: a file with these bytes, mode 0600.
fn write_0600(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

fn pair_with_blocks(n: u64, len: usize) -> (Side, Side) {
    let (mut tx, mut rx) = (Side::new(Role::Transmitter), Side::new(Role::Receiver));
    for id in 0..n {
        tx.p().append(BlockId(id), block_bytes(id, len)).unwrap();
        rx.p().append(BlockId(id), block_bytes(id, len)).unwrap();
    }
    (tx, rx)
}

fn assert_identical(a: &mut Side, b: &mut Side) {
    let (pa, pb) = (a.p().pool(), b.p().pool());
    assert_eq!(pa.holdings_digest(), pb.holdings_digest());
    assert!(pa.available_bytes().ct_eq(&pb.available_bytes()));
}

#[test]
fn restart_keeps_blocks_bytes_counters_and_consumption() {
    let (mut tx, mut rx) = pair_with_blocks(3, 96);
    let (r1, k1) = tx.p().take(KeyUse::SaKey, 36).unwrap();
    assert!(rx.p().take_at(&r1, KeyUse::SaKey).unwrap().ct_eq(&k1));
    let (r2, k2) = rx.p().take(KeyUse::Auth, 16).unwrap();
    let before = (
        tx.p().summary(),
        tx.p().pool().available_bytes(),
        *tx.p().pool().counters(),
    );
    tx.reopen().unwrap();
    rx.reopen().unwrap();
    assert_eq!(tx.p().summary(), before.0);
    assert!(tx.p().pool().available_bytes().ct_eq(&before.1));
    assert_eq!(tx.p().pool().counters(), &before.2);
    // Accepted before the restart: still refused after it.
    assert!(matches!(
        rx.p().take_at(&r1, KeyUse::SaKey),
        Err(StoreError::Pool(PoolError::AlreadyConsumed { .. }))
    ));
    // Initiated before the restart, delivered after it.
    assert!(tx.p().take_at(&r2, KeyUse::Auth).unwrap().ct_eq(&k2));
    // New takes never return the old positions.
    let (r3, k3) = tx.p().take(KeyUse::SaKey, 36).unwrap();
    assert_eq!(r3.segments()[0].offset, 36);
    assert!(rx.p().take_at(&r3, KeyUse::SaKey).unwrap().ct_eq(&k3));
    assert_identical(&mut tx, &mut rx);
    assert!(tx.p().pool().consumed_bytes_are_zero());
    let mode = fs::metadata(tx.p().snapshot_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let mode = fs::metadata(tx.p().journal_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn every_flipped_byte_of_snapshot_or_journal_fails_to_load() {
    let (mut tx, _rx) = pair_with_blocks(2, 40);
    tx.reopen().unwrap(); // everything in the snapshot, no journal
    tx.p().take(KeyUse::SaKey, 12).unwrap();
    tx.p().append(BlockId(2), block_bytes(2, 24)).unwrap();
    tx.p().take(KeyUse::Wrap, 30).unwrap();
    tx.pool = None;
    let good = tx.backup();
    assert!(
        good.iter().all(Option::is_some),
        "snapshot and journal both exist"
    );
    for (file_index, name) in [(0, "snapshot"), (1, "journal")] {
        let len = good[file_index].as_ref().unwrap().len();
        for i in 0..len {
            let mut bad = good.clone();
            bad[file_index].as_mut().unwrap()[i] ^= 0x10;
            tx.restore(&bad);
            let result = tx.reopen();
            assert!(
                result.is_err(),
                "{name} byte {i} of {len} flipped, yet the pool loaded"
            );
        }
    }
    tx.restore(&good);
    tx.reopen().unwrap();
    assert_eq!(tx.p().pool().block_count(), 3);
}

#[test]
fn wrong_key_peer_or_role_is_refused_with_the_file_named() {
    let (tx, _rx) = pair_with_blocks(1, 40);
    let dir = tx.dir.path();
    let err = PersistedPool::open(dir, "gw-b", Role::Transmitter, &pool_key(8)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Authentication { .. }), "{msg}");
    assert!(
        msg.contains("gw-b.pool") && msg.contains("wrong pool key"),
        "{msg}"
    );
    // Same files under another peer's name.
    fs::copy(dir.join("gw-b.pool"), dir.join("gw-c.pool")).unwrap();
    let err = PersistedPool::open(dir, "gw-c", Role::Transmitter, &pool_key(7)).unwrap_err();
    assert!(matches!(err, StoreError::WrongOwner { .. }), "{err}");
    let err = PersistedPool::open(dir, "gw-b", Role::Receiver, &pool_key(7)).unwrap_err();
    assert!(matches!(err, StoreError::WrongOwner { .. }), "{err}");
    assert!(err.to_string().contains("role"), "{err}");
    for bad in ["", ".hidden", "a/b", "x".repeat(65).as_str()] {
        assert!(matches!(
            PersistedPool::open(dir, bad, Role::Receiver, &pool_key(7)),
            Err(StoreError::BadPeerName(_))
        ));
    }
}

#[test]
fn readable_pool_files_and_credentials_are_refused() {
    let (mut tx, _rx) = pair_with_blocks(1, 40);
    tx.p().take(KeyUse::SaKey, 4).unwrap();
    tx.pool = None;
    for f in tx.files() {
        fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
        let err = tx.reopen().unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::File(SecretFileError::TooOpen { .. })),
            "{msg}"
        );
        assert!(
            msg.contains(&f.display().to_string()) && msg.contains("chmod 600"),
            "{msg}"
        );
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    }
    tx.reopen().unwrap();

    let cred = tx.dir.path().join("pool.key");
    write_secret_file(&cred, &SecretBytes::from_slice(&[7; 32])).unwrap();
    PoolKey::load(&cred).unwrap();
    fs::set_permissions(&cred, fs::Permissions::from_mode(0o644)).unwrap();
    let err = PoolKey::load(&cred).unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
    write_secret_file(&cred, &SecretBytes::from_slice(&[7; 31])).unwrap();
    let err = PoolKey::load(&cred).unwrap_err();
    assert!(
        matches!(err, StoreError::BadPoolKey { .. }) && err.to_string().contains("32"),
        "{err}"
    );
    let p = Path::new("/etc/k");
    assert_eq!(locate_for_test(Some(p), Some("/run/creds")).unwrap(), p);
    assert_eq!(
        locate_for_test(None, Some("/run/creds")).unwrap(),
        Path::new("/run/creds").join(POOL_KEY_CREDENTIAL)
    );
    assert!(matches!(
        locate_for_test(None, None),
        Err(StoreError::NoPoolKey)
    ));
}

#[test]
fn torn_journal_tail_drops_only_the_unfinished_change() {
    let (mut tx, _rx) = pair_with_blocks(2, 40);
    tx.p().take(KeyUse::SaKey, 8).unwrap();
    let after_first = tx.p().summary();
    tx.p().take(KeyUse::SaKey, 8).unwrap();
    tx.pool = None;
    let journal = tx.files()[1].clone();
    let bytes = fs::read(&journal).unwrap();
    // Cut inside the last record, then zeros past the end (delayed
    // allocation after a power cut).
    for torn in [
        bytes[..bytes.len() - 5].to_vec(),
        [&bytes[..bytes.len() - 30], &[0u8; 30][..]].concat(),
    ] {
        write_0600(&journal, &torn);
        tx.reopen().unwrap();
        assert_eq!(tx.p().summary(), after_first);
        tx.pool = None;
        write_0600(&journal, &bytes);
    }
}

#[test]
fn journal_left_by_a_crash_during_compaction_is_recognised() {
    let (mut tx, _rx) = pair_with_blocks(2, 40);
    tx.p().take(KeyUse::SaKey, 8).unwrap();
    let old_journal = fs::read(&tx.files()[1]).unwrap();
    // Compaction wrote the new snapshot, then the crash kept the journal.
    tx.p().compact().unwrap();
    let state = tx.p().summary();
    tx.pool = None;
    // Altered, it is an error even though it would be skipped.
    let mut altered = old_journal.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    write_0600(&tx.files()[1], &altered);
    assert!(matches!(
        tx.reopen(),
        Err(StoreError::Authentication { .. })
    ));
    write_0600(&tx.files()[1], &old_journal);
    tx.reopen().unwrap();
    assert_eq!(tx.p().summary(), state);
    // A journal from two generations back belongs to no snapshot we know.
    tx.pool = None;
    write_0600(&tx.files()[1], &old_journal);
    assert!(matches!(tx.reopen(), Err(StoreError::Corrupt { .. })));
    // A journal without its snapshot.
    fs::remove_file(&tx.files()[0]).unwrap();
    let err = tx.reopen().unwrap_err();
    assert!(err.to_string().contains("without its snapshot"), "{err}");
}

/// The crash test of the brief: one side loses its last persisted changes
/// (its files roll back), the other does not; agreement makes them equal
/// and nothing is ever handed out twice.
#[test]
fn agreement_after_a_lost_persist_makes_the_pools_identical() {
    for lost_ops in [1, 4] {
        let (mut tx, mut rx) = pair_with_blocks(4, 64);
        let mut ledger = Ledger::new();
        let mut takes = 0;
        let mut lockstep = |a: &mut Side, b: &mut Side, ledger: &mut Ledger, len| {
            let (r, k) = a.p().take(KeyUse::SaKey, len).unwrap();
            takes += 1;
            record(ledger, &r, takes).unwrap();
            assert!(b.p().take_at(&r, KeyUse::SaKey).unwrap().ct_eq(&k));
        };
        lockstep(&mut tx, &mut rx, &mut ledger, 20);
        lockstep(&mut rx, &mut tx, &mut ledger, 20);
        let mut history = vec![rx.backup()];
        // The changes the receiver will lose: accepting, initiating, appending.
        lockstep(&mut tx, &mut rx, &mut ledger, 36);
        history.push(rx.backup());
        lockstep(&mut rx, &mut tx, &mut ledger, 36);
        history.push(rx.backup());
        tx.p().append(BlockId(4), block_bytes(4, 64)).unwrap();
        rx.p().append(BlockId(4), block_bytes(4, 64)).unwrap();
        history.push(rx.backup());
        lockstep(&mut tx, &mut rx, &mut ledger, 50);
        history.push(rx.backup());
        rx.pool = None;
        rx.restore(&history[history.len() - 1 - lost_ops]);
        rx.reopen().unwrap();
        assert_ne!(
            rx.p().pool().holdings_digest(),
            tx.p().pool().holdings_digest()
        );

        let (ts, rs) = (tx.p().summary(), rx.p().summary());
        let (ts, rs) = (
            PoolSummary::decode(&ts.encode()).unwrap(),
            PoolSummary::decode(&rs.encode()).unwrap(),
        );
        let a = tx.p().apply_agreement(&rs).unwrap();
        let b = rx.p().apply_agreement(&ts).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_identical(&mut tx, &mut rx);
        // Durable: both still agree after restarting.
        tx.reopen().unwrap();
        rx.reopen().unwrap();
        assert_identical(&mut tx, &mut rx);
        // Everything left is fresh, in lockstep, from either side.
        while tx.p().pool().available_for(Role::Transmitter) >= 8 {
            lockstep(&mut tx, &mut rx, &mut ledger, 8);
        }
        while rx.p().pool().available_for(Role::Receiver) >= 8 {
            lockstep(&mut rx, &mut tx, &mut ledger, 8);
        }
    }
}

#[test]
fn debug_of_persistent_types_is_redacted() {
    let (mut tx, _rx) = pair_with_blocks(1, 40);
    let key = pool_key(0xAB);
    let shown = [
        format!("{:?}", tx.p()),
        format!("{key:?}"),
        format!("{:?}", StoreError::NoPoolKey),
    ];
    for s in shown {
        let lower = s.to_lowercase();
        // The key as a list or as hex, in any Debug style.
        for leak in ["ab, ab", "171, 171", "abab", "0xab"] {
            assert!(!lower.contains(leak), "{s}");
        }
    }
    assert_eq!(format!("{key:?}"), "PoolKey(<redacted>)");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A block to both sides, or (lost on the way) to one only.
        Append {
            len: usize,
            only: Option<bool>,
        },
        Take {
            from_tx: bool,
            len: u32,
        },
        Deliver(usize),
        Lose(usize),
        Replay(usize),
        Restart(bool),
        Agree,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (8usize..120, prop_oneof![4 => Just(None), 1 => any::<bool>().prop_map(Some)])
                .prop_map(|(len, only)| Op::Append { len, only }),
            5 => (any::<bool>(), 1u32..48).prop_map(|(from_tx, len)| Op::Take { from_tx, len }),
            4 => any::<usize>().prop_map(Op::Deliver),
            1 => any::<usize>().prop_map(Op::Lose),
            1 => any::<usize>().prop_map(Op::Replay),
            1 => any::<bool>().prop_map(Op::Restart),
            1 => Just(Op::Agree),
        ]
    }

    struct InFlight {
        from_tx: bool,
        key_ref: KeyRef,
        key: SecretBytes,
        epoch: u32,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Random interleavings of both sides' appends, takes, deliveries,
        /// lost and replayed frames, restarts and agreements: no byte is
        /// ever handed out by two takes, an accepted key always equals the
        /// initiator's, a restart changes nothing, and agreement always ends
        /// in identical pools.
        #[test]
        fn no_reuse_under_any_interleaving(ops in proptest::collection::vec(op(), 1..40)) {
            let (mut tx, mut rx) = (Side::new(Role::Transmitter), Side::new(Role::Receiver));
            let mut next_id = 0u64;
            let mut one_sided: Vec<(bool, u64)> = Vec::new(); // (held by tx, id)
            let mut ledger = Ledger::new();
            let (mut takes, mut epoch) = (0usize, 0u32);
            let mut in_flight: Vec<InFlight> = Vec::new();
            let mut delivered: Vec<(bool, KeyRef)> = Vec::new();
            for op in ops {
                match op {
                    Op::Append { len, only } => {
                        let id = BlockId(next_id);
                        next_id += 1;
                        if only != Some(false) { tx.p().append(id, block_bytes(id.0, len)).unwrap(); }
                        if only != Some(true) { rx.p().append(id, block_bytes(id.0, len)).unwrap(); }
                        if let Some(t) = only { one_sided.push((t, id.0)); }
                    }
                    Op::Take { from_tx, len } => {
                        let side = if from_tx { &mut tx } else { &mut rx };
                        if let Ok((key_ref, key)) = side.p().take(KeyUse::Channel, len) {
                            takes += 1;
                            record(&mut ledger, &key_ref, takes).map_err(TestCaseError::fail)?;
                            in_flight.push(InFlight { from_tx, key_ref, key, epoch });
                        }
                    }
                    Op::Deliver(i) | Op::Lose(i) if in_flight.is_empty() => { let _ = i; }
                    Op::Deliver(i) => {
                        let m = in_flight.remove(i % in_flight.len());
                        let responder = if m.from_tx { &mut rx } else { &mut tx };
                        let missing = m.key_ref.segments().iter().any(|s| {
                            one_sided.contains(&(m.from_tx, s.block.0))
                        });
                        match responder.p().take_at(&m.key_ref, KeyUse::Channel) {
                            Ok(k) => prop_assert!(k.ct_eq(&m.key)),
                            Err(e) => prop_assert!(
                                missing || m.epoch != epoch,
                                "a valid reference was refused: {}", e
                            ),
                        }
                        delivered.push((m.from_tx, m.key_ref));
                    }
                    Op::Lose(i) => { in_flight.remove(i % in_flight.len()); }
                    Op::Replay(i) if !delivered.is_empty() => {
                        let (from_tx, r) = &delivered[i % delivered.len()];
                        let responder = if *from_tx { &mut rx } else { &mut tx };
                        prop_assert!(responder.p().take_at(r, KeyUse::Channel).is_err());
                    }
                    Op::Replay(_) => {}
                    Op::Restart(which_tx) => {
                        let side = if which_tx { &mut tx } else { &mut rx };
                        let before = (side.p().summary(), side.p().pool().available_bytes());
                        side.reopen().unwrap();
                        prop_assert_eq!(side.p().summary(), before.0);
                        prop_assert!(side.p().pool().available_bytes().ct_eq(&before.1));
                    }
                    Op::Agree => {
                        agree_and_check(&mut tx, &mut rx)?;
                        epoch += 1;
                    }
                }
            }
            agree_and_check(&mut tx, &mut rx)?;
            prop_assert!(tx.p().pool().consumed_bytes_are_zero());
            prop_assert!(rx.p().pool().consumed_bytes_are_zero());
        }
    }

    fn agree_and_check(tx: &mut Side, rx: &mut Side) -> Result<(), TestCaseError> {
        let (ts, rs) = (tx.p().summary(), rx.p().summary());
        let a = tx.p().apply_agreement(&rs).unwrap();
        let b = rx.p().apply_agreement(&ts).unwrap();
        prop_assert_eq!(a.digest, b.digest);
        prop_assert!(
            tx.p()
                .pool()
                .available_bytes()
                .ct_eq(&rx.p().pool().available_bytes())
        );
        Ok(())
    }
}
