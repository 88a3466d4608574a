//! The peer channel: one framed, authenticated, replay-protected TCP
//! connection between two agents, carrying three logical streams — the
//! simulated fibre, the QKD post-processing messages and rekey/control
//! messages.
//!
//! Owns the wire format ([`frame`]), the handshake and key schedule
//! ([`handshake`]), the sealing of the fibre stream and its lab key export
//! ([`fibre`]), the channel-key record ([`channel_key`]), and the async
//! tasks that dial, accept, reconnect and move frames ([`link`],
//! [`listener`], [`session`]). Must not interpret QKD or rekey payloads, hold
//! pools (it asks the pool for channel keys through [`ChannelKeyPool`]), or
//! touch the kernel. Tasks run on the caller's `TaskTracker` and stop on the
//! caller's `CancellationToken`.
//!
//! # Who dials
//!
//! The QKD **transmitter** dials, the **receiver** accepts on the agent's
//! single listener ([`PeerListener`]), which routes by the gateway names in
//! the Hello. Roles are fixed by configuration, so simultaneous dials cannot
//! happen and need no tie-break. A new authenticated connection on a link
//! replaces the old one (the dialer only redials when it thinks the old one
//! is dead; an attacker cannot authenticate).
//!
//! # Wire format (all integers little-endian)
//!
//! Every frame starts with a 16-byte header:
//!
//! ```text
//! offset size field
//!  0     2    magic "QK" (0x51 0x4b)
//!  2     1    version, 2
//!  3     1    type: 01 Hello, 02 HelloReply, 03 Finish (handshake)
//!                   10 Fibre (AES-256-GCM sealed)
//!                   11 Qkd, 12 Control, 13 Link (HMAC authenticated)
//!  4     4    payload length L (u32); bounded per type, checked before the body is read
//!  8     8    sequence number (u64); 0 for handshake frames,
//!             1, 2, 3, ... per direction and session for authenticated frames,
//!             the fibre frame counter for Fibre frames
//! 16     L    payload (Fibre: ciphertext ‖ 16-byte GCM tag, see [`fibre`])
//! 16+L   32   HMAC-SHA256 tag over bytes 0..16+L (authenticated types only)
//! ```
//!
//! Limits (configurable, [`FrameLimits`]): Fibre 16 MiB, Qkd 4 MiB, Control
//! 64 KiB; fixed: handshake 256 B, Link 8 KiB. A frame over its limit, an
//! unknown type, a wrong magic or version, a non-zero sequence field on a
//! handshake frame, a bad tag, an unexpected sequence number or a fibre
//! counter that does not increase drops the connection.
//!
//! Handshake payloads (see [`handshake`] for the key schedule):
//!
//! ```text
//! Hello      u32 len + dialer name, u32 len + acceptor name   (1..64 bytes of [A-Za-z0-9._-])
//!            u64 channel-key epoch, 32-byte dialer nonce
//! HelloReply u64 epoch (echo), 32-byte acceptor nonce, 32-byte acceptor confirmation
//! Finish     32-byte dialer confirmation
//! ```
//!
//! Link payloads are in [`link_message`]. Qkd and Control payloads are the
//! upper layers' encodings ([`crate::qkd::wire`]); Fibre payloads are the
//! optics' pulse-record batches, encrypted. A capture therefore splits into
//! frames with nothing but this table ([`split_frame`]) and shows the
//! classical messages, but not one pulse record.
//!
//! # Security argument
//!
//! * **Authenticity of the classical channel.** Qkd, Control and Link frames
//!   carry HMAC-SHA256 (RFC 2104) under a per-session, per-direction key
//!   from HKDF-SHA256 (RFC 5869) over the channel key and both sides' fresh
//!   256-bit nonces. The handshake is mutual key confirmation (each side
//!   proves the key with an HMAC over the transcript hash, which binds the
//!   names, the epoch and both nonces). A forged, altered, reflected,
//!   reordered or replayed frame fails the tag or the sequence check; a
//!   recorded handshake fails against a new nonce. HMAC with a 256-bit key is
//!   also sound against quantum adversaries (Grover leaves 128 bits).
//!   This is computational security; the QKD transcript additionally carries
//!   information-theoretic Wegman–Carter tags from [`crate::qkd`], so the
//!   *authenticity* of the keys the pool receives does not depend on HMAC's
//!   strength (their *secrecy*, on a simulated link, rests on the channel
//!   key: see the fibre stream below).
//! * **Classical frames are readable, on purpose.** Everything on the
//!   classical channel is public in QKD's security analysis: sifting bases,
//!   Cascade parities (counted as leaked), privacy-amplification seeds,
//!   pool positions ([`crate::keys::KeyRef`]). Wrapped SA keys are already
//!   encrypted under pool keys by the rekey engine. Qkd, Control and Link
//!   frames therefore carry MACs but no encryption, and an operator can
//!   debug from a capture.
//! * **The fibre stream is sealed.** A simulated fibre frame is no photon:
//!   its records state each pulse's bit and basis, so a passive recorder of
//!   a clear stream would rebuild the sifted key and, from it, every pool
//!   and SA key. Fibre frames are AES-256-GCM sealed (NIST SP 800-38D) under
//!   a per-session key derived, one-way, from the channel key of the
//!   handshake's epoch and both nonces (key schedule, nonce and counter
//!   rules in [`fibre`]); the 16-byte header is the AAD. The receiver
//!   accepts them only from the transmitter (dialer), only after a
//!   handshake, and only with a valid tag and a counter above the last one;
//!   an altered, forged, replayed or reordered fibre frame fails the
//!   session and is counted like a bad MAC or a replay. A dropped frame is
//!   allowed (light may be lost). The session keeps its fibre key across
//!   channel-key switches; the next session uses the new epoch's.
//!   Consequence: **a simulated link's keys are only as secret as the
//!   channel key** (the bootstrap secret, then pool keys that themselves
//!   came through the sealed stream) — computational, never quantum-secure.
//!   Information-theoretic keys need a real QKD device. The QKD layer still
//!   treats fibre payloads as hostile input, and rounds name the pulse
//!   batches they sift in the authenticated transcript.
//! * **The lab eavesdropper needs exported keys.** `qkd-ipsec eve` can only
//!   measure pulses it can open. An agent exports its per-epoch fibre base
//!   keys to a 0600 file only when configured to (`[peer.link]
//!   lab_export_fibre_keys`, refused for real QKD devices; see
//!   [`fibre::export`]); Eve then derives each session's fibre key from the
//!   nonces she sees in the handshake, opens, attacks and re-seals. The base
//!   is a one-way function of the channel key, so the export lets her read
//!   and rewrite pulses (which shows up as QBER) but never forge an
//!   authenticated frame. Without it she passes fibre frames through.
//! * **Channel key lifecycle.** Epoch 0 is the pre-shared bootstrap secret
//!   (≥ 32 random bytes, 0600 file). Once the pool has key, the dialer may
//!   switch to a 32-byte pool key ([`KeyUse::Channel`]: `take` on the dialer,
//!   `take_at` of the sent [`KeyRef`] on the acceptor) with Offer → Accept →
//!   Activate inside the running session; each direction changes keys right
//!   after its boundary message, sequence numbers continue. Both sides record
//!   the current (and pending) key 0600 in the state directory before
//!   acting, so a restart authenticates with the right key; the crash table
//!   and the unrecoverable cases are in [`channel_key`]. There is no
//!   unauthenticated fallback and no automatic return to the bootstrap
//!   secret.
//! * **Hostile input and resources.** Lengths are checked on the header
//!   before any allocation; unauthenticated connections only admit
//!   handshake-sized frames, are limited in number
//!   ([`ListenerConfig::max_pending_handshakes`]) and in time
//!   ([`ListenerConfig::handshake_timeout`]); failures drop the connection,
//!   are counted ([`LinkCounters`], [`ListenerCounters`]) and logged without
//!   key material, and the listener keeps serving. Sessions are dropped after
//!   [`LinkConfig::idle_timeout`] without traffic (keepalives are sent every
//!   [`LinkConfig::keepalive_interval`]).
//!
//! # Delivery semantics
//!
//! Frames are delivered in order within a session. [`PeerHandle::send`]
//! fails when no session is up; frames queued for a session that has ended
//! are discarded (counted), never sent on the next one, and frames in flight
//! when a connection breaks are lost. Upper layers see the session number in
//! every [`Inbound`] frame and in [`LinkState`] and restart their exchanges
//! on a new session.
//!
//! [`KeyUse::Channel`]: crate::keys::KeyUse::Channel
//! [`KeyRef`]: crate::keys::KeyRef

pub mod channel_key;
pub mod config;
pub mod fibre;
pub mod frame;
pub mod handshake;
pub mod link;
pub mod link_message;
mod link_shared;
pub mod listener;
pub mod nonce;
pub mod session;
pub mod status;
pub(crate) mod transport;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod loopback_tests;
#[cfg(test)]
pub(crate) mod test_rig;

use std::path::PathBuf;

use bytes::Bytes;
use thiserror::Error;

pub use channel_key::{ChannelKeyPool, ChannelKeyStore};
pub use config::{Backoff, LinkConfig, ListenerConfig};
pub use frame::{FrameError, FrameLimits, FrameType, RawFrame, Split, split_frame};
pub use handshake::HandshakeError;
pub use link::{Endpoint, PeerHandle, PeerLink, PeerReceivers};
pub use listener::{ListenerCounters, ListenerSnapshot, PeerListener};
pub use status::{CounterSnapshot, LinkCounters, LinkState, SessionInfo};

use crate::secret::SecretFileError;

/// The three logical streams an upper layer sends and receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Simulated fibre: transmitter → receiver only, AES-GCM sealed.
    Fibre,
    /// QKD post-processing messages.
    Qkd,
    /// Rekey and agent control messages.
    Control,
}

impl Stream {
    pub const ALL: [Stream; 3] = [Stream::Fibre, Stream::Qkd, Stream::Control];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn frame_type(self) -> FrameType {
        match self {
            Stream::Fibre => FrameType::Fibre,
            Stream::Qkd => FrameType::Qkd,
            Stream::Control => FrameType::Control,
        }
    }
}

/// A payload received on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The session it arrived on (see [`LinkState`]).
    pub session: u64,
    pub payload: Bytes,
}

/// Errors of the peer channel's API and set-up. Never carries key bytes.
#[derive(Debug, Error)]
pub enum PeerError {
    #[error("peer link setting {field}: {why}")]
    Config { field: &'static str, why: String },
    #[error(
        "the bootstrap secret has {len} bytes; at least 32 random bytes are needed (e.g. `head -c 32 /dev/urandom > FILE; chmod 600 FILE`, the same file on both gateways)"
    )]
    WeakBootstrap { len: usize },
    #[error(
        "channel-key record {} is corrupt ({what}); restore it, or stop both agents and remove the record on both sides to return to the bootstrap secret",
        path.display()
    )]
    CorruptChannelKey { path: PathBuf, what: String },
    #[error(transparent)]
    SecretFile(#[from] SecretFileError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("a link from {dialer:?} to {acceptor:?} is already registered on this listener")]
    DuplicateRoute { dialer: String, acceptor: String },
    #[error("role {role:?} needs endpoint {needed}: the transmitter dials, the receiver accepts")]
    WrongEndpoint {
        role: crate::keys::Role,
        needed: &'static str,
    },
    #[error("no session with the peer is up; retry when the link state is Connected")]
    NotConnected,
    #[error("only the QKD transmitter sends on the fibre stream")]
    FibreDirection,
    #[error("payload of {len} bytes exceeds the {stream:?} limit of {max}")]
    PayloadTooLarge {
        stream: Stream,
        len: usize,
        max: u32,
    },
    #[error("the peer link has stopped")]
    Stopped,
    #[error("only the dialer (QKD transmitter) starts a channel-key switch")]
    NotSwitchInitiator,
    #[error("a channel-key switch is already in progress")]
    SwitchInProgress,
    #[error(
        "the peer refused channel-key epoch {epoch} (its pool does not hold the offered bytes, or it could not record them)"
    )]
    SwitchRejected { epoch: u64 },
    #[error("channel-key switch failed: {0}")]
    SwitchFailed(String),
    #[error("the session ended before the channel-key switch completed")]
    SwitchInterrupted,
}
