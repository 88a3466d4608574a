//! Test rig for the loopback tests: two gateways' links on 127.0.0.1 with
//! millisecond timers, shared pools, and a frame-aware TCP proxy that can
//! tamper with the dialer's frames (the shape of `qkd-ipsec eve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::frame::{FrameLimits, Split, split_frame};
use super::*;
use crate::keys::{BlockId, KeyPool, Role};
use crate::secret::SecretBytes;
use crate::secret::file::TestDir;

pub(crate) const TX: &str = "gw-a";
pub(crate) const RX: &str = "gw-b";

/// Link settings with millisecond timers.
pub(crate) fn fast_cfg(role: Role) -> LinkConfig {
    let (local, peer) = match role {
        Role::Transmitter => (TX, RX),
        Role::Receiver => (RX, TX),
    };
    let mut c = LinkConfig::new(local, peer, role);
    c.handshake_timeout = Duration::from_millis(1000);
    c.keepalive_interval = Duration::from_millis(100);
    c.idle_timeout = Duration::from_millis(1000);
    c.backoff = Backoff {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(40),
    };
    c.queue_depth = 16;
    c
}

pub(crate) fn fast_listener_cfg() -> ListenerConfig {
    ListenerConfig {
        max_pending_handshakes: 4,
        handshake_timeout: Duration::from_millis(300),
    }
}

/// What both gateways share out of band: bootstrap secret and QKD output.
pub(crate) struct Gateways {
    pub dir: TestDir,
    pub bootstrap: SecretBytes,
    pub tx_pool: Arc<Mutex<KeyPool>>,
    pub rx_pool: Arc<Mutex<KeyPool>>,
}

impl Gateways {
    pub fn new() -> Self {
        let block = SecretBytes::random(4096).unwrap();
        let pool = |role| {
            let mut p = KeyPool::new(role);
            p.append(BlockId(1), block.duplicate()).unwrap();
            Arc::new(Mutex::new(p))
        };
        Self {
            dir: TestDir::new("peer"),
            bootstrap: SecretBytes::random(32).unwrap(),
            tx_pool: pool(Role::Transmitter),
            rx_pool: pool(Role::Receiver),
        }
    }

    pub fn record(&self, role: Role) -> PathBuf {
        self.dir.path().join(match role {
            Role::Transmitter => "tx-gw-b.channel",
            Role::Receiver => "rx-gw-a.channel",
        })
    }

    pub fn store(&self, role: Role) -> ChannelKeyStore {
        ChannelKeyStore::open(&self.record(role), self.bootstrap.duplicate()).unwrap()
    }

    pub fn pool(&self, role: Role) -> Arc<dyn ChannelKeyPool> {
        match role {
            Role::Transmitter => self.tx_pool.clone(),
            Role::Receiver => self.rx_pool.clone(),
        }
    }
}

/// One side's running link.
pub(crate) struct Side {
    pub handle: PeerHandle,
    pub rx: PeerReceivers,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
}

impl Side {
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .expect("link tasks stop promptly on cancel");
    }
}

pub(crate) async fn listener(at: SocketAddr) -> (PeerListener, TaskTracker, CancellationToken) {
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let l = PeerListener::bind(at, fast_listener_cfg(), &tracker, cancel.clone())
        .await
        .unwrap();
    (l, tracker, cancel)
}

pub(crate) fn spawn_side(
    cfg: LinkConfig,
    endpoint: Endpoint,
    store: ChannelKeyStore,
    pool: Arc<dyn ChannelKeyPool>,
    tracker: TaskTracker,
    cancel: CancellationToken,
) -> Side {
    let (handle, rx) =
        PeerLink::spawn(cfg, endpoint, store, pool, &tracker, cancel.clone()).unwrap();
    Side {
        handle,
        rx,
        tracker,
        cancel,
    }
}

/// Waits for a condition on a link's state, with a deadline.
pub(crate) async fn wait_state(h: &PeerHandle, what: &str, f: impl Fn(&LinkState) -> bool) {
    let mut rx = h.state();
    tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| f(s)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "timed out waiting for {what}; state {:?}",
                *h.state().borrow()
            )
        })
        .unwrap();
}

pub(crate) async fn recv(rx: &mut tokio::sync::mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a frame within 5 s")
        .expect("link alive")
}

/// Polls `f` until it holds (for counters updated by other tasks).
pub(crate) async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A tampering decision for one dialer → acceptor frame: the frames to
/// forward instead (empty = drop it).
pub(crate) type Tamper = Box<dyn FnMut(usize, Vec<u8>) -> Vec<Vec<u8>> + Send>;

/// Starts a proxy in front of `upstream`; `tamper(connection_index, frame)`
/// sees every whole frame the dialer sends, in order. Frames from the
/// acceptor pass untouched.
pub(crate) async fn frame_proxy(
    upstream: SocketAddr,
    tamper: Tamper,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let tamper = Arc::new(Mutex::new(tamper));
    let conns = Arc::new(AtomicUsize::new(0));
    let t = tracker.clone();
    tracker.spawn(async move {
        loop {
            let (client, _) = tokio::select! {
                () = cancel.cancelled() => return,
                a = l.accept() => a.unwrap(),
            };
            let index = conns.fetch_add(1, Ordering::SeqCst);
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let tamper = Arc::clone(&tamper);
            let c1 = cancel.clone();
            t.spawn(async move {
                tokio::select! {
                    () = c1.cancelled() => {}
                    _ = tokio::io::copy(&mut sr, &mut cw) => {}
                }
            });
            let c2 = cancel.clone();
            t.spawn(async move {
                let mut buf = BytesMut::new();
                let limits = FrameLimits::default();
                loop {
                    while let Ok(Split::Frame(f)) = split_frame(&buf, &limits) {
                        let frame = buf.split_to(f.total_len()).to_vec();
                        let out = (tamper.lock().unwrap())(index, frame);
                        for o in out {
                            if sw.write_all(&o).await.is_err() {
                                return;
                            }
                        }
                    }
                    let n = tokio::select! {
                        () = c2.cancelled() => return,
                        n = cr.read_buf(&mut buf) => n.unwrap_or(0),
                    };
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    addr
}
