//! The status board: one `Arc`-shared place where every task of the agent
//! writes what it is doing, and from which the status socket, the metrics
//! endpoint and the systemd STATUS line read consistent snapshots.
//!
//! Owns the registry of peers and tunnels and the alarm list. Must not do
//! I/O or hold a lock across an await: every method takes a short
//! `std::sync` lock, copies numbers in or out, and returns. Each peer and
//! tunnel has its own lock ([`PeerReporter`], [`TunnelReporter`]), so updates of
//! different links never wait for each other; alarm decisions are taken
//! under the entry lock and applied after it is released, so no two locks
//! are ever held together. Only public numbers enter: counts, rates, SPIs,
//! names — never key bytes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::alarm::{Alarm, AlarmKind};
use super::alarm_desk::AlarmDesk;
pub use super::alarm_desk::{BoardOptions, Clock};
use super::peer_entry::{PeerEntry, PeerReporter};
use super::snapshot::{BoardSnapshot, PeerRole, RelayLinkSnapshot, SaeSnapshot};
use super::tunnel_entry::{TunnelEntry, TunnelReporter};
use super::{lock, read, unix_ms, write};

/// The agent's status board; clone it freely (it is an `Arc`).
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Inner>,
}

struct Inner {
    gateway: String,
    started: SystemTime,
    /// Clock, options and alarms, shared with every reporter.
    desk: Arc<AlarmDesk>,
    peers: RwLock<BTreeMap<String, Arc<RwLock<PeerEntry>>>>,
    tunnels: RwLock<BTreeMap<String, Arc<RwLock<TunnelEntry>>>>,
    kme: Mutex<BTreeMap<String, SaeSnapshot>>,
    relay: Mutex<BTreeMap<String, RelayLinkSnapshot>>,
}

/// What the relay counts per QKD link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayEvent {
    /// A share sealed and sent on the link.
    Sent,
    /// A share received and opened (its tag checked).
    Received,
    /// A received share sent on to the next hop.
    Forwarded,
    /// A received share of a key for this gateway.
    Delivered,
    /// A received share refused (not taken further).
    Refused,
}

/// What the KME counts per SAE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KmeDelivery {
    /// Keys delivered by enc_keys (to a master SAE).
    EncKeys,
    /// Keys delivered by dec_keys (to a slave SAE).
    DecKeys,
    /// A refused request (the count is of requests).
    Refused,
}

impl std::fmt::Debug for StatusBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusBoard")
            .field("gateway", &self.inner.gateway)
            .finish_non_exhaustive()
    }
}

impl StatusBoard {
    pub fn new(gateway: impl Into<String>) -> Self {
        Self::with_options(gateway, BoardOptions::default(), Arc::new(SystemTime::now))
    }

    pub fn with_options(gateway: impl Into<String>, options: BoardOptions, clock: Clock) -> Self {
        let started = clock();
        Self {
            inner: Arc::new(Inner {
                gateway: gateway.into(),
                started,
                desk: Arc::new(AlarmDesk::new(options, clock)),
                peers: RwLock::default(),
                tunnels: RwLock::default(),
                kme: Mutex::default(),
                relay: Mutex::default(),
            }),
        }
    }

    pub fn gateway(&self) -> &str {
        &self.inner.gateway
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.inner.desk.now()
    }

    pub(crate) fn options(&self) -> &BoardOptions {
        self.inner.desk.options()
    }

    /// Registers a peer link (or returns the existing entry, with its role
    /// updated: re-registering after a config reload keeps the counters).
    pub fn register_peer(&self, name: &str, role: PeerRole) -> PeerReporter {
        let mut peers = write(&self.inner.peers);
        let entry = peers
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(RwLock::new(PeerEntry::new(name, role, self.now()))))
            .clone();
        drop(peers);
        write(&entry).set_role(role);
        PeerReporter::new(Arc::clone(&self.inner.desk), entry, name)
    }

    /// Registers a tunnel (or returns the existing entry, its peer updated).
    pub fn register_tunnel(&self, name: &str, peer: &str) -> TunnelReporter {
        let mut tunnels = write(&self.inner.tunnels);
        let entry = tunnels
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(RwLock::new(TunnelEntry::new(name, peer, self.now()))))
            .clone();
        drop(tunnels);
        write(&entry).set_peer(peer);
        TunnelReporter::new(Arc::clone(&self.inner.desk), entry, name)
    }

    /// Shows an SAE of the KME with zero counts (so its metrics exist
    /// before its first request).
    pub fn register_sae(&self, sae: &str) {
        self.kme_delivered(sae, KmeDelivery::Refused, 0);
    }

    /// Counts KME deliveries for `sae`.
    pub fn kme_delivered(&self, sae: &str, what: KmeDelivery, n: u64) {
        let mut kme = lock(&self.inner.kme);
        let e = kme.entry(sae.to_owned()).or_insert_with(|| SaeSnapshot {
            sae: sae.to_owned(),
            ..SaeSnapshot::default()
        });
        let counter = match what {
            KmeDelivery::EncKeys => &mut e.enc_keys_total,
            KmeDelivery::DecKeys => &mut e.dec_keys_total,
            KmeDelivery::Refused => &mut e.refused_requests_total,
        };
        *counter += n;
    }

    /// Counts a relayed-key share event on the QKD link to `link`.
    pub fn relay_counted(&self, link: &str, what: RelayEvent, bytes: u64) {
        let mut relay = lock(&self.inner.relay);
        let e = relay
            .entry(link.to_owned())
            .or_insert_with(|| RelayLinkSnapshot {
                link: link.to_owned(),
                ..RelayLinkSnapshot::default()
            });
        match what {
            RelayEvent::Sent => {
                e.sent_shares_total += 1;
                e.sent_bytes_total += bytes;
            }
            RelayEvent::Received => {
                e.received_shares_total += 1;
                e.received_bytes_total += bytes;
            }
            RelayEvent::Forwarded => e.forwarded_shares_total += 1,
            RelayEvent::Delivered => e.delivered_shares_total += 1,
            RelayEvent::Refused => e.refused_shares_total += 1,
        }
    }

    /// Forgets a peer; handles still held keep working but are no longer shown.
    pub fn remove_peer(&self, name: &str) -> bool {
        write(&self.inner.peers).remove(name).is_some()
    }

    pub fn remove_tunnel(&self, name: &str) -> bool {
        write(&self.inner.tunnels).remove(name).is_some()
    }

    /// Raises an alarm, or counts a repeat of an active one. A new episode
    /// is logged once (error for critical kinds, warn otherwise).
    pub fn raise(&self, alarm: Alarm) {
        self.inner.desk.raise(alarm);
    }

    /// Clears an active alarm (logged at info); false if none was active.
    pub fn clear(&self, kind: AlarmKind, subject: &str) -> bool {
        self.inner.desk.clear(kind, subject)
    }

    pub fn is_alarm_active(&self, kind: AlarmKind, subject: &str) -> bool {
        self.inner.desk.is_active(kind, subject)
    }

    /// A consistent-enough picture: each entry is copied under its own lock,
    /// one at a time. Clears quiet event alarms first.
    pub fn snapshot(&self) -> BoardSnapshot {
        let now = self.now();
        let peers: Vec<_> = read(&self.inner.peers).values().cloned().collect();
        let tunnels: Vec<_> = read(&self.inner.tunnels).values().cloned().collect();
        let peers = peers
            .iter()
            .map(|e| read(e).snapshot(now, self.options().key_rate_window))
            .collect();
        let tunnels = tunnels.iter().map(|e| read(e).snapshot()).collect();
        let (alarms, alarms_raised_total) = self.inner.desk.snapshot(now);
        BoardSnapshot {
            gateway: self.inner.gateway.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_unix_ms: unix_ms(self.inner.started),
            taken_at_unix_ms: unix_ms(now),
            peers,
            tunnels,
            alarms,
            alarms_raised_total,
            kme: lock(&self.inner.kme).values().cloned().collect(),
            relay: lock(&self.inner.relay).values().cloned().collect(),
        }
    }
}

#[cfg(test)]
#[path = "board_tests.rs"]
pub(crate) mod tests;
