//! One tunnel on the status board: state, SA generation and SPIs, kernel
//! usage counters of the current SAs, rekey history and schedule, and the
//! alarms they imply. Owns only these figures; the rekey engine decides and
//! the agent refreshes the kernel counters — this file just records.

use std::fmt::Display;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::alarm::{Alarm, AlarmKind};
use super::alarm_desk::AlarmDesk;
use super::snapshot::{
    RekeyCause, RekeyEvent, RekeyFailure, RekeyTally, SaUsage, TunnelSnapshot, TunnelState,
};
use super::unix_ms;
use super::write;

/// Longest rekey error text kept (errors come from our own types and carry
/// no key bytes; the bound keeps one bad message from bloating status).
const MAX_ERROR_CHARS: usize = 240;

/// Updates one tunnel's figures on the board. Cheap to clone; every method
/// takes the entry's lock briefly and never blocks on I/O.
#[derive(Clone)]
pub struct TunnelReporter {
    desk: Arc<AlarmDesk>,
    entry: Arc<RwLock<TunnelEntry>>,
    name: Arc<str>,
}

pub(crate) struct TunnelEntry {
    snap: TunnelSnapshot,
}

impl TunnelEntry {
    pub(crate) fn new(name: &str, peer: &str, now: SystemTime) -> Self {
        Self {
            snap: TunnelSnapshot {
                name: name.to_string(),
                peer: peer.to_string(),
                state: TunnelState::Starting,
                state_since_unix_ms: unix_ms(now),
                generation: 0,
                spi_in: None,
                spi_out: None,
                sa_installed_at_unix_ms: None,
                sa_usage: SaUsage::default(),
                sa_usage_at_unix_ms: None,
                last_rekey: None,
                last_failure: None,
                next_rekey_at_unix_ms: None,
                rekeys: RekeyCause::ALL
                    .iter()
                    .map(|&cause| RekeyTally {
                        cause,
                        ok: 0,
                        failed: 0,
                    })
                    .collect(),
                keys_wasted_bytes: 0,
            },
        }
    }

    pub(crate) fn set_peer(&mut self, peer: &str) {
        peer.clone_into(&mut self.snap.peer);
    }

    pub(crate) fn snapshot(&self) -> TunnelSnapshot {
        self.snap.clone()
    }

    fn set_state(&mut self, state: TunnelState, now: SystemTime) {
        if self.snap.state != state {
            self.snap.state = state;
            self.snap.state_since_unix_ms = unix_ms(now);
        }
    }
}

impl TunnelReporter {
    pub(crate) fn new(desk: Arc<AlarmDesk>, entry: Arc<RwLock<TunnelEntry>>, name: &str) -> Self {
        Self {
            desk,
            entry,
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the tunnel state. `DownFailedClosed` raises
    /// `TunnelFailedClosed`; any other state clears it.
    pub fn set_state(&self, state: TunnelState) {
        let now = self.desk.now();
        let peer = {
            let mut e = write(&self.entry);
            e.set_state(state, now);
            e.snap.peer.clone()
        };
        if state == TunnelState::DownFailedClosed {
            self.desk.raise(Alarm::TunnelFailedClosed {
                tunnel: self.name.to_string(),
                peer,
            });
        } else {
            self.desk.clear(AlarmKind::TunnelFailedClosed, &self.name);
        }
    }

    /// Records a completed rekey: new generation and SPIs, install time now,
    /// usage counters reset, state `Up`. Clears `TunnelFailedClosed` and
    /// `RekeyFailed` for this tunnel.
    pub fn sa_installed(&self, generation: u64, spi_in: u32, spi_out: u32, cause: RekeyCause) {
        let now = self.desk.now();
        {
            let mut e = write(&self.entry);
            let s = &mut e.snap;
            s.generation = generation;
            s.spi_in = Some(spi_in);
            s.spi_out = Some(spi_out);
            s.sa_installed_at_unix_ms = Some(unix_ms(now));
            s.sa_usage = SaUsage::default();
            s.sa_usage_at_unix_ms = None;
            s.last_rekey = Some(RekeyEvent {
                at_unix_ms: unix_ms(now),
                cause,
                generation,
                latency_us: None,
            });
            s.rekeys[cause.index()].ok += 1;
            e.set_state(TunnelState::Up, now);
        }
        self.desk.clear(AlarmKind::TunnelFailedClosed, &self.name);
        self.desk.clear(AlarmKind::RekeyFailed, &self.name);
    }

    /// Records a failed rekey and raises `RekeyFailed` (cleared by the next
    /// success, or after the quiet period). The state is left to the caller
    /// (the old SAs may still be valid).
    pub fn rekey_failed(&self, cause: RekeyCause, error: impl Display) {
        let now = self.desk.now();
        let error: String = error.to_string().chars().take(MAX_ERROR_CHARS).collect();
        {
            let mut e = write(&self.entry);
            e.snap.rekeys[cause.index()].failed += 1;
            e.snap.last_failure = Some(RekeyFailure {
                at_unix_ms: unix_ms(now),
                cause,
                error: error.clone(),
            });
        }
        self.desk.raise(Alarm::RekeyFailed {
            tunnel: self.name.to_string(),
            cause,
            error,
        });
    }

    /// Kernel byte/packet counters of the current SAs (the agent refreshes
    /// them from XFRM now and then).
    pub fn set_sa_usage(&self, usage: SaUsage) {
        let now = self.desk.now();
        let mut e = write(&self.entry);
        e.snap.sa_usage = usage;
        e.snap.sa_usage_at_unix_ms = Some(unix_ms(now));
    }

    /// When the next timer rekey is due (`None`: not scheduled).
    pub fn set_next_rekey(&self, at: Option<SystemTime>) {
        write(&self.entry).snap.next_rekey_at_unix_ms = at.map(unix_ms);
    }

    /// How long the last completed rekey took (see [`RekeyEvent::latency_us`]).
    pub fn set_last_rekey_latency(&self, latency: std::time::Duration) {
        if let Some(r) = write(&self.entry).snap.last_rekey.as_mut() {
            r.latency_us = Some(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        }
    }

    /// Key bytes taken from the pool but never installed (a failed or
    /// superseded rekey).
    pub fn add_wasted_key_bytes(&self, bytes: u64) {
        let mut e = write(&self.entry);
        e.snap.keys_wasted_bytes = e.snap.keys_wasted_bytes.saturating_add(bytes);
    }
}
