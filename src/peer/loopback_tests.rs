//! Two links on 127.0.0.1: streams, channel-key switch, restarts.

use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::test_rig::*;
use super::*;
use crate::keys::{KeyUse, Role};

/// Listener + receiver link, and a transmitter link dialing it.
async fn connected_pair(g: &Gateways) -> (Side, Side, PeerListener) {
    let (l, tracker, cancel) = listener("127.0.0.1:0".parse().unwrap()).await;
    let rx = spawn_side(
        fast_cfg(Role::Receiver),
        Endpoint::Accept(l.clone()),
        g.store(Role::Receiver),
        g.pool(Role::Receiver),
        tracker,
        cancel,
    );
    let tx = spawn_side(
        fast_cfg(Role::Transmitter),
        Endpoint::Dial(l.local_addr()),
        g.store(Role::Transmitter),
        g.pool(Role::Transmitter),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    tx.handle.wait_connected().await.unwrap();
    rx.handle.wait_connected().await.unwrap();
    (tx, rx, l)
}

#[tokio::test]
async fn all_three_streams_flow_and_the_fibre_only_one_way() {
    let g = Gateways::new();
    let (mut tx, mut rx, l) = connected_pair(&g).await;
    let session = tx.handle.session().unwrap();
    assert_eq!(session.epoch, 0, "bootstrap secret first");
    let big = Bytes::from(vec![0xAB; 3 << 20]);
    tx.handle.send(Stream::Fibre, big.clone()).await.unwrap();
    tx.handle
        .send(Stream::Qkd, Bytes::from_static(b"sift"))
        .await
        .unwrap();
    tx.handle
        .send(Stream::Control, Bytes::from_static(b"rekey?"))
        .await
        .unwrap();
    rx.handle
        .send(Stream::Qkd, Bytes::from_static(b"parities"))
        .await
        .unwrap();
    rx.handle
        .send(Stream::Control, Bytes::from_static(b"rekey!"))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx.rx.fibre).await.payload, big);
    assert_eq!(recv(&mut rx.rx.qkd).await.payload, &b"sift"[..]);
    assert_eq!(recv(&mut rx.rx.control).await.payload, &b"rekey?"[..]);
    let q = recv(&mut tx.rx.qkd).await;
    assert_eq!(q.payload, &b"parities"[..]);
    assert_eq!(q.session, session.session);
    assert_eq!(recv(&mut tx.rx.control).await.payload, &b"rekey!"[..]);
    assert!(matches!(
        rx.handle
            .send(Stream::Fibre, Bytes::from_static(b"x"))
            .await,
        Err(PeerError::FibreDirection)
    ));
    let too_big = Bytes::from(vec![0; (64 << 10) + 1]);
    assert!(matches!(
        tx.handle.send(Stream::Control, too_big).await,
        Err(PeerError::PayloadTooLarge { .. })
    ));
    let (tc, rc) = (tx.handle.counters(), rx.handle.counters());
    assert_eq!(tc.frames_out, [1, 1, 1]);
    assert_eq!(rc.frames_in, [1, 1, 1]);
    assert_eq!(rc.frames_out, [0, 1, 1]);
    assert_eq!(tc.frames_in, [0, 1, 1]);
    assert_eq!((tc.auth_failures, rc.auth_failures, rc.replays), (0, 0, 0));
    assert_eq!(l.counters().authenticated, 1);
    tx.stop().await;
    rx.stop().await;
}

#[tokio::test]
async fn switch_to_a_pool_key_survives_restarts_of_both_sides() {
    let g = Gateways::new();
    let (mut tx, mut rx, l) = connected_pair(&g).await;
    assert!(matches!(
        rx.handle.switch_channel_key().await,
        Err(PeerError::NotSwitchInitiator)
    ));
    assert_eq!(tx.handle.switch_channel_key().await.unwrap(), 1);
    wait_state(
        &rx.handle,
        "acceptor at epoch 1",
        |s| matches!(s, LinkState::Connected(i) if i.epoch == 1),
    )
    .await;
    assert_eq!(tx.handle.session().unwrap().epoch, 1);
    // The same session goes on under the new keys, both ways.
    tx.handle
        .send(Stream::Qkd, Bytes::from_static(b"after"))
        .await
        .unwrap();
    rx.handle
        .send(Stream::Qkd, Bytes::from_static(b"switch"))
        .await
        .unwrap();
    assert_eq!(recv(&mut rx.rx.qkd).await.payload, &b"after"[..]);
    assert_eq!(recv(&mut tx.rx.qkd).await.payload, &b"switch"[..]);
    // Both pools gave the same 32 bytes, once each.
    let used = |p: &std::sync::Mutex<crate::keys::KeyPool>| {
        *p.lock().unwrap().counters().for_use(KeyUse::Channel)
    };
    let (t, r) = (used(&g.tx_pool), used(&g.rx_pool));
    assert_eq!((t.initiated_takes, t.initiated_bytes), (1, 32));
    assert_eq!((r.accepted_takes, r.accepted_bytes), (1, 32));
    assert_eq!(tx.handle.counters().key_switches, 1);
    eventually("acceptor counted the switch", || {
        rx.handle.counters().key_switches == 1
    })
    .await;
    // A second switch goes to epoch 2.
    assert_eq!(tx.handle.switch_channel_key().await.unwrap(), 2);
    let port = l.local_addr();
    tx.stop().await;
    rx.stop().await;
    drop(l);

    // Restart both with a different bootstrap secret: it must not matter,
    // the recorded QKD key (epoch 2) authenticates.
    let mut g2 = Gateways::new();
    g2.dir = g.dir;
    let (l, tracker, cancel) = listener(port).await;
    for role in [Role::Transmitter, Role::Receiver] {
        let s = ChannelKeyStore::open(&g2.record(role), g2.bootstrap.duplicate()).unwrap();
        assert_eq!((s.current_epoch(), s.next_epoch()), (2, None));
    }
    let rx = spawn_side(
        fast_cfg(Role::Receiver),
        Endpoint::Accept(l.clone()),
        g2.store(Role::Receiver),
        g2.pool(Role::Receiver),
        tracker,
        cancel,
    );
    let tx = spawn_side(
        fast_cfg(Role::Transmitter),
        Endpoint::Dial(port),
        g2.store(Role::Transmitter),
        g2.pool(Role::Transmitter),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    assert_eq!(tx.handle.wait_connected().await.unwrap().epoch, 2);
    assert_eq!(rx.handle.wait_connected().await.unwrap().epoch, 2);
    tx.stop().await;
    rx.stop().await;
}

#[tokio::test]
async fn acceptor_refuses_a_dialer_that_lost_its_record() {
    let g = Gateways::new();
    let (tx, rx, l) = connected_pair(&g).await;
    tx.handle.switch_channel_key().await.unwrap();
    tx.stop().await;
    // The dialer's state directory is wiped: it comes back at epoch 0.
    std::fs::remove_file(g.record(Role::Transmitter)).unwrap();
    let tx = spawn_side(
        fast_cfg(Role::Transmitter),
        Endpoint::Dial(l.local_addr()),
        g.store(Role::Transmitter),
        g.pool(Role::Transmitter),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    // Never a downgrade to the bootstrap secret: the handshake keeps failing.
    eventually("dialer retried", || {
        tx.handle.counters().connect_failures >= 3
    })
    .await;
    assert!(tx.handle.session().is_none());
    assert_eq!(rx.handle.counters().sessions, 1);
    assert!(l.counters().handshake_failures >= 3);
    let state = tx.handle.state().borrow().clone();
    let LinkState::Disconnected { last_error, .. } = state else {
        panic!("dialer should be disconnected: {state:?}");
    };
    assert!(last_error.is_some());
    tx.stop().await;
    rx.stop().await;
}

#[tokio::test]
async fn dialer_reconnects_after_the_accepting_side_restarts() {
    let g = Gateways::new();
    let (tx, rx, l) = connected_pair(&g).await;
    let first = tx.handle.session().unwrap().session;
    let port = l.local_addr();
    rx.stop().await;
    drop(l);
    wait_state(&tx.handle, "dialer notices", |s| {
        matches!(s, LinkState::Disconnected { .. })
    })
    .await;
    assert!(matches!(
        tx.handle
            .send(Stream::Qkd, Bytes::from_static(b"lost"))
            .await,
        Err(PeerError::NotConnected)
    ));
    // Let a few dials fail against the closed port.
    eventually("failed dials", || {
        tx.handle.counters().connect_failures >= 2
    })
    .await;
    let (l, tracker, cancel) = listener(port).await;
    let mut rx = spawn_side(
        fast_cfg(Role::Receiver),
        Endpoint::Accept(l.clone()),
        g.store(Role::Receiver),
        g.pool(Role::Receiver),
        tracker,
        cancel,
    );
    let again = tx.handle.wait_connected().await.unwrap();
    assert!(again.session > first);
    assert_eq!(tx.handle.counters().reconnects, 1);
    rx.handle.wait_connected().await.unwrap();
    tx.handle
        .send(Stream::Qkd, Bytes::from_static(b"back"))
        .await
        .unwrap();
    let got = recv(&mut rx.rx.qkd).await;
    assert_eq!(got.payload, &b"back"[..]);
    tx.stop().await;
    rx.stop().await;
}

#[tokio::test]
async fn keepalives_keep_a_quiet_session_up() {
    let g = Gateways::new();
    let (tx, rx, _l) = connected_pair(&g).await;
    // Three idle timeouts of silence from the upper layers: keepalives hold.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(tx.handle.counters().sessions, 1);
    assert_eq!(rx.handle.counters().sessions, 1);
    assert!(tx.handle.session().is_some());
    tx.stop().await;
    rx.stop().await;
}

#[tokio::test]
async fn a_second_listener_route_for_the_same_peer_is_refused() {
    let g = Gateways::new();
    let (tx, rx, l) = connected_pair(&g).await;
    let err = PeerLink::spawn(
        fast_cfg(Role::Receiver),
        Endpoint::Accept(l.clone()),
        g.store(Role::Receiver),
        g.pool(Role::Receiver),
        &TaskTracker::new(),
        CancellationToken::new(),
    )
    .unwrap_err();
    assert!(matches!(err, PeerError::DuplicateRoute { .. }), "{err}");
    let err = PeerLink::spawn(
        fast_cfg(Role::Receiver),
        Endpoint::Dial(l.local_addr()),
        g.store(Role::Receiver),
        g.pool(Role::Receiver),
        &TaskTracker::new(),
        CancellationToken::new(),
    )
    .unwrap_err();
    assert!(matches!(err, PeerError::WrongEndpoint { .. }), "{err}");
    tx.stop().await;
    rx.stop().await;
}
