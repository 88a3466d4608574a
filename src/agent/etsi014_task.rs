//! One peer's offered-keys source: runs [`Master`] (the link's
//! transmitter) or [`Slave`] (the receiver) from [`crate::etsi014::source`]
//! with the link's [`Supply`] — a QKD device's KME (`kind = "etsi014"`) or
//! the relay (`kind = "relayed"`) — and the peer's control stream, and
//! appends the agreed blocks to the peer's pool. Started instead of the QKD
//! task: no QKD protocol runs between the agents on such a link.
//!
//! It works only while the pool is agreed for the current session (the
//! `ready` watch): an offer or ack of another session is dropped, and a
//! block is appended only if the session that carried its offer is still
//! the agreed one. Failures raise `KeySourceFailed` (with the error, never
//! key bytes) and count in the key source's errors; the master backs off
//! from 1 s up to `retry_max`; a success clears the alarm. A relay's
//! refusal of the pending key drops it at once. When keys stop coming,
//! tunnels run on their SAs until the hard lifetime and then fail closed,
//! as with an empty pool on any link.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::etsi014::seen::SeenKeyIds;
use crate::etsi014::source::{KeyOffer, KeyOfferAck, Master, MasterAction, Slave, SourceError};
use crate::keys::{BlockId, PersistedPool, Role};
use crate::ops::PeerReporter;
use crate::peer::{Inbound, PeerHandle, Stream};
use crate::relay::RelayRefusal;
use crate::secret::SecretBytes;

use super::AgentError;
use super::control::ControlMessage;
use super::key_supply::Supply;
use super::qkd_task::{QkdObserver, lock};

/// How often the master looks at the pool level besides events.
const POOL_CHECK: Duration = Duration::from_secs(1);

/// An ETSI 014 control message, with the session it arrived on.
pub struct SourceInbound {
    pub session: u64,
    pub msg: SourceMessage,
}

pub enum SourceMessage {
    Offer(KeyOffer),
    Ack(KeyOfferAck),
}

pub struct Etsi014Task {
    pub peer: String,
    /// Transmitter: master (enc_keys); receiver: slave (dec_keys).
    pub role: Role,
    pub supply: Supply,
    pub seen: SeenKeyIds,
    /// Relay refusals of this link's keys (relayed links' masters).
    pub refusals: Option<mpsc::Receiver<RelayRefusal>>,
    pub handle: PeerHandle,
    pub inbound: mpsc::Receiver<SourceInbound>,
    /// QKD-protocol streams: nothing should arrive on them on this link;
    /// drained so that a confused peer cannot stall the channel.
    pub fibre_rx: mpsc::Receiver<Inbound>,
    pub qkd_rx: mpsc::Receiver<Inbound>,
    pub pool: Arc<Mutex<PersistedPool>>,
    pub ready: watch::Receiver<Option<u64>>,
    pub reporter: PeerReporter,
    pub observer: Arc<dyn QkdObserver>,
    pub cancel: CancellationToken,
}

impl Etsi014Task {
    pub async fn run(self) -> Result<(), AgentError> {
        tracing::info!(peer = %self.peer, source = %self.supply.describe(),
            role = if self.role == Role::Transmitter { "master" } else { "slave" },
            "{} key source: keys are offered by ID; no QKD protocol runs on this link",
            self.supply.kind());
        match self.role {
            Role::Transmitter => self.run_master().await,
            Role::Receiver => self.run_slave().await,
        }
    }

    async fn run_master(mut self) -> Result<(), AgentError> {
        let mut master = Master::new(self.supply.config());
        let mut refusals = self.refusals.take();
        let mut session: Option<u64> = None;
        // When the pending offer's fetch began (its delivery time is
        // reported when the peer accepts it).
        let mut fetch_began = Instant::now();
        loop {
            let now_ready = *self.ready.borrow();
            if now_ready != session {
                if let Some(block) = master.abandon() {
                    tracing::info!(peer = %self.peer, block = block.0, "session changed before the peer acknowledged; the offered keys are dropped");
                }
                session = now_ready;
            }
            let available = usable(&lock(&self.pool));
            match master.poll(Instant::now(), session.is_some(), available) {
                MasterAction::Fetch { number } => {
                    fetch_began = Instant::now();
                    let result = tokio::select! {
                        () = self.cancel.cancelled() => return Ok(()),
                        r = self.supply.fetch(number) => r,
                    };
                    let next = lock(&self.pool).pool().next_block_id();
                    match master.fetched(Instant::now(), result, next, &mut self.seen) {
                        Ok(offer) if *self.ready.borrow() == session => {
                            tracing::debug!(peer = %self.peer, block = offer.block.0, keys = offer.key_ids.len(), "offering keys to the peer");
                            if !self.send(ControlMessage::KeyOffer(offer)).await {
                                master.abandon();
                            }
                        }
                        Ok(_) => {
                            master.abandon();
                        }
                        Err(e) => self.failed(&e),
                    }
                }
                MasterAction::AckOverdue { block, after } => {
                    self.failed(&SourceError::AckTimeout { block, after });
                }
                MasterAction::Wait(until) => {
                    let wake = until
                        .unwrap_or_else(|| Instant::now() + POOL_CHECK)
                        .min(Instant::now() + POOL_CHECK);
                    tokio::select! {
                        () = self.cancel.cancelled() => return Ok(()),
                        changed = self.ready.changed() => if changed.is_err() { return Ok(()) },
                        Some(m) = self.inbound.recv() => self.on_master_inbound(&mut master, session, m, fetch_began).await?,
                        Some(f) = self.fibre_rx.recv() => self.unexpected(f.payload.len()),
                        Some(q) = self.qkd_rx.recv() => self.unexpected(q.payload.len()),
                        Some(r) = recv_refusal(&mut refusals) => {
                            if master.refused(Instant::now(), &r.key_id) {
                                self.failed(&SourceError::Relay(format!(
                                    "{} refused share {} of the pending key: {}",
                                    r.refused_by(), r.share, r.reason
                                )));
                            }
                        }
                        () = tokio::time::sleep_until(wake) => {}
                    }
                }
            }
        }
    }

    async fn on_master_inbound(
        &self,
        master: &mut Master,
        session: Option<u64>,
        m: SourceInbound,
        fetch_began: Instant,
    ) -> Result<(), AgentError> {
        let ack = match m.msg {
            SourceMessage::Ack(ack) if Some(m.session) == session => ack,
            SourceMessage::Ack(_) => return Ok(()),
            SourceMessage::Offer(_) => {
                tracing::warn!(peer = %self.peer, "key offer from the peer, but this gateway is the ETSI 014 master; dropped (are both gateways transmitters?)");
                return Ok(());
            }
        };
        match master.acked(Instant::now(), ack) {
            Ok((block, bytes)) => self.append(block, bytes, fetch_began).await.map(drop),
            Err(SourceError::UnexpectedAck(block)) if !ack.accepted => {
                // The peer refused a block this side already dropped (a
                // relay refused its key, or the ack came too late): both
                // sides are without it.
                tracing::debug!(peer = %self.peer, block = block.0, "refusal of a block already dropped");
                Ok(())
            }
            Err(SourceError::UnexpectedAck(block)) => {
                tracing::warn!(peer = %self.peer, block = block.0, "acknowledgement of a block not pending (late or duplicate); ignored: the peer holds a block this side does not, which the next pool agreement drops");
                Ok(())
            }
            Err(e) => {
                self.failed(&e);
                Ok(())
            }
        }
    }

    async fn run_slave(mut self) -> Result<(), AgentError> {
        let slave = Slave::new(self.supply.config());
        loop {
            let m = tokio::select! {
                () = self.cancel.cancelled() => return Ok(()),
                m = self.inbound.recv() => match m { Some(m) => m, None => return Ok(()) },
                Some(f) = self.fibre_rx.recv() => { self.unexpected(f.payload.len()); continue }
                Some(q) = self.qkd_rx.recv() => { self.unexpected(q.payload.len()); continue }
            };
            match m.msg {
                SourceMessage::Offer(offer) if *self.ready.borrow() == Some(m.session) => {
                    self.on_offer(&slave, m.session, offer).await?;
                }
                SourceMessage::Offer(_) => {}
                SourceMessage::Ack(_) => {
                    tracing::warn!(peer = %self.peer, "key acknowledgement from the peer, but this gateway is the ETSI 014 slave; dropped");
                }
            }
        }
    }

    async fn on_offer(
        &mut self,
        slave: &Slave,
        session: u64,
        offer: KeyOffer,
    ) -> Result<(), AgentError> {
        let block = offer.block;
        let arrived = Instant::now();
        let next = lock(&self.pool).pool().next_block_id();
        let outcome = match slave.check_offer(&offer, next, &self.seen) {
            Ok(()) => tokio::select! {
                () = self.cancel.cancelled() => return Ok(()),
                r = self.supply.fetch_offered(&offer) => r,
            },
            Err(e) => Err(e),
        };
        let bytes = match outcome.and_then(|keys| slave.accept(&offer, keys, &mut self.seen)) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.failed(&e);
                self.ack(block, false).await;
                return Ok(());
            }
        };
        if *self.ready.borrow() != Some(session) {
            // The session that carried the offer is over: the master drops
            // its copy, so this side must not keep one either.
            return Ok(());
        }
        let appended = self.append(block, bytes, arrived).await?;
        self.ack(block, appended).await;
        Ok(())
    }

    /// Appends an agreed block; reports success (with the time since
    /// `began`: the block's delivery) or the failure (a store error is the
    /// pool's to log, not a reason to stop the agent).
    async fn append(
        &self,
        block: BlockId,
        bytes: SecretBytes,
        began: Instant,
    ) -> Result<bool, AgentError> {
        let len = bytes.len() as u64;
        let pool = Arc::clone(&self.pool);
        let appended = tokio::task::spawn_blocking(move || lock(&pool).append(block, bytes))
            .await
            .map_err(|e| AgentError::Task(e.to_string()))?;
        match appended {
            Ok(()) => {
                let keys = len / u64::from(self.supply.config().key_size_bits / 8);
                tracing::info!(peer = %self.peer, block = block.0, keys, bytes = len,
                    "{} keys appended to the pool", self.supply.kind());
                self.reporter.key_source_ok(keys, len, began.elapsed());
                self.observer.pool_changed(&self.peer);
                Ok(true)
            }
            Err(e) => {
                tracing::error!(peer = %self.peer, block = block.0, error = %e, "could not store an offered block");
                self.reporter
                    .key_source_failed(&format!("could not store block {block}: {e}"));
                Ok(false)
            }
        }
    }

    async fn ack(&self, block: BlockId, accepted: bool) {
        self.send(ControlMessage::KeyOfferAck(KeyOfferAck { block, accepted }))
            .await;
    }

    async fn send(&self, msg: ControlMessage) -> bool {
        match self
            .handle
            .send(Stream::Control, Bytes::from(msg.encode()))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "key offer send failed");
                false
            }
        }
    }

    fn failed(&self, e: &SourceError) {
        if matches!(e, SourceError::Waiting(_)) {
            // Not a fault: the tunnels' own pool_exhausted alarm speaks if
            // the wait starves them.
            tracing::debug!(peer = %self.peer, error = %e, "key source waiting for key");
            return;
        }
        tracing::debug!(peer = %self.peer, error = %e, "key source failed");
        self.reporter.key_source_failed(&e.to_string());
    }

    fn unexpected(&self, len: usize) {
        tracing::warn!(peer = %self.peer, len, "QKD-protocol frame on an etsi014 link; dropped (is the peer configured kind = \"simulated\"?)");
    }
}

/// The next refusal, or never when the link has no relay refusals.
async fn recv_refusal(rx: &mut Option<mpsc::Receiver<RelayRefusal>>) -> Option<RelayRefusal> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What the pool holds for keys, as the master fills it: outside block 0
/// (the bootstrap secret's tail, which authenticates and is never an SA's
/// or an application's key; see `tunnel_task::ReservedPool`), the smaller
/// of the two sides' regions, doubled. Each side's own takes draw from its
/// half of every block, so a tunnel rekeyed from one side only leaves the
/// other half unused: gated on the total, that half alone would reach
/// `pool_target_bytes` and stop the supply while the initiator starves.
fn usable(pool: &PersistedPool) -> u64 {
    let p = pool.pool();
    let region = |r: Role| {
        p.available_for(r)
            .saturating_sub(p.available_in_block(BlockId(0), Some(r)))
    };
    2 * region(Role::Transmitter).min(region(Role::Receiver))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyUse, PoolKey};
    use crate::secret::Secret;
    use crate::secret::file::TestDir;

    #[test]
    fn the_fill_level_is_the_emptier_half_so_a_one_sided_rekeyer_never_starves() {
        let dir = TestDir::new("usable");
        let key = PoolKey::from_secret(Secret::<32>::from_slice(&[5; 32]).unwrap());
        let mut pool = PersistedPool::open(dir.path(), "gw-c", Role::Transmitter, &key).unwrap();
        pool.append(BlockId(0), SecretBytes::from_slice(&[1; 480]))
            .unwrap();
        assert_eq!(usable(&pool), 0, "block 0 is never counted");
        for id in 1..=4 {
            pool.append(BlockId(id), SecretBytes::from_slice(&[2; 256]))
                .unwrap();
        }
        assert_eq!(usable(&pool), 1024);
        // This side takes its own half of blocks 1-4 (after block 0's
        // half); the peer's half stays whole. The total still holds 512
        // bytes, the usable level is what this side can take: none.
        pool.take(KeyUse::Auth, 240).unwrap();
        pool.take(KeyUse::SaKey, 4 * 128).unwrap();
        assert_eq!(pool.pool().available() - 240, 512);
        assert_eq!(usable(&pool), 0);
    }
}
