//! Property tests: random interleavings of triggers, restarts, session
//! drops, link degradation and kernel faults on the simulated pair. The
//! simulation checks make-before-break, key equality per SPI and key
//! freshness after every input; at the end, with a good link and fresh key,
//! the tunnel must settle on one SA pair per side of one exchange of the
//! current initiator instance, with nothing stale left in either kernel.

use std::time::Duration;

use proptest::prelude::*;

use super::sim::{INIT, RESP, Sim};
use crate::keys::KeyUse;
use crate::rekey::{KernelFailure, KernelRequest, KeyingMode, RekeyInput, SaDirection};

#[derive(Clone, Debug)]
enum Op {
    Wait(u32),
    SoftExpire {
        side: usize,
        outbound: bool,
    },
    Acquire(usize),
    Restart(usize),
    DropSession {
        down_ms: u32,
    },
    Link {
        loss: u8,
        duplicate: u8,
        max_delay_ms: u32,
    },
    KernelFault {
        side: usize,
        which: u8,
        exists: bool,
    },
    /// Consume all key of the initiator's region on both pools.
    Drain,
}

fn op(drain: u32) -> impl Strategy<Value = Op> {
    let side = 0usize..2;
    prop_oneof![
        drain => Just(Op::Drain),
        4 => (1u32..20_000).prop_map(Op::Wait),
        2 => (side.clone(), any::<bool>())
            .prop_map(|(side, outbound)| Op::SoftExpire { side, outbound }),
        1 => side.clone().prop_map(Op::Acquire),
        1 => side.clone().prop_map(Op::Restart),
        1 => (0u32..5_000).prop_map(|down_ms| Op::DropSession { down_ms }),
        1 => (0u8..40, 0u8..40, 1u32..2_000)
            .prop_map(|(loss, duplicate, max_delay_ms)| Op::Link { loss, duplicate, max_delay_ms }),
        1 => (side, 0u8..4, any::<bool>())
            .prop_map(|(side, which, exists)| Op::KernelFault { side, which, exists }),
    ]
}

fn fault_filter(which: u8) -> fn(&KernelRequest) -> bool {
    match which {
        0 => |r| matches!(r, KernelRequest::AllocSpi),
        1 => |r| {
            matches!(
                r,
                KernelRequest::AddSa {
                    dir: SaDirection::Inbound,
                    ..
                }
            )
        },
        2 => |r| {
            matches!(
                r,
                KernelRequest::AddSa {
                    dir: SaDirection::Outbound,
                    ..
                }
            )
        },
        _ => |r| matches!(r, KernelRequest::DeleteSa { .. }),
    }
}

fn apply(sim: &mut Sim, op: &Op) {
    match *op {
        Op::Drain => {
            let [a, b] = &mut sim.sides;
            while let Ok((key_ref, _)) = a.pool.take(KeyUse::Application, 1024) {
                b.pool.take_at(&key_ref, KeyUse::Application).unwrap();
            }
            while let Ok((key_ref, _)) = a.pool.take(KeyUse::Application, 1) {
                b.pool.take_at(&key_ref, KeyUse::Application).unwrap();
            }
        }
        Op::Wait(ms) => sim.run_for(Duration::from_millis(ms.into())),
        Op::SoftExpire { side, outbound } => {
            let dir = if outbound {
                SaDirection::Outbound
            } else {
                SaDirection::Inbound
            };
            let newest = sim.sides[side]
                .kernel
                .sas
                .iter()
                .filter(|((d, _), _)| *d == dir)
                .max_by_key(|(_, sa)| sa.installed_at)
                .map(|((_, spi), _)| *spi);
            if let Some(spi) = newest {
                sim.input(side, RekeyInput::SoftExpire { dir, spi });
            }
        }
        Op::Acquire(side) => sim.input(side, RekeyInput::Acquire),
        Op::Restart(side) => sim.restart(side),
        Op::DropSession { down_ms } => {
            sim.disconnect();
            sim.run_for(Duration::from_millis(down_ms.into()));
            sim.connect();
        }
        Op::Link {
            loss,
            duplicate,
            max_delay_ms,
        } => {
            sim.link.loss = f64::from(loss) / 100.0;
            sim.link.duplicate = f64::from(duplicate) / 100.0;
            sim.link.delay_min = Duration::from_millis(1);
            sim.link.delay_max = Duration::from_millis(max_delay_ms.into());
        }
        Op::KernelFault {
            side,
            which,
            exists,
        } => {
            let failure = if exists {
                KernelFailure::Exists
            } else {
                KernelFailure::Other { errno: 12 }
            };
            sim.sides[side]
                .kernel
                .fail_next
                .push((fault_filter(which), failure));
        }
    }
}

fn run(seed: u64, mode: KeyingMode, ops: &[Op], hard_expiry: bool) {
    let mut sim = Sim::new(seed, mode, Duration::from_secs(30), 6);
    sim.soft_lifetime = Some(Duration::from_secs(45));
    if hard_expiry {
        // SAs die while the pool is dry: directions go dark by design.
        sim.hard_lifetime = Some(Duration::from_secs(60));
        sim.check_continuity = false;
    }
    sim.boot();
    for op in ops {
        apply(&mut sim, op);
    }
    // Calm: good link, no pending faults, fresh key, one more rekey.
    sim.link = Default::default();
    for s in &mut sim.sides {
        s.kernel.fail_next.clear();
    }
    sim.refill(2);
    sim.run_for(Duration::from_secs(5));
    sim.input(INIT, RekeyInput::Acquire);
    sim.run_until_cond(Duration::from_secs(90), Sim::settled);
    assert_eq!(sim.current_exchange().epoch, sim.sides[INIT].engine.epoch());
    for i in [INIT, RESP] {
        let alarms = &sim.sides[i].alarms;
        assert!(alarms.is_empty(), "side {i}: {alarms:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_interleavings_keep_the_invariants(
        seed in any::<u64>(),
        wrapped in any::<bool>(),
        ops in proptest::collection::vec(op(0), 1..40),
    ) {
        let mode = if wrapped { KeyingMode::Wrapped } else { KeyingMode::Direct };
        run(seed, mode, &ops, false);
    }

    /// The same with hard lifetimes and a pool that runs dry: every other
    /// invariant holds, and the tunnel recovers once key flows again.
    #[test]
    fn random_interleavings_with_exhaustion_and_hard_expiry(
        seed in any::<u64>(),
        wrapped in any::<bool>(),
        ops in proptest::collection::vec(op(2), 1..40),
    ) {
        let mode = if wrapped { KeyingMode::Wrapped } else { KeyingMode::Direct };
        run(seed, mode, &ops, true);
    }
}
