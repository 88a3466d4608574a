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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_for_its_duration_and_tears_down() {
    let child = tokio::process::Command::new(BIN)
        .args([
            "demo",
            "--duration",
            &DURATION_S.to_string(),
            "--rekey-interval",
            "4",
        ])
        .spawn_demo();
    let pid = child.id().expect("demo pid");
    let out = within(
        Duration::from_secs(DURATION_S + 180),
        "the demo to finish",
        child.wait_with_output(),
    )
    .await
    .expect("demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stdout.lines().rev().take(30).collect();
    assert!(
        out.status.success(),
        "demo failed ({}): {stderr}\n{}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("demo summary: "))
        .unwrap_or_else(|| panic!("no summary line in: {stdout}"));
    println!("demo: {summary}");
    let fields: BTreeMap<&str, &str> = summary
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let num = |k: &str| -> u64 {
        fields
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("summary lacks a number for {k}: {summary}"))
    };
    assert!(num("seconds") >= DURATION_S, "stopped early: {summary}");
    assert!(num("blocks_ok") >= 1, "no QKD block: {summary}");
    assert!(
        num("generation_a") >= 2 && num("generation_b") >= 2,
        "no rekey: {summary}"
    );
    assert!(
        num("ping_answered") >= 10,
        "too few pings answered: {summary}"
    );
    // Loss only while a generation changes would be a bug too; allow the
    // last request in flight at the end.
    assert!(num("ping_unanswered") <= 1, "pings lost: {summary}");
    assert_eq!(num("clear_on_wan"), 0, "clear text on the WAN: {summary}");
    assert!(stdout.contains("demo: torn down"));

    assert_no_namespaces_of(pid).await;
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
