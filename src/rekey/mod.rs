//! Per-tunnel rekey engines: decide when to rekey (interval timer, kernel
//! soft expiry, ACQUIRE, peer request) and run the two-gateway
//! make-before-break exchange that replaces both SAs of a tunnel with fresh
//! QKD keys.
//!
//! Owns: the rekey protocol ([`RekeyEngine`], [`messages`]), how SA keys are
//! derived from the pool ([`keying`]) and the per-tunnel status
//! ([`status`]). Must not touch the kernel, the network, timers or the clock:
//! the engine is a sans-IO state machine (like rosenpass's `CryptoServer`)
//! fed with [`RekeyInput`]s and returning [`RekeyAction`]s that the agent
//! maps onto XFRM calls, the peer channel's control stream and one timer.
//! It never touches policies, so a tunnel without SAs fails closed.
//!
//! # Roles
//!
//! One side of each tunnel is the *initiator*: it takes the keys from the
//! pool (its region of every block, see [`crate::keys::pool`]) and drives
//! every exchange. The other is the *responder*: it accepts the initiator's
//! key references and asks for a rekey with a `Request` when its own kernel
//! reports a soft expiry or an ACQUIRE. The default is the QKD transmitter
//! ([`RekeyRole::for_qkd_role`]); a config may choose per tunnel (both
//! sides must agree; an engine that receives a `Start` while initiator raises
//! [`Alarm::ConfigMismatch`]). Alternating the initiator across tunnels
//! spends both halves of the pool.
//!
//! # The exchange (generation `g`, initiator I, responder R)
//!
//! ```text
//!  I: take keys · ALLOCSPI → sI · add inbound sI (R→I key)
//!  I ──Start{g, sI, key refs | wrapped keys}──▶ R
//!                      R: take_at keys · ALLOCSPI → sR · add inbound sR (I→R key)
//!                         add outbound sI (R→I key) · delete older outbound
//!  I ◀──Ack{g, sR}───────────────────────────── R
//!  I: add outbound sR · (settle) · delete older outbound
//!  I ──Done{g}─────────────────────────────────▶ R
//!  both: delete inbound SAs older than the one the peer now sends on,
//!        after the grace period
//! ```
//!
//! This is the order of DESIGN.md ("Linux XFRM facts"): an outbound SA is
//! added only once the peer's matching inbound SA exists, and an inbound SA
//! is deleted only after the peer has reported (in the `sender_out` field of
//! every message: the *oldest* outbound SA it still holds) that it no longer
//! sends on it, plus a grace period for packets in flight.
//!
//! Exchanges are named by [`ExchangeId`]: the initiator's random *epoch*
//! (drawn once per engine instance, so a restarted initiator never collides
//! with its former self) and a generation counter within it. Every message
//! is idempotent by that id: duplicates get the same answer, older ids are
//! ignored. Key material taken for an exchange that does not complete is
//! dropped (zeroised) and counted as wasted; it is never used again because
//! the pool has already consumed it on both sides.
//!
//! The peer channel delivers the messages of one session in order and drops
//! those of a closed session (authenticated, replay-protected frames); the
//! engine tolerates loss, duplication and reordering within a session on top.
//!
//! # How the agent drives an engine
//!
//! One engine per tunnel, owned by the tunnel's task. Every input goes
//! through [`RekeyEngine::handle`] with the current time and a
//! [`RekeyEnv`]: the peer's pool (a [`crate::keys::PersistedPool`], durable
//! before it returns a key, so a crash can waste key but never reuse it)
//! and an OS-seeded RNG. The actions, in order:
//!
//! | action | agent |
//! |--------|-------|
//! | `Kernel { AllocSpi }` | ALLOCSPI for an SA peer → local (tunnel's reqid, mode, mark); answer `SpiAllocated(spi)` |
//! | `Kernel { AddSa { Inbound, .. } }` | UPDSA completing that larval SA: peer → local, `rfc4106(gcm(aes))` with `key`, the tunnel's selectors and soft/hard lifetimes |
//! | `Kernel { AddSa { Outbound, .. } }` | NEWSA local → peer, same parameters |
//! | `Kernel { DeleteSa { .. } }` | DELSA (reading final counters is fine) |
//! | kernel errors | EEXIST → `Failed(Exists)`, ENOENT/ESRCH → `Failed(NotFound)`, others → `Failed(Other { errno })` |
//! | `Send(bytes)` | the control stream's rekey envelope for this tunnel |
//! | `WakeAt(t)` | (re)arm the tunnel's single timer; feed `Tick` when it fires |
//! | `Alarm`, `Notice` | logs, status, metrics |
//!
//! Kernel requests of one engine must run in the order emitted and each must
//! be answered. Inputs: XFRM_MSG_EXPIRE for one of the tunnel's SAs
//! (destination = this gateway → inbound) becomes `SoftExpire`/`HardExpire`,
//! an ACQUIRE for its policy `Acquire`, session up/down
//! `PeerConnected`/`PeerDisconnected`, an append or agreement on the peer's
//! pool `PoolRefilled` for each of that peer's tunnels, and at start the
//! tunnel's SAs found in the kernel (larval ones included) `Start`. After a
//! netlink multicast overrun, SAs the engine lists in [`TunnelStatus::sas`]
//! but the kernel no longer has should be reported as `HardExpire`.

mod engine;
pub mod events;
mod initiator;
pub mod keying;
pub mod messages;
mod responder;
mod sa_table;
pub mod status;

#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use thiserror::Error;

use crate::keys::Role;

pub use engine::{RekeyEngine, RekeyEnv};
pub use events::{
    AbandonReason, Alarm, KernelFailure, KernelOutcome, KernelRequest, OpId, OwnedSa, RekeyAction,
    RekeyInput, RekeyNotice, Trigger,
};
pub use keying::{KeySource, KeyingError, KeyingMode, SaKeyPair, TakeError};
pub use messages::{KeyMaterial, MessageBody, NackReason, RekeyMessage, RequestReason};
pub use status::{EngineState, RekeyCounters, SaStatus, TunnelStatus};

/// An ESP Security Parameter Index.
pub type Spi = u32;

/// The smallest SPI an SA may carry: 0 is reserved and 1–255 are reserved by
/// IANA (RFC 4303 §2.1).
pub const MIN_SPI: Spi = 256;

/// Which way an SA carries traffic, seen from the gateway that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum SaDirection {
    /// Peer → this gateway; this side chose the SPI (ALLOCSPI).
    Inbound,
    /// This gateway → peer; the peer chose the SPI.
    Outbound,
}

/// The name of one rekey exchange, and of the SA pair it installs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeId {
    /// The initiator engine instance's random epoch.
    pub epoch: u64,
    /// Generation within the epoch, from 1.
    pub generation: u64,
}

impl fmt::Display for ExchangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{:016x}", self.generation, self.epoch)
    }
}

/// Which side of a tunnel drives its rekeys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RekeyRole {
    Initiator,
    Responder,
}

impl RekeyRole {
    /// The default: the QKD transmitter initiates.
    pub fn for_qkd_role(role: Role) -> Self {
        match role {
            Role::Transmitter => RekeyRole::Initiator,
            Role::Receiver => RekeyRole::Responder,
        }
    }
}

/// strongSwan keeps an old inbound SA 5 s after a rekey (DESIGN.md).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Pause between adding the new outbound SA and deleting the old one, the
/// value of `xfrm::rekey::DEFAULT_SETTLE`: packets that looked up the old
/// bundle just before must reach `xfrm_output` before the SA vanishes.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(50);
/// First retransmission of an unanswered message. The control stream is
/// TCP, so retransmissions matter mostly across reconnects and lost
/// sessions; strongSwan's first IKE retransmission is at 4 s, but it runs
/// over UDP where a second is not spent on an RTO of its own.
pub const DEFAULT_RETRANSMIT: Duration = Duration::from_secs(1);
/// Longest interval between retransmissions (doubling from the first).
pub const DEFAULT_RETRANSMIT_MAX: Duration = Duration::from_secs(16);
/// First retry after a failed attempt (no key, refused, kernel error).
pub const DEFAULT_RETRY: Duration = Duration::from_secs(1);
/// Longest backoff between failed attempts.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(60);
/// An exchange unanswered this long raises [`Alarm::PeerUnresponsive`].
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of one tunnel's engine. Both gateways must agree on `tunnel`,
/// `keying` and which side initiates; timings are local.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RekeyConfig {
    /// The tunnel's configured name (identical on both gateways); bound into
    /// wrapped keys and used in status and logs.
    pub tunnel: String,
    pub role: RekeyRole,
    pub keying: KeyingMode,
    /// Rekey every `interval`, less a random part of `jitter`.
    pub interval: Duration,
    /// Spread of the interval timer (strongSwan `rand_time`), so tunnels
    /// started together do not rekey together.
    pub jitter: Duration,
    pub grace: Duration,
    pub settle: Duration,
    pub retransmit: Duration,
    pub retransmit_max: Duration,
    pub retry: Duration,
    pub retry_max: Duration,
    pub peer_timeout: Duration,
}

impl RekeyConfig {
    /// A config with the defaults above and a jitter of a tenth of the
    /// interval.
    pub fn new(
        tunnel: impl Into<String>,
        role: RekeyRole,
        keying: KeyingMode,
        interval: Duration,
    ) -> Self {
        Self {
            tunnel: tunnel.into(),
            role,
            keying,
            interval,
            jitter: interval / 10,
            grace: DEFAULT_GRACE,
            settle: DEFAULT_SETTLE,
            retransmit: DEFAULT_RETRANSMIT,
            retransmit_max: DEFAULT_RETRANSMIT_MAX,
            retry: DEFAULT_RETRY,
            retry_max: DEFAULT_RETRY_MAX,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
        }
    }

    pub fn validate(&self) -> Result<(), RekeyError> {
        let fail = |field: &'static str, reason: &str| {
            Err(RekeyError::Config {
                tunnel: self.tunnel.clone(),
                field,
                reason: reason.to_owned(),
            })
        };
        if self.tunnel.is_empty() || self.tunnel.len() > messages::MAX_TUNNEL_NAME {
            return fail("tunnel", "must be 1 to 64 bytes");
        }
        if self.interval.is_zero() {
            return fail("interval", "must be positive");
        }
        if self.jitter >= self.interval {
            return fail("jitter", "must be shorter than the interval");
        }
        if self.retransmit.is_zero() || self.retransmit > self.retransmit_max {
            return fail("retransmit", "must be positive and at most retransmit_max");
        }
        if self.retry.is_zero() || self.retry > self.retry_max {
            return fail("retry", "must be positive and at most retry_max");
        }
        if self.peer_timeout.is_zero() {
            return fail("peer_timeout", "must be positive");
        }
        Ok(())
    }
}

/// Why an engine could not be built.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RekeyError {
    #[error("rekey settings of tunnel {tunnel:?}: {field} {reason}")]
    Config {
        tunnel: String,
        field: &'static str,
        reason: String,
    },
}
