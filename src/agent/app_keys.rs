//! The agent's side of the KME ([`crate::kme`]): keys for local
//! applications from the per-peer pools, and the AppKeys exchange with the
//! peer's agent over the control stream.
//!
//! As master's KME: enc_keys takes whole keys from this side's region of
//! the pool shared with the slave's peer ([`KeyUse::Application`], through
//! the same [`ReservedPool`] the tunnels use, so the QKD link's
//! authentication reserve and the pre-shared bootstrap block are never
//! handed out), sends their key_IDs and positions, and answers only once
//! the peer has confirmed; a refusal or no answer within [`ACK_TIMEOUT`]
//! wastes the keys (never reuses them) and answers 503. As slave's KME: the
//! peer task passes each AppKeys to [`AppKeyDesk::accept`], which takes the
//! same bytes and files them in the pending table, or refuses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::etsi014::api::KeyItem;
use crate::keys::pool::MAX_TAKE_BYTES;
use crate::keys::{KeyRef, KeyUse, PersistedPool};
use crate::kme::{
    AckOutcome, AppKeys, AppKeysAck, DecRequest, DeliveryLog, EncRequest, KeyService, KeySupply,
    PendingTable, SaeDirectory, ServiceError,
};
use crate::ops::StatusBoard;
use crate::peer::{PeerHandle, Stream};
use crate::rekey::KeySource;
use crate::secret::SecretBytes;

use super::control::ControlMessage;
use super::qkd_task::lock;
use super::tunnel_task::ReservedPool;

/// How long the master's KME waits for the slave's to confirm keys.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What both directions of the exchange share: the pending table, the
/// SAE map and the enc_keys requests waiting for their ack.
pub struct AppKeyDesk {
    pub pending: PendingTable,
    directory: SaeDirectory,
    waiters: Mutex<HashMap<u64, oneshot::Sender<AckOutcome>>>,
    next_request: AtomicU64,
}

impl AppKeyDesk {
    pub fn new(directory: SaeDirectory, max_pending: usize) -> Self {
        Self {
            pending: PendingTable::new(max_pending),
            directory,
            waiters: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<AckOutcome>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The peer's answer to one of our AppKeys.
    pub fn acked(&self, ack: AppKeysAck) {
        match self.waiters().remove(&ack.request) {
            Some(tx) => {
                let _ = tx.send(ack.outcome);
            }
            None => tracing::debug!(
                request = ack.request,
                "AppKeys ack for no waiting request (timed out?)"
            ),
        }
    }

    /// Takes the bytes an AppKeys from `peer` names and files them for
    /// the slave SAE. Blocking (the pool journals and fsyncs).
    pub fn accept(&self, peer: &str, pool: &Mutex<PersistedPool>, m: AppKeys) -> AckOutcome {
        if !self.directory.is_local(&m.slave_sae)
            || self.directory.peer_between(&m.slave_sae, &m.master_sae) != Some(peer)
        {
            return AckOutcome::UnknownSae;
        }
        let total: u64 = m.refs.iter().map(KeyRef::len).sum();
        if total != m.total_bytes() {
            return AckOutcome::Malformed;
        }
        // Take first, whatever follows: the master has consumed these
        // bytes, and lockstep means this side consumes them too.
        let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(total as usize));
        {
            let mut pool = lock(pool);
            for r in &m.refs {
                match pool.take_at(r, KeyUse::Application) {
                    Ok(k) => bytes.extend_from_slice(k.expose()),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "AppKeys refused by the pool");
                        return AckOutcome::PoolRefused;
                    }
                }
            }
        }
        let keys = m
            .key_ids
            .iter()
            .zip(bytes.chunks_exact(m.key_bytes as usize))
            .map(|(id, k)| (*id, SecretBytes::from_slice(k)))
            .collect();
        match self.pending.insert_all(&m.master_sae, &m.slave_sae, keys) {
            Ok(()) => AckOutcome::Accepted,
            Err(crate::kme::PendingError::Full { .. }) => AckOutcome::PendingFull,
            Err(_) => AckOutcome::Malformed,
        }
    }
}

/// One peer's pool as the KME reaches it.
pub struct PeerKeys {
    pub pool: Arc<Mutex<PersistedPool>>,
    pub handle: PeerHandle,
    pub ready: watch::Receiver<Option<u64>>,
    /// Bytes of this side's region left for the QKD link's tags.
    pub reserve: u64,
}

/// The [`KeyService`] over the agent's pools.
pub struct PoolKeyService {
    pub desk: Arc<AppKeyDesk>,
    pub peers: HashMap<String, PeerKeys>,
}

impl KeyService for PoolKeyService {
    fn supply(&self, peer: &str) -> KeySupply {
        let Some(p) = self.peers.get(peer) else {
            return KeySupply::default();
        };
        let pool = lock(&p.pool);
        let own = pool.pool().available_for(pool.pool().role());
        KeySupply {
            stored_bytes: own.saturating_sub(p.reserve),
            max_bytes: own,
        }
    }

    async fn enc_keys(&self, req: EncRequest) -> Result<Vec<KeyItem>, ServiceError> {
        let p = self
            .peers
            .get(&req.peer)
            .ok_or(ServiceError::PeerUnavailable)?;
        if p.ready.borrow().is_none() {
            return Err(ServiceError::PeerUnavailable);
        }
        let key_bytes = req.size_bits / 8;
        let (pool, reserve, number) = (Arc::clone(&p.pool), p.reserve, req.number);
        let (refs, keys) =
            tokio::task::spawn_blocking(move || take_keys(&pool, reserve, number, key_bytes))
                .await
                .map_err(|e| ServiceError::Internal(e.to_string()))??;
        let key_ids: Vec<Uuid> = keys.iter().map(|_| Uuid::new_v4()).collect();
        let request = self.desk.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.desk.waiters().insert(request, tx);
        let msg = ControlMessage::AppKeys(AppKeys {
            request,
            master_sae: req.master,
            slave_sae: req.slave,
            key_bytes,
            key_ids: key_ids.clone(),
            refs,
        });
        let sent = p
            .handle
            .send(Stream::Control, Bytes::from(msg.encode()))
            .await;
        let outcome = match sent {
            Err(e) => {
                tracing::debug!(peer = %req.peer, error = %e, "AppKeys not sent");
                Err(ServiceError::PeerUnavailable)
            }
            Ok(()) => match tokio::time::timeout(ACK_TIMEOUT, rx).await {
                Ok(Ok(AckOutcome::Accepted)) => Ok(()),
                Ok(Ok(refused)) => Err(ServiceError::PeerRefused(refused)),
                Ok(Err(_)) | Err(_) => Err(ServiceError::PeerTimeout),
            },
        };
        self.desk.waiters().remove(&request);
        if let Err(e) = outcome {
            tracing::warn!(peer = %req.peer, keys = keys.len(), error = %e, "application keys wasted (taken, not delivered)");
            return Err(e);
        }
        Ok(key_ids
            .into_iter()
            .zip(keys)
            .map(|(id, k)| KeyItem::new(id, k))
            .collect())
    }

    async fn dec_keys(&self, req: DecRequest) -> Result<Vec<KeyItem>, ServiceError> {
        let keys = self
            .desk
            .pending
            .take_all(&req.master, &req.slave, &req.key_ids)?;
        Ok(keys
            .into_iter()
            .map(|(id, k)| KeyItem::new(id, k))
            .collect())
    }
}

/// `number` keys of `key_bytes` from this side's region, in takes of
/// whole keys of at most [`MAX_TAKE_BYTES`].
fn take_keys(
    pool: &Mutex<PersistedPool>,
    reserve: u64,
    number: u32,
    key_bytes: u32,
) -> Result<(Vec<KeyRef>, Vec<SecretBytes>), ServiceError> {
    let mut guard = lock(pool);
    let total = u64::from(number) * u64::from(key_bytes);
    let own = guard.pool().available_for(guard.pool().role());
    if own < total + reserve {
        return Err(ServiceError::NotEnoughKey {
            available_bytes: own.saturating_sub(reserve),
        });
    }
    let mut source = ReservedPool {
        pool: &mut guard,
        reserve,
    };
    let per_take = (MAX_TAKE_BYTES / key_bytes).max(1);
    let (mut refs, mut keys) = (Vec::new(), Vec::with_capacity(number as usize));
    let mut left = number;
    while left > 0 {
        let n = left.min(per_take);
        let (r, bytes) = source
            .take(KeyUse::Application, n * key_bytes)
            .map_err(|e| match e {
                crate::rekey::TakeError::Exhausted { available } => ServiceError::NotEnoughKey {
                    available_bytes: available,
                },
                other => ServiceError::Internal(other.to_string()),
            })?;
        refs.push(r);
        keys.extend(
            bytes
                .expose()
                .chunks_exact(key_bytes as usize)
                .map(SecretBytes::from_slice),
        );
        left -= n;
    }
    Ok((refs, keys))
}

/// Delivery counts onto the status board.
pub struct BoardLog(pub StatusBoard);

impl DeliveryLog for BoardLog {
    fn enc_keys(&self, sae: &str, keys: u64) {
        self.0
            .kme_delivered(sae, crate::ops::KmeDelivery::EncKeys, keys);
    }
    fn dec_keys(&self, sae: &str, keys: u64) {
        self.0
            .kme_delivered(sae, crate::ops::KmeDelivery::DecKeys, keys);
    }
    fn refused(&self, sae: &str) {
        self.0
            .kme_delivered(sae, crate::ops::KmeDelivery::Refused, 1);
    }
}
