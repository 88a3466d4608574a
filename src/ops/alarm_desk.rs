//! What the status board and its per-peer and per-tunnel reporters share:
//! the clock, the board's options and the alarm list. The board owns the
//! registry of entries and hands each reporter an `Arc` of this desk, so
//! reporters raise and clear alarms without knowing the board (and the
//! board's files do not import each other in a circle).
//!
//! Same rules as the board: short `std::sync` locks, no I/O, no await
//! under a lock, only public numbers and names.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::alarm::{self, Alarm, AlarmKind, AlarmLog, ClearReason};
use super::lock;
use super::snapshot::{AlarmSnapshot, AlarmTally};

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

pub(crate) struct AlarmDesk {
    clock: Clock,
    options: BoardOptions,
    alarms: Mutex<AlarmLog>,
}

impl AlarmDesk {
    pub(crate) fn new(options: BoardOptions, clock: Clock) -> Self {
        let alarms = AlarmLog::new(options.alarm_capacity, options.alarm_quiet_period);
        Self {
            clock,
            options,
            alarms: Mutex::new(alarms),
        }
    }

    pub(crate) fn now(&self) -> SystemTime {
        (self.clock)()
    }

    pub(crate) fn options(&self) -> &BoardOptions {
        &self.options
    }

    /// Raises an alarm, or counts a repeat of an active one. A new episode
    /// is logged once (error for critical kinds, warn otherwise).
    pub(crate) fn raise(&self, alarm: Alarm) {
        let now = self.now();
        let (raised, count) = lock(&self.alarms).raise(alarm.clone(), now);
        alarm::log_raised(&alarm, raised, count);
    }

    /// Clears an active alarm (logged at info); false if none was active.
    pub(crate) fn clear(&self, kind: AlarmKind, subject: &str) -> bool {
        let now = self.now();
        let cleared = lock(&self.alarms).clear(kind, subject, now);
        match cleared {
            Some(a) => {
                alarm::log_cleared(&a, ClearReason::Resolved);
                true
            }
            None => false,
        }
    }

    pub(crate) fn is_active(&self, kind: AlarmKind, subject: &str) -> bool {
        lock(&self.alarms).is_active(kind, subject)
    }

    /// The alarm list at `now`, after clearing event alarms that went quiet.
    pub(crate) fn snapshot(&self, now: SystemTime) -> (Vec<AlarmSnapshot>, Vec<AlarmTally>) {
        let mut log = lock(&self.alarms);
        let quiet = log.expire_quiet(now);
        let snap = log.snapshot();
        drop(log);
        for a in &quiet {
            alarm::log_cleared(a, ClearReason::Quiet(self.options.alarm_quiet_period));
        }
        snap
    }
}
