//! What goes into a rekey engine and what comes out: the whole interface
//! between the pure protocol and the agent that owns the kernel, the peer
//! channel and the timers. Holds no logic.

use std::time::{Duration, Instant};

use super::{ExchangeId, SaDirection, Spi};
use crate::secret::SaKey;

/// An SA of this tunnel found in the kernel when the engine (re)starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnedSa {
    pub dir: SaDirection,
    pub spi: Spi,
}

/// Something that happened; fed to [`super::RekeyEngine::handle`] with the
/// current time.
#[derive(Debug)]
pub enum RekeyInput {
    /// First input of every engine: the SAs of this tunnel the agent found in
    /// the kernel (maybe from before a crash, larval ones included). The
    /// engine treats them as an old generation to replace, nothing more.
    Start {
        owned: Vec<OwnedSa>,
    },
    /// The timer asked for with [`RekeyAction::WakeAt`] fired (early or
    /// spurious ticks are harmless).
    Tick,
    /// XFRM_MSG_EXPIRE with hard=0 for an SA of this tunnel.
    SoftExpire {
        dir: SaDirection,
        spi: Spi,
    },
    /// XFRM_MSG_EXPIRE with hard=1: the kernel has deleted the SA.
    HardExpire {
        dir: SaDirection,
        spi: Spi,
    },
    /// XFRM_MSG_ACQUIRE for this tunnel's policy: traffic found no SA.
    Acquire,
    /// The peer channel's session is up (again).
    PeerConnected,
    PeerDisconnected,
    /// A rekey message from the peer, as carried on the control stream.
    PeerMessage(Vec<u8>),
    /// The result of a [`RekeyAction::Kernel`] request.
    Kernel {
        op: OpId,
        outcome: KernelOutcome,
    },
    /// The peer's pool received key (after an append or an agreement).
    PoolRefilled,
}

/// Names one kernel request so its result can be matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelOutcome {
    /// ALLOCSPI reserved this SPI (a larval inbound SA).
    SpiAllocated(Spi),
    /// The add or delete took effect.
    Done,
    Failed(KernelFailure),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFailure {
    /// EEXIST: (daddr, SPI, ESP, mark) is already taken.
    Exists,
    /// ENOENT/ESRCH: no such SA (already deleted or hard-expired).
    NotFound,
    /// Any other errno.
    Other { errno: i32 },
}

/// A kernel operation for the agent to run in its XFRM layer. Requests of
/// one engine must run in the order emitted and every one must be answered
/// with [`RekeyInput::Kernel`].
pub enum KernelRequest {
    /// Reserve a free SPI for a new *inbound* SA (XFRM_MSG_ALLOCSPI, the
    /// owned SPI range); answer with [`KernelOutcome::SpiAllocated`].
    AllocSpi,
    /// Install an SA with `key` (`rfc4106(gcm(aes))`, 36 bytes) and the
    /// tunnel's configured selectors, reqid and lifetimes. Inbound: complete
    /// the larval SA of that SPI (XFRM_MSG_UPDSA). Outbound: XFRM_MSG_NEWSA
    /// toward the peer. The key must not be logged; drop it when done.
    AddSa {
        dir: SaDirection,
        spi: Spi,
        key: SaKey,
        id: ExchangeId,
    },
    /// Delete the SA (or larval SA). A missing SA is [`KernelFailure::NotFound`].
    DeleteSa { dir: SaDirection, spi: Spi },
}

/// Leaves the key of `AddSa` out.
impl std::fmt::Debug for KernelRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelRequest::AllocSpi => f.write_str("AllocSpi"),
            KernelRequest::AddSa { dir, spi, id, .. } => f
                .debug_struct("AddSa")
                .field("dir", dir)
                .field("spi", spi)
                .field("key", &format_args!("<redacted>"))
                .field("id", id)
                .finish(),
            KernelRequest::DeleteSa { dir, spi } => f
                .debug_struct("DeleteSa")
                .field("dir", dir)
                .field("spi", spi)
                .finish(),
        }
    }
}

/// What the engine asks the agent to do, in order.
#[derive(Debug)]
pub enum RekeyAction {
    Kernel {
        op: OpId,
        request: KernelRequest,
    },
    /// Send this rekey message to the peer on the control stream.
    Send(Vec<u8>),
    /// Feed [`RekeyInput::Tick`] at (or after) this instant; replaces any
    /// earlier request.
    WakeAt(Instant),
    /// An alarm changed: log it, show it in status and metrics.
    Alarm {
        alarm: Alarm,
        raised: bool,
    },
    /// Something worth a log line.
    Notice(RekeyNotice),
}

/// Conditions an operator must see. Each is raised once and cleared once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Alarm {
    /// A rekey is due but the pool has too little key: the current SAs stay
    /// until their hard lifetime, then traffic is dropped (fail closed).
    PoolExhausted,
    /// An exchange has waited longer than `peer_timeout` for the peer.
    PeerUnresponsive,
    /// A direction of the tunnel has no SA: its traffic is dropped.
    TrafficBlocked,
    /// The peer refused this side's keys, or this side refused the peer's
    /// (pools disagree, tampered wrapped keys).
    KeysRejected,
    /// The peer's settings contradict ours (both initiators, keying modes).
    ConfigMismatch,
}

/// Events worth a log line; none carries key bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RekeyNotice {
    /// A rekey finished on this side: new SAs in both directions, old
    /// outbound SA gone. `latency` runs from the trigger (initiator) or the
    /// Start (responder, which does not know the trigger) to that moment.
    Completed {
        id: ExchangeId,
        trigger: Option<Trigger>,
        latency: Duration,
    },
    /// An exchange was given up; its keys were dropped unused.
    Abandoned {
        id: ExchangeId,
        reason: AbandonReason,
        wasted_bytes: u64,
    },
    /// The peer's engine restarted (new epoch): its state was lost.
    PeerRestarted,
    /// A peer message was dropped as malformed or unexpected.
    MessageRejected { reason: String },
}

/// What started a rekey.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Start,
    Interval,
    SoftExpire,
    HardExpire,
    Acquire,
    PeerRequest,
}

/// Why an exchange was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbandonReason {
    /// The peer refused the keys (not held, already used, failed to unwrap).
    PeerRefusedKeys,
    /// This side refused the peer's keys.
    KeysRefused,
    /// A kernel operation failed on this side.
    KernelFailed,
    /// A kernel operation failed on the peer.
    PeerKernelFailed,
    /// The peer's settings contradict ours.
    ConfigMismatch,
    /// The peer gave up (or restarted) and started over.
    Superseded,
    /// The wrapped keys could not be sealed (no OS randomness).
    LocalKeying,
}
