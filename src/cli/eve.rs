//! `qkd-ipsec eve`: the lab eavesdropper ([`crate::eve::EveProxy`]) and,
//! as `qkd-ipsec eve hostile`, the hostile peer ([`crate::eve::hostile`]).
//! Parses arguments, runs the tool on its own runtime until Ctrl-C or
//! SIGTERM, prints counters; all behaviour lives in [`crate::eve`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::eve::hostile::{HostileAttack, HostilePlan, load_recording, run_hostile};
use crate::eve::{EveProxy, InPathTamper, ProxyConfig, parse_fraction};
use crate::peer::FrameLimits;

const ABOUT: &str =
    "Lab eavesdropper: intercept–resend attack on the simulated fibre between two agents";

const LONG_ABOUT: &str = "\
Lab eavesdropper: an intercept–resend attack on the simulated fibre between two qkd-ipsec agents.

Eve is a TCP proxy on the peer channel. On a chosen fraction of the photon pulses she measures in a \
random basis (Z or X) and resends the same number of photons in the state she found. Whenever her \
basis was wrong (half the time) the receiver's result is random, so the error rate of the test-basis \
bits (QBER) rises by about a quarter of the fraction: from the link's baseline of about 3 % to about \
15 % at --fraction 0.5 and 27 % at --fraction 1. The agents must notice: above their QBER threshold \
(11 %) a block yields no key and an alarm is raised.

For labs, demonstrations and tests only. The fibre stream exists only between agents that simulate \
the optics, and it is sealed (AES-256-GCM under keys derived from the peer channel's key): Eve can \
measure pulses only when handed the agents' lab export of fibre keys. Set \
`lab_export_fibre_keys = \"/path/file\"` in the transmitter's [peer.link] (the agent then writes \
each channel-key epoch's fibre base key to that 0600 file) and pass --fibre-keys with the same file. \
Without it Eve forwards fibre frames unopened and can attack nothing (--fraction must be 0). Eve \
holds no channel key: every classical frame (handshake, QKD post-processing, rekey control) is \
forwarded byte for byte, because changing one would break its authentication tag.

Putting Eve on a link: on the QKD transmitter (the gateway whose peer has role \"transmitter\"), set \
that peer's `address` to Eve's --listen address; start Eve with --upstream set to the receiver's real \
peer-channel address; restart the transmitter's agent (or let it reconnect). To remove Eve, point \
`address` back at the receiver.

Counters (pulses seen and intercepted, frames, connections) are printed every --report-interval \
seconds and on exit (Ctrl-C or SIGTERM).";

const EXAMPLES: &str = "\
Examples:
  # gw-b (receiver) listens on 192.0.2.2:7447; Eve runs on 192.0.2.9 and attacks half the pulses,
  # with the keys gw-a exports (lab_export_fibre_keys = \"/run/qkd-lab/fibre.keys\" in its [peer.link])
  qkd-ipsec eve --listen 192.0.2.9:7447 --upstream 192.0.2.2:7447 \
      --fibre-keys /run/qkd-lab/fibre.keys --fraction 0.5

  # Start transparent, then change the attack while running (the file is read every second)
  echo 0 > /run/eve.fraction
  qkd-ipsec eve --listen 192.0.2.9:7447 --upstream 192.0.2.2:7447 \
      --fibre-keys /run/qkd-lab/fibre.keys --fraction-file /run/eve.fraction
  echo 1 > /run/eve.fraction

  # No keys: pass everything through (record, tamper), attack no pulse
  qkd-ipsec eve --listen 192.0.2.9:7447 --upstream 192.0.2.2:7447 --tamper forge

  # Hostile peer input on a receiver's peer port (exit status 0 = the agent dropped it)
  qkd-ipsec eve hostile --target 192.0.2.2:7447 --attack forged --dialer gw-a --acceptor gw-b";

/// `qkd-ipsec eve [OPTIONS]` or `qkd-ipsec eve hostile [OPTIONS]`.
#[derive(Args, Debug)]
#[command(
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct EveCommand {
    #[command(subcommand)]
    mode: Option<EveMode>,
    #[command(flatten)]
    proxy: ProxyArgs,
}

#[derive(Subcommand, Debug)]
enum EveMode {
    /// Hostile peer: connect straight to an agent's peer port, send one kind
    /// of bad input and report whether the agent dropped the connection.
    #[command(long_about = HOSTILE_ABOUT)]
    Hostile(HostileArgs),
}

const HOSTILE_ABOUT: &str = "\
Hostile peer: connect straight to an agent's peer-channel port, send one kind of bad input, and \
report how the connection ended, as one line `attack=… outcome=closed-by-agent|reset-by-agent|still-open \
elapsed_ms=… bytes_sent=… bytes_received=…`. Exit status 0 when the agent dropped the connection, 1 \
when it was still open after --wait.

Attacks: garbage (1 KiB of noise), truncated (half a Hello, then silence: the agent's handshake \
timeout must close it), oversized (a header announcing 4 GiB), replay (a real transmitter's \
recorded handshake and frames, from `qkd-ipsec eve --record FILE`), forged (a Hello with the right \
gateway names, then a made-up key confirmation and a frame with a made-up HMAC tag).";

#[derive(Args, Debug)]
struct ProxyArgs {
    /// Address Eve listens on; the transmitter's peer `address` must point here.
    #[arg(long, value_name = "ADDR", required = true)]
    listen: Option<SocketAddr>,

    /// The receiver's peer-channel address, where Eve forwards to.
    #[arg(long, value_name = "ADDR", required = true)]
    upstream: Option<SocketAddr>,

    /// Fraction of pulses to intercept and resend: 0..1 or a percentage (50%).
    /// Default 1 with --fibre-keys, 0 without (sealed pulses cannot be measured).
    #[arg(long, value_name = "F", value_parser = parse_fraction)]
    fraction: Option<f64>,

    /// The agents' lab export of fibre keys (`lab_export_fibre_keys` in the
    /// transmitter's [peer.link]; 0600, refused otherwise). Needed to open,
    /// attack and re-seal the sealed fibre stream.
    #[arg(long, value_name = "FILE")]
    fibre_keys: Option<PathBuf>,

    /// Re-read the fraction from this file every second (e.g. `echo 0.25 > FILE`);
    /// a file present at start overrides --fraction, an invalid one is ignored.
    #[arg(long, value_name = "PATH")]
    fraction_file: Option<PathBuf>,

    /// Seed of Eve's random bases and coins, for reproducible runs
    /// (default: drawn from the OS). Eve's randomness is not secret.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// Seconds between counter lines on stdout; 0 prints only at exit.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    report_interval: Duration,

    /// Connections served at once; more are closed at accept.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_connections: usize,

    /// Largest fibre frame payload (bytes); must match the agents' limit.
    #[arg(long, value_name = "BYTES", default_value_t = FrameLimits::default().fibre)]
    fibre_limit: u32,

    /// Largest QKD message payload (bytes); must match the agents' limit.
    #[arg(long, value_name = "BYTES", default_value_t = FrameLimits::default().qkd)]
    qkd_limit: u32,

    /// Largest control message payload (bytes); must match the agents' limit.
    #[arg(long, value_name = "BYTES", default_value_t = FrameLimits::default().control)]
    control_limit: u32,

    /// Write the classical frames the transmitter sends on the first
    /// connection (up to 64 KiB; no fibre) to this file, for `eve hostile --attack replay`.
    #[arg(long, value_name = "PATH")]
    record: Option<PathBuf>,

    /// Tamper once with the first authenticated frame in flight: replay it,
    /// or forge its tag. The receiver must drop that session; the link recovers.
    #[arg(long, value_enum, default_value_t = TamperArg::None)]
    tamper: TamperArg,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum TamperArg {
    None,
    Replay,
    Forge,
}

#[derive(Args, Debug)]
struct HostileArgs {
    /// The agent's peer-channel address.
    #[arg(long, value_name = "ADDR")]
    target: SocketAddr,

    /// Which bad input to send (described above).
    #[arg(long, value_enum)]
    attack: AttackArg,

    /// Recording made by `qkd-ipsec eve --record` (needed by replay; gives
    /// forged and truncated their names and epoch).
    #[arg(long, value_name = "PATH")]
    recording: Option<PathBuf>,

    /// Transmitter's gateway name for the Hello (use the real one, so a
    /// forged handshake reaches the key check).
    #[arg(long, value_name = "NAME", default_value = "eve")]
    dialer: String,

    /// Receiver's gateway name for the Hello.
    #[arg(long, value_name = "NAME", default_value = "victim")]
    acceptor: String,

    /// Channel-key epoch claimed in the Hello (0 = bootstrap secret).
    #[arg(long, value_name = "N", default_value_t = 0)]
    epoch: u64,

    /// Seconds to wait for the agent to drop the connection; must exceed
    /// its handshake timeout for `truncated`.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
    wait: Duration,

    /// Seed of the garbage, nonces and made-up tags.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AttackArg {
    Garbage,
    Truncated,
    Oversized,
    Replay,
    Forged,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("{s:?} is not a valid duration in seconds"))
}

impl EveCommand {
    pub fn exec(self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        match self.mode {
            Some(EveMode::Hostile(h)) => runtime.block_on(h.run()),
            None => runtime.block_on(self.proxy.run()),
        }
    }
}

impl ProxyArgs {
    fn config(&self) -> anyhow::Result<ProxyConfig> {
        let (Some(listen), Some(upstream)) = (self.listen, self.upstream) else {
            bail!("--listen and --upstream are required");
        };
        let mut cfg = ProxyConfig::new(listen, upstream);
        cfg.fibre_keys = self.fibre_keys.clone();
        cfg.fraction = self
            .fraction
            .unwrap_or(if cfg.fibre_keys.is_some() { 1.0 } else { 0.0 });
        if cfg.fibre_keys.is_none() && (cfg.fraction > 0.0 || self.fraction_file.is_some()) {
            bail!(crate::eve::EveError::NoFibreKeys);
        }
        cfg.seed = self.seed;
        cfg.max_connections = self.max_connections.max(1);
        cfg.limits = FrameLimits {
            fibre: self.fibre_limit,
            qkd: self.qkd_limit,
            control: self.control_limit,
        };
        cfg.record = self.record.clone();
        cfg.tamper = match self.tamper {
            TamperArg::None => InPathTamper::None,
            TamperArg::Replay => InPathTamper::Replay,
            TamperArg::Forge => InPathTamper::Forge,
        };
        Ok(cfg)
    }

    async fn run(self) -> anyhow::Result<()> {
        let cfg = self.config()?;
        let proxy = EveProxy::bind(cfg.clone()).await?;
        let dialled_by = match &self.fraction_file {
            Some(path) => format!(" (until {} says otherwise)", path.display()),
            None => String::new(),
        };
        println!(
            "eve: listening on {} for the transmitter, forwarding to the receiver at {}",
            proxy.local_addr(),
            cfg.upstream,
        );
        match &cfg.fibre_keys {
            Some(path) => println!(
                "eve: opening the sealed fibre with the lab keys in {}; intercepting {:.1} % of pulses{dialled_by}",
                path.display(),
                100.0 * cfg.fraction
            ),
            None => println!(
                "eve: no --fibre-keys: the fibre stream is sealed, so fibre frames pass through unopened and no pulse is measured"
            ),
        }
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let (counters, dial) = (proxy.counters(), proxy.dial());
        proxy.spawn(&tracker, cancel.clone());
        if let Some(path) = self.fraction_file.clone() {
            tracker.spawn(
                dial.clone()
                    .follow_file(path, Duration::from_secs(1), cancel.clone()),
            );
        }
        let stop = shutdown_signal();
        tokio::pin!(stop);
        let mut tick = (!self.report_interval.is_zero()).then(|| {
            tokio::time::interval_at(
                tokio::time::Instant::now() + self.report_interval,
                self.report_interval,
            )
        });
        loop {
            tokio::select! {
                r = &mut stop => { r?; break; }
                _ = next_tick(&mut tick) => println!("eve: {}", counters.snapshot(dial.get())),
            }
        }
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        println!("eve: stopped: {}", counters.snapshot(dial.get()));
        Ok(())
    }
}

/// Waits for the next report tick, or forever when reports are off.
async fn next_tick(tick: &mut Option<tokio::time::Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Ctrl-C or SIGTERM (systemd, `kill`, a test harness).
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

impl HostileArgs {
    fn plan(&self) -> anyhow::Result<HostilePlan> {
        let attack = match self.attack {
            AttackArg::Garbage => HostileAttack::Garbage,
            AttackArg::Truncated => HostileAttack::Truncated,
            AttackArg::Oversized => HostileAttack::Oversized,
            AttackArg::Replay => HostileAttack::Replay,
            AttackArg::Forged => HostileAttack::Forged,
        };
        let mut plan = HostilePlan::new(self.target, attack);
        plan.dialer = self.dialer.clone();
        plan.acceptor = self.acceptor.clone();
        plan.epoch = self.epoch;
        plan.wait = self.wait;
        plan.seed = self.seed;
        plan.recording = self.recording.as_deref().map(load_recording).transpose()?;
        Ok(plan)
    }

    async fn run(self) -> anyhow::Result<()> {
        let plan = self.plan()?;
        let outcome = run_hostile(&plan).await?;
        println!("{outcome}");
        if !outcome.closed_by_agent() {
            bail!(
                "the agent at {} kept the connection open for {:?} after the {} attack; it must drop it",
                plan.target,
                plan.wait,
                plan.attack.name()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn eve(args: &[&str]) -> Result<EveCommand, clap::Error> {
        let argv = ["qkd-ipsec", "eve"].iter().chain(args);
        Cli::try_parse_from(argv).map(|cli| match cli.command {
            Command::Eve(e) => *e,
            #[allow(unreachable_patterns)]
            _ => panic!("parsed as another command"),
        })
    }

    #[test]
    fn proxy_arguments_parse_into_a_config() {
        let e = eve(&[
            "--listen",
            "127.0.0.1:7000",
            "--upstream",
            "127.0.0.1:7001",
            "--fraction",
            "25%",
            "--fibre-keys",
            "/run/lab/fibre.keys",
            "--seed",
            "9",
            "--report-interval",
            "0.5",
            "--tamper",
            "forge",
        ])
        .unwrap();
        assert!(e.mode.is_none());
        let cfg = e.proxy.config().unwrap();
        assert_eq!(cfg.fraction, 0.25);
        assert_eq!(
            cfg.fibre_keys.as_deref(),
            Some(std::path::Path::new("/run/lab/fibre.keys"))
        );
        assert_eq!(cfg.seed, Some(9));
        assert_eq!(cfg.upstream, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(cfg.limits, FrameLimits::default());
        assert_eq!(cfg.tamper, InPathTamper::Forge);
        assert_eq!(e.proxy.report_interval, Duration::from_millis(500));
    }

    #[test]
    fn bad_proxy_arguments_are_refused() {
        assert!(
            eve(&["--upstream", "127.0.0.1:7001"]).is_err(),
            "--listen missing"
        );
        let base = ["--listen", "127.0.0.1:7000", "--upstream", "127.0.0.1:7001"];
        for bad in [
            ["--fraction", "1.5"],
            ["--fraction", "x"],
            ["--report-interval", "-1"],
        ] {
            let args: Vec<&str> = base.iter().chain(&bad).copied().collect();
            assert!(eve(&args).is_err(), "{bad:?} accepted");
        }
        // Sealed pulses cannot be attacked without the keys: the default
        // fraction is then 0, and asking for more is refused with the fix.
        let keyless = eve(&base).unwrap().proxy.config().unwrap();
        assert_eq!(keyless.fraction, 0.0);
        let args: Vec<&str> = base.iter().chain(&["--fraction", "0.5"]).copied().collect();
        let e = eve(&args).unwrap().proxy.config().unwrap_err().to_string();
        assert!(
            e.contains("--fibre-keys") && e.contains("lab_export_fibre_keys"),
            "{e}"
        );
        let args: Vec<&str> = base
            .iter()
            .chain(&["--fibre-keys", "/k"])
            .copied()
            .collect();
        assert_eq!(eve(&args).unwrap().proxy.config().unwrap().fraction, 1.0);
    }

    #[test]
    fn hostile_arguments_parse_without_proxy_arguments() {
        let e = eve(&[
            "hostile",
            "--target",
            "127.0.0.1:7001",
            "--attack",
            "forged",
            "--dialer",
            "gw-a",
            "--acceptor",
            "gw-b",
            "--wait",
            "2",
        ])
        .unwrap();
        let Some(EveMode::Hostile(h)) = e.mode else {
            panic!("hostile mode")
        };
        let plan = h.plan().unwrap();
        assert_eq!(plan.attack, HostileAttack::Forged);
        assert_eq!(
            (plan.dialer.as_str(), plan.acceptor.as_str()),
            ("gw-a", "gw-b")
        );
        assert_eq!(plan.wait, Duration::from_secs(2));
        assert!(eve(&["hostile", "--target", "127.0.0.1:1", "--attack", "nonsense"]).is_err());
        // A recording that does not exist is refused before connecting.
        let e = eve(&[
            "hostile",
            "--target",
            "127.0.0.1:1",
            "--attack",
            "replay",
            "--recording",
            "/nonexistent/eve.frames",
        ])
        .unwrap();
        let Some(EveMode::Hostile(h)) = e.mode else {
            panic!("hostile mode")
        };
        assert!(h.plan().is_err());
    }
}
