//! The two gateway configurations and secret files of an
//! [`super::AgentPair`]: what the fixture can be asked for
//! ([`AgentPairOptions`]) and the TOML it writes for each agent.
//!
//! Owns only text and file layout; it starts nothing. The configs are
//! checked with [`crate::config::Config::parse`] before any agent starts,
//! so a fixture bug shows up as a config finding, not as an agent that
//! mysteriously refuses to start.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Keying, OnStop};
use crate::tls::TlsFiles;

use super::Testbed;
use super::config_sections::{
    GatewaySection, KmeSection, SimulatedLink, TunnelSection, duration_str, path_str, quoted,
    render_channel, toml_list,
};

/// The receiver's peer-channel port (on its WAN address).
pub const PEER_PORT: u16 = 9813;
/// Eve's listening port (on the WAN address of the gateway she runs in).
pub const EVE_PORT: u16 = 9815;
/// The tunnel's name in both configs.
pub const TUNNEL_NAME: &str = "site-a-site-b";
/// Each gateway's KME port (the agent's ETSI GS QKD 014 server).
pub const KME_PORT: u16 = 8443;

/// One of the two gateways. A is the QKD transmitter (and, by default,
/// the tunnel's rekey initiator); B is the receiver and listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::A, Side::B];

    /// The gateway's name in the configs (`gw-a`, `gw-b`).
    pub fn gateway_name(self) -> &'static str {
        match self {
            Side::A => "gw-a",
            Side::B => "gw-b",
        }
    }

    /// The SAE ID of the host behind this gateway (its client certificate's
    /// CN) when the agents serve keys to applications.
    pub fn sae_id(self) -> &'static str {
        match self {
            Side::A => "sae-a",
            Side::B => "sae-b",
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.gateway_name())
    }
}

/// SA lifetimes written to `[tunnel.lifetime]`; `None` leaves the agent's
/// default (derived from the rekey interval).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LifetimeOptions {
    pub soft_seconds: Option<u64>,
    pub hard_seconds: Option<u64>,
    pub soft_packets: Option<u64>,
    pub hard_packets: Option<u64>,
}

/// An intercept–resend eavesdropper between the gateways: gw-a dials Eve,
/// Eve forwards to gw-b. The fibre stream is sealed, so gw-a exports its
/// fibre keys (`lab_export_fibre_keys`) and Eve is handed them
/// (`--fibre-keys`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EveOptions {
    /// Whose namespace Eve runs in (she listens on that gateway's WAN
    /// address, port [`EVE_PORT`]).
    pub side: Side,
    /// Initial fraction of pulses intercepted (0..=1); changed at run time
    /// with [`super::AgentPair::set_eve_fraction`].
    pub fraction: f64,
    /// Record the transmitter's classical frames of the first connection
    /// (`eve --record`) for `eve hostile --attack replay`; see
    /// [`super::AgentPair::eve_recording`].
    pub record: bool,
}

/// The agents also serve keys to local applications over ETSI GS QKD 014
/// (`kme_listen` on every address, port [`KME_PORT`]): the fixture makes a
/// lab CA, a KME certificate per gateway and client certificates for the
/// hosts' SAEs ([`Side::sae_id`]) and for `extra_saes`, under the pair's
/// `pki` directory (see [`super::AgentPair::sae_tls`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KmeOptions {
    /// Further SAEs: the gateway whose KME serves each, and its SAE ID.
    /// Every SAE may get keys shared with the other gateway, whose KME
    /// serves its partner.
    pub extra_saes: Vec<(Side, String)>,
    /// Addresses besides its LAN address that each KME's certificate names
    /// (index 0: gw-a, 1: gw-b).
    pub extra_hosts: [Vec<IpAddr>; 2],
}

/// The link takes its keys from two KMEs over ETSI GS QKD 014
/// (`kind = "etsi014"`) instead of simulated optics. Index 0 is gw-a (the
/// master, calling `enc_keys`), 1 is gw-b.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etsi014Options {
    pub kme_url: [String; 2],
    pub tls: [TlsFiles; 2],
    pub sae_id: [String; 2],
    pub key_size: u32,
    pub batch: u32,
    pub pool_target_bytes: u64,
    pub retry_max: Duration,
}

/// What an [`super::AgentPair`] sets up.
#[derive(Debug, Clone)]
pub struct AgentPairOptions {
    /// Namespace prefix tag (see [`Testbed::unique_prefix`]).
    pub tag: String,
    /// The `qkd-ipsec` executable the agents (and Eve) run.
    pub binary: PathBuf,
    /// Simulated fibre length.
    pub length_km: f64,
    /// Sifted key bits per QKD block.
    pub block_sifted_bits: usize,
    pub rekey_interval: Duration,
    /// Fraction of the interval by which a rekey may come early (0 = exact).
    pub rekey_jitter: f64,
    pub lifetime: LifetimeOptions,
    pub on_stop: OnStop,
    pub eve: Option<EveOptions>,
    /// Length of the shared bootstrap secret (at least
    /// [`crate::config::MIN_BOOTSTRAP_SECRET_BYTES`]).
    pub bootstrap_bytes: usize,
    /// LAB ONLY: fill both new pools with this many identical random bytes
    /// (`[peer.link] lab_seed_pool`, at most 1 MiB), so that a bench starts
    /// with full pools instead of waiting for the simulated link; status
    /// marks the pools as lab-seeded. 0 (the default): no seed.
    pub lab_seed_bytes: usize,
    /// `QKD_IPSEC_LOG` for the agents (tracing EnvFilter syntax).
    pub log_filter: String,
    /// Peer-channel reconnect backoff cap: short, so that a restarted agent
    /// is redialled within seconds.
    pub backoff_max: Duration,
    /// Tunnels besides the one between the sites, for scale benches: each
    /// joins a /24 pair of its own with no hosts behind it (see
    /// [`super::bulk_tunnel_subnets`]); at most
    /// [`super::MAX_BULK_TUNNELS`].
    pub bulk_tunnels: usize,
    /// The simulated link's pulse rate. A low rate idles the QKD link, for
    /// benches that seed the pools (`lab_seed_bytes`) and want the
    /// tunnels' own cost.
    pub pulse_rate_hz: f64,
    /// Serve keys to applications (see [`KmeOptions`]).
    pub kme: Option<KmeOptions>,
    /// Keys from KMEs instead of the simulated link.
    pub etsi014: Option<Etsi014Options>,
}

impl AgentPairOptions {
    /// The defaults: the README's 25 km link (fast enough to key tunnels
    /// within seconds), a 30 s rekey interval without jitter, lifetimes
    /// derived from it, `on_stop = "keep"`, no Eve, a 512-byte bootstrap
    /// secret (what the install guide generates).
    pub fn new(tag: &str, binary: impl Into<PathBuf>) -> Self {
        Self {
            tag: tag.to_string(),
            binary: binary.into(),
            length_km: 25.0,
            block_sifted_bits: 200_000,
            rekey_interval: Duration::from_secs(30),
            rekey_jitter: 0.0,
            lifetime: LifetimeOptions::default(),
            on_stop: OnStop::Keep,
            eve: None,
            bootstrap_bytes: 512,
            lab_seed_bytes: 0,
            log_filter: "info".to_string(),
            backoff_max: Duration::from_secs(2),
            bulk_tunnels: 0,
            pulse_rate_hz: 1e9,
            kme: None,
            etsi014: None,
        }
    }
}

/// Where one gateway's files are, under the pair's private directory.
#[derive(Debug, Clone)]
pub struct GatewayFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub pool_key: PathBuf,
    pub bootstrap: PathBuf,
    pub state_dir: PathBuf,
    pub status_socket: PathBuf,
    /// stdout + stderr of every run of this agent, appended.
    pub log: PathBuf,
    /// The transmitter's lab export of fibre keys, when Eve is configured.
    pub fibre_keys: PathBuf,
    /// LAB ONLY: the pool seed, when `lab_seed_bytes` is set (the same
    /// bytes on both sides).
    pub lab_seed: PathBuf,
    /// The KME's server identity, when the agents serve keys.
    pub kme: TlsFiles,
}

impl GatewayFiles {
    pub(crate) fn under(root: &Path, side: Side) -> Self {
        let dir = root.join(side.gateway_name());
        Self {
            config: dir.join("gateway.toml"),
            pool_key: dir.join("pool-key"),
            bootstrap: dir.join(format!("bootstrap-{}", side.other().gateway_name())),
            state_dir: dir.join("state"),
            status_socket: dir.join("status.sock"),
            log: dir.join("agent.log"),
            fibre_keys: dir.join("fibre.keys"),
            lab_seed: dir.join(format!("lab-seed-{}", side.other().gateway_name())),
            kme: TlsFiles {
                ca: lab_ca_file(root),
                cert: pki_dir(root).join(format!("kme-{}.pem", side.gateway_name())),
                key: pki_dir(root).join(format!("kme-{}.key", side.gateway_name())),
            },
            dir,
        }
    }
}

/// The pair's lab PKI (CA, KME and SAE certificates).
pub(crate) fn pki_dir(root: &Path) -> PathBuf {
    root.join("pki")
}

/// The lab CA's name; `LabCa` writes `<name>-ca.pem`.
pub(crate) const LAB_CA_NAME: &str = "lab";

pub(crate) fn lab_ca_file(root: &Path) -> PathBuf {
    pki_dir(root).join(format!("{LAB_CA_NAME}-ca.pem"))
}

/// The client identity (certificate with CN `sae_id`, key, lab CA) of an
/// SAE of the lab PKI under `root`.
pub(crate) fn sae_tls(root: &Path, sae_id: &str) -> TlsFiles {
    let dir = pki_dir(root);
    TlsFiles {
        ca: lab_ca_file(root),
        cert: dir.join(format!("{sae_id}.pem")),
        key: dir.join(format!("{sae_id}.key")),
    }
}

/// Every SAE served by `side`'s KME.
pub(crate) fn saes_of(side: Side, kme: &KmeOptions) -> Vec<String> {
    std::iter::once(side.sae_id().to_string())
        .chain(
            kme.extra_saes
                .iter()
                .filter(|(s, _)| *s == side)
                .map(|(_, id)| id.clone()),
        )
        .collect()
}

/// The receiver's peer-channel address.
pub(crate) fn receiver_addr(bed: &Testbed) -> SocketAddr {
    SocketAddr::new(bed.gw_b.wan, PEER_PORT)
}

/// Where Eve listens, if she is configured.
pub(crate) fn eve_addr(bed: &Testbed, eve: &EveOptions) -> SocketAddr {
    let ip: IpAddr = match eve.side {
        Side::A => bed.gw_a.wan,
        Side::B => bed.gw_b.wan,
    };
    SocketAddr::new(ip, EVE_PORT)
}

/// The TOML of `side`'s configuration.
pub(crate) fn render_config(
    side: Side,
    opts: &AgentPairOptions,
    bed: &Testbed,
    files: &GatewayFiles,
) -> String {
    let (me, peer) = match side {
        Side::A => (&bed.gw_a, &bed.gw_b),
        Side::B => (&bed.gw_b, &bed.gw_a),
    };
    let mut t = String::new();
    let mut line = |s: String| {
        t.push_str(&s);
        t.push('\n');
    };
    GatewaySection {
        name: side.gateway_name(),
        listen: (side == Side::B).then(|| receiver_addr(bed)),
        state_dir: &files.state_dir,
        status_socket: &files.status_socket,
        pool_key: &files.pool_key,
        on_stop: opts.on_stop,
    }
    .render(&mut line);
    if opts.kme.is_some() {
        line(format!("kme_listen = \"0.0.0.0:{KME_PORT}\""));
    }
    line(String::new());
    line("[[peer]]".into());
    line(format!("name = {}", quoted(side.other().gateway_name())));
    match side {
        Side::A => {
            let dial = match &opts.eve {
                Some(eve) => eve_addr(bed, eve),
                None => receiver_addr(bed),
            };
            line("role = \"transmitter\"".into());
            line(format!("address = {}", quoted(&dial.to_string())));
        }
        Side::B => line("role = \"receiver\"".into()),
    }
    line(format!("bootstrap_secret = {}", path_str(&files.bootstrap)));
    if let Some(kme) = &opts.kme {
        line(format!("saes = {}", toml_list(&saes_of(side.other(), kme))));
    }
    line(String::new());
    if let Some(e) = &opts.etsi014 {
        render_etsi014(side, e, &mut line);
    } else {
        SimulatedLink {
            length_km: opts.length_km,
            pulse_rate_hz: opts.pulse_rate_hz,
            block_sifted_bits: opts.block_sifted_bits,
            // Only the transmitter exports: Eve attacks with its keys.
            lab_export_fibre_keys: (side == Side::A && opts.eve.is_some())
                .then_some(files.fibre_keys.as_path()),
            lab_seed_pool: (opts.lab_seed_bytes > 0).then_some(files.lab_seed.as_path()),
        }
        .render(&mut line);
    }
    render_channel(opts.backoff_max, &mut line);
    TunnelSection {
        name: TUNNEL_NAME,
        peer: side.other().gateway_name(),
        local_site: me.site,
        remote_site: peer.site,
        local_endpoint: me.wan,
        remote_endpoint: peer.wan,
        keying: Keying::Direct,
        rekey_interval: opts.rekey_interval,
        rekey_jitter: opts.rekey_jitter,
        lifetime: &opts.lifetime,
    }
    .render(&mut line);
    t.push_str(&super::bulk_tunnels::render(side, opts, bed));
    if let Some(kme) = &opts.kme {
        t.push_str(&render_kme(side, kme, files));
    }
    t
}

fn render_etsi014(side: Side, e: &Etsi014Options, line: &mut impl FnMut(String)) {
    let i = side.index();
    line("[peer.link]".into());
    // Keys from a QKD device's KME: no optics, no post-processing here.
    line("kind = \"etsi014\"".into());
    line(String::new());
    line("[peer.etsi014]".into());
    line(format!("kme_url = {}", quoted(&e.kme_url[i])));
    line(format!("ca = {}", path_str(&e.tls[i].ca)));
    line(format!("client_cert = {}", path_str(&e.tls[i].cert)));
    line(format!("client_key = {}", path_str(&e.tls[i].key)));
    line(format!("sae_id = {}", quoted(&e.sae_id[i])));
    line(format!("peer_sae_id = {}", quoted(&e.sae_id[1 - i])));
    line(format!("key_size = {}", e.key_size));
    line(format!("batch = {}", e.batch));
    line(format!("pool_target_bytes = {}", e.pool_target_bytes));
    line(format!("retry_max = {}", duration_str(e.retry_max)));
    line(String::new());
}

/// `[kme]`: this gateway's KME identity and the SAEs it serves, each
/// allowed the keys it shares with the other gateway.
fn render_kme(side: Side, kme: &KmeOptions, files: &GatewayFiles) -> String {
    let mut t = String::from("\n");
    KmeSection {
        kme_id: &format!("kme-{}", side.gateway_name()),
        tls: &files.kme,
        saes: saes_of(side, kme)
            .into_iter()
            .map(|id| (id, vec![side.other().gateway_name()]))
            .collect(),
    }
    .render(&mut |l| {
        t.push_str(&l);
        t.push('\n');
    });
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, pair};
    use crate::netns::Netns;
    use crate::testbed::{Gateway, Host};
    use crate::xfrm::Prefix;

    /// The standard addressing without namespaces (nothing is created).
    fn paper_testbed() -> Testbed {
        let v4 = |a, b, c, d| IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d));
        let gw = |name: &str, wan, lan, site| Gateway {
            name: name.into(),
            netns: Netns::Current,
            wan,
            lan,
            site,
        };
        let host = |name: &str, addr| Host {
            name: name.into(),
            netns: Netns::Current,
            addr,
        };
        Testbed {
            prefix: "paper".into(),
            gw_a: gw(
                "a",
                v4(192, 0, 2, 1),
                v4(10, 1, 0, 1),
                Prefix::new(v4(10, 1, 0, 0), 24),
            ),
            gw_b: gw(
                "b",
                v4(192, 0, 2, 2),
                v4(10, 2, 0, 1),
                Prefix::new(v4(10, 2, 0, 0), 24),
            ),
            host_a: host("ha", v4(10, 1, 0, 2)),
            host_b: host("hb", v4(10, 2, 0, 2)),
            namespaces: crate::testbed::OwnedNamespaces::new("paper"),
        }
    }

    fn both(opts: &AgentPairOptions) -> (Config, Config) {
        let bed = paper_testbed();
        let root = Path::new("/nonexistent/qkd-pair");
        let parse = |side| {
            let files = GatewayFiles::under(root, side);
            let text = render_config(side, opts, &bed, &files);
            Config::parse(&text, &files.config).unwrap_or_else(|e| panic!("{side}: {e}\n{text}"))
        };
        (parse(Side::A), parse(Side::B))
    }

    fn assert_pair_agrees(a: &Config, b: &Config) {
        let findings = pair::check_pair(a, b, pair::PairCredentials::default());
        assert!(
            findings.is_empty(),
            "{:?}",
            findings.iter().map(|f| f.render()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn rendered_configs_are_valid_and_match_each_other() {
        let mut opts = AgentPairOptions::new("t", "/bin/true");
        opts.rekey_interval = Duration::from_secs(2);
        opts.lifetime = LifetimeOptions {
            soft_packets: Some(200),
            hard_packets: Some(10_000),
            ..LifetimeOptions::default()
        };
        opts.on_stop = OnStop::RemoveAll;
        let (a, b) = both(&opts);
        assert_pair_agrees(&a, &b);
        assert_eq!(a.tunnels[0].rekey_interval, Duration::from_secs(2));
        assert_eq!(a.gateway.on_stop, OnStop::RemoveAll);
        assert_eq!(b.gateway.listen, Some("192.0.2.2:9813".parse().unwrap()));
        assert!(a.tunnels[0].initiator && !b.tunnels[0].initiator);
    }

    #[test]
    fn with_eve_the_transmitter_dials_her() {
        let mut opts = AgentPairOptions::new("t", "/bin/true");
        opts.eve = Some(EveOptions {
            side: Side::B,
            fraction: 1.0,
            record: false,
        });
        let (a, b) = both(&opts);
        let dial = a.peers[0].address.as_ref().expect("address").to_string();
        assert_eq!(dial, format!("192.0.2.2:{EVE_PORT}"));
        // Only the transmitter exports the fibre keys Eve needs.
        let root = Path::new("/nonexistent/qkd-pair");
        assert_eq!(
            a.peers[0].lab_export_fibre_keys.as_deref(),
            Some(GatewayFiles::under(root, Side::A).fibre_keys.as_path())
        );
        assert_eq!(b.peers[0].lab_export_fibre_keys, None);
    }

    #[test]
    fn a_lab_seed_is_named_on_both_sides_only_when_asked_for() {
        let mut opts = AgentPairOptions::new("t", "/bin/true");
        let (a, b) = both(&opts);
        assert_eq!(
            (&a.peers[0].lab_seed_pool, &b.peers[0].lab_seed_pool),
            (&None, &None)
        );
        opts.lab_seed_bytes = 4096;
        let (a, b) = both(&opts);
        let root = Path::new("/nonexistent/qkd-pair");
        for (cfg, side) in [(&a, Side::A), (&b, Side::B)] {
            assert_eq!(
                cfg.peers[0].lab_seed_pool.as_deref(),
                Some(GatewayFiles::under(root, side).lab_seed.as_path())
            );
        }
    }

    #[test]
    fn etsi014_pairs_take_keys_from_their_kmes_and_serve_none() {
        let mut opts = AgentPairOptions::new("t", "/bin/true");
        let tls = |id: &str| TlsFiles {
            ca: "/pki/lab-ca.pem".into(),
            cert: format!("/pki/{id}.pem").into(),
            key: format!("/pki/{id}.key").into(),
        };
        opts.etsi014 = Some(Etsi014Options {
            kme_url: [
                "https://172.16.0.1:8443".into(),
                "https://172.16.1.1:8443".into(),
            ],
            tls: [tls("sae-2a"), tls("sae-2b")],
            sae_id: ["sae-2a".into(), "sae-2b".into()],
            key_size: 256,
            batch: 4,
            pool_target_bytes: 512,
            retry_max: Duration::from_secs(2),
        });
        let (a, b) = both(&opts);
        assert_pair_agrees(&a, &b);
        let (ea, eb) = (
            a.peers[0].etsi014.as_ref().expect("gw-a's etsi014"),
            b.peers[0].etsi014.as_ref().expect("gw-b's etsi014"),
        );
        assert_eq!(ea.sae_id, "sae-2a");
        assert_eq!(eb.peer_sae_id, "sae-2a");
        assert_eq!(eb.kme_url, "https://172.16.1.1:8443");
    }
}
