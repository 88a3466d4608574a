//! `qkd-ipsec demo`: the whole product on one machine. Builds two gateway
//! namespaces with a host behind each ([`crate::testbed::AgentPair`]),
//! starts two agents as separate processes over a simulated 25 km link,
//! pings from host to host through the QKD-keyed ESP tunnel and shows a
//! live view (QBER, key rate, pool, SA generations and SPIs, rekeys, ping
//! loss) once a second; Ctrl-C, SIGTERM or `--duration` tears it all down.
//!
//! An nftables filter on each gateway's WAN side counts and drops any
//! packet between the two sites that is not inside ESP, so the view can
//! show that nothing crosses in clear text.
//!
//! On a kernel without ESP the demo re-runs itself in a VM ([`vm`]). It
//! needs root (namespaces, XFRM, nftables) and says so otherwise.

mod view;
mod vm;

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::ops::BoardSnapshot;
use crate::testbed::{AgentPair, AgentPairOptions, Side};
use view::{Frame, PingCounts};

/// The WAN filter: packets between the sites arriving on the WAN without
/// having been decapsulated from ESP are counted and dropped. ESP itself
/// and the peer channel carry the gateways' addresses, not the sites'.
const WAN_FILTER: &str = r#"
table inet qkddemo {
  counter clear_sites {}
  chain wan_in {
    type filter hook prerouting priority raw; policy accept;
    iifname "wan" meta ipsec exists accept
    iifname "wan" ip saddr { 10.1.0.0/24, 10.2.0.0/24 } counter name "clear_sites" drop
  }
}
"#;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Stop by itself after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Seconds between rekeys of the tunnel.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub rekey_interval: u64,
    /// Length of the simulated fibre between the gateways (km).
    #[arg(long, value_name = "KM", default_value_t = 25.0)]
    pub length_km: f64,
    /// Set by the demo itself when it re-runs inside the VM.
    #[arg(long, hide = true)]
    pub in_vm: bool,
}

impl DemoArgs {
    pub fn exec(self) -> anyhow::Result<()> {
        if !(2..=3600).contains(&self.rekey_interval) {
            bail!(
                "--rekey-interval {} must lie in 2..=3600 seconds",
                self.rekey_interval
            );
        }
        if !(self.length_km > 0.0 && self.length_km <= 200.0) {
            bail!("--length-km {} must lie in (0, 200]", self.length_km);
        }
        if !nix::unistd::geteuid().is_root() {
            bail!(
                "the demo needs root: it creates network namespaces, installs IPsec SAs and \
                 nftables rules. Run it as `sudo qkd-ipsec demo`"
            );
        }
        let binary = std::env::current_exe().context("cannot find the qkd-ipsec executable")?;
        if !vm::esp_available()? {
            if self.in_vm {
                bail!("the VM's kernel cannot install an ESP SA either (modprobe esp4 failed?)");
            }
            if !vm::run_in_vm(&binary, &self.forwarded_args())? {
                bail!("the demo inside the VM failed (its output is above)");
            }
            return Ok(());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(self.run(binary))
    }

    /// The arguments the VM's run of the demo gets.
    fn forwarded_args(&self) -> Vec<String> {
        let mut args = vec![
            "--rekey-interval".into(),
            self.rekey_interval.to_string(),
            "--length-km".into(),
            self.length_km.to_string(),
        ];
        if let Some(d) = self.duration {
            args.extend(["--duration".into(), d.to_string()]);
        }
        args
    }

    async fn run(self, binary: std::path::PathBuf) -> anyhow::Result<()> {
        let mut opts = AgentPairOptions::new("demo", binary);
        opts.length_km = self.length_km;
        opts.rekey_interval = Duration::from_secs(self.rekey_interval);
        println!("Creating namespaces gw-a, gw-b, host-a, host-b and starting two agents...");
        let pair = AgentPair::start(opts)
            .await
            .context("cannot set up the demo")?;
        let filter = install_wan_filter(&pair);
        if let Err(e) = &filter {
            println!("(no WAN filter: {e:#})");
        }
        let outcome = self.live(&pair, filter.is_ok()).await;
        println!("Stopping the agents and deleting the namespaces...");
        for side in Side::BOTH {
            pair.stop_agent(side);
        }
        let teardown = pair.teardown();
        let summary = outcome?;
        teardown.context("tearing down")?;
        println!("{summary}");
        println!("demo: torn down");
        Ok(())
    }

    /// Runs the view until Ctrl-C, SIGTERM or `--duration`; returns the
    /// closing summary line.
    async fn live(&self, pair: &AgentPair, filter: bool) -> anyhow::Result<String> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        let tty = std::io::stdout().is_terminal();
        let mut ping: Option<PingProcess> = None;
        let mut last: [Option<BoardSnapshot>; 2] = [None, None];
        let mut clear = None;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => {}
            }
            let elapsed = started.elapsed().as_secs();
            for side in Side::BOTH {
                if !pair.agent_running(side) {
                    bail!(
                        "{side}'s agent stopped; the end of its log:\n{}",
                        pair.log_tail(side, 30)
                    );
                }
                last[side_index(side)] = pair.status(side).ok();
            }
            // Ping only once both sides have SAs: before that the tunnel's
            // policies do not exist yet and the hosts would talk in clear.
            let keyed = last.iter().all(|s| {
                s.as_ref()
                    .and_then(|s| s.tunnels.first())
                    .is_some_and(|t| t.generation > 0)
            });
            if keyed && ping.is_none() {
                ping = Some(PingProcess::start(pair)?);
            }
            if filter {
                clear = wan_clear_count(pair).ok();
            }
            let frame = Frame {
                elapsed_s: elapsed,
                length_km: self.length_km,
                in_vm: self.in_vm,
                a: last[0].as_ref(),
                b: last[1].as_ref(),
                ping: ping.as_ref().map(PingProcess::counts).unwrap_or_default(),
                clear_on_wan: clear,
                duration_s: self.duration,
            };
            let text = view::render(&frame);
            let mut out = std::io::stdout().lock();
            if tty {
                // Home, clear screen: a plain redraw, no TUI library.
                let _ = write!(out, "\x1b[H\x1b[2J{text}");
            } else {
                let _ = writeln!(out, "{text}");
            }
            let _ = out.flush();
            if self.duration.is_some_and(|d| elapsed >= d) {
                break;
            }
        }
        let counts = ping.as_ref().map(PingProcess::counts).unwrap_or_default();
        drop(ping);
        Ok(summary(started.elapsed().as_secs(), &last, &counts, clear))
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

/// One `key=value` line a script (and the demo's test) can read.
fn summary(
    elapsed: u64,
    last: &[Option<BoardSnapshot>; 2],
    ping: &PingCounts,
    clear: Option<u64>,
) -> String {
    let tunnel = |i: usize| last[i].as_ref().and_then(|s| s.tunnels.first());
    let generation = |i: usize| tunnel(i).map_or(0, |t| t.generation);
    let rekeys = |i: usize| tunnel(i).map_or(0, |t| t.rekeys_done());
    let blocks = last[0]
        .as_ref()
        .and_then(|s| s.peers.first())
        .map_or(0, |p| p.qkd.blocks_ok);
    let sa_key = last[0].as_ref().map_or(0, view::sa_key_bytes);
    format!(
        "demo summary: seconds={elapsed} blocks_ok={blocks} generation_a={} generation_b={} \
         rekeys_a={} rekeys_b={} sa_key_bytes_a={sa_key} ping_sent={} ping_answered={} \
         ping_unanswered={} clear_on_wan={}",
        generation(0),
        generation(1),
        rekeys(0),
        rekeys(1),
        ping.sent,
        ping.received,
        ping.unanswered,
        clear.map_or("unknown".into(), |c| c.to_string())
    )
}

fn install_wan_filter(pair: &AgentPair) -> anyhow::Result<()> {
    for side in Side::BOTH {
        let mut child = Command::new("ip")
            .args(["netns", "exec", pair.netns_name(side), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run nft (install nftables)")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(WAN_FILTER.as_bytes())
            .context("writing the nftables rules")?;
        let out = child.wait_with_output().context("nft")?;
        if !out.status.success() {
            bail!(
                "nft -f failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

/// Packets the WAN filters dropped on both gateways.
fn wan_clear_count(pair: &AgentPair) -> anyhow::Result<u64> {
    let mut total = 0;
    for side in Side::BOTH {
        let out = Command::new("ip")
            .args(["netns", "exec", pair.netns_name(side)])
            .args(["nft", "list", "counter", "inet", "qkddemo", "clear_sites"])
            .output()
            .context("nft list counter")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let packets = text
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .context("no packet count in `nft list counter`")?;
        total += packets;
    }
    Ok(total)
}

/// `ping -n -O -i 0.2` from host-a to host-b, its output counted by a
/// reader thread; killed on drop.
struct PingProcess {
    child: Child,
    counts: Arc<Mutex<PingCounts>>,
}

impl PingProcess {
    fn start(pair: &AgentPair) -> anyhow::Result<Self> {
        let bed = pair.bed();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &bed.host_a.name,
                "ping",
                "-n",
                "-O",
                "-i",
                "0.2",
            ])
            .arg(bed.host_b.addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run ping (install iputils-ping)")?;
        let stdout = child.stdout.take().context("ping stdout")?;
        let counts = Arc::new(Mutex::new(PingCounts::default()));
        let c = counts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                c.lock().unwrap_or_else(|p| p.into_inner()).observe(&line);
            }
        });
        Ok(Self { child, counts })
    }

    fn counts(&self) -> PingCounts {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PingProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
