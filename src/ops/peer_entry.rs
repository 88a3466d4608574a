//! One peer link on the status board: channel state, QKD block outcomes,
//! key rate and pool figures, and the alarms they imply. Owns the mapping
//! from the peer channel's, the QKD link's and the key pool's own report
//! types to board figures; must not reach into those modules beyond their
//! public reports (it gets copies, never the pool or a key).

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use super::alarm::{Alarm, AlarmKind, AuthSource, QberBasis};
use super::alarm_desk::AlarmDesk;
use super::snapshot::{
    CauseCount, ChannelSnapshot, ChannelState, KeySourceSnapshot, LAB_SEEDED_POOL_CAVEAT,
    LastBlock, LinkSource, PeerRole, PeerSnapshot, PoolSnapshot, QkdSnapshot, UseBytes,
};
use super::unix_ms;
use super::write;
use crate::keys::{KeyUse, PoolStatus};
use crate::peer::{CounterSnapshot, LinkState};
use crate::qkd::link::{AbortCause, BlockReport};

/// Most blocks the key-rate window remembers; at ~10 blocks/s a minute
/// fits, and a faster link only loses precision, never memory.
const MAX_RATE_SAMPLES: usize = 1024;

/// Updates one peer's figures on the board. Cheap to clone; every method
/// takes the entry's lock briefly and never blocks on I/O.
#[derive(Clone)]
pub struct PeerReporter {
    desk: Arc<AlarmDesk>,
    entry: Arc<RwLock<PeerEntry>>,
    name: Arc<str>,
}

pub(crate) struct PeerEntry {
    name: String,
    role: PeerRole,
    source: LinkSource,
    /// The pool was filled from a lab seed file (`lab_seed_pool`).
    lab_seeded: bool,
    registered_at: SystemTime,
    channel: ChannelSnapshot,
    blocks_ok: u64,
    blocks_aborted: Vec<CauseCount>,
    last_block: Option<LastBlock>,
    key_bits_total: u64,
    rate_samples: VecDeque<(SystemTime, u64)>,
    pool: Option<PoolSnapshot>,
    key_source: Option<KeySourceSnapshot>,
}

impl PeerEntry {
    pub(crate) fn new(name: &str, role: PeerRole, now: SystemTime) -> Self {
        Self {
            name: name.to_string(),
            role,
            // The only kind an agent runs today; the agent sets it anyway
            // (`PeerReporter::set_source`), and erring this way over-warns.
            source: LinkSource::Simulated,
            lab_seeded: false,
            registered_at: now,
            channel: ChannelSnapshot {
                state: ChannelState::Unknown,
                since_unix_ms: unix_ms(now),
                remote: None,
                session: 0,
                epoch: 0,
                dial_attempts: 0,
                last_error: None,
                reconnects: 0,
                auth_failures: 0,
                replays: 0,
                protocol_errors: 0,
            },
            blocks_ok: 0,
            blocks_aborted: Vec::new(),
            last_block: None,
            key_bits_total: 0,
            rate_samples: VecDeque::new(),
            pool: None,
            key_source: None,
        }
    }

    pub(crate) fn set_role(&mut self, role: PeerRole) {
        self.role = role;
    }

    /// Final key bits per second over `window` (or over the time since
    /// registration when that is shorter, so a fresh link is not understated).
    fn key_rate(&self, now: SystemTime, window: Duration) -> (f64, Duration) {
        let since_start = now.duration_since(self.registered_at).unwrap_or_default();
        let span = window.min(since_start).max(Duration::from_secs(1));
        let bits: u64 = self
            .rate_samples
            .iter()
            .filter(|(t, _)| now.duration_since(*t).unwrap_or_default() < span)
            .map(|(_, b)| b)
            .sum();
        (bits as f64 / span.as_secs_f64(), span)
    }

    pub(crate) fn snapshot(&self, now: SystemTime, window: Duration) -> PeerSnapshot {
        let (key_rate_bps, span) = self.key_rate(now, window);
        PeerSnapshot {
            name: self.name.clone(),
            role: self.role,
            source: self.source,
            caveat: match (self.source.caveat(), self.lab_seeded) {
                (Some(c), true) => Some(format!("{c}; {LAB_SEEDED_POOL_CAVEAT}")),
                (None, true) => Some(LAB_SEEDED_POOL_CAVEAT.to_string()),
                (c, false) => c.map(str::to_string),
            },
            channel: self.channel.clone(),
            qkd: QkdSnapshot {
                blocks_ok: self.blocks_ok,
                blocks_aborted: self.blocks_aborted.clone(),
                last_block: self.last_block.clone(),
                key_bits_total: self.key_bits_total,
                key_rate_bps,
                key_rate_window_s: span.as_secs_f64(),
            },
            pool: self.pool.clone(),
            key_source: self.key_source.clone(),
        }
    }
}

/// Stable names of key uses for status and metrics labels.
pub fn key_use_name(u: KeyUse) -> &'static str {
    u.name()
}

/// What an update decided about alarms, applied after the entry lock is
/// released.
#[derive(Default)]
struct AlarmActions {
    raise: Vec<Alarm>,
    clear: Vec<AlarmKind>,
}

impl PeerReporter {
    pub(crate) fn new(desk: Arc<AlarmDesk>, entry: Arc<RwLock<PeerEntry>>, name: &str) -> Self {
        Self {
            desk,
            entry,
            name: name.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the link's keys come from (the config's `[peer.link] kind`).
    pub fn set_source(&self, source: LinkSource) {
        write(&self.entry).source = source;
    }

    /// Marks the pool as (partly) filled from a lab seed file: every view
    /// of the link says so ([`LAB_SEEDED_POOL_CAVEAT`]).
    pub fn set_lab_seeded(&self) {
        write(&self.entry).lab_seeded = true;
    }

    /// Declares the link's ETSI 014 key source (`role`: "master" or
    /// "slave"); its figures start at zero.
    pub fn set_key_source(&self, kme_url: &str, role: &str) {
        write(&self.entry).key_source = Some(KeySourceSnapshot {
            kme_url: kme_url.to_string(),
            role: role.to_string(),
            keys_fetched: 0,
            bytes_fetched: 0,
            errors: 0,
            last_error: None,
            last_success_unix_ms: None,
            last_delivery_us: None,
        });
    }

    /// The key source appended `keys` keys (`bytes` bytes) to the pool,
    /// `delivery` after it began fetching them; clears `KeySourceFailed`.
    pub fn key_source_ok(&self, keys: u64, bytes: u64, delivery: Duration) {
        let now = self.desk.now();
        if let Some(k) = write(&self.entry).key_source.as_mut() {
            k.keys_fetched += keys;
            k.bytes_fetched += bytes;
            k.last_error = None;
            k.last_success_unix_ms = Some(unix_ms(now));
            k.last_delivery_us = Some(u64::try_from(delivery.as_micros()).unwrap_or(u64::MAX));
        }
        self.desk.clear(AlarmKind::KeySourceFailed, &self.name);
    }

    /// The key source failed (`error` names no key bytes); raises
    /// `KeySourceFailed` until the next success.
    pub fn key_source_failed(&self, error: &str) {
        if let Some(k) = write(&self.entry).key_source.as_mut() {
            k.errors += 1;
            k.last_error = Some(error.to_string());
        }
        self.desk.raise(Alarm::KeySourceFailed {
            peer: self.name.to_string(),
            error: error.to_string(),
        });
    }

    /// Copies the peer channel's state and counters (call it on every
    /// change of the link's `watch` and now and then for the counters).
    ///
    /// Alarms: a rise of `auth_failures` raises `AuthenticationFailed`
    /// (peer channel); a dialer with `unreachable_after_attempts` failed
    /// dials in a row raises `PeerUnreachable`, which a connection clears.
    pub fn set_link(&self, state: &LinkState, counters: &CounterSnapshot) {
        let now = self.desk.now();
        let threshold = self.desk.options().unreachable_after_attempts;
        let mut actions = AlarmActions::default();
        {
            let mut e = write(&self.entry);
            let c = &mut e.channel;
            let new_state = match state {
                LinkState::Connected(info) => {
                    c.session = info.session;
                    c.epoch = info.epoch;
                    c.remote = Some(info.remote.to_string());
                    c.dial_attempts = 0;
                    actions.clear.push(AlarmKind::PeerUnreachable);
                    ChannelState::Connected
                }
                LinkState::Disconnected {
                    attempts,
                    last_error,
                } => {
                    c.dial_attempts = *attempts;
                    c.last_error.clone_from(last_error);
                    if threshold > 0 && *attempts >= threshold {
                        actions.raise.push(Alarm::PeerUnreachable {
                            peer: self.name.to_string(),
                            error: last_error.clone(),
                        });
                    }
                    ChannelState::Disconnected
                }
                LinkState::Stopped => ChannelState::Stopped,
            };
            if c.state != new_state {
                c.state = new_state;
                c.since_unix_ms = unix_ms(now);
            }
            if counters.auth_failures > c.auth_failures {
                actions.raise.push(Alarm::AuthenticationFailed {
                    peer: self.name.to_string(),
                    source: AuthSource::PeerChannel,
                });
            }
            c.reconnects = counters.reconnects;
            c.auth_failures = counters.auth_failures;
            c.replays = counters.replays;
            c.protocol_errors = counters.protocol_errors;
        }
        self.apply(actions);
    }

    /// Records a finished QKD block (produced key or aborted).
    ///
    /// Alarms: an abort for QBER or phase error raises
    /// `QberAboveThreshold`, a failed transcript tag `AuthenticationFailed`,
    /// a verification mismatch `VerificationFailed`; a block that produced
    /// key clears `QberAboveThreshold` (the link is back under threshold).
    pub fn record_block(&self, report: &BlockReport) {
        let now = self.desk.now();
        let mut actions = AlarmActions::default();
        {
            let mut e = write(&self.entry);
            e.last_block = Some(LastBlock {
                block_id: report.block_id,
                at_unix_ms: unix_ms(now),
                qber_key: report.qber_key(),
                qber_test: report.qber_test(),
                final_bits: report.final_bits,
                aborted: report.aborted.map(|c| c.name().to_string()),
            });
            match report.aborted {
                None => {
                    e.blocks_ok += 1;
                    e.key_bits_total += report.final_bits;
                    if e.rate_samples.len() >= MAX_RATE_SAMPLES {
                        e.rate_samples.pop_front();
                    }
                    e.rate_samples.push_back((now, report.final_bits));
                    let window = self.desk.options().key_rate_window;
                    while e
                        .rate_samples
                        .front()
                        .is_some_and(|(t, _)| now.duration_since(*t).unwrap_or_default() >= window)
                    {
                        e.rate_samples.pop_front();
                    }
                    actions.clear.push(AlarmKind::QberAboveThreshold);
                }
                Some(cause) => {
                    count_cause(&mut e.blocks_aborted, cause);
                    actions.raise.extend(self.alarm_for_abort(cause, report));
                }
            }
        }
        self.apply(actions);
    }

    fn alarm_for_abort(&self, cause: AbortCause, report: &BlockReport) -> Option<Alarm> {
        let peer = self.name.to_string();
        let qber = |basis, qber| Alarm::QberAboveThreshold {
            peer: peer.clone(),
            basis,
            qber,
        };
        Some(match cause {
            AbortCause::TestQber | AbortCause::PhaseError => {
                qber(QberBasis::Test, report.qber_test())
            }
            AbortCause::KeyQber => qber(
                QberBasis::Key,
                report.qber_key().unwrap_or(report.cascade_qber_estimate),
            ),
            AbortCause::AuthFailed => Alarm::AuthenticationFailed {
                peer,
                source: AuthSource::QkdTranscript,
            },
            AbortCause::VerifyMismatch => Alarm::VerificationFailed { peer },
            _ => return None,
        })
    }

    /// Copies the pool's figures (sizes and per-use consumption).
    pub fn set_pool(&self, pool: &PoolStatus) {
        let now = self.desk.now();
        let consumed = KeyUse::ALL
            .iter()
            .map(|&u| {
                let c = pool.counters.for_use(u);
                UseBytes {
                    key_use: key_use_name(u).to_string(),
                    bytes: c.initiated_bytes + c.accepted_bytes,
                }
            })
            .collect();
        write(&self.entry).pool = Some(PoolSnapshot {
            updated_at_unix_ms: unix_ms(now),
            blocks: pool.blocks as u64,
            available_bytes: pool.available_bytes,
            available_to_initiate: pool.available_to_initiate,
            low_water: pool.low_water,
            below_low_water: pool.below_low_water,
            appended_bytes: pool.counters.appended_bytes,
            discarded_bytes: pool.counters.discarded_bytes,
            consumed,
        });
    }

    /// Raises `PoolExhausted` for this peer (a take was refused for lack of
    /// key); cleared by [`PeerReporter::pool_refilled`].
    pub fn pool_exhausted(&self) {
        self.desk.raise(Alarm::PoolExhausted {
            peer: self.name.to_string(),
        });
    }

    /// Clears `PoolExhausted` (a take succeeded again).
    pub fn pool_refilled(&self) {
        self.desk.clear(AlarmKind::PoolExhausted, &self.name);
    }

    fn apply(&self, actions: AlarmActions) {
        for kind in actions.clear {
            self.desk.clear(kind, &self.name);
        }
        for alarm in actions.raise {
            self.desk.raise(alarm);
        }
    }
}

fn count_cause(counts: &mut Vec<CauseCount>, cause: AbortCause) {
    match counts.iter_mut().find(|c| c.cause == cause.name()) {
        Some(c) => c.count += 1,
        None => counts.push(CauseCount {
            cause: cause.name().to_string(),
            count: 1,
        }),
    }
}
