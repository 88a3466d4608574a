//! A [`KeyService`] without pools or peers, for tests and benches: keys
//! come from the OS random generator and a budget of bytes, and the
//! "peer KME" is the other service of a [`MemoryKeyService::pair`], whose
//! pending table receives each key at once. The HTTP, TLS and JSON path in
//! front of it is the real one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use uuid::Uuid;
use zeroize::Zeroizing;

use super::pending::PendingTable;
use super::service::{DecRequest, EncRequest, KeyService, KeySupply, ServiceError};
use super::wire::AckOutcome;
use crate::etsi014::api::KeyItem;
use crate::secret::SecretBytes;

/// One side of an in-memory KME pair.
pub struct MemoryKeyService {
    budget: AtomicU64,
    max_bytes: u64,
    own: Arc<PendingTable>,
    /// `None`: the peer's copies are made and dropped (benches).
    peer: Option<Arc<PendingTable>>,
}

impl MemoryKeyService {
    /// Two linked services, each with `budget_bytes` of key and a pending
    /// table of `max_pending` keys: keys given out by one are pending at
    /// the other.
    pub fn pair(budget_bytes: u64, max_pending: usize) -> (Self, Self) {
        let a = Arc::new(PendingTable::new(max_pending));
        let b = Arc::new(PendingTable::new(max_pending));
        let side = |own: &Arc<PendingTable>, peer: &Arc<PendingTable>| Self {
            budget: AtomicU64::new(budget_bytes),
            max_bytes: budget_bytes,
            own: Arc::clone(own),
            peer: Some(Arc::clone(peer)),
        };
        (side(&a, &b), side(&b, &a))
    }

    /// A master's side alone: no slave copy is kept, so a long bench does
    /// not fill memory (every pending key holds a locked page of its own)
    /// and a request costs what the master's KME does in the agent.
    pub fn solo(budget_bytes: u64) -> Self {
        Self {
            budget: AtomicU64::new(budget_bytes),
            max_bytes: budget_bytes,
            own: Arc::new(PendingTable::new(1)),
            peer: None,
        }
    }

    /// Keys waiting here for local slave SAEs.
    pub fn pending(&self) -> &PendingTable {
        &self.own
    }

    fn draw(&self, bytes: u64) -> Result<(), ServiceError> {
        self.budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_sub(bytes)
            })
            .map(|_| ())
            .map_err(|available_bytes| ServiceError::NotEnoughKey { available_bytes })
    }
}

impl KeyService for MemoryKeyService {
    fn supply(&self, _peer: &str) -> KeySupply {
        KeySupply {
            stored_bytes: self.budget.load(Ordering::Acquire),
            max_bytes: self.max_bytes,
        }
    }

    async fn enc_keys(&self, req: EncRequest) -> Result<Vec<KeyItem>, ServiceError> {
        let len = (req.size_bits / 8) as usize;
        self.draw(u64::from(req.number) * len as u64)?;
        let mut ours = Vec::with_capacity(req.number as usize);
        let mut theirs = Vec::with_capacity(req.number as usize);
        for _ in 0..req.number {
            let mut raw = Zeroizing::new(vec![0u8; len]);
            getrandom::fill(&mut raw).map_err(|e| ServiceError::Internal(e.to_string()))?;
            let id = Uuid::new_v4();
            if self.peer.is_some() {
                theirs.push((id, SecretBytes::from_slice(&raw)));
            }
            ours.push(KeyItem::new(id, SecretBytes::from_slice(&raw)));
        }
        if let Some(peer) = &self.peer {
            peer.insert_all(&req.master, &req.slave, theirs)
                .map_err(|_| ServiceError::PeerRefused(AckOutcome::PendingFull))?;
        }
        Ok(ours)
    }

    async fn dec_keys(&self, req: DecRequest) -> Result<Vec<KeyItem>, ServiceError> {
        let keys = self.own.take_all(&req.master, &req.slave, &req.key_ids)?;
        Ok(keys
            .into_iter()
            .map(|(id, k)| KeyItem::new(id, k))
            .collect())
    }
}
