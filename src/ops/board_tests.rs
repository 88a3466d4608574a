use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::keys::{BlockId, KeyPool, KeyUse, Role};
use crate::ops::alarm::QberBasis;
use crate::ops::logging::LogFormat;
use crate::ops::logging::tests::capture;
use crate::ops::snapshot::{ChannelState, RekeyCause, SaUsage, TunnelState};
use crate::peer::{CounterSnapshot, LinkState, SessionInfo};
use crate::qkd::link::{AbortCause, BlockReport};
use crate::secret::SecretBytes;

/// A clock tests move by hand, in milliseconds.
#[derive(Clone)]
pub(crate) struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub(crate) fn new() -> Self {
        Self(Arc::new(AtomicU64::new(1_700_000_000_000)))
    }
    pub(crate) fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
    pub(crate) fn clock(&self) -> Clock {
        let ms = self.0.clone();
        Arc::new(move || UNIX_EPOCH + Duration::from_millis(ms.load(Ordering::SeqCst)))
    }
}

pub(crate) fn board_with_clock() -> (StatusBoard, ManualClock) {
    let c = ManualClock::new();
    (
        StatusBoard::with_options("gw-a", BoardOptions::default(), c.clock()),
        c,
    )
}

pub(crate) fn good_block(id: u64, final_bits: u64) -> BlockReport {
    let mut r = BlockReport {
        block_id: id,
        final_bits,
        key_errors: Some(30),
        ..Default::default()
    };
    r.stats.key = [1000, 0, 0];
    r.stats.test = [200, 0, 0];
    r.stats.test_errors = [6, 0, 0];
    r
}

pub(crate) fn aborted_block(id: u64, cause: AbortCause, test_errors: u64) -> BlockReport {
    let mut r = good_block(id, 0);
    r.key_errors = None;
    r.stats.test_errors = [test_errors, 0, 0];
    r.aborted = Some(cause);
    r
}

fn connected(session: u64) -> LinkState {
    LinkState::Connected(SessionInfo {
        session,
        epoch: 2,
        remote: "192.0.2.7:7000".parse::<SocketAddr>().unwrap(),
    })
}

#[test]
fn blocks_count_by_outcome_and_feed_qber_and_key_rate() {
    let (board, clock) = board_with_clock();
    let peer = board.register_peer("gw-b", PeerRole::Transmitter);
    clock.advance(Duration::from_secs(100));
    for i in 0..10 {
        peer.record_block(&good_block(i, 6000));
        clock.advance(Duration::from_secs(10));
    }
    peer.record_block(&aborted_block(10, AbortCause::Superseded, 6));
    let s = board.snapshot();
    let q = &s.peers[0].qkd;
    assert_eq!(q.blocks_ok, 10);
    assert_eq!(q.blocks_aborted_total(), 1);
    assert_eq!(q.blocks_aborted[0].cause, "superseded");
    assert_eq!(q.key_bits_total, 60_000);
    // Blocks at t = 100..190 s; now = 200 s: the 60 s window holds the
    // blocks at 150..190 (5 × 6000 bits).
    assert_eq!(q.key_rate_window_s, 60.0);
    assert!(
        (q.key_rate_bps - 30_000.0 / 60.0).abs() < 1e-9,
        "{}",
        q.key_rate_bps
    );
    let last = q.last_block.as_ref().unwrap();
    assert_eq!(last.block_id, 10);
    assert_eq!(last.aborted.as_deref(), Some("superseded"));
    assert!((last.qber_test - 0.03).abs() < 1e-12);
    // Superseded is operational, not an alarm.
    assert!(s.alarms.is_empty());
}

#[test]
fn key_rate_of_a_fresh_link_uses_the_time_since_registration() {
    let (board, clock) = board_with_clock();
    let peer = board.register_peer("gw-b", PeerRole::Receiver);
    clock.advance(Duration::from_secs(4));
    peer.record_block(&good_block(0, 8000));
    let q = board.snapshot().peers[0].qkd.clone();
    assert_eq!(q.key_rate_window_s, 4.0);
    assert_eq!(q.key_rate_bps, 2000.0);
    clock.advance(Duration::from_secs(120));
    assert_eq!(
        board.snapshot().peers[0].qkd.key_rate_bps,
        0.0,
        "old blocks age out"
    );
}

#[test]
fn qber_aborts_raise_one_alarm_and_a_good_block_clears_it() {
    let (board, clock) = board_with_clock();
    let peer = board.register_peer("gw-b", PeerRole::Transmitter);
    let logs = capture(LogFormat::Journald, "info", || {
        for i in 0..5 {
            peer.record_block(&aborted_block(i, AbortCause::TestQber, 50));
            clock.advance(Duration::from_secs(1));
        }
    });
    assert_eq!(logs.matches("alarm raised").count(), 1, "{logs}");
    assert!(
        logs.starts_with("<3>"),
        "critical alarms log at error: {logs}"
    );
    assert!(
        logs.contains("alarm=qber_above_threshold") && logs.contains("25.00 %"),
        "{logs}"
    );
    let s = board.snapshot();
    assert_eq!(s.alarms.len(), 1);
    assert_eq!(s.alarms[0].count, 5);
    assert!(s.alarms[0].active);
    assert_eq!(
        s.alarms[0].alarm,
        Alarm::QberAboveThreshold {
            peer: "gw-b".into(),
            basis: QberBasis::Test,
            qber: 0.25
        }
    );
    let logs = capture(LogFormat::Journald, "info", || {
        peer.record_block(&good_block(9, 100));
        peer.record_block(&good_block(10, 100));
    });
    assert_eq!(logs.matches("alarm cleared").count(), 1, "{logs}");
    assert!(logs.starts_with("<6>"), "{logs}");
    assert!(!board.is_alarm_active(AlarmKind::QberAboveThreshold, "gw-b"));
}

#[test]
fn transcript_and_verification_failures_are_alarms() {
    let (board, _) = board_with_clock();
    let peer = board.register_peer("gw-b", PeerRole::Transmitter);
    peer.record_block(&aborted_block(0, AbortCause::AuthFailed, 0));
    peer.record_block(&aborted_block(1, AbortCause::VerifyMismatch, 0));
    let mut key_qber = aborted_block(2, AbortCause::KeyQber, 0);
    key_qber.key_errors = Some(150);
    peer.record_block(&key_qber);
    assert!(board.is_alarm_active(AlarmKind::AuthenticationFailed, "gw-b"));
    assert!(board.is_alarm_active(AlarmKind::VerificationFailed, "gw-b"));
    let s = board.snapshot();
    let q = s
        .alarms
        .iter()
        .find(|a| a.alarm.kind() == AlarmKind::QberAboveThreshold)
        .unwrap();
    assert_eq!(
        q.alarm,
        Alarm::QberAboveThreshold {
            peer: "gw-b".into(),
            basis: QberBasis::Key,
            qber: 0.15
        }
    );
}

#[test]
fn link_reports_map_to_channel_state_and_alarms() {
    let (board, clock) = board_with_clock();
    let peer = board.register_peer("gw-b", PeerRole::Transmitter);
    assert_eq!(
        board.snapshot().peers[0].channel.state,
        ChannelState::Unknown
    );
    let mut counters = CounterSnapshot::default();
    for attempts in 1..=4 {
        clock.advance(Duration::from_secs(1));
        peer.set_link(
            &LinkState::Disconnected {
                attempts,
                last_error: Some("connection refused".into()),
            },
            &counters,
        );
        let unreachable = board.is_alarm_active(AlarmKind::PeerUnreachable, "gw-b");
        assert_eq!(unreachable, attempts >= 3, "attempt {attempts}");
    }
    let s = board.snapshot();
    let c = &s.peers[0].channel;
    assert_eq!(c.state, ChannelState::Disconnected);
    assert_eq!(
        c.since_unix_ms,
        s.started_at_unix_ms + 1000,
        "since the first change"
    );
    assert_eq!(c.dial_attempts, 4);
    counters.reconnects = 1;
    counters.sessions = 2;
    peer.set_link(&connected(2), &counters);
    assert!(!board.is_alarm_active(AlarmKind::PeerUnreachable, "gw-b"));
    let c = board.snapshot().peers[0].channel.clone();
    assert_eq!(
        (c.state, c.session, c.epoch, c.reconnects),
        (ChannelState::Connected, 2, 2, 1)
    );
    assert_eq!(c.remote.as_deref(), Some("192.0.2.7:7000"));
    // Authentication failures raise an alarm only when the counter grows.
    peer.set_link(&connected(2), &counters);
    assert!(!board.is_alarm_active(AlarmKind::AuthenticationFailed, "gw-b"));
    counters.auth_failures = 3;
    peer.set_link(&connected(2), &counters);
    assert!(board.is_alarm_active(AlarmKind::AuthenticationFailed, "gw-b"));
    assert_eq!(board.snapshot().peers[0].channel.auth_failures, 3);
}

#[test]
fn pool_figures_come_from_the_pool_status() {
    let (board, _) = board_with_clock();
    let peer = board.register_peer("gw-b", PeerRole::Transmitter);
    assert!(board.snapshot().peers[0].pool.is_none());
    let mut pool = KeyPool::new(Role::Transmitter);
    pool.append(BlockId(1), SecretBytes::from_slice(&[7u8; 400]))
        .unwrap();
    pool.set_low_water(1000);
    let _ = pool.take(KeyUse::SaKey, 36).unwrap();
    let _ = pool.take(KeyUse::Auth, 16).unwrap();
    peer.set_pool(&pool.status());
    let p = board.snapshot().peers[0].pool.clone().unwrap();
    assert_eq!(p.available_bytes, 400 - 52);
    assert!(p.below_low_water);
    assert_eq!(p.appended_bytes, 400);
    let used: Vec<_> = p
        .consumed
        .iter()
        .map(|u| (u.key_use.as_str(), u.bytes))
        .collect();
    assert_eq!(
        used,
        [
            ("sa_key", 36),
            ("auth", 16),
            ("wrap", 0),
            ("application", 0),
            ("channel", 0),
            ("relay", 0)
        ]
    );
    peer.pool_exhausted();
    assert!(board.is_alarm_active(AlarmKind::PoolExhausted, "gw-b"));
    peer.pool_refilled();
    assert!(!board.is_alarm_active(AlarmKind::PoolExhausted, "gw-b"));
}

#[test]
fn tunnel_lifecycle_records_generations_rekeys_and_fail_closed() {
    let (board, clock) = board_with_clock();
    let t = board.register_tunnel("site-b", "gw-b");
    assert_eq!(board.snapshot().tunnels[0].state, TunnelState::Starting);
    t.sa_installed(1, 0xc000_0001, 0xc000_0002, RekeyCause::Startup);
    clock.advance(Duration::from_secs(30));
    t.set_sa_usage(SaUsage {
        bytes_in: 1000,
        packets_in: 10,
        bytes_out: 2000,
        packets_out: 20,
    });
    t.set_next_rekey(Some(UNIX_EPOCH + Duration::from_secs(1_700_000_100)));
    t.rekey_failed(RekeyCause::Timer, "pool has 12 bytes, rekey needs 72");
    assert!(board.is_alarm_active(AlarmKind::RekeyFailed, "site-b"));
    t.set_state(TunnelState::WaitingForKeys);
    clock.advance(Duration::from_secs(30));
    t.set_state(TunnelState::DownFailedClosed);
    assert!(board.is_alarm_active(AlarmKind::TunnelFailedClosed, "site-b"));
    t.add_wasted_key_bytes(72);
    let s = board.snapshot().tunnels[0].clone();
    assert_eq!(s.state, TunnelState::DownFailedClosed);
    assert_eq!(s.sa_usage.packets_out, 20);
    assert_eq!((s.rekeys_done(), s.rekeys_failed()), (1, 1));
    assert_eq!(s.last_failure.as_ref().unwrap().cause, RekeyCause::Timer);
    assert_eq!(s.next_rekey_at_unix_ms, Some(1_700_000_100_000));
    assert_eq!(s.keys_wasted_bytes, 72);
    // Keys flow again: the next install recovers the tunnel and clears both.
    t.sa_installed(2, 0xc000_0003, 0xc000_0004, RekeyCause::Acquire);
    let s = board.snapshot().tunnels[0].clone();
    assert_eq!(
        (s.state, s.generation, s.spi_in, s.spi_out),
        (TunnelState::Up, 2, Some(0xc000_0003), Some(0xc000_0004))
    );
    assert_eq!(
        s.sa_usage,
        SaUsage::default(),
        "usage belongs to the old SAs"
    );
    assert_eq!(s.last_rekey.unwrap().cause, RekeyCause::Acquire);
    assert_eq!(
        s.rekeys
            .iter()
            .find(|r| r.cause == RekeyCause::Acquire)
            .unwrap()
            .ok,
        1
    );
    assert!(!board.is_alarm_active(AlarmKind::TunnelFailedClosed, "site-b"));
    assert!(!board.is_alarm_active(AlarmKind::RekeyFailed, "site-b"));
}

#[test]
fn quiet_event_alarms_clear_on_snapshot() {
    let (board, clock) = board_with_clock();
    let t = board.register_tunnel("site-b", "gw-b");
    t.rekey_failed(RekeyCause::Timer, "x");
    clock.advance(Duration::from_secs(599));
    assert!(board.snapshot().alarms[0].active);
    clock.advance(Duration::from_secs(1));
    let logs = capture(LogFormat::Journald, "info", || {
        assert!(!board.snapshot().alarms[0].active);
    });
    assert!(logs.contains("quiet period"), "{logs}");
}

#[test]
fn re_registering_keeps_counters_and_removal_hides() {
    let (board, _) = board_with_clock();
    let a = board.register_peer("gw-b", PeerRole::Transmitter);
    a.record_block(&good_block(0, 10));
    let b = board.register_peer("gw-b", PeerRole::Receiver);
    b.record_block(&good_block(1, 10));
    let s = board.snapshot();
    assert_eq!(s.peers.len(), 1);
    assert_eq!(s.peers[0].role, PeerRole::Receiver);
    assert_eq!(s.peers[0].qkd.blocks_ok, 2);
    assert!(board.remove_peer("gw-b"));
    a.record_block(&good_block(2, 10)); // a stale handle is harmless
    assert!(board.snapshot().peers.is_empty());
}

#[test]
fn json_roundtrip_keeps_every_field() {
    let (board, clock) = board_with_clock();
    let peer = board.register_peer("gw-b", PeerRole::Transmitter);
    peer.set_link(&connected(1), &CounterSnapshot::default());
    peer.record_block(&good_block(0, 4096));
    peer.record_block(&aborted_block(1, AbortCause::TestQber, 40));
    let mut pool = KeyPool::new(Role::Transmitter);
    pool.append(BlockId(1), SecretBytes::from_slice(&[1u8; 100]))
        .unwrap();
    peer.set_pool(&pool.status());
    let t = board.register_tunnel("site-b", "gw-b");
    t.sa_installed(3, 1, 2, RekeyCause::SoftExpire);
    t.set_sa_usage(SaUsage {
        bytes_in: 5,
        packets_in: 1,
        bytes_out: 6,
        packets_out: 2,
    });
    clock.advance(Duration::from_secs(3));
    let snap = board.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back: BoardSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["tunnels"][0]["state"], "up");
    assert_eq!(v["peers"][0]["pool"]["consumed"][0]["use"], "sa_key");
    assert_eq!(v["alarms"][0]["alarm"]["kind"], "qber_above_threshold");
}

#[test]
fn many_threads_update_while_others_read() {
    let board = StatusBoard::new("gw-a");
    let peers: Vec<_> = (0..4)
        .map(|i| board.register_peer(&format!("p{i}"), PeerRole::Transmitter))
        .collect();
    std::thread::scope(|s| {
        for p in &peers {
            s.spawn(move || {
                for i in 0..500 {
                    p.record_block(&good_block(i, 1));
                }
            });
        }
        s.spawn(|| {
            for _ in 0..200 {
                let snap = board.snapshot();
                assert!(snap.peers.iter().all(|p| p.qkd.blocks_ok <= 500));
            }
        });
    });
    let snap = board.snapshot();
    assert!(
        snap.peers
            .iter()
            .all(|p| p.qkd.blocks_ok == 500 && p.qkd.key_bits_total == 500)
    );
}

/// The real protocol's reports, not hand-made ones: an intercept–resend
/// attacker raises the QBER alarm with the measured QBER, and the first
/// honest block that yields key clears it.
#[test]
fn simulated_eavesdropper_raises_and_honest_link_clears_the_qber_alarm() {
    use crate::qkd::link::{BlockConfig, InProcessLink, LinkRng};
    use crate::qkd::optics::{LinkParams, NoiseRng};
    let link = |eve: f64, seed: u64| {
        let mut p = LinkParams::gys(25.0);
        // Decoy settings that give key from 2·10^5 sifted bits (as in the
        // link tests); the GYS default set needs about 10^6.
        p.source.intensities = [0.6, 0.2, 0.0];
        p.source.probabilities = [0.4, 0.4, 0.2];
        InProcessLink::new(
            BlockConfig::new(p, 200_000),
            LinkRng::insecure_from_fixed_seed(seed),
            LinkRng::insecure_from_fixed_seed(seed + 1000),
            Some((eve, NoiseRng::from_seed(seed + 2000))),
            &SecretBytes::from_slice(&[7u8; 256]),
        )
        .unwrap()
    };
    let (board, clock) = board_with_clock();
    let peer = board.register_peer("gw-b", PeerRole::Transmitter);
    let attacked = link(1.0, 11).run_block().unwrap();
    peer.record_block(&attacked.alice);
    let s = board.snapshot();
    let alarm = &s.alarms[0];
    match &alarm.alarm {
        Alarm::QberAboveThreshold {
            peer,
            basis: QberBasis::Test,
            qber,
        } => {
            assert_eq!(peer, "gw-b");
            assert!(*qber > 0.2, "intercept–resend gives about 25 %: {qber}");
        }
        other => panic!("expected a QBER alarm, got {other:?}"),
    }
    assert!(alarm.active);
    assert_eq!(s.peers[0].qkd.blocks_aborted[0].cause, "test_qber");
    clock.advance(Duration::from_secs(2));
    let honest = link(0.0, 12).run_block().unwrap();
    assert!(honest.alice.final_bits > 0);
    peer.record_block(&honest.alice);
    let s = board.snapshot();
    assert!(!s.alarms[0].active, "cleared by a block with key");
    assert_eq!(s.peers[0].qkd.key_bits_total, honest.alice.final_bits);
    let last = s.peers[0].qkd.last_block.as_ref().unwrap();
    assert!(
        last.qber_key.unwrap() < 0.05 && last.qber_test < 0.05,
        "{last:?}"
    );
}

#[test]
fn a_lab_seeded_pool_is_named_beside_the_links_own_caveat() {
    use crate::ops::snapshot::{LAB_SEEDED_POOL_CAVEAT, LinkSource, SIMULATED_LINK_CAVEAT};
    let (board, _) = board_with_clock();
    let simulated = board.register_peer("gw-b", PeerRole::Transmitter);
    let real = board.register_peer("gw-c", PeerRole::Transmitter);
    real.set_source(LinkSource::Etsi014);
    let caveats = |board: &StatusBoard| -> Vec<Option<String>> {
        board
            .snapshot()
            .peers
            .iter()
            .map(|p| p.caveat.clone())
            .collect()
    };
    assert_eq!(
        caveats(&board),
        vec![Some(SIMULATED_LINK_CAVEAT.to_string()), None]
    );
    simulated.set_lab_seeded();
    real.set_lab_seeded();
    let c = caveats(&board);
    let s = c[0].as_deref().unwrap();
    assert!(
        s.starts_with(SIMULATED_LINK_CAVEAT) && s.ends_with(LAB_SEEDED_POOL_CAVEAT),
        "{s}"
    );
    assert_eq!(c[1].as_deref(), Some(LAB_SEEDED_POOL_CAVEAT));
    // The text view shows it with the link.
    let text = crate::ops::render_text(&board.snapshot());
    assert!(text.contains("LAB-SEEDED pool"), "{text}");
}
