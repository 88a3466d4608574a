//! What a link reports: connection state (published on a `watch`) and
//! lifetime counters (relaxed atomics). Plain data, no behaviour beyond
//! taking snapshots; the link and its sessions update them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// The facts of the current session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// Increases with every new session of this link, from 1.
    pub session: u64,
    /// Channel-key epoch in use (0 = bootstrap secret).
    pub epoch: u64,
    pub remote: SocketAddr,
}

/// Connection state, published on a `watch` channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No session. `attempts` is the dialer's position in its backoff run
    /// (failed dials and short-lived sessions since the last session that
    /// lasted longer than the backoff cap; always 0 on the accepting side).
    Disconnected {
        attempts: u32,
        last_error: Option<String>,
    },
    Connected(SessionInfo),
    /// The link task has ended (cancelled).
    Stopped,
}

/// Lifetime counters of a link (relaxed atomics; read with
/// [`LinkCounters::snapshot`]).
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Frames delivered / sent per [`Stream`](super::Stream) (indexed by
    /// [`Stream::index`](super::Stream::index)).
    pub frames_in: [AtomicU64; 3],
    pub frames_out: [AtomicU64; 3],
    /// Wire bytes of delivered / sent frames, link frames included on send.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Handshake confirmations or frame MACs that failed.
    pub auth_failures: AtomicU64,
    /// Authentic frames with the wrong sequence number.
    pub replays: AtomicU64,
    /// Malformed or unexpected frames inside a session.
    pub protocol_errors: AtomicU64,
    /// Handshakes for this link that failed for any reason.
    pub handshake_failures: AtomicU64,
    /// Sessions established.
    pub sessions: AtomicU64,
    /// Sessions established after the first (reconnects).
    pub reconnects: AtomicU64,
    /// Dial attempts that failed (dialer).
    pub connect_failures: AtomicU64,
    /// Completed channel-key switches.
    pub key_switches: AtomicU64,
    /// Queued frames discarded because their session had ended.
    pub stale_dropped: AtomicU64,
    /// Received frames nobody was listening for.
    pub undeliverable: AtomicU64,
}

/// A copy of [`LinkCounters`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub frames_in: [u64; 3],
    pub frames_out: [u64; 3],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub auth_failures: u64,
    pub replays: u64,
    pub protocol_errors: u64,
    pub handshake_failures: u64,
    pub sessions: u64,
    pub reconnects: u64,
    pub connect_failures: u64,
    pub key_switches: u64,
    pub stale_dropped: u64,
    pub undeliverable: u64,
}

impl LinkCounters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            frames_in: self.frames_in.each_ref().map(g),
            frames_out: self.frames_out.each_ref().map(g),
            bytes_in: g(&self.bytes_in),
            bytes_out: g(&self.bytes_out),
            auth_failures: g(&self.auth_failures),
            replays: g(&self.replays),
            protocol_errors: g(&self.protocol_errors),
            handshake_failures: g(&self.handshake_failures),
            sessions: g(&self.sessions),
            reconnects: g(&self.reconnects),
            connect_failures: g(&self.connect_failures),
            key_switches: g(&self.key_switches),
            stale_dropped: g(&self.stale_dropped),
            undeliverable: g(&self.undeliverable),
        }
    }
}
