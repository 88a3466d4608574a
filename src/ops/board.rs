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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use super::alarm::{self, Alarm, AlarmKind, AlarmLog, ClearReason};
use super::peer_entry::{PeerEntry, PeerReporter};
use super::snapshot::{BoardSnapshot, PeerRole, SaeSnapshot};
use super::tunnel_entry::{TunnelEntry, TunnelReporter};
use super::unix_ms;

/// Where the board reads the time (tests pass a manual clock).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Tunables of the board.
#[derive(Clone, Debug)]
pub struct BoardOptions {
    /// The key rate is final key bits over this window.
    pub key_rate_window: Duration,
    /// Most entries the alarm list keeps (active and cleared).
    pub alarm_capacity: usize,
    /// Event-like alarms clear after this long without a repeat.
    pub alarm_quiet_period: Duration,
    /// A dialing link raises `PeerUnreachable` after this many failed dials
    /// in a row (0 = never).
    pub unreachable_after_attempts: u32,
}

impl Default for BoardOptions {
    fn default() -> Self {
        Self {
            // A minute spans tens of blocks at the simulated rates, so the
            // rate is smooth but still follows an eavesdropper within a minute.
            key_rate_window: Duration::from_secs(60),
            alarm_capacity: 256,
            alarm_quiet_period: Duration::from_secs(600),
            unreachable_after_attempts: 3,
        }
    }
}

/// The agent's status board; clone it freely (it is an `Arc`).
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Inner>,
}

struct Inner {
    gateway: String,
    started: SystemTime,
    clock: Clock,
    options: BoardOptions,
    peers: RwLock<BTreeMap<String, Arc<RwLock<PeerEntry>>>>,
    tunnels: RwLock<BTreeMap<String, Arc<RwLock<TunnelEntry>>>>,
    alarms: Mutex<AlarmLog>,
    kme: Mutex<BTreeMap<String, SaeSnapshot>>,
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
        let alarms = AlarmLog::new(options.alarm_capacity, options.alarm_quiet_period);
        Self {
            inner: Arc::new(Inner {
                gateway: gateway.into(),
                started,
                clock,
                options,
                peers: RwLock::default(),
                tunnels: RwLock::default(),
                alarms: Mutex::new(alarms),
                kme: Mutex::default(),
            }),
        }
    }

    pub fn gateway(&self) -> &str {
        &self.inner.gateway
    }

    pub(crate) fn now(&self) -> SystemTime {
        (self.inner.clock)()
    }

    pub(crate) fn options(&self) -> &BoardOptions {
        &self.inner.options
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
        PeerReporter::new(self.clone(), entry, name)
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
        TunnelReporter::new(self.clone(), entry, name)
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
        let now = self.now();
        let (raised, count) = lock(&self.inner.alarms).raise(alarm.clone(), now);
        alarm::log_raised(&alarm, raised, count);
    }

    /// Clears an active alarm (logged at info); false if none was active.
    pub fn clear(&self, kind: AlarmKind, subject: &str) -> bool {
        let now = self.now();
        let cleared = lock(&self.inner.alarms).clear(kind, subject, now);
        match cleared {
            Some(a) => {
                alarm::log_cleared(&a, ClearReason::Resolved);
                true
            }
            None => false,
        }
    }

    pub fn is_alarm_active(&self, kind: AlarmKind, subject: &str) -> bool {
        lock(&self.inner.alarms).is_active(kind, subject)
    }

    /// A consistent-enough picture: each entry is copied under its own lock,
    /// one at a time. Clears quiet event alarms first.
    pub fn snapshot(&self) -> BoardSnapshot {
        let now = self.now();
        let peers: Vec<_> = read(&self.inner.peers).values().cloned().collect();
        let tunnels: Vec<_> = read(&self.inner.tunnels).values().cloned().collect();
        let peers = peers
            .iter()
            .map(|e| read(e).snapshot(now, self.inner.options.key_rate_window))
            .collect();
        let tunnels = tunnels.iter().map(|e| read(e).snapshot()).collect();
        let (alarms, alarms_raised_total) = {
            let mut log = lock(&self.inner.alarms);
            let quiet = log.expire_quiet(now);
            let snap = log.snapshot();
            drop(log);
            for a in &quiet {
                alarm::log_cleared(a, ClearReason::Quiet(self.inner.options.alarm_quiet_period));
            }
            snap
        };
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
        }
    }
}

// A panic in one updater must not take status down with it: the data behind
// a poisoned lock is plain numbers, still worth showing.
pub(crate) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[path = "board_tests.rs"]
pub(crate) mod tests;
