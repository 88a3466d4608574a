//! One agent pair holding many tunnels (1,000 by default), each between
//! its own pair of /24 subnets with no hosts behind them: how long they
//! take to come up, and what the initiating agent (gw-a) costs in CPU and
//! resident memory while every tunnel is rekeyed each 60 s — and, in a
//! second run of the same configuration with a 1 h interval, while nothing
//! is rekeyed, so the rekeys' own cost can be told apart.
//!
//! Key supply is pre-filled: both pools are seeded with the same 1 MiB of
//! random bytes (LAB ONLY `lab_seed_pool`, the largest seed the agent reads;
//! half of it the initiator's), and the QKD link is idled (a pulse rate of
//! 1 kHz makes no block during the run), so its simulation does not count
//! as the tunnels' CPU cost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use qkd_ipsec::ops::{BoardSnapshot, TunnelSnapshot};
use qkd_ipsec::testbed::{AgentPair, Side};

use crate::measure::{
    CpuWindow, LogFollower, Summary, cpu_time, memory, mib, report_warnings, xfrm_counts,
};
use crate::{assert_healthy, options};

const INTERVAL: Duration = Duration::from_secs(60);
/// The agent's default jitter: each rekey comes up to 10 % early, so the
/// tunnels do not all draw keys at once.
const JITTER: f64 = 0.1;
/// `MAX_SECRET_FILE_BYTES`: the largest secret file the agent reads.
const SEED_BYTES: usize = 1 << 20;
/// Idles the simulated link (a block needs millions of pulses).
const IDLE_PULSE_RATE_HZ: f64 = 1e3;
const STARTUP_LIMIT: Duration = Duration::from_secs(900);
/// How long the no-rekey run is measured, after a pause for start-up
/// stragglers (retransmissions, first usage refreshes).
const IDLE_WINDOW: Duration = Duration::from_secs(60);
const IDLE_SETTLE: Duration = Duration::from_secs(10);

/// What one phase measured on gw-a.
struct Phase {
    cpu_per_min: f64,
    wall: Duration,
    rekeys: usize,
}

pub async fn run(tunnels: usize, rounds: usize, idle: bool) {
    println!(
        "\n== 2. {tunnels} tunnels on one agent pair, rekey interval {INTERVAL:?} (jitter {JITTER}), \
         no traffic"
    );
    println!(
        "   KEY SUPPLY PRE-FILLED FOR THE BENCH: both pools LAB-SEEDED with the same {} KiB of \
         random bytes (not QKD key), QKD link idled at {IDLE_PULSE_RATE_HZ:e} pulses/s (no QKD \
         blocks during the run)",
        SEED_BYTES / 1024
    );
    println!(
        "   expected warnings: one \"no SA\" per tunnel at start (before its first keys), and the \
         key-rate forecast (the idled link is forecast to give nothing)"
    );
    let rekeying = rekeying_run(tunnels, rounds).await;
    if idle {
        let quiet = idle_run(tunnels).await;
        let extra = rekeying.cpu_per_min - quiet.cpu_per_min;
        let per_min = rekeying.rekeys as f64 * 60.0 / rekeying.wall.as_secs_f64();
        println!(
            "   rekey cost on gw-a: {:.2} − {:.2} = {:.2} CPU s/min for {:.0} rekeys/min \
             = {:.1} ms CPU per rekey (initiator side)",
            rekeying.cpu_per_min,
            quiet.cpu_per_min,
            extra,
            per_min,
            extra * 1e3 / per_min
        );
    }
}

fn pair_options(
    tag: &str,
    tunnels: usize,
    interval: Duration,
) -> qkd_ipsec::testbed::AgentPairOptions {
    let mut opts = options(tag);
    opts.bulk_tunnels = tunnels.checked_sub(1).expect("at least one tunnel");
    opts.rekey_interval = interval;
    opts.rekey_jitter = JITTER;
    opts.lab_seed_bytes = SEED_BYTES;
    opts.pulse_rate_hz = IDLE_PULSE_RATE_HZ;
    opts
}

async fn rekeying_run(tunnels: usize, rounds: usize) -> Phase {
    println!(
        "-- run 1: rekeys every {INTERVAL:?}; measured until every tunnel has {rounds} timer rekeys"
    );
    let pair = start(pair_options("bscale", tunnels, INTERVAL), tunnels).await;
    let (pid_a, pid_b) = pids(&pair);
    let mut log = LogFollower::from_end(&pair.files(Side::A).log);
    let (cpu_a, cpu_b) = (CpuWindow::start(pid_a), CpuWindow::start(pid_b));
    let limit = INTERVAL * (rounds as u32 + 2);
    let mut timer_rekeys: HashMap<String, usize> = HashMap::new();
    let mut latencies = Vec::new();
    let mut other = 0usize;
    let mut next_note = Duration::from_secs(30);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_healthy(&pair);
        for r in log.new_rekeys() {
            latencies.push(r.latency_ms);
            if r.cause == "Timer" {
                *timer_rekeys.entry(r.tunnel).or_default() += 1;
            } else {
                other += 1;
            }
        }
        let done = timer_rekeys.values().filter(|&&c| c >= rounds).count();
        let elapsed = cpu_a.read().1;
        if elapsed >= next_note {
            eprintln!(
                "   [{:.0} s] {} rekeys so far; {done}/{tunnels} tunnels have {rounds}",
                elapsed.as_secs_f64(),
                latencies.len()
            );
            next_note += Duration::from_secs(30);
        }
        if done == tunnels {
            break;
        }
        assert!(
            elapsed < limit,
            "after {limit:?} only {done} of {tunnels} tunnels had {rounds} timer rekeys"
        );
    }
    let (cpu, wall) = cpu_a.read();
    let phase = Phase {
        cpu_per_min: cpu.as_secs_f64() * 60.0 / wall.as_secs_f64(),
        wall,
        rekeys: latencies.len(),
    };
    println!(
        "   window {:.0} s: {} rekeys completed on gw-a ({other} not by the timer), \
         {:.0} per minute",
        wall.as_secs_f64(),
        phase.rekeys,
        phase.rekeys as f64 * 60.0 / wall.as_secs_f64()
    );
    report(&pair, &phase, cpu_b.per_minute());
    let s = Summary::of(&latencies);
    println!(
        "   rekey latency under this load (trigger → old outbound SA gone): median {:.1} ms, \
         p90 {:.1} ms, max {:.1} ms",
        s.median, s.p90, s.max
    );
    let a = pair.status(Side::A).unwrap_or_else(|e| panic!("{e}"));
    let failed: u64 = a.tunnels.iter().map(TunnelSnapshot::rekeys_failed).sum();
    let wasted: u64 = a.tunnels.iter().map(|t| t.keys_wasted_bytes).sum();
    let pool = a.peers[0]
        .pool
        .as_ref()
        .map_or(0, |p| p.available_to_initiate);
    println!(
        "   failed rekeys since start: {failed}; key bytes wasted: {wasted}; \
         pool left for gw-a's takes: {pool} bytes"
    );
    report_warnings(&pair);
    pair.teardown().unwrap_or_else(|e| panic!("teardown: {e}"));
    phase
}

async fn idle_run(tunnels: usize) -> Phase {
    let interval = Duration::from_secs(3600);
    println!(
        "-- run 2: the same {tunnels} tunnels with a {interval:?} interval: {:?} without rekeys",
        IDLE_WINDOW
    );
    let pair = start(pair_options("bidle", tunnels, interval), tunnels).await;
    let (pid_a, pid_b) = pids(&pair);
    tokio::time::sleep(IDLE_SETTLE).await;
    let mut log = LogFollower::from_end(&pair.files(Side::A).log);
    let (cpu_a, cpu_b) = (CpuWindow::start(pid_a), CpuWindow::start(pid_b));
    tokio::time::sleep(IDLE_WINDOW).await;
    assert_healthy(&pair);
    let (cpu, wall) = cpu_a.read();
    let phase = Phase {
        cpu_per_min: cpu.as_secs_f64() * 60.0 / wall.as_secs_f64(),
        wall,
        rekeys: log.new_rekeys().len(),
    };
    println!(
        "   window {:.0} s: {} rekeys on gw-a",
        wall.as_secs_f64(),
        phase.rekeys
    );
    report(&pair, &phase, cpu_b.per_minute());
    report_warnings(&pair);
    pair.teardown().unwrap_or_else(|e| panic!("teardown: {e}"));
    phase
}

/// Starts the pair and waits until every tunnel is keyed alike on both
/// sides; prints how long that took and what gw-a spent on it.
async fn start(opts: qkd_ipsec::testbed::AgentPairOptions, tunnels: usize) -> AgentPair {
    let t0 = Instant::now();
    let pair = AgentPair::start(opts)
        .await
        .unwrap_or_else(|e| panic!("starting the agent pair: {e}"));
    let mut next_note = Duration::from_secs(30);
    loop {
        assert_healthy(&pair);
        let keyed = match (pair.status(Side::A), pair.status(Side::B)) {
            (Ok(a), Ok(b)) => keyed_alike(&a, &b),
            _ => 0,
        };
        if keyed == tunnels {
            break;
        }
        if t0.elapsed() >= next_note {
            eprintln!(
                "   [{:.0} s] {keyed}/{tunnels} tunnels keyed",
                t0.elapsed().as_secs_f64()
            );
            next_note += Duration::from_secs(30);
        }
        assert!(
            t0.elapsed() < STARTUP_LIMIT,
            "only {keyed} of {tunnels} tunnels keyed after {STARTUP_LIMIT:?}:\n{}",
            pair.log_tail(Side::A, 20)
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let (pid_a, _) = pids(&pair);
    println!(
        "   all {tunnels} tunnels keyed on both sides {:.1} s after start; gw-a used {:.1} CPU s \
         to get there",
        t0.elapsed().as_secs_f64(),
        cpu_time(pid_a).as_secs_f64()
    );
    pair
}

/// gw-a's CPU and memory, gw-b's CPU, and both kernels' XFRM objects.
fn report(pair: &AgentPair, phase: &Phase, cpu_b_per_min: f64) {
    let (pid_a, pid_b) = pids(pair);
    let (ma, mb) = (memory(pid_a), memory(pid_b));
    println!(
        "   gw-a (initiator): {:.2} CPU s/min; VmRSS {:.1} MiB, VmHWM {:.1} MiB, {} threads",
        phase.cpu_per_min,
        mib(ma.rss_kib),
        mib(ma.hwm_kib),
        ma.threads
    );
    println!(
        "   gw-b (responder): {cpu_b_per_min:.2} CPU s/min; VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(mb.rss_kib),
        mib(mb.hwm_kib)
    );
    for side in Side::BOTH {
        let (sas, policies) = xfrm_counts(pair.netns_name(side));
        println!("   {side} kernel: {sas} SAs, {policies} policies");
    }
}

/// How many tunnels both sides show carrying traffic on the same SPIs.
fn keyed_alike(a: &BoardSnapshot, b: &BoardSnapshot) -> usize {
    let theirs: HashMap<&str, &TunnelSnapshot> =
        b.tunnels.iter().map(|t| (t.name.as_str(), t)).collect();
    a.tunnels
        .iter()
        .filter(|ta| {
            theirs.get(ta.name.as_str()).is_some_and(|tb| {
                ta.state.carries_traffic()
                    && tb.state.carries_traffic()
                    && ta.spi_out.is_some()
                    && ta.spi_out == tb.spi_in
                    && ta.spi_in == tb.spi_out
            })
        })
        .count()
}

fn pids(pair: &AgentPair) -> (u32, u32) {
    (
        pair.agent_pid(Side::A).expect("gw-a's agent runs"),
        pair.agent_pid(Side::B).expect("gw-b's agent runs"),
    )
}
