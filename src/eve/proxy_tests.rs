//! The proxy between two real peer links on 127.0.0.1: classical frames
//! pass unchanged, fibre frames are attacked at the dialled fraction when
//! Eve holds the exported fibre keys and pass unopened when she does not, a
//! frame over the limit closes both sides, in-path tampering is caught, and
//! cancel stops everything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::keys::Role;
use crate::peer::frame::{FrameHeader, FrameType};
use crate::peer::test_rig::*;
use crate::peer::{Endpoint, Stream};
use crate::qkd::optics::{Basis, NoiseRng, PulseFrame, PulseRecord};

/// Receiver behind a proxy, transmitter dialling the proxy. The
/// transmitter exports its fibre keys and Eve is handed them, unless the
/// test's `cfg` clears `fibre_keys`.
struct Rig {
    tx: Side,
    rx: Side,
    counters: Arc<EveCounters>,
    dial: FractionDial,
}

async fn rig(g: &Gateways, cfg: impl FnOnce(&mut ProxyConfig)) -> Rig {
    let (l, tracker, cancel) = listener("127.0.0.1:0".parse().unwrap()).await;
    let mut c = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), l.local_addr());
    c.seed = Some(42);
    let export = g.dir.path().join("fibre.keys");
    c.fibre_keys = Some(export.clone());
    cfg(&mut c);
    let proxy = EveProxy::bind(c).await.unwrap();
    let (addr, counters, dial) = (proxy.local_addr(), proxy.counters(), proxy.dial());
    proxy.spawn(&tracker, cancel.clone());
    let rx = spawn_side(
        fast_cfg(Role::Receiver),
        Endpoint::Accept(l),
        g.store(Role::Receiver),
        g.pool(Role::Receiver),
        tracker,
        cancel,
    );
    let mut tx_cfg = fast_cfg(Role::Transmitter);
    tx_cfg.lab_export_fibre_keys = Some(export);
    let tx = spawn_side(
        tx_cfg,
        Endpoint::Dial(addr),
        g.store(Role::Transmitter),
        g.pool(Role::Transmitter),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    tx.handle.wait_connected().await.unwrap();
    rx.handle.wait_connected().await.unwrap();
    Rig {
        tx,
        rx,
        counters,
        dial,
    }
}

/// A frame of `n` random pulses over `4n` slots (seeded).
fn pulses(n: u32, seed: u64) -> PulseFrame {
    let mut x = SplitMixTest(seed);
    let records: Vec<PulseRecord> = (0..n)
        .map(|i| PulseRecord {
            offset: 4 * i + (x.next() % 4) as u32,
            photons: 1 + (x.next() % 3) as u8,
            basis: Basis::from_bit(x.next() & 1 == 1),
            bit: x.next() & 1 == 1,
        })
        .collect();
    PulseFrame::from_records(1 << 40, 4 * n, &records).unwrap()
}

struct SplitMixTest(u64);
impl SplitMixTest {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^ (z >> 31)
    }
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[tokio::test]
async fn classical_frames_pass_unchanged_and_fraction_zero_is_transparent() {
    let g = Gateways::new();
    let mut r = rig(&g, |c| c.fraction = 0.0).await;
    for i in 0..5u8 {
        let qkd = Bytes::from(vec![i; 1000 + i as usize]);
        r.tx.handle.send(Stream::Qkd, qkd.clone()).await.unwrap();
        assert_eq!(recv(&mut r.rx.rx.qkd).await.payload, qkd);
        let ctl = Bytes::from(vec![0xA0 | i; 17]);
        r.rx.handle
            .send(Stream::Control, ctl.clone())
            .await
            .unwrap();
        assert_eq!(recv(&mut r.tx.rx.control).await.payload, ctl);
    }
    let frame = pulses(20_000, 1).encode();
    r.tx.handle
        .send(Stream::Fibre, Bytes::from(frame.clone()))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut r.rx.rx.fibre).await.payload,
        &frame[..],
        "byte-identical"
    );
    // Fibre that is not a pulse frame is forwarded as it came.
    r.tx.handle
        .send(Stream::Fibre, Bytes::from_static(b"not pulses"))
        .await
        .unwrap();
    assert_eq!(recv(&mut r.rx.rx.fibre).await.payload, &b"not pulses"[..]);
    let c = &r.counters;
    assert_eq!(count(&c.pulses), 20_000);
    assert_eq!(count(&c.intercepted), 0);
    assert_eq!(count(&c.fibre_frames), 2);
    assert_eq!(count(&c.fibre_undecodable), 1);
    assert_eq!(count(&c.fibre_unopened), 0, "Eve held the session's key");
    assert_eq!(count(&c.connections), 1);
    assert_eq!(count(&c.open), 1);
    assert!(
        count(&c.frames_to_transmitter) >= 6,
        "HelloReply + 5 control"
    );
    // Nothing broke a tag or a sequence number on either side.
    for side in [&r.tx, &r.rx] {
        let k = side.handle.counters();
        assert_eq!((k.auth_failures, k.replays, k.sessions), (0, 0, 1));
    }
    r.tx.stop().await;
    r.rx.stop().await;
}

#[tokio::test]
async fn without_fibre_keys_eve_passes_sealed_fibre_and_refuses_to_attack() {
    let g = Gateways::new();
    let upstream = "127.0.0.1:9".parse().unwrap();
    let mut c = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), upstream);
    c.fraction = 0.5;
    assert!(matches!(
        EveProxy::bind(c).await.err(),
        Some(EveError::NoFibreKeys)
    ));
    let mut r = rig(&g, |c| c.fibre_keys = None).await;
    let frame = pulses(5_000, 3).encode();
    r.tx.handle
        .send(Stream::Fibre, Bytes::from(frame.clone()))
        .await
        .unwrap();
    assert_eq!(recv(&mut r.rx.rx.fibre).await.payload, &frame[..]);
    let c = &r.counters;
    assert_eq!(count(&c.fibre_frames), 1);
    assert_eq!(count(&c.fibre_unopened), 1);
    assert_eq!(count(&c.pulses), 0, "sealed pulses cannot be measured");
    r.tx.stop().await;
    r.rx.stop().await;
}

#[tokio::test]
async fn a_fibre_key_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let g = Gateways::new();
    let path = g.dir.path().join("open.keys");
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = ProxyConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
    );
    c.fraction = 1.0;
    c.fibre_keys = Some(path);
    let e = EveProxy::bind(c).await.err().expect("refused");
    assert!(e.to_string().contains("chmod 600"), "{e}");
}

/// Sends `frames` fibre frames of `n` pulses; returns (pulses changed, total).
async fn attack_round(r: &mut Rig, frames: u64, n: u32, seed: u64) -> (u64, u64) {
    let mut changed = 0;
    for k in 0..frames {
        let sent = pulses(n, seed + k);
        let bytes = sent.encode();
        r.tx.handle
            .send(Stream::Fibre, Bytes::from(bytes.clone()))
            .await
            .unwrap();
        let got = recv(&mut r.rx.rx.fibre).await.payload;
        assert_eq!(got.len(), bytes.len(), "rewriting keeps the length");
        let got = PulseFrame::decode(&got).unwrap();
        assert_eq!(
            (got.first_slot(), got.slot_count()),
            (sent.first_slot(), sent.slot_count())
        );
        for (a, b) in sent.records().zip(got.records()) {
            assert_eq!((a.offset, a.photons), (b.offset, b.photons), "same photons");
            changed += u64::from((a.basis, a.bit) != (b.basis, b.bit));
        }
    }
    (changed, frames * n as u64)
}

#[tokio::test]
async fn fibre_pulses_are_intercepted_at_the_dialled_fraction() {
    let g = Gateways::new();
    let mut r = rig(&g, |c| c.fraction = 0.3).await;
    for (fraction, seed) in [(0.3, 100), (0.8, 200)] {
        r.dial.set(fraction).unwrap();
        let before = (count(&r.counters.intercepted), count(&r.counters.pulses));
        let (changed, total) = attack_round(&mut r, 4, 50_000, seed).await;
        let intercepted = count(&r.counters.intercepted) - before.0;
        assert_eq!(count(&r.counters.pulses) - before.1, total);
        // Each pulse is attacked with probability f: binomial, 5σ bound.
        let n = total as f64;
        let sd = (n * fraction * (1.0 - fraction)).sqrt();
        assert!(
            (intercepted as f64 - n * fraction).abs() < 5.0 * sd,
            "intercepted {intercepted} of {total} at f = {fraction}"
        );
        // An attacked pulse keeps its state when Eve's basis matched (½) and
        // changes basis otherwise, so half of them arrive changed.
        let m = intercepted as f64;
        assert!(
            (changed as f64 - m / 2.0).abs() < 5.0 * (m / 4.0).sqrt(),
            "changed {changed} of {intercepted} attacked"
        );
    }
    let k = r.rx.handle.counters();
    assert_eq!((k.auth_failures, k.replays, k.sessions), (0, 0, 1));
    r.tx.stop().await;
    r.rx.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_both_sides() {
    // Eve between a raw client and a raw server, so both ends can be watched.
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), server.local_addr().unwrap());
    cfg.limits.fibre = 4096;
    let proxy = EveProxy::bind(cfg).await.unwrap();
    let addr = proxy.local_addr();
    let counters = proxy.counters();
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    proxy.spawn(&tracker, cancel.clone());

    let mut client = TcpStream::connect(addr).await.unwrap();
    let (mut upstream, _) = server.accept().await.unwrap();
    // A frame within the limit passes (unopened: Eve holds no key).
    let mut ok = FrameHeader {
        frame_type: FrameType::Fibre,
        len: 4096,
        seq: 1,
    }
    .to_bytes()
    .to_vec();
    ok.extend_from_slice(&[7u8; 4096]);
    client.write_all(&ok).await.unwrap();
    let mut got = vec![0u8; ok.len()];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(got, ok);
    // A header announcing one byte more closes both connections.
    let over = FrameHeader {
        frame_type: FrameType::Fibre,
        len: 4097,
        seq: 0,
    };
    client.write_all(&over.to_bytes()).await.unwrap();
    assert_closed(&mut upstream).await;
    assert_closed(&mut client).await;
    eventually("frame error counted", || count(&counters.frame_errors) == 1).await;
    assert_eq!(count(&counters.open), 0);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

async fn assert_closed(s: &mut TcpStream) {
    let mut b = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(r.is_ok(), "connection still open");
}

#[tokio::test]
async fn unreachable_receiver_closes_the_transmitter_connection() {
    // A port that was just free: nothing listens there.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead: SocketAddr = free.local_addr().unwrap();
    drop(free);
    let proxy = EveProxy::bind(ProxyConfig::new("127.0.0.1:0".parse().unwrap(), dead))
        .await
        .unwrap();
    let (addr, counters) = (proxy.local_addr(), proxy.counters());
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    proxy.spawn(&tracker, cancel.clone());
    let mut client = TcpStream::connect(addr).await.unwrap();
    assert_closed(&mut client).await;
    assert_eq!(count(&counters.upstream_failures), 1);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

#[tokio::test]
async fn cancel_closes_every_connection_and_stops_listening() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = EveProxy::bind(ProxyConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        server.local_addr().unwrap(),
    ))
    .await
    .unwrap();
    let (addr, counters) = (proxy.local_addr(), proxy.counters());
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    proxy.spawn(&tracker, cancel.clone());
    let mut client = TcpStream::connect(addr).await.unwrap();
    let (mut upstream, _) = server.accept().await.unwrap();
    eventually("connection open", || count(&counters.open) == 1).await;
    cancel.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(2), tracker.wait())
        .await
        .expect("every proxy task ends promptly on cancel");
    assert_closed(&mut client).await;
    assert_closed(&mut upstream).await;
    assert_eq!(count(&counters.open), 0);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listening socket is closed"
    );
}

#[tokio::test]
async fn in_path_replay_and_forgery_drop_the_session_once_and_the_link_recovers() {
    for tamper in [InPathTamper::Replay, InPathTamper::Forge] {
        let g = Gateways::new();
        let mut r = rig(&g, |c| c.tamper = tamper).await;
        // The first authenticated frame (a Qkd frame or a keepalive) is hit.
        let _ =
            r.tx.handle
                .send(Stream::Qkd, Bytes::from_static(b"a"))
                .await;
        eventually("session dropped and counted", || {
            let k = r.rx.handle.counters();
            k.replays + k.auth_failures == 1
        })
        .await;
        let k = r.rx.handle.counters();
        match tamper {
            InPathTamper::Replay => assert_eq!(k.replays, 1),
            _ => assert_eq!(k.auth_failures, 1),
        }
        assert_eq!(count(&r.counters.tampered), 1);
        // The dialer reconnects through Eve, who tampers no more.
        eventually("second session", || r.tx.handle.counters().sessions >= 2).await;
        r.tx.handle.wait_connected().await.unwrap();
        r.rx.handle.wait_connected().await.unwrap();
        r.tx.handle
            .send(Stream::Qkd, Bytes::from_static(b"after"))
            .await
            .unwrap();
        let mut got = recv(&mut r.rx.rx.qkd).await.payload;
        if got == b"a"[..] {
            // The first frame was delivered before a replayed copy was caught.
            got = recv(&mut r.rx.rx.qkd).await.payload;
        }
        assert_eq!(got, &b"after"[..]);
        assert_eq!(count(&r.counters.tampered), 1);
        r.tx.stop().await;
        r.rx.stop().await;
    }
}

#[test]
fn connection_seeds_differ_and_are_reproducible() {
    use super::proxy::connection_seed;
    assert_eq!(connection_seed(7, 0), connection_seed(7, 0));
    assert_ne!(connection_seed(7, 0), connection_seed(7, 1));
    assert_ne!(connection_seed(7, 0), connection_seed(8, 0));
    // Same seed → same attack on the same frame.
    let f = pulses(1000, 9);
    let attack = |s| {
        let mut eve =
            crate::qkd::optics::InterceptResend::new(0.5, NoiseRng::from_seed(s)).unwrap();
        let mut g = f.clone();
        eve.intercept(&mut g);
        g
    };
    assert!(attack(connection_seed(7, 0)) == attack(connection_seed(7, 0)));
}
