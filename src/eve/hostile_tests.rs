//! Every hostile attack against a real receiver (listener + link): the
//! connection is dropped, the failure is counted, nothing is delivered, and
//! the legitimate transmitter still gets through. The replay uses a
//! recording made by the proxy.

use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::eve::{EveProxy, ProxyConfig};
use crate::keys::Role;
use crate::peer::test_rig::*;
use crate::peer::{Endpoint, Stream};
use crate::secret::file::TestDir;

fn plan(target: SocketAddr, attack: HostileAttack) -> HostilePlan {
    let mut p = HostilePlan::new(target, attack);
    p.dialer = TX.into();
    p.acceptor = RX.into();
    p.wait = Duration::from_secs(3);
    p
}

#[tokio::test]
async fn every_attack_is_dropped_and_the_transmitter_still_connects() {
    let g = Gateways::new();
    let dir = TestDir::new("eve-hostile");
    let recording = dir.path().join("classical.frames");
    let (l, tracker, cancel) = listener("127.0.0.1:0".parse().unwrap()).await;
    let target = l.local_addr();
    let mut rx = spawn_side(
        fast_cfg(Role::Receiver),
        Endpoint::Accept(l.clone()),
        g.store(Role::Receiver),
        g.pool(Role::Receiver),
        tracker.clone(),
        cancel.clone(),
    );

    // Record a real transmitter's classical frames through the proxy.
    let mut cfg = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), target);
    cfg.record = Some(recording.clone());
    let proxy = EveProxy::bind(cfg).await.unwrap();
    let via_eve = proxy.local_addr();
    let eve_counters = proxy.counters();
    proxy.spawn(&tracker, cancel.clone());
    let tx = spawn_side(
        fast_cfg(Role::Transmitter),
        Endpoint::Dial(via_eve),
        g.store(Role::Transmitter),
        g.pool(Role::Transmitter),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    tx.handle.wait_connected().await.unwrap();
    tx.handle
        .send(Stream::Qkd, Bytes::from_static(b"recorded"))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx.rx.qkd).await.payload, &b"recorded"[..]);
    eventually("handshake and a Qkd frame recorded", || {
        std::sync::atomic::AtomicU64::load(
            &eve_counters.recorded_bytes,
            std::sync::atomic::Ordering::Relaxed,
        ) > 150
    })
    .await;
    tx.stop().await;
    let recorded = load_recording(&recording).unwrap();
    assert!(recorded.len() > 150);

    let failures_before = l.counters().handshake_failures;
    for attack in HostileAttack::ALL {
        let mut p = plan(target, attack);
        if attack == HostileAttack::Replay {
            p.recording = Some(recorded.clone());
        }
        let out = run_hostile(&p).await.unwrap();
        assert!(out.closed_by_agent(), "{out}");
        assert!(out.bytes_sent > 0, "{out}");
        match attack {
            // The agent answered the Hello, then refused the confirmation.
            // (A replay sends everything at once, so the agent's reply may
            // be lost to the reset that its close provokes.)
            HostileAttack::Forged => assert_eq!(out.bytes_received, 16 + 72, "{out}"),
            HostileAttack::Replay => {}
            // Closed by the listener's 300 ms handshake timeout.
            HostileAttack::Truncated => assert!(out.elapsed >= Duration::from_millis(200), "{out}"),
            _ => assert_eq!(out.bytes_received, 0, "{out}"),
        }
    }
    eventually("five handshake failures", || {
        l.counters().handshake_failures >= failures_before + 5
    })
    .await;
    // Replay and forgery reached the key check of the right link.
    assert_eq!(rx.handle.counters().auth_failures, 2);
    assert!(rx.rx.qkd.try_recv().is_err(), "nothing delivered");
    assert!(rx.rx.fibre.try_recv().is_err());
    assert!(rx.rx.control.try_recv().is_err());

    // The real transmitter, dialling directly now, still gets through.
    let tx = spawn_side(
        fast_cfg(Role::Transmitter),
        Endpoint::Dial(target),
        g.store(Role::Transmitter),
        g.pool(Role::Transmitter),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    tx.handle.wait_connected().await.unwrap();
    tx.handle
        .send(Stream::Control, Bytes::from_static(b"still serving"))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut rx.rx.control).await.payload,
        &b"still serving"[..]
    );
    tx.stop().await;
    rx.stop().await;
}

#[tokio::test]
async fn a_server_that_keeps_the_connection_is_reported_as_still_open() {
    // A peer port that accepts and never reads or closes: the tool must say
    // so, or its "closed" verdicts would mean nothing.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    });
    let mut p = plan(target, HostileAttack::Garbage);
    p.wait = Duration::from_millis(300);
    let out = run_hostile(&p).await.unwrap();
    assert_eq!(out.ending, Ending::StillOpen, "{out}");
    assert!(!out.closed_by_agent());
    assert!(out.to_string().contains("outcome=still-open"));
    hold.abort();
}

#[tokio::test]
async fn replay_without_a_recording_and_bad_recordings_are_refused() {
    let p = plan("127.0.0.1:9".parse().unwrap(), HostileAttack::Replay);
    // Refused before connecting.
    assert!(matches!(
        run_hostile(&p).await,
        Err(EveError::MissingInput { .. })
    ));
    let dir = TestDir::new("eve-recording");
    let path = dir.path().join("junk");
    std::fs::write(&path, b"not frames at all").unwrap();
    assert!(matches!(
        load_recording(&path),
        Err(EveError::Recording { .. })
    ));
    std::fs::write(&path, vec![0u8; MAX_RECORDING + 1]).unwrap();
    assert!(load_recording(&path).is_err());
    assert!(load_recording(&dir.path().join("missing")).is_err());
    let mut bad = plan("127.0.0.1:9".parse().unwrap(), HostileAttack::Forged);
    bad.dialer = "no spaces allowed".into();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    bad.target = l.local_addr().unwrap();
    assert!(matches!(run_hostile(&bad).await, Err(EveError::Name(_))));
}

#[test]
fn forged_frames_parse_as_finish_then_qkd_with_a_tag() {
    let bytes = forged_frames(&mut SplitMix(5));
    let limits = FrameLimits::default();
    let Ok(Split::Frame(finish)) = split_frame(&bytes, &limits) else {
        panic!("a Finish first")
    };
    assert_eq!(finish.header.frame_type, FrameType::Finish);
    let rest = &bytes[finish.total_len()..];
    let Ok(Split::Frame(qkd)) = split_frame(rest, &limits) else {
        panic!("then a Qkd frame")
    };
    assert_eq!(qkd.header.frame_type, FrameType::Qkd);
    assert_eq!(qkd.header.seq, 1);
    assert_eq!(qkd.tag.map(<[u8]>::len), Some(TAG_LEN));
    assert_eq!(qkd.total_len(), rest.len());
}
