//! `qkd-ipsec demo --duration`: the README's first command runs on its own,
//! keys the tunnel from QKD, rekeys it, carries the hosts' ping through it
//! with nothing in clear text on the WAN, stops by itself and leaves no
//! namespace behind. Without `--duration`, Ctrl-C (SIGINT) tears it down
//! just as cleanly.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use crate::agent_support::*;
use crate::support::*;

const DURATION_S: u64 = 40;

/// Runs `qkd-ipsec demo ARGS` to its end (within `limit`); checks it
/// exited cleanly, tore down and left no namespace; returns the numbers
/// of its `demo summary:` line.
async fn run_demo(args: &[&str], limit: Duration) -> BTreeMap<String, String> {
    let child = tokio::process::Command::new(BIN).args(args).spawn_demo();
    let pid = child.id().expect("demo pid");
    let out = within(limit, "the demo to finish", child.wait_with_output())
        .await
        .expect("demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stdout.lines().rev().take(30).collect();
    assert!(
        out.status.success(),
        "demo {args:?} failed ({}): {stderr}\n{}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("demo summary: "))
        .unwrap_or_else(|| panic!("no summary line in: {stdout}"));
    println!("demo: {summary}");
    assert!(stdout.contains("demo: torn down"));
    assert_no_namespaces_of(pid).await;
    summary
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The number `key` of a demo summary.
fn num(fields: &BTreeMap<String, String>, key: &str) -> u64 {
    fields
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("summary lacks a number for {key}: {fields:?}"))
}

/// The hosts' pings went through (loss only while a generation changes
/// would be a bug too; the last request may be in flight at the end) and
/// nothing crossed a WAN in clear.
fn traffic_passed_sealed(f: &BTreeMap<String, String>) {
    assert!(
        num(f, "ping_answered") >= 10,
        "too few pings answered: {f:?}"
    );
    assert!(num(f, "ping_unanswered") <= 1, "pings lost: {f:?}");
    assert_eq!(num(f, "clear_on_wan"), 0, "clear text on a WAN: {f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_for_its_duration_and_tears_down() {
    let d = DURATION_S.to_string();
    let f = run_demo(
        &["demo", "--duration", &d, "--rekey-interval", "4"],
        Duration::from_secs(DURATION_S + 180),
    )
    .await;
    assert!(num(&f, "seconds") >= DURATION_S, "stopped early: {f:?}");
    assert!(num(&f, "blocks_ok") >= 1, "no QKD block: {f:?}");
    assert!(
        num(&f, "generation_a") >= 2 && num(&f, "generation_b") >= 2,
        "no rekey: {f:?}"
    );
    traffic_passed_sealed(&f);
}

/// `demo --topology chain`: gw-a and gw-c without a QKD link, their
/// tunnel keyed from keys relayed over gw-b, as the README shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_demo_keys_the_chain_and_tears_down() {
    const RELAY_DURATION_S: u64 = 150;
    /// The demo's relayed key size (`cli::demo` RELAY_KEY_BYTES).
    const RELAY_KEY_BYTES: u32 = 256;
    let d = RELAY_DURATION_S.to_string();
    let f = run_demo(
        &[
            "demo",
            "--topology",
            "chain",
            "--duration",
            &d,
            "--rekey-interval",
            "20",
        ],
        Duration::from_secs(RELAY_DURATION_S + 240),
    )
    .await;
    assert_eq!(
        f.get("topology").map(String::as_str),
        Some("chain"),
        "{f:?}"
    );
    assert!(num(&f, "relayed_keys_first") >= 1, "nothing relayed: {f:?}");
    assert!(
        num(&f, "generation_first") >= 2 && num(&f, "generation_last") >= 2,
        "no rekey on relayed keys: {f:?}"
    );
    // Each hop's relay pads, equal on its two ends but for at most one
    // share in flight between the two nodes' status reads.
    let share = u64::from(qkd_ipsec::relay::pad_len(RELAY_KEY_BYTES));
    for (x, y) in [("a", "b"), ("b", "c")] {
        let (xy, yx) = (
            num(&f, &format!("relay_bytes_{x}_{y}")),
            num(&f, &format!("relay_bytes_{y}_{x}")),
        );
        assert!(
            xy > 0 && xy.abs_diff(yx) <= share,
            "hop {x}–{y}: {xy} vs {yx} relay bytes: {f:?}"
        );
    }
    traffic_passed_sealed(&f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tears_down_on_ctrl_c() {
    let child = tokio::process::Command::new(BIN)
        .args(["demo", "--rekey-interval", "4"])
        .spawn_demo();
    let pid = child.id().expect("demo pid");
    // Long enough for the namespaces, agents and WAN filter to exist.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let prefix = format!("qkd-demo-{pid}-");
    let during = run_ok(in_netns_host("ip", &["netns", "list"]), "ip netns list").await;
    assert!(
        during.lines().any(|l| l.starts_with(&prefix)),
        "no demo namespaces while it runs: {during}"
    );
    let raw = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(raw, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out = within(
        Duration::from_secs(90),
        "the demo to stop on Ctrl-C",
        child.wait_with_output(),
    )
    .await
    .expect("demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo after SIGINT: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo summary: "), "no summary after Ctrl-C");
    assert!(stdout.contains("demo: torn down"));
    assert_no_namespaces_of(pid).await;
}

async fn assert_no_namespaces_of(pid: u32) {
    let left = run_ok(in_netns_host("ip", &["netns", "list"]), "ip netns list").await;
    let prefix = format!("qkd-demo-{pid}-");
    assert!(
        !left.lines().any(|l| l.starts_with(&prefix)),
        "the demo left namespaces behind: {left}"
    );
}

/// A command in the test's own namespace.
fn in_netns_host(program: &str, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(program);
    c.args(args).stdin(Stdio::null()).kill_on_drop(true);
    c
}

/// How both tests start the demo: output captured, killed if the test ends.
trait SpawnDemo {
    fn spawn_demo(&mut self) -> tokio::process::Child;
}

impl SpawnDemo for tokio::process::Command {
    fn spawn_demo(&mut self) -> tokio::process::Child {
        self.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn demo")
    }
}
