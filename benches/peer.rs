//! Cost of the peer channel: what authenticating frames and moving them
//! through two links on loopback costs per bit of payload.
//!
//! `codec`: seal (HMAC-SHA256) + split + open of one frame, no I/O, for a
//! 125 kB QKD message (a Cascade round on a 10^6-bit block) and a 16 kB one.
//! `loopback`: a 1 MiB QKD frame from the dialer's `send` to the acceptor's
//! receiver over 127.0.0.1 (two tasks per side, MAC both ends, TCP).
//! Throughput is in payload bits.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkd_ipsec::keys::{KeyPool, Role};
use qkd_ipsec::peer::frame::{FrameType, Opener, Sealer, Split, split_frame};
use qkd_ipsec::peer::{
    ChannelKeyStore, Endpoint, FrameLimits, LinkConfig, ListenerConfig, PeerLink, PeerListener,
    Stream,
};
use qkd_ipsec::secret::{Secret, SecretBytes};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("peer_codec");
    let limits = FrameLimits::default();
    for len in [16_000usize, 125_000] {
        let payload = vec![0x5Au8; len];
        let key = Secret::<32>::random().unwrap();
        let mut sealer = Sealer::new(key.duplicate());
        let mut opener = Opener::new(key);
        g.throughput(Throughput::Elements(len as u64 * 8));
        g.bench_function(format!("seal_open_{len}B"), |b| {
            b.iter(|| {
                let f = sealer.seal(FrameType::Qkd, &payload).unwrap();
                let Ok(Split::Frame(raw)) = split_frame(&f, &limits) else {
                    unreachable!()
                };
                opener.open(&raw).unwrap();
            })
        });
    }
    g.finish();
}

fn loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("qkd-ipsec-bench-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bootstrap = SecretBytes::random(32).unwrap();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let (tx, mut rx) = rt.block_on(async {
        let listener = PeerListener::bind(
            "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
            ListenerConfig::default(),
            &tracker,
            cancel.clone(),
        )
        .await
        .unwrap();
        let store =
            |name: &str| ChannelKeyStore::open(&dir.join(name), bootstrap.duplicate()).unwrap();
        let (_rx_handle, rx) = PeerLink::spawn(
            LinkConfig::new("gw-b", "gw-a", Role::Receiver),
            Endpoint::Accept(listener.clone()),
            store("rx"),
            Arc::new(Mutex::new(KeyPool::new(Role::Receiver))),
            &tracker,
            cancel.clone(),
        )
        .unwrap();
        let (tx, _tx_rx) = PeerLink::spawn(
            LinkConfig::new("gw-a", "gw-b", Role::Transmitter),
            Endpoint::Dial(listener.local_addr()),
            store("tx"),
            Arc::new(Mutex::new(KeyPool::new(Role::Transmitter))),
            &tracker,
            cancel.clone(),
        )
        .unwrap();
        tx.wait_connected().await.unwrap();
        (tx, rx)
    });
    let payload = Bytes::from(vec![0xA5u8; 1 << 20]);
    let mut g = c.benchmark_group("peer_loopback");
    g.throughput(Throughput::Elements(payload.len() as u64 * 8));
    g.bench_function("qkd_frame_1MiB", |b| {
        b.iter(|| {
            rt.block_on(async {
                tx.send(Stream::Qkd, payload.clone()).await.unwrap();
                rx.qkd.recv().await.unwrap();
            })
        })
    });
    g.finish();
    cancel.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, codec, loopback);
criterion_main!(benches);
