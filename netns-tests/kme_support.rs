//! Shared pieces of the ETSI GS QKD 014 tests: an agent pair whose agents
//! are KMEs for the hosts behind them, and the example SAE programs
//! (`examples/etsi014_sae.rs`, `examples/tls_psk.rs`) run as processes
//! inside the hosts' namespaces, each with its own lab client certificate.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use qkd_ipsec::testbed::{AgentNetwork, AgentPair, KmeOptions, Node, Side};
use qkd_ipsec::tls::TlsFiles;

use crate::agent_support::*;
use crate::support::*;

/// An example program cargo built beside this test binary
/// (`target/<profile>/examples/NAME`; `netns-tests/run` builds them).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test binary>");
    let path = profile.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --example {name}` (netns-tests/run does)",
        path.display()
    );
    path
}

/// A pair whose agents serve keys to applications; the tunnel between the
/// sites keys as usual. `extra_saes` adds SAEs beyond the hosts' own.
pub async fn start_kme_pair(tag: &str, kme: KmeOptions) -> AgentPair {
    let mut opts = options(tag);
    opts.kme = Some(kme);
    let pair = start_pair(opts).await;
    // The tunnel keyed means the link is up; a second QKD block leaves
    // key for applications beside the tunnel's and the link's reserve.
    wait_keyed(&pair, 1, Duration::from_secs(120)).await;
    pair.wait_status(
        Side::A,
        Duration::from_secs(120),
        "a second QKD block",
        |s| link(s).qkd.blocks_ok >= 2,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    pair
}

/// A key as the example SAE prints it: key_ID and fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PrintedKey {
    pub id: String,
    pub fingerprint: String,
}

/// An SAE as the example programs run it: in the namespace of the host
/// behind a gateway, against that gateway's KME, with its lab identity.
pub struct SaeAt {
    pub sae_id: String,
    /// The host's namespace.
    pub host: String,
    pub url: String,
    pub tls: TlsFiles,
}

impl SaeAt {
    /// `sae_id` on the host behind `side` of a pair.
    pub fn pair(pair: &AgentPair, side: Side, sae_id: &str) -> Self {
        let host = match side {
            Side::A => &pair.bed().host_a.name,
            Side::B => &pair.bed().host_b.name,
        };
        Self {
            sae_id: sae_id.to_string(),
            host: host.clone(),
            url: pair.kme_url(side),
            tls: pair.sae_tls(sae_id),
        }
    }

    /// The SAE on the site behind an end `node` of a network.
    pub fn network(net: &AgentNetwork, node: Node) -> Self {
        let site = net
            .network()
            .gateway(node)
            .site
            .as_ref()
            .expect("an end's site");
        let sae_id = node.sae_id();
        Self {
            host: site.host.name.clone(),
            url: net.kme_url(node),
            tls: net.sae_tls(&sae_id),
            sae_id,
        }
    }

    /// The KME options every example SAE takes.
    fn kme_args(&self) -> Vec<String> {
        let path = |p: &std::path::Path| p.to_str().expect("UTF-8 path").to_string();
        vec![
            "--url".into(),
            self.url.clone(),
            "--ca".into(),
            path(&self.tls.ca),
            "--cert".into(),
            path(&self.tls.cert),
            "--key".into(),
            path(&self.tls.key),
        ]
    }

    /// `program` (an example) in the host's namespace, with `before` + the
    /// KME options + `after` as arguments.
    pub fn command(
        &self,
        program: &str,
        before: &[&str],
        after: &[&str],
    ) -> tokio::process::Command {
        let kme = self.kme_args();
        let args: Vec<&str> = before
            .iter()
            .copied()
            .chain(kme.iter().map(String::as_str))
            .chain(after.iter().copied())
            .collect();
        let bin = example(program);
        let mut c = in_netns(&self.host, bin.to_str().expect("UTF-8 path"), &args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    /// Runs `etsi014_sae` with `call`.
    pub async fn run(&self, call: &[&str]) -> Output {
        let mut c = self.command("etsi014_sae", &[], call);
        within(Duration::from_secs(60), "the SAE program", c.output())
            .await
            .expect("run etsi014_sae")
    }

    /// Like [`Self::run`], but the call must succeed; returns the keys
    /// printed.
    pub async fn keys(&self, call: &[&str]) -> Vec<PrintedKey> {
        let out = self.run(call).await;
        assert!(
            out.status.success(),
            "{} at {}: {call:?} failed: {}",
            self.sae_id,
            self.url,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.strip_prefix("key ")?.split(' ');
                Some(PrintedKey {
                    id: w.next()?.to_string(),
                    fingerprint: w.next()?.to_string(),
                })
            })
            .collect()
    }

    /// Like [`Self::run`], but the call must fail; returns its stderr.
    pub async fn refused(&self, call: &[&str]) -> String {
        let out = self.run(call).await;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "{} at {}: {call:?} succeeded but must be refused: {}",
            self.sae_id,
            self.url,
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }
}

/// `program` in the namespace of the host behind `side`, as `sae_id`
/// against `side`'s KME (see [`SaeAt::command`]).
pub fn sae_command(
    pair: &AgentPair,
    side: Side,
    sae_id: &str,
    program: &str,
    before: &[&str],
    after: &[&str],
) -> tokio::process::Command {
    SaeAt::pair(pair, side, sae_id).command(program, before, after)
}

/// Runs `etsi014_sae` as `sae_id` behind `side` ([`SaeAt::run`]).
pub async fn sae(pair: &AgentPair, side: Side, sae_id: &str, call: &[&str]) -> Output {
    SaeAt::pair(pair, side, sae_id).run(call).await
}

/// [`SaeAt::keys`] for `sae_id` behind `side`.
pub async fn sae_keys(
    pair: &AgentPair,
    side: Side,
    sae_id: &str,
    call: &[&str],
) -> Vec<PrintedKey> {
    SaeAt::pair(pair, side, sae_id).keys(call).await
}

/// [`SaeAt::refused`] for `sae_id` behind `side`.
pub async fn sae_refused(pair: &AgentPair, side: Side, sae_id: &str, call: &[&str]) -> String {
    SaeAt::pair(pair, side, sae_id).refused(call).await
}

/// Keys the KME delivered to `sae` (`call`: "enc" or "dec"), from status.
pub fn kme_delivered(s: &qkd_ipsec::ops::BoardSnapshot, sae: &str, call: &str) -> u64 {
    s.kme
        .iter()
        .filter(|e| e.sae == sae)
        .map(|e| match call {
            "enc" => e.enc_keys_total,
            "dec" => e.dec_keys_total,
            _ => panic!("no KME call {call}"),
        })
        .sum()
}

/// Requests the KME refused to `sae`, from status.
pub fn kme_refused(s: &qkd_ipsec::ops::BoardSnapshot, sae: &str) -> u64 {
    s.kme
        .iter()
        .filter(|e| e.sae == sae)
        .map(|e| e.refused_requests_total)
        .sum()
}
