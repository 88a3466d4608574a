//! One peer's session bookkeeping: the pool agreement at the start of every
//! session, the control stream's dispatch to tunnels, and the switch of the
//! channel key from the bootstrap secret to QKD keys.
//!
//! Nothing may take key from the pool until the agreement for the current
//! session is done: the pool is *ready* only then (the `ready` watch holds
//! the session). The agreement: each side sends its [`PoolSummary`]; on the
//! peer's summary it keeps what both hold and answers with the digest of its
//! holdings; equal digests make the pool ready. A mismatch (a take that
//! raced the summary, a lost frame) repeats the exchange a few times; after
//! that the session stays not ready, with an error in the log, until the
//! next session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::keys::{AgreementCheck, PersistedPool, PoolSummary, Role};
use crate::peer::{Inbound, LinkState, PeerHandle, Stream};

use super::AgentError;
use super::app_keys::AppKeyDesk;
use super::control::{ControlMessage, TunnelInbound};
use super::etsi014_task::{SourceInbound, SourceMessage};
use super::qkd_task::lock;
use super::relay_task::RelayRouter;

/// Agreement rounds per session before giving up until the next session.
const MAX_AGREEMENT_ROUNDS: u32 = 5;
/// How often the transmitter considers switching the channel key.
const CHANNEL_KEY_CHECK: Duration = Duration::from_secs(5);

pub struct PeerTask {
    pub peer: String,
    pub role: Role,
    pub handle: PeerHandle,
    pub control_rx: mpsc::Receiver<Inbound>,
    pub pool: Arc<Mutex<PersistedPool>>,
    pub ready: watch::Sender<Option<u64>>,
    pub tunnels: HashMap<String, mpsc::Sender<TunnelInbound>>,
    /// The ETSI 014 key source's queue (`kind = "etsi014"` links only).
    pub key_source: Option<mpsc::Sender<SourceInbound>>,
    /// Switch the channel key to a fresh pool key this often (transmitter).
    pub channel_key_interval: Duration,
    /// The KME's exchange, when the KME is on.
    pub app_keys: Option<Arc<AppKeyDesk>>,
    /// This gateway's relay (shares of relayed keys arrive on any link).
    pub relay: Arc<RelayRouter>,
    pub cancel: CancellationToken,
}

/// Where the agreement of the current session stands.
struct Agreement {
    session: u64,
    rounds: u32,
    /// Our digest after applying the peer's summary, once we have it.
    ours: Option<AgreementCheck>,
    /// The peer's digest, if it arrived before ours was computed.
    theirs: Option<AgreementCheck>,
}

impl PeerTask {
    pub async fn run(mut self) -> Result<(), AgentError> {
        let mut state = self.handle.state();
        let mut agreement: Option<Agreement> = None;
        let mut last_switch: Option<Instant> = None;
        let mut switch_tick = tokio::time::interval(CHANNEL_KEY_CHECK);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                changed = state.changed() => {
                    if changed.is_err() { return Ok(()); }
                    let now = state.borrow_and_update().clone();
                    match now {
                        LinkState::Connected(info) if agreement.as_ref().map(|a| a.session) != Some(info.session) => {
                            self.ready.send_replace(None);
                            agreement = Some(Agreement { session: info.session, rounds: 0, ours: None, theirs: None });
                            self.send_summary().await;
                        }
                        LinkState::Connected(_) => {}
                        _ => {
                            self.ready.send_replace(None);
                            agreement = None;
                        }
                    }
                }
                Some(m) = self.control_rx.recv() => {
                    if agreement.as_ref().map(|a| a.session) != Some(m.session) {
                        // The peer's first frames can overtake the state
                        // watch: a frame of the link's current session
                        // starts its agreement here.
                        if self.handle.session().map(|s| s.session) != Some(m.session) {
                            continue;
                        }
                        self.ready.send_replace(None);
                        agreement = Some(Agreement { session: m.session, rounds: 0, ours: None, theirs: None });
                        self.send_summary().await;
                    }
                    let Some(a) = agreement.as_mut() else { continue };
                    self.on_control(a, m).await?;
                }
                _ = switch_tick.tick() => self.maybe_switch_channel_key(&mut last_switch).await,
            }
        }
    }

    async fn on_control(&mut self, a: &mut Agreement, m: Inbound) -> Result<(), AgentError> {
        let msg = match ControlMessage::decode(&m.payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "malformed control message dropped");
                return Ok(());
            }
        };
        match msg {
            ControlMessage::PoolSummary(summary) => {
                let pool = self.pool.clone();
                let applied =
                    tokio::task::spawn_blocking(move || lock(&pool).apply_agreement(&summary))
                        .await
                        .map_err(|e| AgentError::Task(e.to_string()))?;
                match applied {
                    Ok(outcome) => {
                        if outcome.discarded_blocks > 0 || outcome.newly_consumed_bytes > 0 {
                            tracing::info!(peer = %self.peer, discarded_blocks = outcome.discarded_blocks,
                                discarded_bytes = outcome.discarded_bytes,
                                newly_consumed = outcome.newly_consumed_bytes,
                                "pool agreement discarded what the peer does not hold");
                        }
                        let check = AgreementCheck {
                            digest: outcome.digest,
                        };
                        self.send(ControlMessage::PoolCheck(check)).await;
                        a.ours = Some(check);
                    }
                    Err(e) => {
                        tracing::error!(peer = %self.peer, error = %e, "pool agreement could not be stored")
                    }
                }
            }
            ControlMessage::PoolCheck(check) => a.theirs = Some(check),
            ControlMessage::Rekey { tunnel, payload } => {
                match self.tunnels.get(&tunnel) {
                    Some(tx) => {
                        let _ = tx
                            .send(TunnelInbound {
                                session: m.session,
                                payload,
                            })
                            .await;
                    }
                    None => {
                        tracing::warn!(peer = %self.peer, %tunnel, "rekey message for a tunnel this gateway does not have")
                    }
                }
                return Ok(());
            }
            ControlMessage::KeyOffer(offer) => {
                self.to_key_source(m.session, SourceMessage::Offer(offer))
                    .await;
                return Ok(());
            }
            ControlMessage::KeyOfferAck(ack) => {
                self.to_key_source(m.session, SourceMessage::Ack(ack)).await;
                return Ok(());
            }
            ControlMessage::AppKeys(keys) => {
                self.on_app_keys(keys).await?;
                return Ok(());
            }
            ControlMessage::RelayHop(hop) => {
                self.relay.on_hop(&self.peer, m.session, hop).await;
                return Ok(());
            }
            ControlMessage::RelayRefusal(refusal) => {
                self.relay.on_refusal(&self.peer, refusal).await;
                return Ok(());
            }
            ControlMessage::AppKeysAck(ack) => {
                match &self.app_keys {
                    Some(desk) => desk.acked(ack),
                    None => tracing::debug!(peer = %self.peer, "AppKeys ack while the KME is off"),
                }
                return Ok(());
            }
        }
        if let (Some(ours), Some(theirs)) = (&a.ours, &a.theirs) {
            if ours.digest == theirs.digest {
                tracing::info!(peer = %self.peer, session = a.session, "key pools agree");
                self.ready.send_replace(Some(a.session));
            } else if a.rounds + 1 < MAX_AGREEMENT_ROUNDS {
                a.rounds += 1;
                a.ours = None;
                a.theirs = None;
                self.send_summary().await;
            } else {
                tracing::error!(peer = %self.peer, session = a.session,
                    "key pools still disagree after {MAX_AGREEMENT_ROUNDS} rounds; no keys are used until the next session");
            }
        }
        Ok(())
    }

    async fn to_key_source(&self, session: u64, msg: SourceMessage) {
        match &self.key_source {
            Some(tx) => {
                let _ = tx.send(SourceInbound { session, msg }).await;
            }
            None => {
                tracing::warn!(peer = %self.peer, "ETSI 014 key message on a link that is not kind = \"etsi014\"; dropped")
            }
        }
    }

    /// The peer's KME shared keys with a local SAE: take the same bytes,
    /// file them, answer. Refused when the KME is off here, or the pool is
    /// not agreed for this session.
    async fn on_app_keys(&self, keys: crate::kme::AppKeys) -> Result<(), AgentError> {
        let request = keys.request;
        let ready = self.ready.borrow().is_some();
        let outcome = match (&self.app_keys, ready) {
            (None, _) => crate::kme::AckOutcome::UnknownSae,
            (Some(_), false) => crate::kme::AckOutcome::PoolRefused,
            (Some(desk), true) => {
                let (desk, pool, peer) = (desk.clone(), self.pool.clone(), self.peer.clone());
                tokio::task::spawn_blocking(move || desk.accept(&peer, &pool, keys))
                    .await
                    .map_err(|e| AgentError::Task(e.to_string()))?
            }
        };
        if outcome != crate::kme::AckOutcome::Accepted {
            tracing::warn!(peer = %self.peer, request, %outcome, "application keys from the peer refused");
        }
        self.send(ControlMessage::AppKeysAck(crate::kme::AppKeysAck {
            request,
            outcome,
        }))
        .await;
        Ok(())
    }

    async fn send_summary(&self) {
        let summary: PoolSummary = lock(&self.pool).summary();
        self.send(ControlMessage::PoolSummary(summary)).await;
    }

    async fn send(&self, msg: ControlMessage) {
        if let Err(e) = self
            .handle
            .send(Stream::Control, Bytes::from(msg.encode()))
            .await
        {
            tracing::debug!(peer = %self.peer, error = %e, "control send failed");
        }
    }

    /// The transmitter moves the channel off the bootstrap secret as soon as
    /// the pool has QKD key, and then onto a fresh key every interval.
    async fn maybe_switch_channel_key(&self, last: &mut Option<Instant>) {
        if self.role != Role::Transmitter || self.ready.borrow().is_none() {
            return;
        }
        let Some(info) = self.handle.session() else {
            return;
        };
        let due = info.epoch == 0 || last.is_none_or(|t| t.elapsed() >= self.channel_key_interval);
        // Only once QKD blocks exist beyond the bootstrap block.
        let has_qkd_key = lock(&self.pool)
            .pool()
            .high_water()
            .is_some_and(|h| h.0 >= 1);
        if !due || !has_qkd_key {
            return;
        }
        match self.handle.switch_channel_key().await {
            Ok(epoch) => {
                *last = Some(Instant::now());
                tracing::info!(peer = %self.peer, epoch, "channel key switched to a QKD key");
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "channel key switch failed; will retry")
            }
        }
    }
}
