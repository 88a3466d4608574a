//! The demo's run, whatever the topology: install the WAN filters, redraw
//! the view once a second (a plain redraw on a terminal, one frame after
//! the other otherwise), start the ping once the tunnel is keyed at both
//! ends, stop on Ctrl-C, SIGTERM or `--duration`, then stop the agents,
//! delete the namespaces and print the summary line. What differs between
//! the pair and the relay topologies is behind [`Scene`].

use std::io::{IsTerminal, Write};
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;

use super::traffic::{PingProcess, WanFilter};
use super::view::LiveFigures;
use crate::xfrm::Prefix;

/// A running demo topology: its agents, namespaces and how to show them.
pub trait Scene {
    /// The gateways' namespaces, each of which gets a WAN filter; the
    /// filters' counts reach [`LiveFigures::clear_on_wan`] in this order.
    fn gateway_namespaces(&self) -> Vec<String>;
    /// The two sites whose clear traffic the WAN filters count.
    fn sites(&self) -> [Prefix; 2];
    /// The first site's host namespace and the last site's host address.
    fn ping_route(&self) -> (String, IpAddr);
    /// Reads every agent's status; fails (with its log) if an agent has
    /// stopped.
    fn refresh(&mut self) -> anyhow::Result<()>;
    /// Whether both ends have installed SAs: before that the tunnel's
    /// policies do not exist and the hosts would talk in clear.
    fn keyed(&self) -> bool;
    /// One frame of the view (no terminal control codes).
    fn render(&self, live: &LiveFigures) -> String;
    /// The closing `demo summary: key=value …` line.
    fn summary(&self, live: &LiveFigures) -> String;
    /// Stops the agents (SIGTERM, so they remove their SAs) and deletes
    /// the namespaces, reporting every error.
    fn teardown(self) -> anyhow::Result<()>;
}

/// How the loop runs.
pub struct LiveOptions {
    pub duration_s: Option<u64>,
    pub in_vm: bool,
}

/// Runs `scene` until Ctrl-C, SIGTERM or the duration, then tears it down.
pub async fn show(mut scene: impl Scene, opts: LiveOptions) -> anyhow::Result<()> {
    let filter = WanFilter::install(scene.gateway_namespaces(), scene.sites());
    if let Err(e) = &filter {
        println!("(no WAN filter: {e:#})");
    }
    let outcome = run(&mut scene, filter.ok(), &opts).await;
    println!("Stopping the agents and deleting the namespaces...");
    let teardown = scene.teardown();
    let summary = outcome?;
    teardown.context("tearing down")?;
    println!("{summary}");
    println!("demo: torn down");
    Ok(())
}

/// The view loop; returns the summary line.
async fn run(
    scene: &mut impl Scene,
    filter: Option<WanFilter>,
    opts: &LiveOptions,
) -> anyhow::Result<String> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered once, before the loop, so that a signal arriving while
    // a frame is drawn is not lost.
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch Ctrl-C")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    let tty = std::io::stdout().is_terminal();
    let mut ping: Option<PingProcess> = None;
    let mut live = LiveFigures {
        duration_s: opts.duration_s,
        in_vm: opts.in_vm,
        ..LiveFigures::default()
    };
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {}
        }
        live.elapsed_s = started.elapsed().as_secs();
        scene.refresh()?;
        if scene.keyed() && ping.is_none() {
            let (host, to) = scene.ping_route();
            ping = Some(PingProcess::start(&host, to)?);
        }
        live.ping = ping.as_ref().map(PingProcess::counts).unwrap_or_default();
        if let Some(f) = &filter {
            live.clear_on_wan = f.clear_counts().ok();
        }
        let text = scene.render(&live);
        let mut out = std::io::stdout().lock();
        if tty {
            // Home, clear screen: a plain redraw, no TUI library.
            let _ = write!(out, "\x1b[H\x1b[2J{text}");
        } else {
            let _ = writeln!(out, "{text}");
        }
        let _ = out.flush();
        if opts.duration_s.is_some_and(|d| live.elapsed_s >= d) {
            break;
        }
    }
    live.elapsed_s = started.elapsed().as_secs();
    live.ping = ping.as_ref().map(PingProcess::counts).unwrap_or_default();
    drop(ping);
    Ok(scene.summary(&live))
}
