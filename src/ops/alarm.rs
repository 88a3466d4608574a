//! Alarms: what went wrong, on which peer or tunnel, since when and how
//! often. Owns the alarm types and the bounded, de-duplicated alarm list; it
//! must not decide *when* something is an alarm (the board's update methods
//! and the agent do) and never sees key bytes.
//!
//! An alarm is identified by its kind and subject (peer or tunnel name);
//! raising it again while active only updates its details, last-seen time and
//! count, so a link under attack that aborts every block logs one line, not
//! one per block. Raising it after it was cleared starts a new episode (and
//! logs again). Event-like kinds (an authentication failure, a failed rekey)
//! have no "condition over" signal, so they clear themselves after a quiet
//! period without repeats; state-like kinds are cleared by the code that sees
//! the condition end.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::snapshot::{AlarmSnapshot, AlarmTally, RekeyCause, Severity};
use super::unix_ms;

/// Which QBER crossed its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QberBasis {
    /// Errors corrected by reconciliation in the key (Z) basis.
    Key,
    /// Errors among the revealed test (X) basis bits, or the phase-error
    /// bound derived from them.
    Test,
}

/// Where an authentication failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthSource {
    /// A peer-channel handshake or frame MAC.
    PeerChannel,
    /// A Wegman–Carter tag on a QKD block transcript.
    QkdTranscript,
}

/// An alarm with its latest details.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Alarm {
    /// A block was discarded because its QBER (or the phase-error bound)
    /// exceeded the threshold: eavesdropping or a faulty link.
    QberAboveThreshold {
        peer: String,
        basis: QberBasis,
        qber: f64,
    },
    AuthenticationFailed {
        peer: String,
        source: AuthSource,
    },
    /// The verification hashes of a reconciled block differed.
    VerificationFailed {
        peer: String,
    },
    /// A take from the pool was refused for lack of key.
    PoolExhausted {
        peer: String,
    },
    /// The peer channel cannot be established.
    PeerUnreachable {
        peer: String,
        error: Option<String>,
    },
    /// The tunnel has no valid SA; its policies drop traffic.
    TunnelFailedClosed {
        tunnel: String,
        peer: String,
    },
    RekeyFailed {
        tunnel: String,
        cause: RekeyCause,
        error: String,
    },
    /// The link's key source (a QKD device's KME over ETSI GS QKD 014)
    /// failed; it retries with back-off, and a success clears the alarm.
    KeySourceFailed {
        peer: String,
        error: String,
    },
    /// A multipath relayed link has fewer node-disjoint paths up than
    /// configured: it relays over fewer (`fallback = true`: a relay may then
    /// learn the keys) or not at all.
    RelayDegraded {
        peer: String,
        detail: String,
    },
}

/// An alarm's kind without details: its identity (with the subject) and its
/// metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlarmKind {
    QberAboveThreshold,
    AuthenticationFailed,
    VerificationFailed,
    PoolExhausted,
    PeerUnreachable,
    TunnelFailedClosed,
    RekeyFailed,
    KeySourceFailed,
    RelayDegraded,
}

impl AlarmKind {
    pub const ALL: [AlarmKind; 9] = [
        AlarmKind::QberAboveThreshold,
        AlarmKind::AuthenticationFailed,
        AlarmKind::VerificationFailed,
        AlarmKind::PoolExhausted,
        AlarmKind::PeerUnreachable,
        AlarmKind::TunnelFailedClosed,
        AlarmKind::RekeyFailed,
        AlarmKind::KeySourceFailed,
        AlarmKind::RelayDegraded,
    ];

    /// Stable name: the JSON tag and the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::QberAboveThreshold => "qber_above_threshold",
            AlarmKind::AuthenticationFailed => "authentication_failed",
            AlarmKind::VerificationFailed => "verification_failed",
            AlarmKind::PoolExhausted => "pool_exhausted",
            AlarmKind::PeerUnreachable => "peer_unreachable",
            AlarmKind::TunnelFailedClosed => "tunnel_failed_closed",
            AlarmKind::RekeyFailed => "rekey_failed",
            AlarmKind::KeySourceFailed => "key_source_failed",
            AlarmKind::RelayDegraded => "relay_degraded",
        }
    }

    /// Critical: possible attack, or traffic is being dropped.
    pub fn severity(self) -> Severity {
        match self {
            AlarmKind::QberAboveThreshold
            | AlarmKind::AuthenticationFailed
            | AlarmKind::VerificationFailed
            | AlarmKind::TunnelFailedClosed => Severity::Critical,
            AlarmKind::PoolExhausted
            | AlarmKind::PeerUnreachable
            | AlarmKind::RekeyFailed
            | AlarmKind::KeySourceFailed
            | AlarmKind::RelayDegraded => Severity::Warning,
        }
    }

    /// Kinds that report events rather than states: nothing says "it is
    /// over", so they clear after a quiet period.
    pub fn clears_when_quiet(self) -> bool {
        matches!(
            self,
            AlarmKind::AuthenticationFailed
                | AlarmKind::VerificationFailed
                | AlarmKind::RekeyFailed
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for AlarmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Alarm {
    pub fn kind(&self) -> AlarmKind {
        match self {
            Alarm::QberAboveThreshold { .. } => AlarmKind::QberAboveThreshold,
            Alarm::AuthenticationFailed { .. } => AlarmKind::AuthenticationFailed,
            Alarm::VerificationFailed { .. } => AlarmKind::VerificationFailed,
            Alarm::PoolExhausted { .. } => AlarmKind::PoolExhausted,
            Alarm::PeerUnreachable { .. } => AlarmKind::PeerUnreachable,
            Alarm::TunnelFailedClosed { .. } => AlarmKind::TunnelFailedClosed,
            Alarm::RekeyFailed { .. } => AlarmKind::RekeyFailed,
            Alarm::KeySourceFailed { .. } => AlarmKind::KeySourceFailed,
            Alarm::RelayDegraded { .. } => AlarmKind::RelayDegraded,
        }
    }

    /// The peer or tunnel the alarm is about.
    pub fn subject(&self) -> &str {
        match self {
            Alarm::QberAboveThreshold { peer, .. }
            | Alarm::AuthenticationFailed { peer, .. }
            | Alarm::VerificationFailed { peer }
            | Alarm::PoolExhausted { peer }
            | Alarm::PeerUnreachable { peer, .. }
            | Alarm::KeySourceFailed { peer, .. }
            | Alarm::RelayDegraded { peer, .. } => peer,
            Alarm::TunnelFailedClosed { tunnel, .. } | Alarm::RekeyFailed { tunnel, .. } => tunnel,
        }
    }

    /// One line for logs and the status view.
    pub fn describe(&self) -> String {
        match self {
            Alarm::QberAboveThreshold { peer, basis, qber } => {
                let basis = match basis {
                    QberBasis::Key => "key",
                    QberBasis::Test => "test",
                };
                format!(
                    "QBER {:.2} % ({basis} basis) above threshold on the link to {peer}: block discarded (eavesdropping or link fault)",
                    qber * 100.0
                )
            }
            Alarm::AuthenticationFailed { peer, source } => match source {
                AuthSource::PeerChannel => {
                    format!("peer channel authentication failed for {peer}")
                }
                AuthSource::QkdTranscript => {
                    format!(
                        "QKD transcript authentication failed on the link to {peer}: block discarded"
                    )
                }
            },
            Alarm::VerificationFailed { peer } => {
                format!("reconciled keys differ on the link to {peer}: block discarded")
            }
            Alarm::PoolExhausted { peer } => {
                format!("key pool for {peer} is exhausted: rekeys wait for QKD key")
            }
            Alarm::PeerUnreachable { peer, error } => match error {
                Some(e) => format!("peer {peer} unreachable: {e}"),
                None => format!("peer {peer} unreachable"),
            },
            Alarm::TunnelFailedClosed { tunnel, peer } => format!(
                "tunnel {tunnel} (peer {peer}) has no valid SA: traffic is dropped (failed closed)"
            ),
            Alarm::RekeyFailed {
                tunnel,
                cause,
                error,
            } => format!(
                "rekey of tunnel {tunnel} ({}) failed: {error}",
                cause.name()
            ),
            Alarm::KeySourceFailed { peer, error } => format!(
                "key source of the link to {peer} failed: {error}; retrying with back-off \
                 (tunnels keep their SAs until hard lifetime, then fail closed)"
            ),
            Alarm::RelayDegraded { peer, detail } => {
                format!("relayed keys for {peer} degraded: {detail}")
            }
        }
    }
}

/// What raising did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Raised {
    /// Not in the list, or in it but cleared: a new episode, logged.
    NewEpisode,
    /// Already active: count and details updated, not logged.
    Repeat,
}

/// Why an alarm was cleared (for the log line).
#[derive(Clone, Copy, Debug)]
pub(crate) enum ClearReason {
    Resolved,
    Quiet(Duration),
}

struct Entry {
    alarm: Alarm,
    first_seen: SystemTime,
    last_seen: SystemTime,
    count: u64,
    cleared_at: Option<SystemTime>,
}

impl Entry {
    fn is(&self, kind: AlarmKind, subject: &str) -> bool {
        self.alarm.kind() == kind && self.alarm.subject() == subject
    }
}

/// The bounded list of recent alarms.
pub(crate) struct AlarmLog {
    entries: Vec<Entry>,
    capacity: usize,
    quiet_period: Duration,
    raised_total: [u64; AlarmKind::ALL.len()],
}

impl AlarmLog {
    pub(crate) fn new(capacity: usize, quiet_period: Duration) -> Self {
        Self {
            entries: Vec::new(),
            capacity: capacity.max(1),
            quiet_period,
            raised_total: [0; AlarmKind::ALL.len()],
        }
    }

    pub(crate) fn raise(&mut self, alarm: Alarm, now: SystemTime) -> (Raised, u64) {
        let kind = alarm.kind();
        self.raised_total[kind.index()] += 1;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.is(kind, alarm.subject()))
        {
            let outcome = if e.cleared_at.take().is_some() {
                e.first_seen = now;
                e.count = 0;
                Raised::NewEpisode
            } else {
                Raised::Repeat
            };
            e.alarm = alarm;
            e.last_seen = now;
            e.count += 1;
            return (outcome, e.count);
        }
        if self.entries.len() >= self.capacity {
            self.evict_one();
        }
        self.entries.push(Entry {
            alarm,
            first_seen: now,
            last_seen: now,
            count: 1,
            cleared_at: None,
        });
        (Raised::NewEpisode, 1)
    }

    /// Drops the oldest cleared entry, or else the least recently seen
    /// active one (the list is full of active alarms: keep the fresh ones).
    fn evict_one(&mut self) {
        let oldest = |cleared: bool| {
            self.entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.cleared_at.is_some() == cleared)
                .min_by_key(|(_, e)| e.last_seen)
                .map(|(i, _)| i)
        };
        if let Some(i) = oldest(true).or_else(|| oldest(false)) {
            let e = self.entries.remove(i);
            if e.cleared_at.is_none() {
                tracing::warn!(
                    alarm = %e.alarm.kind(),
                    subject = e.alarm.subject(),
                    "alarm list full: dropped the least recently seen active alarm"
                );
            }
        }
    }

    /// Clears an active alarm; returns it if it was active.
    pub(crate) fn clear(
        &mut self,
        kind: AlarmKind,
        subject: &str,
        now: SystemTime,
    ) -> Option<Alarm> {
        let e = self
            .entries
            .iter_mut()
            .find(|e| e.is(kind, subject) && e.cleared_at.is_none())?;
        e.cleared_at = Some(now);
        Some(e.alarm.clone())
    }

    pub(crate) fn is_active(&self, kind: AlarmKind, subject: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.is(kind, subject) && e.cleared_at.is_none())
    }

    /// Clears event-like alarms not repeated for the quiet period.
    pub(crate) fn expire_quiet(&mut self, now: SystemTime) -> Vec<Alarm> {
        let quiet = self.quiet_period;
        let mut cleared = Vec::new();
        for e in &mut self.entries {
            let idle = now.duration_since(e.last_seen).unwrap_or_default();
            if e.cleared_at.is_none() && e.alarm.kind().clears_when_quiet() && idle >= quiet {
                e.cleared_at = Some(now);
                cleared.push(e.alarm.clone());
            }
        }
        cleared
    }

    pub(crate) fn snapshot(&self) -> (Vec<AlarmSnapshot>, Vec<AlarmTally>) {
        let mut list: Vec<AlarmSnapshot> = self
            .entries
            .iter()
            .map(|e| AlarmSnapshot {
                alarm: e.alarm.clone(),
                severity: e.alarm.kind().severity(),
                active: e.cleared_at.is_none(),
                first_seen_unix_ms: unix_ms(e.first_seen),
                last_seen_unix_ms: unix_ms(e.last_seen),
                count: e.count,
                cleared_at_unix_ms: e.cleared_at.map(unix_ms),
            })
            .collect();
        list.sort_by_key(|a| std::cmp::Reverse((a.active, a.last_seen_unix_ms)));
        let tallies = AlarmKind::ALL
            .iter()
            .map(|k| AlarmTally {
                kind: k.name().to_string(),
                raised: self.raised_total[k.index()],
            })
            .collect();
        (list, tallies)
    }
}

/// Logs a raising: once per episode at error (critical) or warn, repeats at
/// debug only.
pub(crate) fn log_raised(alarm: &Alarm, raised: Raised, count: u64) {
    let kind = alarm.kind();
    let subject = alarm.subject();
    match (raised, kind.severity()) {
        (Raised::Repeat, _) => {
            tracing::debug!(alarm = %kind, subject, count, "alarm repeated: {}", alarm.describe());
        }
        (Raised::NewEpisode, Severity::Critical) => {
            tracing::error!(alarm = %kind, subject, severity = "critical", "alarm raised: {}", alarm.describe());
        }
        (Raised::NewEpisode, Severity::Warning) => {
            tracing::warn!(alarm = %kind, subject, severity = "warning", "alarm raised: {}", alarm.describe());
        }
    }
}

pub(crate) fn log_cleared(alarm: &Alarm, reason: ClearReason) {
    let kind = alarm.kind();
    let subject = alarm.subject();
    match reason {
        ClearReason::Resolved => tracing::info!(alarm = %kind, subject, "alarm cleared"),
        ClearReason::Quiet(d) => tracing::info!(
            alarm = %kind,
            subject,
            quiet_s = d.as_secs(),
            "alarm cleared: no repeat within the quiet period"
        ),
    }
}

#[cfg(test)]
#[path = "alarm_tests.rs"]
mod tests;
