//! Rekey latency: one agent pair, one tunnel rekeyed every 2 s by its
//! timer while the hosts behind the gateways ping each other every 50 ms.
//! Latency is the rekey engine's own figure — from the trigger to the old
//! outbound SA being gone — read from the initiator's "rekey done" log
//! lines, and split into the XFRM request time both agents logged for the
//! same exchange, the engine's two fixed settle waits, and the rest.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use qkd_ipsec::ops::BoardSnapshot;
use qkd_ipsec::rekey::DEFAULT_SETTLE;
use qkd_ipsec::testbed::{AgentPair, AgentPairOptions, LifetimeOptions, Side, TUNNEL_NAME};

use crate::measure::{CpuWindow, LogFollower, Summary, memory, mib, report_warnings, xfrm_counts};
use crate::{assert_healthy, options, wait_until};

const INTERVAL: Duration = Duration::from_secs(2);
const PING_INTERVAL: &str = "0.05";
/// LAB-SEEDED pool (the same random bytes on both sides, not QKD key):
/// enough for a few hundred rekeys of 72 bytes on the initiator's half,
/// so QKD output only adds to it.
const SEED_BYTES: usize = 32 * 1024;
/// Kernel lifetimes well beyond the interval plus the agent's 5 s grace
/// period: the defaults (soft 2 ×, hard 3 × the interval) would let the
/// kernel delete each replaced inbound SA ~4 s into its grace period at a
/// 2 s interval, which is not how SAs retire at production intervals.
const LIFETIMES: LifetimeOptions = LifetimeOptions {
    soft_seconds: Some(20),
    hard_seconds: Some(30),
    soft_packets: None,
    hard_packets: None,
};
/// Idles the simulated link (a block needs millions of pulses).
const IDLE_PULSE_RATE_HZ: f64 = 1e3;

pub async fn run(rekeys: usize) {
    println!(
        "\n== 1. rekey latency: 1 tunnel, timer rekey every {INTERVAL:?}, ping every {PING_INTERVAL} s \
         between the hosts; both pools LAB-SEEDED with the same {} KiB of random bytes (not QKD \
         key); SA lifetimes soft {} s, hard {} s (only the timer rekeys)",
        SEED_BYTES / 1024,
        LIFETIMES.soft_seconds.unwrap_or(0),
        LIFETIMES.hard_seconds.unwrap_or(0)
    );
    let opts = options("blat");
    println!(
        "-- run 1: QKD link running as configured ({} km, {:e} pulses/s), as on a gateway",
        opts.length_km, opts.pulse_rate_hz
    );
    measure(opts, rekeys).await;
    let mut opts = options("blatq");
    opts.pulse_rate_hz = IDLE_PULSE_RATE_HZ;
    println!(
        "-- run 2: QKD link idled ({IDLE_PULSE_RATE_HZ:e} pulses/s: no blocks), so its simulation \
         does not compete with the rekeys for the CPUs"
    );
    measure(opts, rekeys).await;
}

async fn measure(mut opts: AgentPairOptions, rekeys: usize) {
    opts.rekey_interval = INTERVAL;
    opts.rekey_jitter = 0.0;
    opts.lab_seed_bytes = SEED_BYTES;
    opts.lifetime = LIFETIMES;
    let pair = AgentPair::start(opts)
        .await
        .unwrap_or_else(|e| panic!("starting the agent pair: {e}"));
    let started = Instant::now();
    wait_until(
        &pair,
        Duration::from_secs(300),
        "the tunnel keyed twice",
        |a, b| keyed_alike(a, b) && a.tunnels[0].generation >= 2,
    )
    .await;
    println!(
        "   tunnel keyed twice {:.1} s after start",
        started.elapsed().as_secs_f64()
    );

    let ping = start_ping(&pair);
    let mut log_a = LogFollower::from_end(&pair.files(Side::A).log);
    let mut log_b = LogFollower::from_end(&pair.files(Side::B).log);
    let pid_a = pair.agent_pid(Side::A).expect("A runs");
    let cpu = CpuWindow::start(pid_a);
    let window = Instant::now();
    let limit = INTERVAL * 4 * rekeys as u32 + Duration::from_secs(60);
    let mut initiator = Vec::new();
    let mut others = 0usize;
    let mut responder_xfrm: HashMap<String, f64> = HashMap::new();
    while initiator.len() < rekeys {
        assert!(
            window.elapsed() < limit,
            "only {} timer rekeys within {limit:?}:\n{}",
            initiator.len(),
            pair.log_tail(Side::A, 20)
        );
        assert_healthy(&pair);
        tokio::time::sleep(Duration::from_millis(500)).await;
        for r in log_a.new_rekeys() {
            if r.tunnel == TUNNEL_NAME && r.cause == "Timer" {
                initiator.push(r);
            } else {
                others += 1;
            }
        }
        for r in log_b.new_rekeys() {
            if let Some(x) = r.xfrm_ms {
                responder_xfrm.insert(r.exchange, x);
            }
        }
    }
    let (cpu_used, wall) = cpu.read();
    let mem = memory(pid_a);
    let ping = stop_ping(ping).await;
    // The responder logs its completion when the Done message arrives.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for r in log_b.new_rekeys() {
        if let Some(x) = r.xfrm_ms {
            responder_xfrm.insert(r.exchange, x);
        }
    }
    let a = pair.status(Side::A).unwrap_or_else(|e| panic!("{e}"));
    let t = &a.tunnels[0];
    let (sas_a, _) = xfrm_counts(pair.netns_name(Side::A));

    let latencies: Vec<f64> = initiator.iter().map(|r| r.latency_ms).collect();
    let s = Summary::of(&latencies);
    println!(
        "   {} timer rekeys on the initiator (gw-a), trigger → old outbound SA gone:",
        s.n
    );
    println!(
        "   median {:.1} ms   p90 {:.1} ms   max {:.1} ms",
        s.median, s.p90, s.max
    );
    breakdown(&initiator, &responder_xfrm);
    println!(
        "   ping host-a → host-b during the window: {} sent, {} received",
        ping.0, ping.1
    );
    println!(
        "   other rekeys logged by gw-a in the window: {others}; tunnel at generation {}, \
         {} failed rekeys, {} SAs in gw-a's kernel at the end",
        t.generation,
        t.rekeys_failed(),
        sas_a
    );
    if let Some(last) = t.last_rekey.and_then(|r| r.latency_us) {
        println!(
            "   status cross-check: last_rekey.latency_us = {last} (log's last: {:.0} µs)",
            initiator.last().map_or(0.0, |r| r.latency_ms * 1e3)
        );
    }
    println!(
        "   gw-a agent CPU in the window: {:.2} s over {:.0} s = {:.1} CPU s/min",
        cpu_used.as_secs_f64(),
        wall.as_secs_f64(),
        cpu_used.as_secs_f64() * 60.0 / wall.as_secs_f64()
    );
    println!(
        "   gw-a agent memory: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(mem.rss_kib),
        mib(mem.hwm_kib)
    );
    report_warnings(&pair);
    pair.teardown().unwrap_or_else(|e| panic!("teardown: {e}"));
}

/// The latency split into XFRM request time (both sides, measured by the
/// agents around each netlink request), the engine's two settle waits
/// (a fixed `DEFAULT_SETTLE` on each side before it deletes its old
/// outbound SA) and the rest.
fn breakdown(initiator: &[crate::measure::RekeyDone], responder: &HashMap<String, f64>) {
    let settle_ms = 2.0 * DEFAULT_SETTLE.as_secs_f64() * 1e3;
    let mut own = Vec::new();
    let mut peer = Vec::new();
    let mut both = Vec::new();
    let mut rest = Vec::new();
    for r in initiator {
        let (Some(i), Some(&p)) = (r.xfrm_ms, responder.get(&r.exchange)) else {
            continue;
        };
        own.push(i);
        peer.push(p);
        both.push(i + p);
        rest.push(r.latency_ms - i - p - settle_ms);
    }
    if both.is_empty() {
        println!("   (no exchange with XFRM times logged on both sides: no breakdown)");
        return;
    }
    let (own, peer, both, rest) = (
        Summary::of(&own),
        Summary::of(&peer),
        Summary::of(&both),
        Summary::of(&rest),
    );
    println!(
        "   of which, medians over {} exchanges logged on both sides:",
        both.n
    );
    println!(
        "     XFRM netlink requests of both agents (kernel work + socket round trip): {:.1} ms \
         (p90 {:.1}, max {:.1}; initiator alone {:.1}, responder alone {:.1})",
        both.median, both.p90, both.max, own.median, peer.median
    );
    println!(
        "     fixed settle waits before deleting old outbound SAs: {settle_ms:.0} ms (2 × {DEFAULT_SETTLE:?})"
    );
    println!(
        "     the rest (peer-channel round trip, engine steps on blocking threads, pool journal \
         fdatasync, scheduling): {:.1} ms (p90 {:.1})",
        rest.median, rest.p90
    );
}

fn keyed_alike(a: &BoardSnapshot, b: &BoardSnapshot) -> bool {
    let (Some(ta), Some(tb)) = (a.tunnels.first(), b.tunnels.first()) else {
        return false;
    };
    ta.state.carries_traffic()
        && tb.state.carries_traffic()
        && ta.spi_out.is_some()
        && ta.spi_out == tb.spi_in
        && ta.spi_in == tb.spi_out
}

fn start_ping(pair: &AgentPair) -> Child {
    let bed = pair.bed();
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.host_a.name,
            "ping",
            "-q",
            "-i",
            PING_INTERVAL,
        ])
        .arg(bed.host_b.addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting ping: {e} (is iputils-ping installed?)"))
}

/// SIGINT, then (sent, received) from ping's summary.
async fn stop_ping(child: Child) -> (u64, u64) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("ping output");
    let text = String::from_utf8_lossy(&out.stdout);
    // "N packets transmitted, M received, ..."
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no summary from ping: {text}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}
