//! Hostile input on the peer port and in the path: every attempt drops its
//! connection, is counted, delivers nothing, and the legitimate peer still
//! gets through.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::frame::{FrameHeader, FrameType, HEADER_LEN, encode_plain};
use super::handshake::{DialerHandshake, Hello, NONCE_LEN};
use super::test_rig::*;
use super::*;
use crate::keys::Role;
use crate::secret::SecretBytes;

/// Waits until the server closes `s` (EOF or reset); fails after 3 s.
async fn closed_by_server(mut s: TcpStream) {
    let mut sink = [0u8; 512];
    let r = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(r.is_ok(), "server kept a hostile connection open");
}

async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s
}

/// Runs a client-side handshake with `key`; returns (Hello, Finish) frames
/// as sent, or `None` for Finish when the server's confirmation failed (a
/// forger then sends a made-up Finish).
async fn handshake_as_client(addr: SocketAddr, key: &SecretBytes) -> (Vec<u8>, Vec<u8>, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (hs, hello) = DialerHandshake::start(Hello {
        dialer: TX.into(),
        acceptor: RX.into(),
        epoch: 0,
        nonce: [7; NONCE_LEN],
    })
    .unwrap();
    s.write_all(&hello).await.unwrap();
    let mut reply = vec![0u8; HEADER_LEN + 72];
    s.read_exact(&mut reply).await.unwrap();
    let Ok(Split::Frame(raw)) = split_frame(&reply, &FrameLimits::handshake_only()) else {
        panic!("reply frame");
    };
    let finish = match hs.on_reply(&raw, key) {
        Ok((finish, _)) => finish,
        Err(e) => {
            assert!(e.is_auth_failure(), "{e}");
            encode_plain(FrameType::Finish, &[0x42; 32])
        }
    };
    s.write_all(&finish).await.unwrap();
    (hello, finish, s)
}

#[tokio::test]
async fn hostile_clients_are_dropped_counted_and_the_peer_still_connects() {
    let g = Gateways::new();
    let (l, tracker, cancel) = listener("127.0.0.1:0".parse().unwrap()).await;
    let addr = l.local_addr();
    let mut rx = spawn_side(
        fast_cfg(Role::Receiver),
        Endpoint::Accept(l.clone()),
        g.store(Role::Receiver),
        g.pool(Role::Receiver),
        tracker,
        cancel,
    );

    // Garbage.
    closed_by_server(send_raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await).await;
    // Oversized length: a header announcing 4 GiB.
    let huge = FrameHeader {
        frame_type: FrameType::Hello,
        len: u32::MAX,
        seq: 0,
    }
    .to_bytes();
    closed_by_server(send_raw(addr, &huge).await).await;
    // A data frame instead of a Hello.
    let fibre = FrameHeader {
        frame_type: FrameType::Fibre,
        len: 0,
        seq: 1,
    }
    .to_bytes();
    closed_by_server(send_raw(addr, &fibre).await).await;
    // Truncated Hello, then the client closes its side.
    let (_, hello) = DialerHandshake::start(Hello {
        dialer: TX.into(),
        acceptor: RX.into(),
        epoch: 0,
        nonce: [1; NONCE_LEN],
    })
    .unwrap();
    let mut s = send_raw(addr, &hello[..hello.len() / 2]).await;
    s.shutdown().await.unwrap();
    closed_by_server(s).await;
    // Truncated Hello, then silence: the handshake timeout closes it.
    closed_by_server(send_raw(addr, &hello[..20]).await).await;
    // Unknown gateway names.
    let (_, stranger) = DialerHandshake::start(Hello {
        dialer: "gw-z".into(),
        acceptor: RX.into(),
        epoch: 0,
        nonce: [1; NONCE_LEN],
    })
    .unwrap();
    closed_by_server(send_raw(addr, &stranger).await).await;
    eventually("six pre-authentication failures", || {
        l.counters().handshake_failures >= 6
    })
    .await;
    assert!(l.counters().handshake_timeouts >= 1);
    assert_eq!(
        rx.handle.counters().auth_failures,
        0,
        "link not yet identified"
    );

    // Forged with the wrong key: the reply does not verify, the made-up
    // Finish is refused.
    let wrong = SecretBytes::random(32).unwrap();
    let (_, _, s) = handshake_as_client(addr, &wrong).await;
    closed_by_server(s).await;
    // A real handshake recorded (the test holds the right key), then its
    // Hello and Finish replayed on a new connection.
    let (hello_rec, finish_rec, live) = handshake_as_client(addr, &g.bootstrap).await;
    let mut replay = hello_rec.clone();
    replay.extend_from_slice(&finish_rec);
    closed_by_server(send_raw(addr, &replay).await).await;
    eventually("two authentication failures on the link", || {
        rx.handle.counters().auth_failures == 2
    })
    .await;
    // The recording client did authenticate (it holds the key); closing it
    // ends that session.
    drop(live);

    // A flood of idle connections beyond the pending limit.
    let mut idle = Vec::new();
    for _ in 0..6 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    eventually("flood refused", || l.counters().rejected_busy >= 2).await;
    drop(idle);

    // Nothing was delivered from any of it.
    assert!(rx.rx.qkd.try_recv().is_err());
    assert!(rx.rx.control.try_recv().is_err());
    assert!(rx.rx.fibre.try_recv().is_err());

    // The legitimate peer connects and talks.
    let tx = spawn_side(
        fast_cfg(Role::Transmitter),
        Endpoint::Dial(addr),
        g.store(Role::Transmitter),
        g.pool(Role::Transmitter),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    tx.handle.wait_connected().await.unwrap();
    tx.handle
        .send(Stream::Qkd, Bytes::from_static(b"legit"))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx.rx.qkd).await.payload, &b"legit"[..]);
    tx.stop().await;
    rx.stop().await;
}

/// Sets up receiver + listener, a tampering proxy, and a dialer through it.
async fn through_proxy(g: &Gateways, tamper: Tamper) -> (Side, Side) {
    let (l, tracker, cancel) = listener("127.0.0.1:0".parse().unwrap()).await;
    let proxy = frame_proxy(l.local_addr(), tamper, &tracker, cancel.clone()).await;
    let rx = spawn_side(
        fast_cfg(Role::Receiver),
        Endpoint::Accept(l),
        g.store(Role::Receiver),
        g.pool(Role::Receiver),
        tracker,
        cancel,
    );
    let tx = spawn_side(
        fast_cfg(Role::Transmitter),
        Endpoint::Dial(proxy),
        g.store(Role::Transmitter),
        g.pool(Role::Transmitter),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    (tx, rx)
}

fn is_type(frame: &[u8], t: FrameType) -> bool {
    frame[3] == t.code()
}

#[tokio::test]
async fn replayed_frame_in_the_path_drops_the_session_and_the_link_recovers() {
    let g = Gateways::new();
    // On the first connection, the first Qkd frame is sent twice.
    let mut done = false;
    let tamper: Tamper = Box::new(move |conn, frame| {
        if conn == 0 && !done && is_type(&frame, FrameType::Qkd) {
            done = true;
            return vec![frame.clone(), frame];
        }
        vec![frame]
    });
    let (tx, mut rx) = through_proxy(&g, tamper).await;
    tx.handle.wait_connected().await.unwrap();
    tx.handle
        .send(Stream::Qkd, Bytes::from_static(b"once"))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx.rx.qkd).await.payload, &b"once"[..]);
    eventually("replay counted", || rx.handle.counters().replays == 1).await;
    // The dialer reconnects (second connection, untouched) and carries on.
    eventually("second session", || tx.handle.counters().sessions == 2).await;
    let s = tx.handle.wait_connected().await.unwrap();
    assert_eq!(s.session, 2);
    rx.handle.wait_connected().await.unwrap();
    tx.handle
        .send(Stream::Qkd, Bytes::from_static(b"twice?"))
        .await
        .unwrap();
    let got = recv(&mut rx.rx.qkd).await;
    assert_eq!(got.payload, &b"twice?"[..]);
    assert!(
        rx.rx.qkd.try_recv().is_err(),
        "the replay was not delivered"
    );
    tx.stop().await;
    rx.stop().await;
}

#[tokio::test]
async fn altered_fibre_and_control_frames_fail_their_tags() {
    let g = Gateways::new();
    let tamper: Tamper = Box::new(move |conn, mut frame| {
        // Without the fibre key Eve can only flip ciphertext bits: on the
        // first connection she flips a fibre byte, on the second a control
        // frame's byte.
        if conn == 0 && is_type(&frame, FrameType::Fibre) {
            frame[HEADER_LEN] ^= 0xFF;
        }
        if conn == 1 && is_type(&frame, FrameType::Control) {
            frame[HEADER_LEN] ^= 1;
        }
        vec![frame]
    });
    let (tx, mut rx) = through_proxy(&g, tamper).await;
    tx.handle.wait_connected().await.unwrap();
    rx.handle.wait_connected().await.unwrap();
    tx.handle
        .send(Stream::Fibre, Bytes::from_static(&[0x0F; 8]))
        .await
        .unwrap();
    eventually("GCM failure counted", || {
        rx.handle.counters().auth_failures == 1
    })
    .await;
    assert!(
        rx.rx.fibre.try_recv().is_err(),
        "altered fibre frame not delivered"
    );
    eventually("reconnected", || tx.handle.counters().reconnects == 1).await;
    tx.handle.wait_connected().await.unwrap();
    rx.handle.wait_connected().await.unwrap();
    tx.handle
        .send(Stream::Fibre, Bytes::from_static(&[0x0F; 8]))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx.rx.fibre).await.payload, &[0x0F; 8][..]);
    tx.handle
        .send(Stream::Control, Bytes::from_static(b"install SA"))
        .await
        .unwrap();
    eventually("MAC failure counted", || {
        rx.handle.counters().auth_failures == 2
    })
    .await;
    assert!(
        rx.rx.control.try_recv().is_err(),
        "altered control frame not delivered"
    );
    eventually("reconnected again", || tx.handle.counters().reconnects == 2).await;
    tx.handle.wait_connected().await.unwrap();
    rx.handle.wait_connected().await.unwrap();
    tx.handle
        .send(Stream::Control, Bytes::from_static(b"install SA"))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx.rx.control).await.payload, &b"install SA"[..]);
    tx.stop().await;
    rx.stop().await;
}

#[tokio::test]
async fn frames_lost_with_a_session_are_not_resent_on_the_next() {
    let g = Gateways::new();
    // Drop every frame of the first connection after the handshake, so its
    // session dies by idle timeout with frames still queued.
    let tamper: Tamper = Box::new(move |conn, frame| {
        if conn == 0 && frame[3] >= FrameType::Fibre.code() {
            return vec![];
        }
        vec![frame]
    });
    let (tx, mut rx) = through_proxy(&g, tamper).await;
    tx.handle.wait_connected().await.unwrap();
    let mut buf = BytesMut::new();
    buf.extend_from_slice(b"old");
    tx.handle.send(Stream::Qkd, buf.freeze()).await.unwrap();
    eventually("second session", || tx.handle.counters().sessions == 2).await;
    tx.handle.wait_connected().await.unwrap();
    rx.handle.wait_connected().await.unwrap();
    tx.handle
        .send(Stream::Qkd, Bytes::from_static(b"new"))
        .await
        .unwrap();
    let got = recv(&mut rx.rx.qkd).await;
    assert_eq!(
        got.payload,
        &b"new"[..],
        "the first session's frame was lost, not resent"
    );
    tx.stop().await;
    rx.stop().await;
}

#[tokio::test]
async fn an_authenticated_newcomer_replaces_the_session_and_the_dialer_takes_it_back() {
    let g = Gateways::new();
    let (l, tracker, cancel) = listener("127.0.0.1:0".parse().unwrap()).await;
    let addr = l.local_addr();
    let mut rx = spawn_side(
        fast_cfg(Role::Receiver),
        Endpoint::Accept(l.clone()),
        g.store(Role::Receiver),
        g.pool(Role::Receiver),
        tracker,
        cancel,
    );
    let tx = spawn_side(
        fast_cfg(Role::Transmitter),
        Endpoint::Dial(addr),
        g.store(Role::Transmitter),
        g.pool(Role::Transmitter),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    tx.handle.wait_connected().await.unwrap();
    // Someone holding the key (here: the test) completes a handshake, as a
    // restarted dialer would while the old connection is half-open.
    let (_, _, newcomer) = handshake_as_client(addr, &g.bootstrap).await;
    eventually("acceptor switched to the newcomer", || {
        rx.handle.counters().sessions >= 2
    })
    .await;
    // The old connection was closed by the acceptor; the dialer redials and
    // its fresh session replaces the newcomer's.
    eventually("dialer back", || tx.handle.counters().sessions == 2).await;
    tx.handle.wait_connected().await.unwrap();
    eventually("acceptor on the dialer's new session", || {
        rx.handle.counters().sessions >= 3
    })
    .await;
    tx.handle
        .send(Stream::Control, Bytes::from_static(b"still here"))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx.rx.control).await.payload, &b"still here"[..]);
    drop(newcomer);
    tx.stop().await;
    rx.stop().await;
}
