//! A peer link: the long-lived task that keeps one session with one peer
//! up, and the handle the agent uses to talk over it.
//!
//! Owns the dial-and-reconnect loop (transmitter side), the wait for
//! authenticated connections from the listener (receiver side), the
//! per-stream queues, the state watch and the counters. The task runs on
//! the caller's `TaskTracker` and ends when the caller's
//! `CancellationToken` is cancelled.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::channel_key::{ChannelKeyPool, ChannelKeyStore};
use super::config::LinkConfig;
use super::fibre::FIBRE_TAG_LEN;
use super::fibre::export::FibreKeyExport;
use super::frame::{FrameLimits, Split, split_frame};
use super::handshake::{DialerHandshake, HandshakeError, Hello, fresh_nonce};
use super::link_shared::{LinkRequest, LinkShared, Outbound, OutboundQueues, read_handshake_frame};
use super::listener::{PeerListener, RouteGuard};
use super::session::{self, AuthenticatedConn, SessionEnd};
use super::status::{CounterSnapshot, LinkCounters, LinkState, SessionInfo};
use super::{Inbound, PeerError, Stream};
use crate::keys::Role;

/// How a link reaches its peer; must match the QKD role.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// Transmitter: dial this address.
    Dial(SocketAddr),
    /// Receiver: take connections from this listener.
    Accept(PeerListener),
}

/// The receiving ends of the three streams.
#[derive(Debug)]
pub struct PeerReceivers {
    pub fibre: mpsc::Receiver<Inbound>,
    pub qkd: mpsc::Receiver<Inbound>,
    pub control: mpsc::Receiver<Inbound>,
}

/// The agent's handle on a link. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PeerHandle {
    outbound: [mpsc::Sender<Outbound>; 3],
    requests: mpsc::Sender<LinkRequest>,
    state: watch::Receiver<LinkState>,
    counters: Arc<LinkCounters>,
    role: Role,
    limits: FrameLimits,
}

impl PeerHandle {
    /// Queues `payload` on `stream` for the current session; waits while the
    /// queue is full. Fails when no session is up.
    pub async fn send(&self, stream: Stream, payload: Bytes) -> Result<(), PeerError> {
        if stream == Stream::Fibre && self.role != Role::Transmitter {
            return Err(PeerError::FibreDirection);
        }
        let mut max = self.limits.max_payload(stream.frame_type());
        if stream == Stream::Fibre {
            // The frame limit counts the GCM tag the session appends.
            max = max.saturating_sub(FIBRE_TAG_LEN as u32);
        }
        if payload.len() > max as usize {
            return Err(PeerError::PayloadTooLarge {
                stream,
                len: payload.len(),
                max,
            });
        }
        let session = match &*self.state.borrow() {
            LinkState::Connected(info) => info.session,
            LinkState::Stopped => return Err(PeerError::Stopped),
            LinkState::Disconnected { .. } => return Err(PeerError::NotConnected),
        };
        self.outbound[stream.index()]
            .send(Outbound { session, payload })
            .await
            .map_err(|_| PeerError::Stopped)
    }

    /// A receiver of state changes.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// The current session, if any.
    pub fn session(&self) -> Option<SessionInfo> {
        match &*self.state.borrow() {
            LinkState::Connected(info) => Some(info.clone()),
            _ => None,
        }
    }

    /// Waits until a session is up (or the link stops).
    pub async fn wait_connected(&self) -> Result<SessionInfo, PeerError> {
        let mut rx = self.state.clone();
        let s = rx
            .wait_for(|s| matches!(s, LinkState::Connected(_) | LinkState::Stopped))
            .await
            .map_err(|_| PeerError::Stopped)?;
        match &*s {
            LinkState::Connected(info) => Ok(info.clone()),
            _ => Err(PeerError::Stopped),
        }
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    /// Switches the channel key to a fresh one from the pool (dialer only);
    /// returns the new epoch. New sessions authenticate with it, and the
    /// current session's frames switch to it in band.
    pub async fn switch_channel_key(&self) -> Result<u64, PeerError> {
        if self.role != Role::Transmitter {
            return Err(PeerError::NotSwitchInitiator);
        }
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(LinkRequest::SwitchKey(tx))
            .await
            .map_err(|_| PeerError::Stopped)?;
        rx.await.map_err(|_| PeerError::SwitchInterrupted)?
    }
}

/// Spawns peer links.
#[derive(Debug)]
pub struct PeerLink;

impl PeerLink {
    /// Starts the link task on `tracker`; it runs until `cancel`. `keys` is
    /// the link's channel-key record ([`ChannelKeyStore::open`]), `pool` the
    /// source of QKD channel keys. The endpoint must match the role: the
    /// transmitter dials, the receiver accepts.
    pub fn spawn(
        cfg: LinkConfig,
        endpoint: Endpoint,
        keys: ChannelKeyStore,
        pool: Arc<dyn ChannelKeyPool>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<(PeerHandle, PeerReceivers), PeerError> {
        cfg.validate()?;
        let depth = cfg.queue_depth;
        let (in_tx, in_rx): (Vec<_>, Vec<_>) = (0..3).map(|_| mpsc::channel(depth)).unzip();
        let (out_tx, out_rx): (Vec<_>, Vec<_>) = (0..3).map(|_| mpsc::channel(depth)).unzip();
        let [fibre, qkd, control] = <[_; 3]>::try_from(in_rx).expect("three");
        let receivers = PeerReceivers {
            fibre,
            qkd,
            control,
        };
        let [fibre, qkd, control] = <[_; 3]>::try_from(out_rx).expect("three");
        let queues = OutboundQueues {
            fibre,
            qkd,
            control,
        };
        let (req_tx, req_rx) = mpsc::channel(4);
        let (state_tx, state_rx) = watch::channel(LinkState::Disconnected {
            attempts: 0,
            last_error: None,
        });
        let counters = Arc::new(LinkCounters::default());
        let shared = LinkShared {
            counters: Arc::clone(&counters),
            store: Arc::new(Mutex::new(keys)),
            pool,
            state: state_tx,
            inbound: <[_; 3]>::try_from(in_tx).expect("three"),
            fibre_export: None,
            cfg,
        };
        let (dialer, acceptor) = shared.dialer_acceptor();
        let export = (shared.cfg.lab_export_fibre_keys.clone())
            .map(|path| FibreKeyExport::new(path, dialer, acceptor));
        let mut shared = shared;
        shared.fibre_export = export;
        export_known_epochs(&shared)?;
        let handle = PeerHandle {
            outbound: <[_; 3]>::try_from(out_tx).expect("three"),
            requests: req_tx,
            state: state_rx,
            counters,
            role: shared.cfg.role,
            limits: shared.cfg.limits,
        };
        let mut tasks = LinkTask {
            shared,
            queues,
            requests: req_rx,
            cancel,
            next_session: 1,
        };
        match (tasks.shared.cfg.role, endpoint) {
            (Role::Transmitter, Endpoint::Dial(addr)) => {
                tracker.spawn(async move { tasks.run_dialer(addr).await });
            }
            (Role::Receiver, Endpoint::Accept(listener)) => {
                let (tx, rx) = mpsc::channel(1);
                let guard = listener.register(&tasks.shared, tx)?;
                tracker.spawn(async move { tasks.run_acceptor(rx, guard).await });
            }
            (role @ Role::Transmitter, _) => {
                return Err(PeerError::WrongEndpoint {
                    role,
                    needed: "Dial",
                });
            }
            (role @ Role::Receiver, _) => {
                return Err(PeerError::WrongEndpoint {
                    role,
                    needed: "Accept",
                });
            }
        }
        Ok((handle, receivers))
    }
}

/// Lab only: exports the current and the pending epoch at start, before
/// the first handshake; later epochs are exported by the key switch.
fn export_known_epochs(shared: &LinkShared) -> Result<(), PeerError> {
    let Some(x) = &shared.fibre_export else {
        return Ok(());
    };
    let store = shared.store_lock();
    let current = store.current();
    x.export(current.epoch, &current.key)?;
    if let Some(next) = store.next_epoch() {
        let key = store.key_for(next).expect("the pending epoch has a key");
        x.export(next, key)?;
    }
    Ok(())
}

struct LinkTask {
    shared: LinkShared,
    queues: OutboundQueues,
    requests: mpsc::Receiver<LinkRequest>,
    cancel: CancellationToken,
    next_session: u64,
}

impl LinkTask {
    async fn run_dialer(&mut self, addr: SocketAddr) {
        let mut attempts = 0u32;
        while !self.cancel.is_cancelled() {
            let dial =
                tokio::time::timeout(self.shared.cfg.handshake_timeout, dial(&self.shared, addr));
            let outcome = tokio::select! {
                () = self.cancel.cancelled() => break,
                r = dial => r.unwrap_or(Err(HandshakeError::Timeout)),
            };
            let last_error = match outcome {
                Ok(conn) => {
                    let started = Instant::now();
                    let end = self.run_sessions(conn, None).await;
                    // A session that dies at once does not reset the
                    // backoff, so a peer that keeps failing is not hammered.
                    attempts = if started.elapsed() > self.shared.cfg.backoff.max {
                        1
                    } else {
                        attempts + 1
                    };
                    end
                }
                Err(e) => {
                    attempts = attempts.saturating_add(1);
                    self.shared
                        .counters
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if !matches!(
                        e,
                        HandshakeError::Io(_) | HandshakeError::Timeout | HandshakeError::Closed
                    ) {
                        self.shared
                            .counters
                            .handshake_failures
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    if e.is_auth_failure() {
                        self.shared
                            .counters
                            .auth_failures
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(peer = %self.shared.cfg.peer_name, %addr, attempt = attempts, error = %e, "cannot reach the peer");
                    Some(e.to_string())
                }
            };
            if self.cancel.is_cancelled() {
                break;
            }
            self.shared.state.send_replace(LinkState::Disconnected {
                attempts,
                last_error,
            });
            let delay = self
                .shared
                .cfg
                .backoff
                .delay(attempts, rand::random::<f64>());
            if !self.idle_for(delay).await {
                break;
            }
        }
        self.shared.state.send_replace(LinkState::Stopped);
    }

    async fn run_acceptor(
        &mut self,
        mut incoming: mpsc::Receiver<Box<AuthenticatedConn>>,
        _route: RouteGuard,
    ) {
        loop {
            let conn = tokio::select! {
                () = self.cancel.cancelled() => break,
                Some(conn) = incoming.recv() => conn,
                Some(req) = self.requests.recv() => { refuse(req); continue; }
            };
            let last_error = self.run_sessions(*conn, Some(&mut incoming)).await;
            if self.cancel.is_cancelled() {
                break;
            }
            self.shared.state.send_replace(LinkState::Disconnected {
                attempts: 0,
                last_error,
            });
        }
        self.shared.state.send_replace(LinkState::Stopped);
    }

    /// Runs sessions until one ends without a replacement; returns why it
    /// ended (`None` when cancelled).
    async fn run_sessions(
        &mut self,
        conn: AuthenticatedConn,
        mut incoming: Option<&mut mpsc::Receiver<Box<AuthenticatedConn>>>,
    ) -> Option<String> {
        let mut conn = conn;
        loop {
            if !self.shared.is_dialer() {
                self.settle_epoch(conn.established.epoch).await;
            }
            let id = self.next_session;
            self.next_session += 1;
            let c = &self.shared.counters;
            if c.sessions.fetch_add(1, Ordering::Relaxed) > 0 {
                c.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            let info = SessionInfo {
                session: id,
                epoch: conn.established.epoch,
                remote: conn.remote,
            };
            tracing::info!(peer = %self.shared.cfg.peer_name, session = id, epoch = info.epoch, remote = %info.remote, "peer session up");
            self.shared.state.send_replace(LinkState::Connected(info));
            let end = session::run(
                &self.shared,
                conn,
                id,
                &mut self.queues,
                &mut self.requests,
                incoming.as_deref_mut(),
                &self.cancel,
            )
            .await;
            match end {
                SessionEnd::Cancelled => return None,
                SessionEnd::Replaced(next) => {
                    tracing::info!(peer = %self.shared.cfg.peer_name, session = id, "peer reconnected; replacing the session");
                    conn = *next;
                }
                SessionEnd::Failed(e) => {
                    tracing::warn!(peer = %self.shared.cfg.peer_name, session = id, error = %e, "peer session dropped");
                    return Some(e.to_string());
                }
            }
        }
    }

    /// Acceptor: the dialer authenticated with `epoch`, which says whether it
    /// committed a pending switch (see [`super::channel_key`]).
    async fn settle_epoch(&self, epoch: u64) {
        let store = Arc::clone(&self.shared.store);
        let peer = self.shared.cfg.peer_name.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
            match s.next_epoch() {
                Some(next) if next == epoch => s.promote_next(),
                Some(_) => s.drop_next(),
                None => Ok(()),
            }
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(%peer, epoch, error = %e, "could not update the channel-key record; retried at the next handshake")
            }
            Err(e) => tracing::warn!(%peer, error = %e, "channel-key record update did not run"),
        }
    }

    /// Sleeps `delay` while refusing requests; false when cancelled.
    async fn idle_for(&mut self, delay: Duration) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep_until(until) => return true,
                Some(req) = self.requests.recv() => refuse(req),
            }
        }
    }
}

fn refuse(req: LinkRequest) {
    let LinkRequest::SwitchKey(reply) = req;
    let _ = reply.send(Err(PeerError::NotConnected));
}

/// Connects to `addr` and runs the dialer's handshake.
async fn dial(shared: &LinkShared, addr: SocketAddr) -> Result<AuthenticatedConn, HandshakeError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let epoch = shared.store_lock().current_epoch();
    let (hs, hello) = DialerHandshake::start(Hello {
        dialer: shared.cfg.local_name.clone(),
        acceptor: shared.cfg.peer_name.clone(),
        epoch,
        nonce: fresh_nonce()?,
    })?;
    stream.write_all(&hello).await?;
    let mut buf = BytesMut::new();
    let reply = read_handshake_frame(&mut stream, &mut buf).await?;
    let Ok(Split::Frame(raw)) = split_frame(&reply, &FrameLimits::handshake_only()) else {
        return Err(HandshakeError::Closed);
    };
    let (finish, established) = {
        let store = shared.store_lock();
        let key = store.key_for(epoch).ok_or(HandshakeError::UnknownEpoch {
            theirs: epoch,
            current: store.current_epoch(),
            next: store.next_epoch(),
        })?;
        hs.on_reply(&raw, key)?
    };
    stream.write_all(&finish).await?;
    Ok(AuthenticatedConn {
        stream,
        buffered: buf,
        established,
        remote: addr,
    })
}
