//! Tests of the read-only pool audit.

use std::fs;

use super::audit::{AuditRecord, AuditSegment, JournalState, audit_pool};
use super::*;
use crate::secret::file::TestDir;
use crate::secret::{Secret, SecretBytes};

fn pool_key() -> PoolKey {
    PoolKey::from_secret(Secret::<32>::from_slice(&[9; 32]).unwrap())
}

fn block(fill: u8, len: usize) -> SecretBytes {
    SecretBytes::from_vec((0..len).map(|i| fill ^ (i as u8)).collect())
}

/// The two ends of a link, each with its own directory.
struct Link {
    dir_a: TestDir,
    dir_b: TestDir,
    a: PersistedPool,
    b: PersistedPool,
}

impl Link {
    fn new() -> Self {
        let dir_a = TestDir::new("audit-a");
        let dir_b = TestDir::new("audit-b");
        let mut a =
            PersistedPool::open(dir_a.path(), "gw-b", Role::Transmitter, &pool_key()).unwrap();
        let mut b = PersistedPool::open(dir_b.path(), "gw-a", Role::Receiver, &pool_key()).unwrap();
        for id in 0..2 {
            a.append(BlockId(id), block(id as u8, 512)).unwrap();
            b.append(BlockId(id), block(id as u8, 512)).unwrap();
        }
        Self { dir_a, dir_b, a, b }
    }

    fn audit_a(&self) -> audit::PoolAudit {
        audit_pool(self.dir_a.path(), "gw-b", Role::Transmitter, &pool_key()).unwrap()
    }

    fn audit_b(&self) -> audit::PoolAudit {
        audit_pool(self.dir_b.path(), "gw-a", Role::Receiver, &pool_key()).unwrap()
    }
}

fn segs(r: &KeyRef) -> Vec<AuditSegment> {
    r.segments()
        .iter()
        .map(|s| AuditSegment {
            block: s.block.0,
            offset: s.offset,
            len: s.len,
        })
        .collect()
}

#[test]
fn both_ends_record_the_same_takes_and_no_reuse() {
    let mut l = Link::new();
    let mut refs = Vec::new();
    for _ in 0..3 {
        let (r, _) = l.a.take(KeyUse::Relay, 100).unwrap();
        l.b.take_at(&r, KeyUse::Relay).unwrap();
        refs.push(r);
    }
    let (sa, _) = l.b.take(KeyUse::SaKey, 72).unwrap();
    l.a.take_at(&sa, KeyUse::SaKey).unwrap();

    let (a, b) = (l.audit_a(), l.audit_b());
    for audit in [&a, &b] {
        assert_eq!(audit.journal, JournalState::Current);
        assert!(audit.findings.is_empty(), "{:?}", audit.findings);
        assert!(!audit.torn_tail);
        let appends = audit
            .records
            .iter()
            .filter(|r| matches!(r, AuditRecord::Append { len: 512, .. }))
            .count();
        assert_eq!(appends, 2);
    }
    let relay_a: Vec<_> = a.takes(KeyUse::Relay).collect();
    let relay_b: Vec<_> = b.takes(KeyUse::Relay).collect();
    assert_eq!(relay_a.len(), 3);
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(relay_a[i], (true, segs(r).as_slice()));
        assert_eq!(relay_b[i], (false, segs(r).as_slice()));
        assert!(segs(r).iter().all(|s| a.is_consumed(s) && b.is_consumed(s)));
    }
    assert_eq!(
        a.takes(KeyUse::SaKey).next(),
        Some((false, segs(&sa).as_slice()))
    );
    // Bytes nobody took are not reported consumed.
    let untouched = AuditSegment {
        block: 1,
        offset: 500,
        len: 12,
    };
    assert!(!a.is_consumed(&untouched));
}

#[test]
fn a_take_of_bytes_consumed_before_is_found() {
    let mut l = Link::new();
    let (r, _) = l.a.take(KeyUse::Relay, 64).unwrap();
    // Through the pool, the second use is refused...
    assert!(l.a.take_at(&r, KeyUse::Relay).is_err());
    assert!(l.audit_a().findings.is_empty());
    // ...written to the journal regardless, the audit finds it.
    l.a.journal_unchecked_take(&r, KeyUse::Relay).unwrap();
    let audit = l.audit_a();
    assert_eq!(audit.findings.len(), 1, "{:?}", audit.findings);
    assert_eq!(audit.findings[0].segment, segs(&r)[0]);
    assert!(audit.findings[0].what.contains("used twice"));
}

#[test]
fn reuse_of_bytes_the_snapshot_holds_consumed_is_found() {
    let mut l = Link::new();
    let (r, _) = l.a.take(KeyUse::Wrap, 32).unwrap();
    // Folded into a snapshot: the take is now a consumed range there.
    l.a.compact().unwrap();
    let audit = l.audit_a();
    assert_eq!(audit.journal, JournalState::Absent);
    assert!(audit.records.is_empty());
    assert!(audit.is_consumed(&segs(&r)[0]));
    l.a.journal_unchecked_take(&r, KeyUse::Relay).unwrap();
    let audit = l.audit_a();
    assert_eq!(audit.findings.len(), 1, "{:?}", audit.findings);
}

#[test]
fn a_take_from_a_block_the_files_lack_is_found() {
    let mut l = Link::new();
    let (r, _) = l.a.take(KeyUse::Relay, 16).unwrap();
    let foreign = {
        let mut w = crate::qkd::wire::WireWriter::new();
        w.u32(1).u64(77).u32(0).u32(16);
        let bytes = w.finish();
        KeyRef::decode(&mut crate::qkd::wire::WireReader::new(&bytes)).unwrap()
    };
    l.a.journal_unchecked_take(&foreign, KeyUse::Relay).unwrap();
    let audit = l.audit_a();
    assert_eq!(audit.findings.len(), 1, "{:?}", audit.findings);
    assert_eq!(audit.findings[0].segment.block, 77);
    assert!(audit.is_consumed(&segs(&r)[0]));
}

#[test]
fn auditing_changes_no_file_and_tolerates_a_torn_tail() {
    let mut l = Link::new();
    l.a.take(KeyUse::Relay, 16).unwrap();
    let journal = l.dir_a.path().join("gw-b.journal");
    let snapshot = l.dir_a.path().join("gw-b.pool");
    let before = (fs::read(&snapshot).unwrap(), fs::read(&journal).unwrap());
    let audit = l.audit_a();
    assert_eq!(
        (fs::read(&snapshot).unwrap(), fs::read(&journal).unwrap()),
        before,
        "the audit wrote to the pool's files"
    );
    // A concurrent append the reader catches half written.
    let mut torn = before.1.clone();
    torn.extend_from_slice(&[0x55; 9]);
    fs::write(&journal, &torn).unwrap();
    let again = l.audit_a();
    assert!(again.torn_tail);
    assert_eq!(again.records, audit.records);
}

#[test]
fn the_wrong_role_or_key_is_an_error_not_an_empty_audit() {
    let l = Link::new();
    assert!(audit_pool(l.dir_a.path(), "gw-b", Role::Receiver, &pool_key()).is_err());
    let other = PoolKey::from_secret(Secret::<32>::from_slice(&[1; 32]).unwrap());
    assert!(audit_pool(l.dir_a.path(), "gw-b", Role::Transmitter, &other).is_err());
    assert!(audit_pool(l.dir_a.path(), "gw-x", Role::Transmitter, &pool_key()).is_err());
}
