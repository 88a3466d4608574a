//! Restarts: either side's engine is killed between any two events of a
//! rekey (its state lost, its kernel SAs and persisted pool kept) and a new
//! instance starts from the SAs found in the kernel. The tunnel must come
//! back with a fresh generation from the current initiator instance, no
//! stale SA left, and make-before-break never broken on the way.

use std::time::{Duration, Instant};

use super::sim::{INIT, RESP, Sim};
use crate::rekey::{EngineState, KeyingMode, RekeyInput};

/// Events of one rekey from the trigger until its old inbound SAs are gone
/// (about 18); stepping on reaches the next interval rekey an hour later,
/// so the last few restarts hit that one.
const EVENTS: u64 = 26;

fn restart_mid_rekey(side: usize, mode: KeyingMode, after_events: u64) {
    let seed = 1000 + after_events * 4 + side as u64 * 2 + (mode == KeyingMode::Wrapped) as u64;
    let mut sim = Sim::new(seed, mode, Duration::from_secs(3600), 2);
    sim.boot();
    sim.run_until_cond(Duration::from_secs(60), Sim::settled);
    sim.input(INIT, RekeyInput::Acquire);
    let far = sim.now + Duration::from_secs(3600);
    for _ in 0..after_events {
        sim.step(far);
    }
    let crashed_at: Instant = sim.now;
    sim.restart(side);
    sim.run_until_cond(Duration::from_secs(20), |s| {
        s.settled() && s.sides[side].engine.counters().rekeys_done > 0
    });
    let took = sim.now - crashed_at;
    // Recovery: retry backoff (1 s) + exchange + 5 s grace for old SAs.
    assert!(took < Duration::from_secs(10), "recovery took {took:?}");
    let current = sim.current_exchange();
    assert_eq!(
        current.epoch,
        sim.sides[INIT].engine.epoch(),
        "the SAs are not from the current initiator instance"
    );
    for i in [INIT, RESP] {
        assert_eq!(sim.state(i), EngineState::Idle);
        let st = sim.sides[i].engine.status(sim.now);
        assert!(
            st.sas
                .iter()
                .all(|s| s.exchange == Some(current.to_string()))
        );
    }
    // Whatever key the crash stranded was counted, never reused (the sim
    // would have panicked on a reuse).
    let wasted: u64 = sim
        .sides
        .iter()
        .map(|s| s.engine.counters().keys_wasted_bytes)
        .sum();
    assert!(wasted <= 2 * 72, "{wasted}");
}

#[test]
fn initiator_restart_at_every_step_of_a_rekey() {
    for mode in [KeyingMode::Direct, KeyingMode::Wrapped] {
        for k in 0..EVENTS {
            restart_mid_rekey(INIT, mode, k);
        }
    }
}

#[test]
fn responder_restart_at_every_step_of_a_rekey() {
    for mode in [KeyingMode::Direct, KeyingMode::Wrapped] {
        for k in 0..EVENTS {
            restart_mid_rekey(RESP, mode, k);
        }
    }
}

#[test]
fn restart_after_responder_took_keys_wastes_them_and_recovers() {
    // Kill the responder right after it accepted the Start (its take_at is
    // durable, its SAs not yet installed): the retransmitted Start is
    // refused by its pool, the initiator gives the keys up and starts over.
    let mut sim = Sim::new(77, KeyingMode::Direct, Duration::from_secs(3600), 2);
    sim.boot();
    sim.run_until_cond(Duration::from_secs(60), Sim::settled);
    sim.input(INIT, RekeyInput::Acquire);
    let far = sim.now + Duration::from_secs(60);
    while sim.sides[RESP].engine.counters().keys_taken_bytes < 2 * 72 {
        assert!(sim.step(far));
    }
    sim.restart(RESP);
    sim.run_until_cond(Duration::from_secs(20), |s| {
        s.settled() && s.sides[RESP].engine.counters().rekeys_done > 0
    });
    let init = sim.sides[INIT].engine.counters();
    assert_eq!(init.rekeys_failed, 1);
    assert_eq!(init.keys_wasted_bytes, 72);
    // The alarm raised by the refusal cleared with the next success.
    assert!(
        sim.sides[INIT].alarms.is_empty(),
        "{:?}",
        sim.sides[INIT].alarms
    );
}

#[test]
fn both_sides_restart_one_after_the_other() {
    let mut sim = Sim::new(78, KeyingMode::Wrapped, Duration::from_secs(3600), 2);
    sim.boot();
    sim.run_until_cond(Duration::from_secs(60), Sim::settled);
    for i in [RESP, INIT] {
        sim.restart(i);
        sim.run_until_cond(Duration::from_secs(20), Sim::settled);
    }
    assert_eq!(sim.current_exchange().epoch, sim.sides[INIT].engine.epoch());
}
