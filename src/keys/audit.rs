//! A read-only audit of a persisted pool: what its files say was consumed,
//! in order, without the key bytes, and whether any take used a byte that
//! was already consumed (a one-time pad or key used twice).
//!
//! The snapshot gives each block's consumed ranges as of its writing, the
//! journal every change since, in order. The audit replays the journal's
//! takes over the snapshot's ranges and reports each take that overlaps
//! bytes consumed before it, or that names a block the files do not hold.
//! The pool itself refuses such a take ([`super::KeyPool::take_at`]), so a
//! finding means damaged files or a defect; the audit lets an operator or a
//! test check it from the disk, independently of the running agent
//! (`qkd-ipsec pool-audit`), and lets the two ends of a link be compared
//! take by take (the same positions for the same use on both sides).
//!
//! Reading never writes, so it is safe beside a running agent: a journal
//! record torn by a concurrent append is reported as a torn tail, and a
//! journal the agent absorbed between the two reads as stale (read again).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::codec::JournalOp;
use super::persisted::{MAX_JOURNAL_FILE, read_private};
use super::pool::{KeyUse, Role};
use super::range_set::RangeSet;
use super::store::{
    FileIdentity, JournalContents, PoolKey, StoreError, open_journal, open_snapshot,
};

/// What a pool's files record; positions and uses only, never key bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolAudit {
    pub peer: String,
    /// Snapshot generation the journal belongs to.
    pub generation: u64,
    /// Blocks in the snapshot, with the ranges consumed when it was written.
    pub blocks: Vec<AuditBlock>,
    pub journal: JournalState,
    /// The journal ends in an incomplete record (a crash or a concurrent
    /// append); that change never completed.
    pub torn_tail: bool,
    /// Journal records since the snapshot, in order.
    pub records: Vec<AuditRecord>,
    /// Takes that overlap bytes consumed before them, or name a block the
    /// files do not hold. Empty for a sound pool.
    pub findings: Vec<AuditFinding>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalState {
    /// No journal: nothing changed since the snapshot.
    Absent,
    /// The journal was already folded into the snapshot (nothing to replay).
    Stale,
    Current,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditBlock {
    pub block: u64,
    pub len: u32,
    /// Consumed `[start, end)` ranges, sorted and disjoint.
    pub consumed: Vec<(u32, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AuditRecord {
    /// A QKD (or relayed, or KME) block was added.
    Append { block: u64, len: u32 },
    /// Bytes were consumed: by this side's own take (`initiated_here`) or
    /// at positions the peer named.
    Take {
        key_use: String,
        initiated_here: bool,
        segments: Vec<AuditSegment>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AuditSegment {
    pub block: u64,
    pub offset: u32,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFinding {
    /// 1-based journal record.
    pub record: usize,
    pub segment: AuditSegment,
    pub what: String,
}

impl PoolAudit {
    /// The takes for `key_use` in the journal, in order.
    pub fn takes<'a>(
        &'a self,
        key_use: KeyUse,
    ) -> impl Iterator<Item = (bool, &'a [AuditSegment])> + 'a {
        self.records.iter().filter_map(move |r| match r {
            AuditRecord::Take {
                key_use: u,
                initiated_here,
                segments,
            } if u == key_use.name() => Some((*initiated_here, segments.as_slice())),
            _ => None,
        })
    }

    /// Whether every byte of `seg` is consumed in this pool's files
    /// (snapshot or journal).
    pub fn is_consumed(&self, seg: &AuditSegment) -> bool {
        let mut rs = RangeSet::new();
        for b in self.blocks.iter().filter(|b| b.block == seg.block) {
            for &(s, e) in &b.consumed {
                rs.insert(s, e);
            }
        }
        for r in &self.records {
            if let AuditRecord::Take { segments, .. } = r {
                for t in segments.iter().filter(|t| t.block == seg.block) {
                    rs.insert(t.offset, t.offset.saturating_add(t.len));
                }
            }
        }
        rs.contains_range(seg.offset, seg.offset.saturating_add(seg.len))
    }
}

/// Reads the pool shared with `peer` in `dir` without changing it.
pub fn audit_pool(
    dir: &Path,
    peer: &str,
    role: Role,
    key: &PoolKey,
) -> Result<PoolAudit, StoreError> {
    let ident = FileIdentity::new(peer, role)?;
    let snapshot_path = dir.join(format!("{peer}.pool"));
    let journal_path = dir.join(format!("{peer}.journal"));
    let Some(bytes) = read_private(&snapshot_path, u64::MAX)? else {
        return Err(StoreError::corrupt(
            &snapshot_path,
            "no snapshot: this gateway holds no pool with that peer".to_string(),
        ));
    };
    let opened = open_snapshot(&snapshot_path, &bytes, &ident, &key.cipher())?;

    let mut consumed: BTreeMap<u64, (u32, RangeSet)> = opened
        .pool
        .blocks
        .iter()
        .map(|(id, b)| (id.0, (b.len(), b.consumed.clone())))
        .collect();
    let blocks = consumed
        .iter()
        .map(|(&block, (len, rs))| AuditBlock {
            block,
            len: *len,
            consumed: rs.ranges().to_vec(),
        })
        .collect();

    let (journal, records, torn_tail) = match read_private(&journal_path, MAX_JOURNAL_FILE)? {
        None => (JournalState::Absent, Vec::new(), false),
        Some(file) => match open_journal(&journal_path, &file, &ident, &opened)? {
            JournalContents::Stale => (JournalState::Stale, Vec::new(), false),
            JournalContents::Current { records, torn_tail } => {
                (JournalState::Current, records, torn_tail)
            }
        },
    };

    let mut out = Vec::with_capacity(records.len());
    let mut findings = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let op = JournalOp::decode(record.expose())
            .map_err(|e| StoreError::corrupt(&journal_path, format!("record {}: {e}", i + 1)))?;
        out.push(match op {
            JournalOp::Append { id, data } => {
                let len = data.len() as u32;
                consumed.insert(id.0, (len, RangeSet::new()));
                AuditRecord::Append { block: id.0, len }
            }
            JournalOp::Take {
                key_ref,
                key_use,
                initiated_here,
            } => {
                let segments: Vec<AuditSegment> = key_ref
                    .segments()
                    .iter()
                    .map(|s| AuditSegment {
                        block: s.block.0,
                        offset: s.offset,
                        len: s.len,
                    })
                    .collect();
                for seg in &segments {
                    let end = seg.offset.checked_add(seg.len);
                    let what = match (consumed.get_mut(&seg.block), end) {
                        (None, _) => Some("names a block the files do not hold".to_string()),
                        (Some((len, _)), e) if e.is_none_or(|e| e > *len) => {
                            Some(format!("runs past the block's {len} bytes"))
                        }
                        (Some((_, rs)), Some(e)) if rs.intersects(seg.offset, e) => {
                            rs.insert(seg.offset, e);
                            Some("uses bytes consumed before (used twice)".to_string())
                        }
                        (Some((_, rs)), Some(e)) => {
                            rs.insert(seg.offset, e);
                            None
                        }
                        (Some(_), None) => unreachable!("an overflowing end is refused above"),
                    };
                    if let Some(what) = what {
                        findings.push(AuditFinding {
                            record: i + 1,
                            segment: *seg,
                            what,
                        });
                    }
                }
                AuditRecord::Take {
                    key_use: key_use.name().to_string(),
                    initiated_here,
                    segments,
                }
            }
        });
    }
    Ok(PoolAudit {
        peer: peer.to_string(),
        generation: opened.generation,
        blocks,
        journal,
        torn_tail,
        records: out,
        findings,
    })
}
