//! The agent's two benchmarks (issue 4, item 11), on real agent processes
//! in network namespaces ([`AgentPair`]):
//!
//! 1. **rekey latency** — one tunnel rekeyed every 2 s with traffic
//!    flowing: median, p90 and max from the trigger to the old outbound SA
//!    being gone (the rekey engine's own measure), and how much of it is
//!    XFRM work;
//! 2. **1,000 tunnels** — one agent pair holding 1,000 tunnels rekeyed
//!    every 60 s: start-up time, the initiating agent's CPU seconds per
//!    minute and resident memory, the kernels' SA counts, and the same
//!    without rekeys.
//!
//! Needs root and a kernel with ESP and rfc4106(gcm(aes)); run it with
//! `netns-tests/run --bench agent [latency|tunnels] [options]`, which boots
//! a VM when the host lacks ESP. Not a criterion bench: each figure comes
//! from minutes of two agents running, not from repeatable microseconds.
//!
//! Options: `--rekeys N` (latency sample, default 40), `--tunnels N`
//! (default 1000), `--rounds N` (timer rekeys per tunnel, default 2),
//! `--no-idle` (skip the run without rekeys).

#[path = "agent/latency.rs"]
mod latency;
#[path = "agent/measure.rs"]
mod measure;
#[path = "agent/scale.rs"]
mod scale;

use std::time::{Duration, Instant};

use qkd_ipsec::ops::{AlarmKind, BoardSnapshot, summary_line};
use qkd_ipsec::testbed::{AgentPair, AgentPairOptions, Side};

/// The agent binary cargo built for this bench (same profile).
pub const BIN: &str = env!("CARGO_BIN_EXE_qkd-ipsec");

/// The pair's defaults with this bench's binary.
pub fn options(tag: &str) -> AgentPairOptions {
    AgentPairOptions::new(tag, BIN)
}

/// Panics, loudly and at once, when either agent stopped or says its pool
/// ran dry: a bench waiting for rekeys that cannot come would only time
/// out minutes later with less to say.
pub fn assert_healthy(pair: &AgentPair) {
    for side in Side::BOTH {
        assert!(
            pair.agent_running(side),
            "{side}'s agent stopped:\n{}",
            pair.log_tail(side, 30)
        );
        if let Ok(s) = pair.status(side) {
            let dry = s
                .alarms
                .iter()
                .any(|a| a.active && a.alarm.kind() == AlarmKind::PoolExhausted);
            assert!(
                !dry,
                "{side}'s key pool ran dry, so the bench cannot go on (it seeds both pools with \
                 `lab_seed_bytes`; raise it or lower the rekey count): {}",
                summary_line(&s)
            );
        }
    }
}

/// Polls both agents' status until `done` holds for the pair of snapshots.
pub async fn wait_until(
    pair: &AgentPair,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&BoardSnapshot, &BoardSnapshot) -> bool,
) -> (BoardSnapshot, BoardSnapshot) {
    let t0 = Instant::now();
    loop {
        assert_healthy(pair);
        let (a, b) = (pair.status(Side::A), pair.status(Side::B));
        if let (Ok(a), Ok(b)) = (&a, &b)
            && done(a, b)
        {
            return (a.clone(), b.clone());
        }
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; gw-a: {}",
            a.map_or_else(|e| e.to_string(), |s| summary_line(&s))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Args {
    latency: bool,
    tunnels: bool,
    rekeys: usize,
    tunnel_count: usize,
    rounds: usize,
    idle: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        latency: true,
        tunnels: true,
        rekeys: 40,
        tunnel_count: 1000,
        rounds: 2,
        idle: true,
    };
    let mut args = std::env::args().skip(1);
    let number = |v: Option<String>, name: &str| -> usize {
        v.and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "latency" => a.tunnels = false,
            "tunnels" => a.latency = false,
            "--rekeys" => a.rekeys = number(args.next(), "--rekeys"),
            "--tunnels" => a.tunnel_count = number(args.next(), "--tunnels"),
            "--rounds" => a.rounds = number(args.next(), "--rounds"),
            "--no-idle" => a.idle = false,
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            other => panic!("unknown argument {other:?}; see the doc comment of benches/agent.rs"),
        }
    }
    a
}

/// Where the figures come from, since an emulated CPU changes them all.
fn print_platform() {
    let rig =
        std::env::var("QKD_IPSEC_RIG").unwrap_or_else(|_| "host (not via netns-tests/run)".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|v| v.split_once(':')))
        .map_or("unknown", |(_, m)| m.trim());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    println!("qkd-ipsec agent benchmarks");
    println!("platform: {rig}");
    println!("kernel {}, {cpus} CPUs ({model})", kernel.trim());
    if rig.contains("TCG") {
        println!(
            "NOTE: every figure below is from TCG emulation (QEMU without KVM), which runs code \
             10-20x slower than hardware; read them as upper bounds, not as gateway figures."
        );
    }
}

fn main() {
    let args = parse_args();
    print_platform();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let t0 = Instant::now();
    runtime.block_on(async {
        if args.latency {
            latency::run(args.rekeys).await;
        }
        if args.tunnels {
            scale::run(args.tunnel_count, args.rounds, args.idle).await;
        }
    });
    println!("\nbench wall time: {:.0} s", t0.elapsed().as_secs_f64());
}
