//! `qkd-ipsec check-config FILE [PEER_FILE]`: parses and checks a gateway's
//! configuration, its secret files and (with the peer's file) the pair,
//! printing every problem as `file:line:col: path: message` on stderr, or a
//! short summary on stdout. Exit status 0 when valid, 1 otherwise.
//!
//! Reads files only; starts nothing and touches no kernel state.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Args;

use crate::config::forecast::{demand_bytes_per_second, forecast};
use crate::config::pair::{PairCredentials, check_pair};
use crate::config::{Config, ConfigError, DEFAULT_CREDENTIALS_SOURCE, Finding, Tunnel};
use crate::keys::Role;
use crate::xfrm::ReplayProtection;

/// Check a gateway configuration (and optionally its peer's) before use.
#[derive(Args, Debug)]
pub struct CheckConfig {
    /// The gateway's configuration file.
    pub file: PathBuf,
    /// The peer gateway's file: cross-checks roles, link parameters,
    /// mirrored tunnels and (when readable) the shared bootstrap secret.
    pub peer_file: Option<PathBuf>,
    /// Directory holding the credentials the systemd unit loads
    /// (`pool-key`, `bootstrap-<peer>`). Default: $CREDENTIALS_DIRECTORY,
    /// else /etc/qkd-ipsec/credentials.
    #[arg(long, value_name = "DIR")]
    pub credentials_dir: Option<PathBuf>,
    /// The same for PEER_FILE; without it the peer's secrets are not read.
    #[arg(long, value_name = "DIR")]
    pub peer_credentials_dir: Option<PathBuf>,
}

impl CheckConfig {
    pub fn exec(self) -> anyhow::Result<()> {
        let problems = self.run(&mut std::io::stdout().lock(), &mut std::io::stderr().lock())?;
        match problems {
            0 => Ok(()),
            n => Err(anyhow!(
                "{} problem{} found; nothing was started",
                n,
                if n == 1 { "" } else { "s" }
            )),
        }
    }

    /// Checks everything, writes the summary to `out` and the findings to
    /// `err`; returns the number of problems.
    pub fn run(&self, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<usize> {
        let creds = self.credentials_dir.clone().or_else(|| {
            std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(PathBuf::from)
                .or_else(|| Some(DEFAULT_CREDENTIALS_SOURCE.into()))
        });
        let mut problems = 0;
        let this = load(&self.file, creds.as_deref(), err, &mut problems)?;
        let peer = match &self.peer_file {
            Some(p) => load(p, self.peer_credentials_dir.as_deref(), err, &mut problems)?,
            None => None,
        };
        if let (Some((a, _)), Some((b, _))) = (&this, &peer) {
            let pair = PairCredentials {
                this: creds.as_deref(),
                peer: self.peer_credentials_dir.as_deref(),
            };
            for f in check_pair(a, b, pair) {
                writeln!(err, "error: {}", f.render())?;
                problems += 1;
            }
        }
        if problems > 0 {
            return Ok(problems);
        }
        if let Some((cfg, secrets)) = &this {
            summarise(cfg, secrets, out)?;
        }
        if let Some((b, _)) = &peer {
            writeln!(out, "pair: consistent with {}", b.file.display())?;
        }
        Ok(0)
    }
}

/// Loads one file and checks its secrets (when `creds` is given or the
/// file names its secrets by path); prints findings and warnings.
fn load(
    file: &Path,
    creds: Option<&Path>,
    err: &mut dyn Write,
    problems: &mut usize,
) -> anyhow::Result<Option<(Config, Vec<String>)>> {
    let cfg = match Config::load(file) {
        Ok(c) => c,
        Err(e @ ConfigError::Read { .. }) => {
            writeln!(err, "error: {e}")?;
            *problems += 1;
            return Ok(None);
        }
        Err(e) => {
            print_findings(err, "error", file, e.findings())?;
            *problems += e.findings().len();
            return Ok(None);
        }
    };
    print_findings(err, "warning", file, &cfg.warnings)?;
    let secrets = match creds {
        Some(dir) => {
            let (ok, bad) = cfg.check_secrets(Some(dir));
            print_findings(err, "error", file, &bad)?;
            *problems += bad.len();
            ok.iter()
                .map(|s| format!("{} {} ({} bytes) ok", s.field, s.path.display(), s.len))
                .collect()
        }
        None => vec!["not checked (no credentials directory given)".to_string()],
    };
    Ok(Some((cfg, secrets)))
}

fn print_findings(
    err: &mut dyn Write,
    kind: &str,
    file: &Path,
    findings: &[Finding],
) -> std::io::Result<()> {
    for f in findings {
        writeln!(err, "{kind}: {}", f.render(file))?;
    }
    Ok(())
}

fn summarise(cfg: &Config, secrets: &[String], out: &mut dyn Write) -> std::io::Result<()> {
    let g = &cfg.gateway;
    writeln!(out, "{}: valid", cfg.file.display())?;
    writeln!(out, "gateway {}", g.name)?;
    let opt = |a: Option<std::net::SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
    writeln!(
        out,
        "  listen {}; metrics {}; state {}; status {}",
        opt(g.listen),
        opt(g.metrics_listen),
        g.state_dir.display(),
        g.status_socket.display()
    )?;
    if let Some(ns) = &g.netns {
        writeln!(out, "  kernel side in network namespace {ns}")?;
    }
    writeln!(
        out,
        "  on stop ({}): {}",
        g.on_stop.name(),
        g.on_stop.consequence()
    )?;
    writeln!(out, "  owns XFRM objects with {}", g.ownership)?;
    for p in &cfg.peers {
        let how = match (p.role, &p.address) {
            (Role::Transmitter, Some(a)) => format!("QKD transmitter, dials {a}"),
            (Role::Transmitter, None) => "QKD transmitter".to_string(),
            (Role::Receiver, _) => "QKD receiver, the peer dials in".to_string(),
        };
        writeln!(out, "peer {}: this gateway is the {how}", p.name)?;
        if p.is_simulated() {
            writeln!(out, "  {}", crate::ops::SIMULATED_LINK_CAVEAT)?;
        }
        let fc = forecast(&p.link, &p.postprocessing);
        writeln!(
            out,
            "  link {} km at {:.3e} pulses/s; forecast: QBER {:.1} %, {} B of key per block, \
             a block every {:.2} s of simulated clock (at most {:.0} B/s); tunnels use {:.1} B/s",
            p.link.length_km,
            p.link.pulse_rate_hz,
            100.0 * fc.qber,
            fc.net_bytes_per_block,
            fc.seconds_per_block,
            fc.net_bytes_per_second,
            demand_bytes_per_second(&p.name, &cfg.tunnels)
        )?;
        writeln!(out, "  bootstrap secret: {}", p.bootstrap_secret.describe())?;
    }
    for t in &cfg.tunnels {
        summarise_tunnel(t, out)?;
    }
    writeln!(out, "pool key: {}", g.pool_key.describe())?;
    for s in secrets {
        writeln!(out, "secret {s}")?;
    }
    Ok(())
}

fn summarise_tunnel(t: &Tunnel, out: &mut dyn Write) -> std::io::Result<()> {
    let list = |v: &[crate::xfrm::Prefix]| {
        v.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    writeln!(
        out,
        "tunnel {} (peer {}): {} <-> {} via {} <-> {}",
        t.name,
        t.peer,
        list(&t.local_subnets),
        list(&t.remote_subnets),
        t.local_endpoint,
        t.remote_endpoint
    )?;
    let (window, esn) = match t.replay {
        ReplayProtection::Window(w) => (w, "no ESN"),
        ReplayProtection::Esn { window } => (window, "ESN"),
    };
    let lim = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
    writeln!(
        out,
        "  {} mode, reqid {:#x}, {} keying, {}; rekey every {}s (up to {}s early); {} policies",
        match t.mode {
            crate::xfrm::Mode::Tunnel => "tunnel",
            crate::xfrm::Mode::Transport => "transport",
        },
        t.reqid,
        t.keying.name(),
        if t.initiator {
            "this side initiates rekeys"
        } else {
            "the peer initiates rekeys"
        },
        t.rekey_interval.as_secs(),
        t.rekey_jitter.as_secs(),
        t.policies().len()
    )?;
    let (s, h) = (t.lifetimes.soft, t.lifetimes.hard);
    writeln!(
        out,
        "  lifetimes soft/hard: {}/{} s, {}/{} packets, {}/{} bytes; replay window {window}, {esn}",
        lim(s.seconds),
        lim(h.seconds),
        lim(s.packets),
        lim(h.packets),
        lim(s.bytes),
        lim(h.bytes)
    )
}
