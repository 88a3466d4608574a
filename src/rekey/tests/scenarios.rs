//! Rekey scenarios on the simulated pair: steady rekeying, each trigger,
//! crossed triggers, a lossy link, an unresponsive peer, pool exhaustion
//! and recovery, tampered wrapped keys, mismatched settings, status.

use std::time::Duration;

use super::sim::{INIT, RESP, Sim};
use crate::rekey::messages::{KeyMaterial, MessageBody, RekeyMessage};
use crate::rekey::{
    AbandonReason, Alarm, EngineState, KeyingMode, RekeyInput, RekeyNotice, SaDirection, Spi,
    Trigger,
};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn newest_spi(sim: &Sim, side: usize, dir: SaDirection) -> Spi {
    sim.sides[side]
        .kernel
        .sas
        .iter()
        .filter(|((d, _), _)| *d == dir)
        .max_by_key(|(_, sa)| sa.installed_at)
        .map(|((_, spi), _)| *spi)
        .expect("an SA")
}

fn booted(seed: u64, mode: KeyingMode, interval: Duration) -> Sim {
    let mut sim = Sim::new(seed, mode, interval, 4);
    sim.boot();
    sim.run_until_cond(MIN, Sim::settled);
    sim
}

fn assert_clean(sim: &Sim) {
    for i in [INIT, RESP] {
        let c = sim.sides[i].engine.counters();
        assert_eq!(c.rekeys_failed, 0, "side {i}: {c:?}");
        assert_eq!(c.keys_wasted_bytes, 0, "side {i}: {c:?}");
        assert!(sim.sides[i].alarms.is_empty(), "{:?}", sim.sides[i].alarms);
    }
}

fn hundred_rekeys(mode: KeyingMode, seed: u64) {
    let mut sim = Sim::new(seed, mode, Duration::from_secs(10), 8);
    sim.link.delay_min = Duration::from_millis(1);
    sim.link.delay_max = Duration::from_millis(30);
    sim.boot();
    sim.run_until_cond(1200 * SEC, |s| s.rekeys_done(INIT) >= 100);
    sim.run_until_cond(MIN, Sim::settled);
    assert_clean(&sim);
    assert_eq!(sim.rekeys_done(INIT), sim.rekeys_done(RESP));
    // 10 s interval less up to 1 s of jitter: 100 rekeys take 900..1000 s.
    let t = sim.elapsed().as_secs();
    assert!((900..=1010).contains(&t), "{t} s");
    let taken = sim.sides[INIT].engine.counters().keys_taken_bytes;
    let per = if mode == KeyingMode::Direct { 72 } else { 32 };
    assert_eq!(taken, per * sim.rekeys_done(INIT));
}

#[test]
fn hundred_direct_rekeys_make_before_break() {
    hundred_rekeys(KeyingMode::Direct, 1);
}

#[test]
fn hundred_wrapped_rekeys_make_before_break() {
    hundred_rekeys(KeyingMode::Wrapped, 2);
}

#[test]
fn soft_expiry_on_either_side_triggers_a_rekey() {
    let mut sim = booted(3, KeyingMode::Direct, HOUR);
    for (side, dir, expected) in [
        (RESP, SaDirection::Outbound, Trigger::PeerRequest),
        (INIT, SaDirection::Inbound, Trigger::SoftExpire),
        (RESP, SaDirection::Inbound, Trigger::PeerRequest),
        (INIT, SaDirection::Outbound, Trigger::SoftExpire),
    ] {
        let before = sim.current_exchange();
        let spi = newest_spi(&sim, side, dir);
        sim.input(side, RekeyInput::SoftExpire { dir, spi });
        sim.run_until_cond(10 * SEC, |s| s.settled() && s.current_exchange() != before);
        let last = sim.sides[INIT].notices.iter().rev().find_map(|n| match n {
            RekeyNotice::Completed { trigger, .. } => *trigger,
            _ => None,
        });
        assert_eq!(last, Some(expected));
    }
    // A soft expiry of an SA that is already being replaced changes nothing.
    let done = sim.rekeys_done(INIT);
    sim.input(INIT, RekeyInput::Acquire);
    let old = newest_spi(&sim, INIT, SaDirection::Outbound);
    sim.run_for(Duration::from_millis(30));
    sim.input(
        INIT,
        RekeyInput::SoftExpire {
            dir: SaDirection::Outbound,
            spi: old,
        },
    );
    sim.run_until_cond(10 * SEC, Sim::settled);
    assert_eq!(sim.rekeys_done(INIT), done + 1);
    assert_clean(&sim);
}

#[test]
fn kernel_lifetimes_drive_rekeys_before_hard_expiry() {
    let mut sim = Sim::new(4, KeyingMode::Direct, HOUR, 4);
    sim.soft_lifetime = Some(20 * SEC);
    sim.hard_lifetime = Some(30 * SEC);
    sim.boot();
    sim.run_for(300 * SEC);
    // One rekey per soft lifetime (plus the grace of the first), never a
    // hard expiry of an SA still in use.
    assert!(sim.rekeys_done(INIT) >= 14, "{}", sim.rekeys_done(INIT));
    assert_eq!(sim.hard_expiries, 0);
    assert_clean(&sim);
}

#[test]
fn acquire_and_hard_expiry_trigger_a_rekey() {
    let mut sim = booted(5, KeyingMode::Wrapped, HOUR);
    for side in [RESP, INIT] {
        let before = sim.current_exchange();
        sim.input(side, RekeyInput::Acquire);
        sim.run_until_cond(10 * SEC, |s| s.settled() && s.current_exchange() != before);
    }
    // The kernel drops the pair of one direction: traffic blocked (fail
    // closed), the hard expiry itself triggers the rekey that restores it.
    sim.check_continuity = false;
    let spi = newest_spi(&sim, RESP, SaDirection::Outbound);
    sim.hard_expire_pair(RESP, spi);
    assert!(sim.sides[RESP].alarms.contains(&Alarm::TrafficBlocked));
    assert!(sim.sides[INIT].alarms.contains(&Alarm::TrafficBlocked));
    sim.run_until_cond(10 * SEC, Sim::settled);
    assert_clean(&sim);
    assert_eq!(sim.rekeys_done(INIT), 4);
}

#[test]
fn crossed_triggers_make_one_rekey() {
    let mut sim = booted(6, KeyingMode::Direct, HOUR);
    // Both sides see the same SA pair soft-expire at the same instant.
    let spi = newest_spi(&sim, INIT, SaDirection::Outbound);
    sim.input(
        INIT,
        RekeyInput::SoftExpire {
            dir: SaDirection::Outbound,
            spi,
        },
    );
    sim.input(
        RESP,
        RekeyInput::SoftExpire {
            dir: SaDirection::Inbound,
            spi,
        },
    );
    sim.run_until_cond(10 * SEC, Sim::settled);
    sim.run_for(MIN);
    assert_eq!(sim.rekeys_done(INIT), 2);
    // The interval timer fires while the responder's request is in flight.
    let mut sim = booted(7, KeyingMode::Direct, 20 * SEC);
    let next = sim.sides[INIT]
        .engine
        .status(sim.now)
        .next_rekey_ms
        .unwrap();
    let due = sim.now + Duration::from_millis(next);
    sim.run_until(due - Duration::from_millis(2));
    sim.input(RESP, RekeyInput::Acquire);
    sim.run_until_cond(10 * SEC, |s| s.rekeys_done(INIT) == 2 && s.settled());
    // (The next interval rekey is 18..20 s after the last one.)
    sim.run_for(5 * SEC);
    assert_eq!(
        sim.rekeys_done(INIT),
        2,
        "the request started another rekey"
    );
    assert_clean(&sim);
}

#[test]
fn stale_request_is_ignored_and_current_one_served() {
    let mut sim = booted(15, KeyingMode::Direct, HOUR);
    let first = sim.current_exchange();
    sim.input(INIT, RekeyInput::Acquire);
    sim.run_until_cond(10 * SEC, |s| s.settled() && s.current_exchange() != first);
    let second = sim.current_exchange();
    let request = |about| {
        RekeyMessage {
            sender_epoch: sim.sides[RESP].engine.epoch(),
            sender_out: Some(second),
            body: MessageBody::Request {
                reason: crate::rekey::RequestReason::SoftExpire,
                about: Some(about),
            },
        }
        .encode()
    };
    let (stale, current) = (request(first), request(second));
    sim.input(INIT, RekeyInput::PeerMessage(stale));
    sim.run_for(10 * SEC);
    assert_eq!(sim.current_exchange(), second);
    sim.input(INIT, RekeyInput::PeerMessage(current));
    sim.run_until_cond(10 * SEC, |s| s.settled() && s.current_exchange() != second);
    assert_eq!(sim.rekeys_done(INIT), 3);
    assert_clean(&sim);
}

#[test]
fn lossy_duplicating_reordering_link() {
    let mut sim = Sim::new(8, KeyingMode::Wrapped, 10 * SEC, 4);
    sim.link.loss = 0.25;
    sim.link.duplicate = 0.25;
    sim.link.delay_min = Duration::from_millis(1);
    sim.link.delay_max = Duration::from_millis(1500);
    sim.boot();
    sim.run_until_cond(1200 * SEC, |s| s.rekeys_done(INIT) >= 30);
    sim.link = Default::default();
    sim.run_until_cond(MIN, Sim::settled);
    // Loss costs retransmissions, never keys.
    assert!(sim.sides[INIT].engine.counters().retransmissions > 0);
    assert_clean(&sim);
}

#[test]
fn unresponsive_peer_raises_an_alarm_and_recovers() {
    let mut sim = booted(9, KeyingMode::Direct, HOUR);
    sim.link.loss = 1.0;
    sim.input(INIT, RekeyInput::Acquire);
    sim.run_for(29 * SEC);
    assert!(!sim.sides[INIT].alarms.contains(&Alarm::PeerUnresponsive));
    sim.run_for(2 * SEC);
    assert!(sim.sides[INIT].alarms.contains(&Alarm::PeerUnresponsive));
    // 1, 2, 4, 8, 16 s apart (at 1, 3, 7, 15, 31 s), then every 16 s.
    let sent = sim.sides[INIT].engine.counters().retransmissions;
    assert_eq!(sent, 4);
    sim.link.loss = 0.0;
    sim.run_until_cond(MIN, |s| s.settled() && s.rekeys_done(INIT) == 2);
    assert!(sim.sides[INIT].alarms.is_empty());
}

#[test]
fn pool_exhaustion_fails_closed_and_refill_recovers() {
    // One block: 2048 bytes for the initiator's takes, 28 direct rekeys.
    let mut sim = Sim::new(10, KeyingMode::Direct, 10 * SEC, 1);
    sim.hard_lifetime = Some(MIN);
    sim.boot();
    sim.run_until_cond(600 * SEC, |s| {
        s.sides[INIT].alarms.contains(&Alarm::PoolExhausted)
    });
    assert_eq!(sim.rekeys_done(INIT), 28);
    assert_eq!(sim.state(INIT), EngineState::WaitingForKeys);
    // The old SAs stay until their hard lifetime...
    sim.run_for(30 * SEC);
    assert_eq!(sim.sides[INIT].kernel.sas.len(), 2);
    // ...then the kernel drops them: no SA, policies untouched, traffic
    // dropped, and no new SA without a fresh key.
    sim.check_continuity = false;
    sim.run_for(MIN);
    assert!(
        sim.sides
            .iter()
            .all(|s| s.kernel.sas.is_empty() && s.kernel.larval.is_empty())
    );
    for s in &sim.sides {
        assert!(s.alarms.contains(&Alarm::TrafficBlocked));
    }
    let counters = *sim.sides[INIT].engine.counters();
    assert_eq!(counters.keys_wasted_bytes, 0);
    assert_eq!(counters.rekeys_failed, 0);
    // Keys flow again: the tunnel comes back by itself.
    sim.refill(1);
    sim.run_until_cond(10 * SEC, Sim::settled);
    for s in &sim.sides {
        assert!(s.alarms.is_empty(), "{:?}", s.alarms);
    }
    assert_eq!(sim.rekeys_done(INIT), 29);
}

#[test]
fn tampered_wrapped_keys_are_refused_and_the_rekey_retried() {
    let mut sim = booted(11, KeyingMode::Wrapped, HOUR);
    let mut budget = 1;
    sim.tamper = Some(Box::new(move |_, bytes: &mut Vec<u8>| {
        let Ok(mut msg) = RekeyMessage::decode(bytes) else {
            return false;
        };
        let MessageBody::Start {
            keys: KeyMaterial::Wrapped { sealed, .. },
            ..
        } = &mut msg.body
        else {
            return false;
        };
        if budget == 0 {
            return false;
        }
        budget -= 1;
        sealed[5] ^= 0x40;
        *bytes = msg.encode();
        true
    }));
    sim.input(INIT, RekeyInput::Acquire);
    sim.run_for(500 * Duration::from_millis(1));
    assert!(sim.sides[RESP].alarms.contains(&Alarm::KeysRejected));
    assert!(sim.sides[INIT].alarms.contains(&Alarm::KeysRejected));
    sim.run_until_cond(10 * SEC, |s| s.settled() && s.rekeys_done(INIT) == 2);
    for s in &sim.sides {
        let c = s.engine.counters();
        assert_eq!((c.rekeys_failed, c.keys_wasted_bytes), (1, 32), "{c:?}");
        assert!(s.alarms.is_empty(), "{:?}", s.alarms);
    }
    assert!(sim.sides[INIT].notices.iter().any(|n| matches!(
        n,
        RekeyNotice::Abandoned {
            reason: AbandonReason::PeerRefusedKeys,
            wasted_bytes: 32,
            ..
        }
    )));
}

#[test]
fn mismatched_settings_raise_an_alarm_and_install_nothing() {
    for (i, mode) in [(INIT, KeyingMode::Wrapped), (RESP, KeyingMode::Wrapped)] {
        let mut sim = Sim::new(12, KeyingMode::Direct, HOUR, 2);
        sim.configure_side(i, |c| c.keying = mode);
        sim.boot();
        sim.run_for(MIN);
        for s in &sim.sides {
            assert!(s.alarms.contains(&Alarm::ConfigMismatch), "{:?}", s.alarms);
            assert_eq!(s.kernel.count(SaDirection::Outbound), 0);
        }
    }
    // Two initiators, then two responders.
    for role in [
        crate::rekey::RekeyRole::Initiator,
        crate::rekey::RekeyRole::Responder,
    ] {
        let mut sim = Sim::new(13, KeyingMode::Direct, HOUR, 2);
        sim.configure_side(
            if role == crate::rekey::RekeyRole::Initiator {
                RESP
            } else {
                INIT
            },
            |c| c.role = role,
        );
        sim.boot();
        sim.run_for(MIN);
        assert!(
            sim.sides
                .iter()
                .any(|s| s.alarms.contains(&Alarm::ConfigMismatch))
        );
        assert!(
            sim.sides
                .iter()
                .all(|s| s.kernel.count(SaDirection::Outbound) == 0)
        );
    }
}

#[test]
fn status_reports_generation_spis_age_and_next_rekey() {
    let mut sim = booted(14, KeyingMode::Direct, MIN);
    sim.run_until_cond(5 * MIN, |s| s.rekeys_done(INIT) == 3 && s.settled());
    sim.run_for(2 * SEC);
    let init = sim.sides[INIT].engine.status(sim.now);
    let resp = sim.sides[RESP].engine.status(sim.now);
    assert_eq!(init.state, EngineState::Idle);
    assert_eq!(init.generation, Some(3));
    assert_eq!(resp.generation, Some(3));
    assert_eq!(init.outbound_spi, resp.inbound_spi);
    assert_eq!(init.inbound_spi, resp.outbound_spi);
    assert_eq!(
        init.outbound_spi,
        Some(newest_spi(&sim, INIT, SaDirection::Outbound))
    );
    let age = init.age_ms.unwrap();
    // Settled means the 5 s grace has passed, then 2 s more.
    assert!((7000..8000).contains(&age), "{age}");
    let next = init.next_rekey_ms.unwrap();
    assert!(next <= 60_000 - age && next >= 54_000 - age, "{next}");
    assert_eq!(resp.next_rekey_ms, None);
    assert_eq!(init.counters.rekeys_done, 3);
    assert_eq!(init.counters.keys_taken_bytes, 3 * 72);
    assert!(init.peer_connected);
    let json = serde_json::to_string(&init).unwrap();
    assert!(json.contains("\"generation\":3"), "{json}");
}
