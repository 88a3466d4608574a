//! What Eve costs.
//!
//! `eve/rewrite/<f>`: decode a 25 km GYS pulse frame of 2^24 slots,
//! intercept–resend fraction f of its pulses, re-encode — the CPU work the
//! proxy does per fibre frame — per simulated pulse (slot), so the figure
//! compares directly with `optics/pipeline` and with an agent's pulse rate.
//! `eve/proxy_loopback/<f>`: the same frames as sealed peer-channel Fibre
//! frames (sealing included) through a running [`EveProxy`] on 127.0.0.1,
//! which holds the lab fibre-key export and opens, attacks and re-seals
//! each frame, into a sink that walks the frames, per slot; `direct` is the
//! same path without Eve.

use std::hint::black_box;
use std::net::SocketAddr;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkd_ipsec::eve::{EveProxy, ProxyConfig};
use qkd_ipsec::peer::fibre::export::FibreKeyExport;
use qkd_ipsec::peer::fibre::{FibreBase, FibreSealer};
use qkd_ipsec::peer::frame::{FrameLimits, Split, split_frame};
use qkd_ipsec::peer::handshake::{AcceptorHandshake, DialerHandshake, Hello};
use qkd_ipsec::qkd::optics::{
    ChoiceRng, InterceptResend, LinkParams, NoiseRng, PulseFrame, Source,
};
use qkd_ipsec::secret::SecretBytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const SLOTS: u32 = 1 << 24;
const DIALER_NONCE: [u8; 32] = [1; 32];
const ACCEPTOR_NONCE: [u8; 32] = [2; 32];

/// The made-up channel key both ends and the lab export use.
fn channel_key() -> SecretBytes {
    SecretBytes::from_slice(&[5; 32])
}

fn frame_25km() -> PulseFrame {
    let p = LinkParams::gys(25.0);
    let mut src = Source::new(
        &p,
        ChoiceRng::insecure_from_fixed_seed(1),
        NoiseRng::from_seed(2),
    )
    .unwrap();
    src.emit(SLOTS).unwrap().0
}

fn rewrite(c: &mut Criterion) {
    let bytes = frame_25km().encode();
    let mut g = c.benchmark_group("eve/rewrite");
    g.throughput(Throughput::Elements(SLOTS as u64));
    g.sample_size(20);
    for f in [0.0, 0.5, 1.0] {
        let mut eve = InterceptResend::new(f, NoiseRng::from_seed(3)).unwrap();
        g.bench_function(format!("{f}"), |b| {
            b.iter(|| {
                let mut frame = PulseFrame::decode(&bytes).unwrap();
                eve.intercept(&mut frame);
                black_box(frame.encode())
            })
        });
    }
    g.finish();
}

/// A receiver stand-in: answers the Hello, then walks whole frames and
/// reports each one's size.
async fn sink(listener: TcpListener, done: mpsc::Sender<usize>) {
    let (mut s, _) = listener.accept().await.unwrap();
    let mut buf = BytesMut::with_capacity(8 << 20);
    let limits = FrameLimits::default();
    let hello = loop {
        if let Ok(Split::Frame(f)) = split_frame(&buf, &limits) {
            let hello = Hello::decode(&f).unwrap();
            let (_, reply) = AcceptorHandshake::respond(&f, &hello, &channel_key(), ACCEPTOR_NONCE);
            break (f.total_len(), reply);
        }
        // End of stream, or the client reset it when a benchmark ended.
        if !matches!(s.read_buf(&mut buf).await, Ok(n) if n > 0) {
            return;
        }
    };
    let _ = buf.split_to(hello.0);
    s.write_all(&hello.1).await.unwrap();
    loop {
        while let Ok(Split::Frame(f)) = split_frame(&buf, &limits) {
            let n = f.total_len();
            let _ = buf.split_to(n);
            if done.send(n).await.is_err() {
                return;
            }
        }
        // End of stream, or the client reset it when a benchmark ended.
        if !matches!(s.read_buf(&mut buf).await, Ok(n) if n > 0) {
            return;
        }
    }
}

/// A client connected to `to` (Eve or the sink directly) and the sink's
/// frame reports.
async fn path(
    via_eve: Option<f64>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> (TcpStream, mpsc::Receiver<usize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(4);
    tracker.spawn(sink(l, tx));
    let to: SocketAddr = match via_eve {
        Some(f) => {
            let keys = std::env::temp_dir()
                .join(format!("qkd-ipsec-bench-eve-{}.keys", std::process::id()));
            let _ = std::fs::remove_file(&keys);
            FibreKeyExport::new(keys.clone(), "gw-a", "gw-b")
                .export(0, &channel_key())
                .unwrap();
            let mut cfg = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), sink_addr);
            cfg.fraction = f;
            cfg.fibre_keys = Some(keys);
            cfg.seed = Some(4);
            let proxy = EveProxy::bind(cfg).await.unwrap();
            let addr = proxy.local_addr();
            proxy.spawn(tracker, cancel.clone());
            addr
        }
        None => sink_addr,
    };
    let mut s = TcpStream::connect(to).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (_, hello) = DialerHandshake::start(Hello {
        dialer: "gw-a".into(),
        acceptor: "gw-b".into(),
        epoch: 0,
        nonce: DIALER_NONCE,
    })
    .unwrap();
    s.write_all(&hello).await.unwrap();
    // The reply is left unread: Eve has seen it on its way, which is all
    // she needs to derive the session's fibre key.
    (s, rx)
}

fn proxy_loopback(c: &mut Criterion) {
    let plain = frame_25km().encode();
    let base = FibreBase::from_channel_key(&channel_key());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("eve/proxy_loopback");
    g.throughput(Throughput::Elements(SLOTS as u64));
    g.sample_size(10);
    for (name, via) in [("direct", None), ("0.5", Some(0.5)), ("1", Some(1.0))] {
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let (mut s, mut rx) = rt.block_on(path(via, &tracker, &cancel));
        let mut sealer = FibreSealer::new(base.session_key(&DIALER_NONCE, &ACCEPTOR_NONCE));
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let wire = sealer.seal(&plain).unwrap();
                    s.write_all(&wire).await.unwrap();
                    black_box(rx.recv().await.unwrap())
                })
            })
        });
        drop(s);
        cancel.cancel();
        tracker.close();
        rt.block_on(tracker.wait());
    }
    g.finish();
}

criterion_group!(benches, rewrite, proxy_loopback);
criterion_main!(benches);
