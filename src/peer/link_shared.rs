//! What a peer link's task, its listener and its sessions share: the
//! link's configuration, counters, channel-key record and inbound queues
//! ([`LinkShared`]), the outbound queues and requests a session serves,
//! and the bounded read of a handshake frame. Kept apart from `link` so
//! that the listener and the session depend on it and not on the link task
//! (which depends on both of them).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::channel_key::{ChannelKeyPool, ChannelKeyStore};
use super::config::LinkConfig;
use super::fibre::export::FibreKeyExport;
use super::frame::FrameLimits;
use super::handshake::HandshakeError;
use super::status::{LinkCounters, LinkState};
use super::transport::{ReadError, read_frame};
use super::{Inbound, PeerError};
use crate::keys::Role;

/// A payload waiting to be sent, stamped with the session it was meant for.
pub(crate) struct Outbound {
    pub session: u64,
    pub payload: Bytes,
}

pub(crate) struct OutboundQueues {
    pub fibre: mpsc::Receiver<Outbound>,
    pub qkd: mpsc::Receiver<Outbound>,
    pub control: mpsc::Receiver<Outbound>,
}

pub(crate) enum LinkRequest {
    SwitchKey(oneshot::Sender<Result<u64, PeerError>>),
}

/// What the link task and its sessions share.
pub(crate) struct LinkShared {
    pub cfg: LinkConfig,
    pub counters: Arc<LinkCounters>,
    pub store: Arc<Mutex<ChannelKeyStore>>,
    pub pool: Arc<dyn ChannelKeyPool>,
    pub state: watch::Sender<LinkState>,
    pub inbound: [mpsc::Sender<Inbound>; 3],
    /// Lab only: where each epoch's fibre base key is appended.
    pub fibre_export: Option<FibreKeyExport>,
}

impl LinkShared {
    pub fn is_dialer(&self) -> bool {
        self.cfg.role == Role::Transmitter
    }

    /// The channel-key record. Runtime threads hold it only for short reads
    /// (epoch, key derivation); writes (fsync) run on blocking threads, so a
    /// reader waits at most for one record write, which happens only at a
    /// key switch or the handshake after one.
    pub fn store_lock(&self) -> MutexGuard<'_, ChannelKeyStore> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `(dialer, acceptor)`: the link's gateway names in handshake order.
    pub fn dialer_acceptor(&self) -> (&str, &str) {
        let (l, p) = (self.cfg.local_name.as_str(), self.cfg.peer_name.as_str());
        if self.is_dialer() { (l, p) } else { (p, l) }
    }

    /// A key switch to `epoch` completed.
    pub fn switched(&self, epoch: u64) {
        self.counters.key_switches.fetch_add(1, Ordering::Relaxed);
        self.state.send_modify(|s| {
            if let LinkState::Connected(info) = s {
                info.epoch = epoch;
            }
        });
        tracing::info!(peer = %self.cfg.peer_name, epoch, "peer channel now authenticated with a QKD key");
    }
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Outbound(session {}, {} bytes)",
            self.session,
            self.payload.len()
        )
    }
}

impl std::fmt::Debug for LinkRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwitchKey")
    }
}

/// Reads one handshake-sized frame, mapping read failures to handshake
/// errors.
pub(crate) async fn read_handshake_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Bytes, HandshakeError> {
    read_frame(stream, buf, &FrameLimits::handshake_only())
        .await
        .map_err(|e| match e {
            ReadError::Frame(f) => HandshakeError::Frame(f),
            ReadError::Closed | ReadError::Truncated => HandshakeError::Closed,
            ReadError::Io(io) => HandshakeError::Io(io),
        })
}
