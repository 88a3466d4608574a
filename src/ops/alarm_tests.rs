use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;

fn t(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

fn qber(peer: &str, q: f64) -> Alarm {
    Alarm::QberAboveThreshold {
        peer: peer.into(),
        basis: QberBasis::Test,
        qber: q,
    }
}

fn auth(peer: &str) -> Alarm {
    Alarm::AuthenticationFailed {
        peer: peer.into(),
        source: AuthSource::PeerChannel,
    }
}

#[test]
fn repeats_count_and_keep_the_latest_details() {
    let mut log = AlarmLog::new(16, Duration::from_secs(600));
    assert_eq!(log.raise(qber("b", 0.20), t(0)), (Raised::NewEpisode, 1));
    assert_eq!(log.raise(qber("b", 0.25), t(5)), (Raised::Repeat, 2));
    assert_eq!(log.raise(qber("b", 0.22), t(9)), (Raised::Repeat, 3));
    // Another subject is another alarm.
    assert_eq!(log.raise(qber("c", 0.3), t(9)).0, Raised::NewEpisode);
    let (list, tallies) = log.snapshot();
    assert_eq!(list.len(), 2);
    let b = list.iter().find(|a| a.alarm.subject() == "b").unwrap();
    assert_eq!(b.count, 3);
    assert_eq!(b.alarm, qber("b", 0.22));
    assert_eq!(b.first_seen_unix_ms, unix_ms(t(0)));
    assert_eq!(b.last_seen_unix_ms, unix_ms(t(9)));
    assert!(b.active);
    assert_eq!(b.severity, Severity::Critical);
    let q = tallies
        .iter()
        .find(|x| x.kind == "qber_above_threshold")
        .unwrap();
    assert_eq!(q.raised, 4);
}

#[test]
fn clearing_then_raising_starts_a_new_episode() {
    let mut log = AlarmLog::new(16, Duration::from_secs(600));
    log.raise(qber("b", 0.2), t(0));
    log.raise(qber("b", 0.2), t(1));
    assert_eq!(
        log.clear(AlarmKind::QberAboveThreshold, "b", t(2)),
        Some(qber("b", 0.2))
    );
    assert_eq!(
        log.clear(AlarmKind::QberAboveThreshold, "b", t(3)),
        None,
        "already clear"
    );
    assert!(!log.is_active(AlarmKind::QberAboveThreshold, "b"));
    let (list, _) = log.snapshot();
    assert_eq!(list[0].cleared_at_unix_ms, Some(unix_ms(t(2))));
    assert_eq!(log.raise(qber("b", 0.3), t(10)), (Raised::NewEpisode, 1));
    let (list, _) = log.snapshot();
    assert_eq!(list.len(), 1, "same entry reused");
    assert_eq!(list[0].first_seen_unix_ms, unix_ms(t(10)));
    assert_eq!(list[0].cleared_at_unix_ms, None);
}

#[test]
fn event_alarms_clear_after_the_quiet_period_and_state_alarms_do_not() {
    let mut log = AlarmLog::new(16, Duration::from_secs(60));
    log.raise(auth("b"), t(0));
    log.raise(Alarm::PoolExhausted { peer: "b".into() }, t(0));
    assert!(log.expire_quiet(t(59)).is_empty());
    log.raise(auth("b"), t(50)); // a repeat restarts the quiet period
    assert!(log.expire_quiet(t(100)).is_empty());
    assert_eq!(log.expire_quiet(t(110)), vec![auth("b")]);
    assert!(!log.is_active(AlarmKind::AuthenticationFailed, "b"));
    assert!(log.is_active(AlarmKind::PoolExhausted, "b"));
    assert!(
        log.expire_quiet(t(100_000)).is_empty(),
        "state alarms wait for clear()"
    );
}

#[test]
fn a_full_list_evicts_cleared_entries_first_then_the_stalest() {
    let mut log = AlarmLog::new(3, Duration::from_secs(600));
    log.raise(qber("a", 0.2), t(0));
    log.raise(qber("b", 0.2), t(1));
    log.raise(qber("c", 0.2), t(2));
    log.clear(AlarmKind::QberAboveThreshold, "c", t(3));
    log.raise(qber("d", 0.2), t(4)); // evicts cleared "c", not older active "a"
    let subjects = |log: &AlarmLog| {
        let mut v: Vec<String> = log
            .snapshot()
            .0
            .iter()
            .map(|a| a.alarm.subject().to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(subjects(&log), ["a", "b", "d"]);
    log.raise(qber("a", 0.2), t(5)); // "a" is now fresh; "b" is stalest
    log.raise(qber("e", 0.2), t(6));
    assert_eq!(subjects(&log), ["a", "d", "e"]);
}

#[test]
fn snapshot_lists_active_first_then_most_recent() {
    let mut log = AlarmLog::new(8, Duration::from_secs(600));
    log.raise(qber("a", 0.2), t(0));
    log.raise(qber("b", 0.2), t(5));
    log.raise(qber("c", 0.2), t(9));
    log.clear(AlarmKind::QberAboveThreshold, "c", t(10));
    let order: Vec<_> = log
        .snapshot()
        .0
        .iter()
        .map(|a| a.alarm.subject().to_string())
        .collect();
    assert_eq!(order, ["b", "a", "c"]);
}

#[test]
fn json_tags_alarms_by_kind() {
    let a = Alarm::RekeyFailed {
        tunnel: "t1".into(),
        cause: RekeyCause::SoftExpire,
        error: "no key".into(),
    };
    let v: serde_json::Value = serde_json::to_value(&a).unwrap();
    assert_eq!(v["kind"], "rekey_failed");
    assert_eq!(v["cause"], "soft_expire");
    assert_eq!(serde_json::from_value::<Alarm>(v).unwrap(), a);
    for k in AlarmKind::ALL {
        // The JSON tag and the metrics label are the same word.
        let sample = match k {
            AlarmKind::QberAboveThreshold => qber("x", 0.1),
            AlarmKind::AuthenticationFailed => auth("x"),
            AlarmKind::VerificationFailed => Alarm::VerificationFailed { peer: "x".into() },
            AlarmKind::PoolExhausted => Alarm::PoolExhausted { peer: "x".into() },
            AlarmKind::PeerUnreachable => Alarm::PeerUnreachable {
                peer: "x".into(),
                error: None,
            },
            AlarmKind::TunnelFailedClosed => Alarm::TunnelFailedClosed {
                tunnel: "x".into(),
                peer: "y".into(),
            },
            AlarmKind::RekeyFailed => a.clone(),
            AlarmKind::KeySourceFailed => Alarm::KeySourceFailed {
                peer: "x".into(),
                error: "the KME answered 503 to enc_keys: no key".into(),
            },
            AlarmKind::RelayDegraded => Alarm::RelayDegraded {
                peer: "x".into(),
                detail: "multipath to x: 1 of 2 node-disjoint paths up".into(),
            },
        };
        assert_eq!(sample.kind(), k);
        assert_eq!(serde_json::to_value(&sample).unwrap()["kind"], k.name());
    }
}

#[test]
fn describe_reads_as_a_sentence() {
    let d = qber("gw-b", 0.2512).describe();
    assert!(
        d.contains("25.12 %") && d.contains("gw-b") && d.contains("test basis"),
        "{d}"
    );
}
