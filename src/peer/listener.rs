//! The agent's one peer-channel listener, shared by every link on which this
//! gateway is the QKD receiver.
//!
//! Owns the accept loop and the acceptor's side of handshakes: it reads the
//! Hello, finds the link by the two gateway names, confirms the key with the
//! link's channel-key record, and hands the authenticated connection to the
//! link's task. Unauthenticated connections are bounded in number (a
//! semaphore; extra connections are closed at once) and in time (a
//! handshake timeout); any failure closes that connection only, is counted
//! and logged without key material, and the loop keeps accepting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::PeerError;
use super::channel_key::ChannelKeyStore;
use super::config::ListenerConfig;
use super::frame::{FrameLimits, Split, split_frame};
use super::handshake::{AcceptorHandshake, HandshakeError, Hello, fresh_nonce};
use super::link_shared::{LinkShared, read_handshake_frame};
use super::session::AuthenticatedConn;
use super::status::LinkCounters;

/// Counters of the listener itself (connections before a link is known).
#[derive(Debug, Default)]
pub struct ListenerCounters {
    pub accepted: AtomicU64,
    /// Closed at once because `max_pending_handshakes` were in progress.
    pub rejected_busy: AtomicU64,
    /// Handshakes that failed, for any reason (garbage, unknown peer,
    /// wrong key, timeout, early close).
    pub handshake_failures: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    /// Handshakes completed and handed to a link.
    pub authenticated: AtomicU64,
}

/// A copy of [`ListenerCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerSnapshot {
    pub accepted: u64,
    pub rejected_busy: u64,
    pub handshake_failures: u64,
    pub handshake_timeouts: u64,
    pub authenticated: u64,
}

impl ListenerCounters {
    pub fn snapshot(&self) -> ListenerSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ListenerSnapshot {
            accepted: g(&self.accepted),
            rejected_busy: g(&self.rejected_busy),
            handshake_failures: g(&self.handshake_failures),
            handshake_timeouts: g(&self.handshake_timeouts),
            authenticated: g(&self.authenticated),
        }
    }
}

/// Where an accepted connection for one link goes.
struct Route {
    store: Arc<Mutex<ChannelKeyStore>>,
    counters: Arc<LinkCounters>,
    deliver: mpsc::Sender<Box<AuthenticatedConn>>,
}

type RouteKey = (String, String);

struct Inner {
    cfg: ListenerConfig,
    local_addr: SocketAddr,
    routes: Mutex<HashMap<RouteKey, Route>>,
    counters: ListenerCounters,
}

/// The shared listener. Cheap to clone.
#[derive(Clone)]
pub struct PeerListener {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PeerListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerListener")
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

/// Removes a link's route when the link task ends.
pub(crate) struct RouteGuard {
    inner: Arc<Inner>,
    key: RouteKey,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        if let Ok(mut routes) = self.inner.routes.lock() {
            routes.remove(&self.key);
        }
    }
}

impl PeerListener {
    /// Binds `addr` and starts the accept loop on `tracker` until `cancel`.
    pub async fn bind(
        addr: SocketAddr,
        cfg: ListenerConfig,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Result<Self, PeerError> {
        let bind_err = |source| PeerError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let this = Self {
            inner: Arc::new(Inner {
                cfg,
                local_addr,
                routes: Mutex::new(HashMap::new()),
                counters: ListenerCounters::default(),
            }),
        };
        let inner = Arc::clone(&this.inner);
        let tasks = tracker.clone();
        tracker.spawn(accept_loop(inner, listener, tasks, cancel));
        tracing::info!(%local_addr, "peer channel listening");
        Ok(this)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn counters(&self) -> ListenerSnapshot {
        self.inner.counters.snapshot()
    }

    /// Routes Hellos from the link's peer (as dialer) to this gateway.
    pub(crate) fn register(
        &self,
        link: &LinkShared,
        deliver: mpsc::Sender<Box<AuthenticatedConn>>,
    ) -> Result<RouteGuard, PeerError> {
        let key = (link.cfg.peer_name.clone(), link.cfg.local_name.clone());
        let mut routes = self.inner.routes.lock().unwrap_or_else(|p| p.into_inner());
        if routes.contains_key(&key) {
            return Err(PeerError::DuplicateRoute {
                dialer: key.0,
                acceptor: key.1,
            });
        }
        routes.insert(
            key.clone(),
            Route {
                store: Arc::clone(&link.store),
                counters: Arc::clone(&link.counters),
                deliver,
            },
        );
        Ok(RouteGuard {
            inner: Arc::clone(&self.inner),
            key,
        })
    }
}

async fn accept_loop(
    inner: Arc<Inner>,
    listener: TcpListener,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let pending = Arc::new(Semaphore::new(inner.cfg.max_pending_handshakes));
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually EMFILE/ENFILE: pause instead of spinning.
                tracing::warn!(error = %e, "accepting a peer connection failed");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(std::time::Duration::from_millis(100)) => continue,
                }
            }
        };
        inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
            inner.counters.rejected_busy.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, "too many peer handshakes in progress; closing the connection");
            continue;
        };
        let (inner, cancel) = (Arc::clone(&inner), cancel.clone());
        tracker.spawn(async move {
            let timeout = inner.cfg.handshake_timeout;
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = tokio::time::timeout(timeout, handshake(&inner, stream, remote)) => {
                    r.unwrap_or(Err((HandshakeError::Timeout, None)))
                }
            };
            drop(permit);
            if let Err((e, link)) = result {
                let c = &inner.counters;
                c.handshake_failures.fetch_add(1, Ordering::Relaxed);
                if matches!(e, HandshakeError::Timeout) {
                    c.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(link) = link {
                    link.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    if e.is_auth_failure() {
                        link.auth_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tracing::warn!(%remote, error = %e, "peer handshake failed; connection closed");
            }
        });
    }
}

type Failure = (HandshakeError, Option<Arc<LinkCounters>>);

/// The acceptor's handshake; on success the connection is handed to the
/// link. On failure, returns the link's counters once the link is known.
async fn handshake(
    inner: &Inner,
    mut stream: TcpStream,
    remote: SocketAddr,
) -> Result<(), Failure> {
    let mut buf = BytesMut::new();
    let hello_bytes = read_handshake_frame(&mut stream, &mut buf)
        .await
        .map_err(|e| (e, None))?;
    let Ok(Split::Frame(hello_raw)) = split_frame(&hello_bytes, &FrameLimits::handshake_only())
    else {
        return Err((HandshakeError::Closed, None));
    };
    let hello = Hello::decode(&hello_raw).map_err(|e| (e, None))?;
    let (store, counters, deliver) = {
        let routes = inner.routes.lock().unwrap_or_else(|p| p.into_inner());
        let route = routes
            .get(&(hello.dialer.clone(), hello.acceptor.clone()))
            .ok_or_else(|| {
                (
                    HandshakeError::UnknownPeer {
                        dialer: hello.dialer.clone(),
                        acceptor: hello.acceptor.clone(),
                    },
                    None,
                )
            })?;
        (
            Arc::clone(&route.store),
            Arc::clone(&route.counters),
            route.deliver.clone(),
        )
    };
    let fail = |e: HandshakeError| (e, Some(Arc::clone(&counters)));
    let nonce = fresh_nonce().map_err(fail)?;
    let (acceptor, reply) = {
        let store = store.lock().unwrap_or_else(|p| p.into_inner());
        // Only the current and the pending epoch are accepted: never an
        // older key, so a retired bootstrap secret cannot come back.
        let key = store.key_for(hello.epoch).ok_or_else(|| {
            fail(HandshakeError::UnknownEpoch {
                theirs: hello.epoch,
                current: store.current_epoch(),
                next: store.next_epoch(),
            })
        })?;
        AcceptorHandshake::respond(&hello_raw, &hello, key, nonce)
    };
    stream.write_all(&reply).await.map_err(|e| fail(e.into()))?;
    let finish = read_handshake_frame(&mut stream, &mut buf)
        .await
        .map_err(fail)?;
    let Ok(Split::Frame(finish_raw)) = split_frame(&finish, &FrameLimits::handshake_only()) else {
        return Err(fail(HandshakeError::Closed));
    };
    let established = acceptor.on_finish(&finish_raw).map_err(fail)?;
    stream.set_nodelay(true).map_err(|e| fail(e.into()))?;
    let conn = AuthenticatedConn {
        stream,
        buffered: buf,
        established,
        remote,
    };
    deliver
        .send(Box::new(conn))
        .await
        .map_err(|_| fail(HandshakeError::Closed))?;
    inner.counters.authenticated.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
