//! Settings of a peer link and of the shared listener, with defaults fit for
//! gateways and the knobs tests turn down to milliseconds.
//!
//! Plain structs: the agent's TOML config (a later module) maps onto them.
//! Owns validation of these values only.

use std::time::Duration;

use super::PeerError;
use super::frame::FrameLimits;
use super::handshake::valid_name;
use crate::keys::Role;

/// Smallest configurable payload limit: every upper-layer message fits.
const MIN_LIMIT: u32 = 1024;
/// Largest configurable payload limit: one frame is buffered whole, so this
/// bounds the memory one authenticated peer can make this side hold.
const MAX_LIMIT: u32 = 256 << 20;

/// Capped exponential backoff with jitter for the dialer's reconnects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay; reached after a few doublings.
    pub max: Duration,
}

impl Default for Backoff {
    /// 250 ms doubling to 30 s: a restarted peer is found within a second,
    /// a dead one costs one SYN every ~30 s.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based): `initial · 2^(attempt-1)`
    /// capped at `max`, then scaled by `jitter ∈ [0, 1)` into `[d/2, d)`
    /// ("equal jitter"), so two dialers that failed together do not retry in
    /// lockstep, yet the delay never collapses to zero.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let d = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        d / 2 + d.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// One link to one peer gateway.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// This gateway's name, as the peer knows it (`[A-Za-z0-9._-]`, ≤ 64).
    pub local_name: String,
    /// The peer gateway's name.
    pub peer_name: String,
    /// QKD role on this link. The transmitter dials and sends the fibre
    /// stream; the receiver accepts on the listener. Fixed by configuration,
    /// so the two sides never dial each other at the same time.
    pub role: Role,
    pub limits: FrameLimits,
    /// Bound on connect + handshake, for the dialer; the listener has its own.
    pub handshake_timeout: Duration,
    /// A keepalive is sent after this long without sending anything.
    pub keepalive_interval: Duration,
    /// The session is dropped after this long without receiving anything
    /// (must exceed `keepalive_interval`; three intervals is usual).
    pub idle_timeout: Duration,
    pub backoff: Backoff,
    /// Frames queued per stream and direction before senders wait.
    pub queue_depth: usize,
    /// Lab only: append each channel-key epoch's fibre base key to this
    /// 0600 file, for `qkd-ipsec eve --fibre-keys` ([`super::fibre::export`]).
    /// Whoever reads it learns every key of the link.
    pub lab_export_fibre_keys: Option<std::path::PathBuf>,
}

impl LinkConfig {
    /// Defaults for everything but the names and the role.
    pub fn new(local_name: &str, peer_name: &str, role: Role) -> Self {
        Self {
            local_name: local_name.to_owned(),
            peer_name: peer_name.to_owned(),
            role,
            limits: FrameLimits::default(),
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
            queue_depth: 64,
            lab_export_fibre_keys: None,
        }
    }

    pub fn validate(&self) -> Result<(), PeerError> {
        let bad = |field: &'static str, why: String| Err(PeerError::Config { field, why });
        if !valid_name(&self.local_name) {
            return bad(
                "local_name",
                format!(
                    "{:?} is not a valid gateway name (1-64 of A-Z a-z 0-9 . _ -)",
                    self.local_name
                ),
            );
        }
        if !valid_name(&self.peer_name) {
            return bad(
                "peer_name",
                format!(
                    "{:?} is not a valid gateway name (1-64 of A-Z a-z 0-9 . _ -)",
                    self.peer_name
                ),
            );
        }
        if self.local_name == self.peer_name {
            return bad(
                "peer_name",
                "equals local_name; the two gateways need distinct names".into(),
            );
        }
        if self.idle_timeout <= self.keepalive_interval {
            return bad(
                "idle_timeout",
                format!(
                    "{:?} must exceed keepalive_interval {:?}",
                    self.idle_timeout, self.keepalive_interval
                ),
            );
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout", "must be positive".into());
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            return bad("backoff", "initial must be positive and at most max".into());
        }
        for (field, v) in [
            ("limits.fibre", self.limits.fibre),
            ("limits.qkd", self.limits.qkd),
            ("limits.control", self.limits.control),
        ] {
            if !(MIN_LIMIT..=MAX_LIMIT).contains(&v) {
                return bad(
                    field,
                    format!("{v} bytes is outside {MIN_LIMIT}..={MAX_LIMIT}"),
                );
            }
        }
        if self.queue_depth == 0 {
            return bad("queue_depth", "must be at least 1".into());
        }
        Ok(())
    }
}

/// The listener the receiving side of every link shares.
#[derive(Clone, Copy, Debug)]
pub struct ListenerConfig {
    /// Connections that have not yet completed the handshake, at most; more
    /// are closed at once (counted), so a flood cannot exhaust memory or
    /// tasks, and it ends when their handshakes time out.
    pub max_pending_handshakes: usize,
    /// Time an unauthenticated connection gets to complete the handshake.
    pub handshake_timeout: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            max_pending_handshakes: 32,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_half() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(50));
        let top = b.delay(1, 0.999);
        assert!(top >= Duration::from_millis(99) && top < Duration::from_millis(100));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(40, 0.0), Duration::from_millis(500));
        assert!(b.delay(u32::MAX, 1.0) <= Duration::from_secs(1));
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = LinkConfig::new("gw-a", "gw-b", Role::Transmitter);
        c.validate().unwrap();
        c.idle_timeout = c.keepalive_interval;
        assert!(matches!(
            c.validate(),
            Err(PeerError::Config {
                field: "idle_timeout",
                ..
            })
        ));
        let c = LinkConfig::new("gw a", "gw-b", Role::Transmitter);
        assert!(matches!(
            c.validate(),
            Err(PeerError::Config {
                field: "local_name",
                ..
            })
        ));
        let c = LinkConfig::new("gw-a", "gw-a", Role::Receiver);
        assert!(matches!(
            c.validate(),
            Err(PeerError::Config {
                field: "peer_name",
                ..
            })
        ));
    }
}
