//! The engine's record of the SAs its tunnel has in the kernel, and of the
//! deletions it has scheduled. Bookkeeping only: it decides nothing about
//! when to rekey and emits nothing.
//!
//! Records are ordered by an install sequence number, not by generation:
//! SAs found at start (origin unknown) come first, then every SA in the
//! order the kernel confirmed it. "Older" always means a lower sequence.

use std::collections::BTreeMap;
use std::time::Instant;

use super::events::OpId;
use super::{ExchangeId, SaDirection, Spi};

/// Where an SA stands on its way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Deletion {
    Kept,
    /// Delete at this instant.
    Due(Instant),
    /// The DeleteSa request is with the kernel.
    InFlight(OpId),
    /// The kernel refused; try again at this instant.
    Failed(Instant),
}

#[derive(Clone, Debug)]
pub(super) struct SaRecord {
    pub dir: SaDirection,
    pub spi: Spi,
    /// `None`: found at start; its generation and keys are unknown.
    pub id: Option<ExchangeId>,
    pub seq: u64,
    pub installed_at: Option<Instant>,
    pub soft_expired: bool,
    pub deletion: Deletion,
}

#[derive(Default)]
pub(super) struct SaTable {
    records: BTreeMap<(SaDirection, Spi), SaRecord>,
    next_seq: u64,
}

impl SaTable {
    /// Records SAs found in the kernel at start, older than anything new.
    pub fn restore_found(&mut self, dir: SaDirection, spi: Spi) {
        self.insert(dir, spi, None, None);
    }

    /// Records an SA the kernel just confirmed; replaces a record of the same
    /// (dir, SPI), which can only be one the kernel has already dropped.
    pub fn insert(
        &mut self,
        dir: SaDirection,
        spi: Spi,
        id: Option<ExchangeId>,
        now: Option<Instant>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.records.insert(
            (dir, spi),
            SaRecord {
                dir,
                spi,
                id,
                seq,
                installed_at: now,
                soft_expired: false,
                deletion: Deletion::Kept,
            },
        );
        seq
    }

    pub fn get(&self, dir: SaDirection, spi: Spi) -> Option<&SaRecord> {
        self.records.get(&(dir, spi))
    }

    pub fn get_mut(&mut self, dir: SaDirection, spi: Spi) -> Option<&mut SaRecord> {
        self.records.get_mut(&(dir, spi))
    }

    /// The kernel no longer has it (hard expiry or confirmed deletion).
    pub fn remove(&mut self, dir: SaDirection, spi: Spi) -> Option<SaRecord> {
        self.records.remove(&(dir, spi))
    }

    pub fn iter(&self) -> impl Iterator<Item = &SaRecord> {
        self.records.values()
    }

    pub fn in_dir(&self, dir: SaDirection) -> impl Iterator<Item = &SaRecord> {
        self.records.values().filter(move |r| r.dir == dir)
    }

    /// The newest SA of `dir` that is not on its way out: the one carrying
    /// (or about to carry) the traffic.
    pub fn newest(&self, dir: SaDirection) -> Option<&SaRecord> {
        self.in_dir(dir)
            .filter(|r| r.deletion == Deletion::Kept)
            .max_by_key(|r| r.seq)
    }

    pub fn oldest(&self, dir: SaDirection) -> Option<&SaRecord> {
        self.in_dir(dir).min_by_key(|r| r.seq)
    }

    pub fn find(&self, dir: SaDirection, id: ExchangeId) -> Option<&SaRecord> {
        self.in_dir(dir).find(|r| r.id == Some(id))
    }

    pub fn has_unknown(&self, dir: SaDirection) -> bool {
        self.in_dir(dir).any(|r| r.id.is_none())
    }

    /// What this side reports as `sender_out`: the exchange of its oldest
    /// outbound SA, or `None` when that one's origin is unknown (or there is
    /// none) — the peer may then retire nothing.
    pub fn oldest_outbound_id(&self) -> Option<ExchangeId> {
        self.oldest(SaDirection::Outbound).and_then(|r| r.id)
    }

    /// Schedules deletion of every SA of `dir` older than `seq`, at `at` (an
    /// earlier schedule stands).
    pub fn schedule_older(&mut self, dir: SaDirection, seq: u64, at: Instant) {
        for r in self.records.values_mut() {
            if r.dir == dir && r.seq < seq {
                schedule(r, at);
            }
        }
    }

    pub fn schedule_one(&mut self, dir: SaDirection, spi: Spi, at: Instant) {
        if let Some(r) = self.records.get_mut(&(dir, spi)) {
            schedule(r, at);
        }
    }

    /// Outbound SAs older than `seq` whose deletion is not yet answered.
    pub fn older_outbound_pending(&self, seq: u64) -> bool {
        self.in_dir(SaDirection::Outbound)
            .any(|r| r.seq < seq && matches!(r.deletion, Deletion::Due(_) | Deletion::InFlight(_)))
    }

    /// SAs whose deletion is due now.
    pub fn due(&self, now: Instant) -> Vec<(SaDirection, Spi)> {
        self.records
            .values()
            .filter(|r| matches!(r.deletion, Deletion::Due(t) | Deletion::Failed(t) if t <= now))
            .map(|r| (r.dir, r.spi))
            .collect()
    }

    pub fn mark_in_flight(&mut self, dir: SaDirection, spi: Spi, op: OpId) {
        if let Some(r) = self.records.get_mut(&(dir, spi)) {
            r.deletion = Deletion::InFlight(op);
        }
    }

    /// A deletion failed with an unexpected error: keep the record (the SA
    /// is still there) and try again at `retry_at`.
    pub fn deletion_failed(&mut self, dir: SaDirection, spi: Spi, retry_at: Instant) {
        if let Some(r) = self.records.get_mut(&(dir, spi)) {
            r.deletion = Deletion::Failed(retry_at);
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.records
            .values()
            .filter_map(|r| match r.deletion {
                Deletion::Due(t) | Deletion::Failed(t) => Some(t),
                _ => None,
            })
            .min()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }
}

fn schedule(r: &mut SaRecord, at: Instant) {
    r.deletion = match r.deletion {
        Deletion::Kept => Deletion::Due(at),
        Deletion::Due(t) => Deletion::Due(t.min(at)),
        Deletion::Failed(t) => Deletion::Failed(t.min(at)),
        d @ Deletion::InFlight(_) => d,
    };
}
