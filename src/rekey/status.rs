//! A tunnel's rekey status for `qkd-ipsec status` and metrics: generation,
//! SPIs, age, next rekey, state, alarms and lifetime counters. Read-only
//! snapshots; no key material and nothing secret.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::engine::RekeyEngine;
use super::events::Alarm;
use super::sa_table::Deletion;
use super::{ExchangeId, RekeyRole, SaDirection, Spi};

/// Lifetime counters of one engine instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RekeyCounters {
    /// Exchanges completed on this side.
    pub rekeys_done: u64,
    /// Exchanges given up (they are retried with fresh keys).
    pub rekeys_failed: u64,
    /// Pool bytes taken (or accepted) for rekeys.
    pub keys_taken_bytes: u64,
    /// Pool bytes taken for exchanges that never completed: dropped and
    /// zeroised, never used again.
    pub keys_wasted_bytes: u64,
    pub retransmissions: u64,
    /// Peer messages dropped as malformed, stale or unexpected.
    pub messages_rejected: u64,
    /// Kernel requests that failed (other than a delete of a missing SA).
    pub kernel_errors: u64,
}

/// What the engine is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EngineState {
    NotStarted,
    Idle,
    Rekeying {
        id: String,
        step: &'static str,
    },
    /// A rekey is due; the pool has no key for it.
    WaitingForKeys,
    /// A rekey is due (or requested); the peer channel is down.
    WaitingForPeer,
    /// The last attempt failed; the next one starts after this delay.
    Backoff {
        retry_in_ms: u64,
    },
}

/// One SA of the tunnel as the engine knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SaStatus {
    pub dir: SaDirection,
    pub spi: Spi,
    /// `None`: found in the kernel at start, origin unknown.
    pub exchange: Option<String>,
    pub age_ms: Option<u64>,
    pub soft_expired: bool,
    /// Scheduled for deletion (old generation, grace period running).
    pub retiring: bool,
}

/// Status of one tunnel's engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TunnelStatus {
    pub tunnel: String,
    pub role: RekeyRole,
    pub state: EngineState,
    /// Generation of the SA this side sends on (the newest outbound).
    pub generation: Option<u64>,
    pub exchange: Option<String>,
    pub inbound_spi: Option<Spi>,
    pub outbound_spi: Option<Spi>,
    /// Age of the newest outbound SA.
    pub age_ms: Option<u64>,
    /// Time to the interval rekey (initiator only).
    pub next_rekey_ms: Option<u64>,
    pub peer_connected: bool,
    pub sas: Vec<SaStatus>,
    pub alarms: Vec<Alarm>,
    pub counters: RekeyCounters,
    pub last_error: Option<String>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn since(now: Instant, t: Option<Instant>) -> Option<u64> {
    t.map(|t| ms(now.saturating_duration_since(t)))
}

impl RekeyEngine {
    /// A snapshot at `now`.
    pub fn status(&self, now: Instant) -> TunnelStatus {
        let out = self.sas.newest(SaDirection::Outbound);
        let inb = self.sas.newest(SaDirection::Inbound);
        let mut sas: Vec<SaStatus> = self
            .sas
            .iter()
            .map(|r| SaStatus {
                dir: r.dir,
                spi: r.spi,
                exchange: r.id.map(|i: ExchangeId| i.to_string()),
                age_ms: since(now, r.installed_at),
                soft_expired: r.soft_expired,
                retiring: r.deletion != Deletion::Kept,
            })
            .collect();
        sas.sort_by_key(|s| (s.dir, s.age_ms.map(|a| u64::MAX - a)));
        TunnelStatus {
            tunnel: self.cfg.tunnel.clone(),
            role: self.cfg.role,
            state: self.state(now),
            generation: out.and_then(|r| r.id).map(|i| i.generation),
            exchange: out.and_then(|r| r.id).map(|i| i.to_string()),
            inbound_spi: inb.map(|r| r.spi),
            outbound_spi: out.map(|r| r.spi),
            age_ms: out.and_then(|r| since(now, r.installed_at)),
            next_rekey_ms: self
                .next_rekey_at
                .map(|t| ms(t.saturating_duration_since(now))),
            peer_connected: self.connected,
            sas,
            alarms: self.alarms.iter().copied().collect(),
            counters: self.counters,
            last_error: self.last_error.clone(),
        }
    }

    fn state(&self, now: Instant) -> EngineState {
        if !self.started {
            return EngineState::NotStarted;
        }
        if let Some(x) = &self.outgoing {
            return EngineState::Rekeying {
                id: x.id.to_string(),
                step: x.step.name(),
            };
        }
        if let Some(x) = &self.incoming {
            return EngineState::Rekeying {
                id: x.id.to_string(),
                step: x.step.name(),
            };
        }
        if self.want.is_none() {
            return EngineState::Idle;
        }
        if !self.connected {
            return EngineState::WaitingForPeer;
        }
        if self.starved {
            return EngineState::WaitingForKeys;
        }
        match self.retry_at {
            Some(t) if t > now => EngineState::Backoff {
                retry_in_ms: ms(t - now),
            },
            _ => EngineState::WaitingForPeer,
        }
    }
}
