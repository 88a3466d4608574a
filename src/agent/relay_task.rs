//! This gateway's part in relaying keys ([`crate::relay`]): it seals shares
//! it sends on a QKD link with that link's pool, opens shares that arrive,
//! passes them on (when `[network] relay = true`) or files them for a
//! relayed peer's key source, and carries refusals back to the source.
//!
//! Pads: a share is sealed only after its pad is taken (and journalled) from
//! the hop's pool, and opened only after the same bytes are taken on this
//! side; the pool refuses bytes already consumed, so no pad byte serves
//! twice whatever fails. The sender takes through the same reserve rule as
//! the tunnels ([`ReservedPool`]: never the bootstrap block, never the QKD
//! link's authentication reserve). A node that cannot go on refuses at once
//! and holds nothing: it never waits for pool with a share in hand.
//!
//! Every pool operation runs on the blocking pool (journal writes and
//! fsync); the control message that carried a share is answered (passed on
//! or refused) before the next is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;

use crate::etsi014::api::KeyItem;
use crate::keys::{BlockId, KeyUse, PersistedPool};
use crate::ops::{RelayEvent, StatusBoard};
use crate::peer::{PeerHandle, Stream};
use crate::rekey::KeySource;
use crate::relay::export::ShareExport;
use crate::relay::{Filed, HopError, Inbox, RelayHeader, RelayHop, RelayRefusal, pad_len};
use crate::secret::SecretBytes;

use super::control::ControlMessage;
use super::qkd_task::lock;
use super::tunnel_task::ReservedPool;

/// Relayed keys held for their offers at most.
const INBOX_KEYS: usize = 256;

/// Why a share could not be sent on.
#[derive(Debug)]
pub enum SendFailure {
    /// The hop's pool has too little key for the pad now (it fills as its
    /// QKD link runs).
    NoKey(String),
    /// Anything else: no such link, link down, send failed.
    Other(String),
}

impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendFailure::NoKey(m) | SendFailure::Other(m) => f.write_str(m),
        }
    }
}

/// One QKD link as the relay uses it.
#[derive(Clone)]
pub struct HopLink {
    pub pool: Arc<Mutex<PersistedPool>>,
    /// Bytes of this side's region the relay must leave (the link's
    /// authentication reserve).
    pub reserve: u64,
    pub handle: PeerHandle,
    /// The session whose pool agreement is done, if any.
    pub ready: watch::Receiver<Option<u64>>,
}

pub struct RelayRouter {
    me: String,
    /// `[network] relay`: pass shares on for others.
    relays: bool,
    /// The QKD links, set once every peer is started.
    links: OnceLock<HashMap<String, HopLink>>,
    inbox: Mutex<Inbox>,
    arrived: Notify,
    /// Refusals for keys this gateway is the source of, by destination.
    refusals: Mutex<HashMap<String, mpsc::Sender<RelayRefusal>>>,
    board: StatusBoard,
    /// LAB ONLY: every opened share is written here.
    export: Option<ShareExport>,
}

impl RelayRouter {
    /// `hold`: how long a relayed key waits for its offer here.
    pub fn new(
        me: &str,
        relays: bool,
        hold: Duration,
        board: StatusBoard,
        export: Option<std::path::PathBuf>,
    ) -> Arc<Self> {
        if let Some(p) = &export {
            tracing::warn!(path = %p.display(), "LAB ONLY: lab_export_relay_shares is on: every relayed-key share this gateway opens is written to that file");
        }
        Arc::new(Self {
            export: export.map(ShareExport::new),
            me: me.to_string(),
            relays,
            links: OnceLock::new(),
            inbox: Mutex::new(Inbox::new(INBOX_KEYS, hold)),
            arrived: Notify::new(),
            refusals: Mutex::new(HashMap::new()),
            board,
        })
    }

    /// The QKD links (by neighbour), once all are started.
    pub fn set_links(&self, links: HashMap<String, HopLink>) {
        let _ = self.links.set(links);
    }

    /// Refusals of keys this gateway sends to `destination`.
    pub fn refusals_for(&self, destination: &str) -> mpsc::Receiver<RelayRefusal> {
        let (tx, rx) = mpsc::channel(16);
        lock(&self.refusals).insert(destination.to_string(), tx);
        rx
    }

    fn link(&self, name: &str) -> Option<&HopLink> {
        self.links.get()?.get(name)
    }

    /// Whether the QKD link to `neighbour` has agreed pools now.
    pub fn link_up(&self, neighbour: &str) -> bool {
        self.link(neighbour)
            .is_some_and(|l| l.ready.borrow().is_some())
    }

    /// Sends this gateway's own share (`header.hop` = 0) to the next node.
    pub async fn originate(
        &self,
        header: RelayHeader,
        share: &SecretBytes,
    ) -> Result<(), SendFailure> {
        debug_assert_eq!(header.sender(), self.me);
        self.seal_and_send(&header, share).await
    }

    /// Takes the pad on the link to `header.receiver()`, seals, sends.
    async fn seal_and_send(
        &self,
        header: &RelayHeader,
        share: &SecretBytes,
    ) -> Result<(), SendFailure> {
        let next = header.receiver().to_string();
        let me = &self.me;
        let other = SendFailure::Other;
        let link = self
            .link(&next)
            .ok_or_else(|| other(format!("{me} has no QKD link to {next}")))?;
        if link.ready.borrow().is_none() {
            return Err(other(format!(
                "the QKD link {me}–{next} is down (its pools are not agreed)"
            )));
        }
        let need = pad_len(header.len);
        let (pool, reserve) = (Arc::clone(&link.pool), link.reserve);
        let taken = tokio::task::spawn_blocking(move || {
            let mut pool = lock(&pool);
            let mut source = ReservedPool {
                pool: &mut pool,
                reserve,
            };
            source.take(KeyUse::Relay, need)
        })
        .await
        .map_err(|e| other(format!("pool task failed: {e}")))?;
        let (pad_ref, pad) = taken.map_err(|e| {
            let why = format!("no key for the hop {me}–{next} ({need} bytes): {e}");
            match e {
                crate::rekey::TakeError::Exhausted { .. } => SendFailure::NoKey(why),
                _ => other(why),
            }
        })?;
        let hop = RelayHop::seal(header.clone(), share, pad_ref, pad)
            .map_err(|e| other(e.to_string()))?;
        let frame = Bytes::from(ControlMessage::RelayHop(hop).encode());
        link.handle
            .send(Stream::Control, frame)
            .await
            .map_err(|e| other(format!("sending to {next} failed: {e}")))?;
        self.board
            .relay_counted(&next, RelayEvent::Sent, u64::from(header.len));
        Ok(())
    }

    /// A share from `from`, on the session `session` of that link.
    pub async fn on_hop(&self, from: &str, session: u64, hop: RelayHop) {
        let h = hop.header.clone();
        if h.sender() != from || h.receiver() != self.me {
            tracing::warn!(peer = %from, path = ?h.path, hop = h.hop,
                "relay share misrouted (sender or receiver is not this hop); dropped");
            return;
        }
        let Some(link) = self.link(from) else {
            tracing::warn!(peer = %from, "relay share from a peer without a QKD link; dropped");
            return;
        };
        let opened = self.open(link, session, &hop).await;
        let share = match opened {
            Ok(share) => share,
            Err(reason) => return self.refuse(&h, from, reason).await,
        };
        self.board
            .relay_counted(from, RelayEvent::Received, u64::from(h.len));
        if let Some(x) = &self.export
            && let Err(e) = x.export(&h, &share)
        {
            tracing::warn!(error = %e, "could not export a relayed share (lab_export_relay_shares)");
        }
        if h.last_hop() {
            let filed = lock(&self.inbox).file(Instant::now(), &h, share);
            match filed {
                Ok(filed) => {
                    self.board.relay_counted(from, RelayEvent::Delivered, 0);
                    if filed == Filed::Complete {
                        tracing::debug!(source = %h.source(), key = %h.key_id, "relayed key complete");
                        self.arrived.notify_waiters();
                    }
                }
                Err(e) => self.refuse(&h, from, e.to_string()).await,
            }
            return;
        }
        if !self.relays {
            let reason = format!(
                "{} does not relay keys for others ([network] relay = false)",
                self.me
            );
            return self.refuse(&h, from, reason).await;
        }
        match self.seal_and_send(&h.next_hop(), &share).await {
            Ok(()) => {
                self.board.relay_counted(from, RelayEvent::Forwarded, 0);
                tracing::debug!(source = %h.source(), destination = %h.destination(),
                    key = %h.key_id, share = h.share, "relayed a share on");
            }
            Err(failure) => self.refuse(&h, from, failure.to_string()).await,
        }
    }

    /// Takes this side's copy of the pad and opens the share.
    async fn open(
        &self,
        link: &HopLink,
        session: u64,
        hop: &RelayHop,
    ) -> Result<SecretBytes, String> {
        if *link.ready.borrow() != Some(session) {
            return Err(format!(
                "the pools of {}–{} are not agreed for this session",
                self.me,
                hop.header.sender()
            ));
        }
        if hop.pad.segments().iter().any(|s| s.block == BlockId(0)) {
            return Err("the pad names the bootstrap block, which never pads a key".into());
        }
        let (pool, pad_ref) = (Arc::clone(&link.pool), hop.pad.clone());
        let pad = tokio::task::spawn_blocking(move || lock(&pool).take_at(&pad_ref, KeyUse::Relay))
            .await
            .map_err(|e| format!("pool task failed: {e}"))?
            .map_err(|e| format!("the pad cannot be taken here: {e}"))?;
        hop.open(pad).map_err(|e| {
            if e == HopError::Tag {
                tracing::error!(peer = %hop.header.sender(), key = %hop.header.key_id,
                    "relay share failed its Wegman-Carter tag: altered, or the pools disagree");
            }
            e.to_string()
        })
    }

    /// Sends a refusal of `h` back to `from` (this node is `h.receiver()`).
    async fn refuse(&self, h: &RelayHeader, from: &str, reason: String) {
        tracing::warn!(source = %h.source(), destination = %h.destination(), key = %h.key_id,
            share = h.share, %reason, "relay share refused");
        self.board.relay_counted(from, RelayEvent::Refused, 0);
        let refusal = RelayRefusal {
            key_id: h.key_id,
            share: h.share,
            path: h.path.clone(),
            at: h.hop + 1,
            reason,
        };
        self.send_back(from, refusal).await;
    }

    async fn send_back(&self, to: &str, refusal: RelayRefusal) {
        let Some(link) = self.link(to) else { return };
        let frame = Bytes::from(ControlMessage::RelayRefusal(refusal).encode());
        if let Err(e) = link.handle.send(Stream::Control, frame).await {
            tracing::debug!(peer = %to, error = %e, "relay refusal not sent");
        }
    }

    /// A refusal from `from`: for this gateway's own key, or to pass back.
    pub async fn on_refusal(&self, from: &str, refusal: RelayRefusal) {
        let Some(mine) = refusal.path.iter().position(|n| *n == self.me) else {
            return;
        };
        if refusal.path.get(mine + 1).map(String::as_str) != Some(from)
            || usize::from(refusal.at) <= mine
        {
            tracing::warn!(peer = %from, "relay refusal that did not come back along its path; dropped");
            return;
        }
        if mine > 0 {
            let back = refusal.path[mine - 1].clone();
            return self.send_back(&back, refusal).await;
        }
        let destination = refusal.path.last().cloned().unwrap_or_default();
        let tx = lock(&self.refusals).get(&destination).cloned();
        if let Some(tx) = tx {
            let _ = tx.send(refusal).await;
        }
    }

    /// The whole keys `ids` from `source`, waiting up to `wait` for their
    /// shares; they leave the inbox.
    pub async fn wait_for(
        &self,
        source: &str,
        ids: &[Uuid],
        wait: Duration,
    ) -> Option<Vec<KeyItem>> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(keys) = lock(&self.inbox).take(source, ids) {
                return Some(
                    keys.into_iter()
                        .map(|(key_id, key)| KeyItem {
                            key_id,
                            key_id_extension: None,
                            key,
                            key_extension: None,
                        })
                        .collect(),
                );
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}
