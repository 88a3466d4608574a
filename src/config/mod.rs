//! The gateway's configuration: one TOML file per gateway, read once at
//! start, validated completely, and handed to the agent as typed values
//! ([`Config`]) that need no further parsing.
//!
//! Owns the file format (the `*Section` types, serde with
//! `deny_unknown_fields`, every field documented with an example), the
//! checks, and the conversions to the types of the layers below
//! ([`Peer::block_config`], [`Tunnel::policies`], [`Tunnel::outbound_sa`]).
//! It starts nothing, opens no socket and reads no secret except when asked
//! to check secret files ([`Config::check_secrets`]).
//!
//! A file looks like this (every section but `[gateway]` repeats; see
//! `deploy/gateway-a.toml` for a commented pair):
//!
//! ```toml
//! [gateway]
//! name = "gw-a"
//! listen = "0.0.0.0:9813"
//!
//! [[peer]]
//! name = "gw-b"
//! address = "198.51.100.2:9813"
//! role = "transmitter"
//!
//! [peer.link]
//! kind = "simulated"   # keys only as secret as the peer channel's classical keys
//!
//! [[tunnel]]
//! name = "a-b"
//! peer = "gw-b"
//! local_subnets = ["10.1.0.0/24"]
//! remote_subnets = ["10.2.0.0/24"]
//! local_endpoint = "192.0.2.1"
//! remote_endpoint = "198.51.100.2"
//! ```
//!
//! Errors are collected, not stopped at: [`Config::load`] reports every
//! problem it can find as a [`Finding`] with the field's path
//! (`tunnel[0].lifetime.hard_packets`), the line and column, and what to do.
//!
//! | file | owns |
//! |------|------|
//! | `document` | TOML parsing with positions, serde error recovery |
//! | `values` | durations, jitter, addresses, names |
//! | `gateway` | `[gateway]`: identity, paths, stop policy, XFRM ownership |
//! | `peer` | `[[peer]]` and `[peer.channel]` |
//! | `link` | `[peer.link]` and `[peer.postprocessing]`: the QKD link |
//! | `etsi014` | `[peer.etsi014]`: a QKD device's KME as the link's key source |
//! | `tunnel` | `[[tunnel]]`: SA templates, policies, reqids |
//! | `lifetime` | `[tunnel.lifetime]`: defaults and limits |
//! | `subnets` | subnet lists: CIDR parsing, pairing |
//! | `secrets` | where secret files are and whether they are safe |
//! | `pair` | cross-checking the two gateways' files |
//! | `forecast` | the key rate a link should give, and what tunnels need |

mod document;
#[doc(hidden)]
pub mod error_cases;
mod etsi014;
pub mod forecast;
mod gateway;
mod kme;
mod lifetime;
mod link;
pub mod pair;
mod peer;
mod relay;
mod secrets;
mod subnets;
mod tunnel;
mod values;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

pub use etsi014::{Etsi014, Etsi014Section, MAX_POOL_TARGET_BYTES, MIN_ETSI014_KEY_BITS};
pub use gateway::{Gateway, GatewaySection, OnStop, OwnershipSection};
pub use kme::{Kme, KmeSection, SaeSection};
pub use lifetime::{LifetimeSection, MAX_PACKETS_WITHOUT_ESN};
pub use link::{LinkKind, LinkSection, PostprocessingSection};
pub use peer::{ChannelSection, Peer, PeerSection, QkdRole};
pub use relay::{MIN_RELAYED_KEY_BYTES, Network, NetworkSection, Relay, RelayMode, RelaySection};
pub use secrets::{
    CHANNEL_BOOTSTRAP_BYTES, DEFAULT_CREDENTIALS_SOURCE, MIN_BOOTSTRAP_SECRET_BYTES,
    SecretLocation, bootstrap_credential,
};
pub use tunnel::{Keying, SaTemplate, Tunnel, TunnelMode, TunnelSection, derived_reqid};
pub use values::{HumanDuration, PeerAddress, RekeyJitter, check_name};

/// One problem (or warning) with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The field's path, e.g. `tunnel[0].lifetime.hard_packets`;
    /// `(syntax)` for TOML syntax errors.
    pub path: String,
    /// What is wrong and what to do about it.
    pub message: String,
    /// 1-based line and column in the file, when known.
    pub location: Option<(usize, usize)>,
}

impl Finding {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            location: None,
        }
    }

    pub(crate) fn at(mut self, location: Option<(usize, usize)>) -> Self {
        self.location = location;
        self
    }

    /// `file:line:col: path: message`, the form editors and grep understand.
    pub fn render(&self, file: &Path) -> String {
        match self.location {
            Some((line, col)) => format!("{}:{line}:{col}: {self}", file.display()),
            None => format!("{}: {self}", file.display()),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Why a configuration cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} has {} problem{}:\n{}",
        file.display(),
        findings.len(),
        if findings.len() == 1 { "" } else { "s" },
        findings.iter().map(|f| format!("  {}", f.render(file))).collect::<Vec<_>>().join("\n")
    )]
    Invalid {
        file: PathBuf,
        findings: Vec<Finding>,
    },
}

impl ConfigError {
    /// Every finding (empty for a read error).
    pub fn findings(&self) -> &[Finding] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { findings, .. } => findings,
        }
    }
}

/// The file as written: what serde reads. See [`Config`] for the checked
/// form the agent uses.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// This gateway. Example: `[gateway]` then `name = "gw-a"`.
    #[serde(default)]
    pub gateway: GatewaySection,
    /// The gateways this one runs a QKD link with; one `[[peer]]` each.
    #[serde(default)]
    pub peer: Vec<PeerSection>,
    /// IPsec tunnels keyed from those links; one `[[tunnel]]` each.
    #[serde(default)]
    pub tunnel: Vec<TunnelSection>,
    /// The ETSI GS QKD 014 key service for local applications, served on
    /// `gateway.kme_listen`; off when absent.
    ///
    /// Example: `[kme]` then `ca = "/etc/qkd-ipsec/kme/sae-ca.pem"`
    #[serde(default)]
    pub kme: Option<KmeSection>,
    /// The QKD links of the whole network, for relayed peers and relaying.
    ///
    /// Example: `[network]` then `links = [["gw-a", "gw-b"], ["gw-b", "gw-c"]]`
    #[serde(default)]
    pub network: Option<NetworkSection>,
}

/// What [`ConfigFile::validate`] builds.
type Checked = (
    Gateway,
    Vec<Peer>,
    Vec<Tunnel>,
    Option<Kme>,
    Option<Network>,
);

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    pub gateway: Gateway,
    pub peers: Vec<Peer>,
    pub tunnels: Vec<Tunnel>,
    /// The KME for local applications, when `gateway.kme_listen` is set.
    pub kme: Option<Kme>,
    /// The network's QKD links, when `[network]` is present.
    pub network: Option<Network>,
    /// Legal but probably unwanted settings (printed by `check-config`,
    /// logged by the agent at start).
    pub warnings: Vec<Finding>,
    positions: Locator,
}

/// Maps paths to line/column for findings made after parsing.
#[derive(Clone)]
struct Locator {
    spans: Vec<(String, (usize, usize))>,
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Locator")
    }
}

impl Locator {
    fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some((_, lc)) = self.spans.iter().find(|(q, _)| q == p) {
                return Some(*lc);
            }
            p = &p[..p.rfind(['.', '['])?];
        }
    }
}

/// Collects findings while a section is checked.
#[derive(Default)]
pub(crate) struct Findings {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl Findings {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Finding::new(path, message));
    }

    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Finding::new(path, message));
    }
}

impl Config {
    /// Reads, parses and checks `file`. Relative paths inside it are taken
    /// relative to the file's directory.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Self::parse(&text, file)
    }

    /// Parses and checks `text` as if read from `file` (which names it in
    /// messages and anchors relative paths; it is not read).
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let parsed = document::parse::<ConfigFile>(text);
        let deleted = parsed.deleted;
        let mut errors = parsed.findings;
        let spans = parsed.positions.all_line_cols(text);
        let locator = Locator { spans };
        let base = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut config = None;
        let mut warnings = Vec::new();
        if let Some(doc) = parsed.value {
            let mut f = Findings::default();
            let checked = doc.validate(base, &mut f);
            let relevant = |finding: &Finding| {
                !deleted.iter().any(|d| {
                    finding.path == *d
                        || finding.path.starts_with(&format!("{d}."))
                        || finding.path.starts_with(&format!("{d}["))
                })
            };
            errors.extend(f.errors.into_iter().filter(|x| relevant(x)));
            warnings = f.warnings;
            config = checked;
        }
        for finding in errors.iter_mut().chain(warnings.iter_mut()) {
            if finding.location.is_none() {
                finding.location = locator.locate(&finding.path);
            }
        }
        document::sort_by_location(&mut errors);
        match config {
            Some((gateway, peers, tunnels, kme, network)) if errors.is_empty() => Ok(Config {
                file: file.to_path_buf(),
                gateway,
                peers,
                tunnels,
                kme,
                network,
                warnings,
                positions: locator,
            }),
            _ => Err(ConfigError::Invalid {
                file: file.to_path_buf(),
                findings: errors,
            }),
        }
    }

    /// The peer called `name`.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The tunnels keyed from the link to peer `name`.
    pub fn tunnels_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Tunnel> + 'a {
        self.tunnels.iter().filter(move |t| t.peer == name)
    }

    /// Adds line/column to findings about this file's paths.
    pub(crate) fn locate(&self, mut findings: Vec<Finding>) -> Vec<Finding> {
        for f in &mut findings {
            if f.location.is_none() {
                f.location = self.positions.locate(&f.path);
            }
        }
        findings
    }
}

impl ConfigFile {
    /// Checks every section and builds the typed values; `None` when any
    /// section could not be built (its problems are in `f`).
    fn validate(self, base: &Path, f: &mut Findings) -> Option<Checked> {
        let (gateway_name, listen) = (self.gateway.name.clone(), self.gateway.listen);
        let kme_listen = self.gateway.kme_listen;
        let gateway = self.gateway.validate(base, f);
        let peer_roles: Vec<(String, Option<crate::keys::Role>)> = self
            .peer
            .iter()
            .filter_map(|p| Some((p.name.clone()?, p.role.map(Into::into))))
            .collect();
        let mut peers: Vec<Option<Peer>> = self
            .peer
            .into_iter()
            .enumerate()
            .map(|(i, p)| p.validate(&format!("peer[{i}]"), base, f))
            .collect();
        peer::check_peer_set(&peers, gateway_name.as_deref(), listen, f);
        let network = match &self.network {
            Some(n) => n.validate(base, f).map(Some),
            None => Some(None),
        };
        if let (Some(network), Some(me)) = (&network, &gateway_name) {
            relay::check_network(network.as_ref(), me, &mut peers, f);
        }
        let kme = match (kme_listen, self.kme) {
            (Some(addr), Some(k)) => {
                Some(k.validate(addr, gateway_name.as_deref(), &peers, base, f))
            }
            (Some(_), None) => {
                f.error(
                    "gateway.kme_listen",
                    "the KME needs a [kme] section (CA, certificate, key and [[kme.sae]]); \
                     add it, or remove kme_listen",
                );
                Some(None)
            }
            (None, Some(_)) => {
                f.warn(
                    "kme",
                    "[kme] is configured but gateway.kme_listen is not: the KME is off",
                );
                None
            }
            (None, None) => None,
        };
        if kme.is_none()
            && let Some(i) = peers
                .iter()
                .position(|p| p.as_ref().is_some_and(|p| !p.saes.is_empty()))
        {
            f.warn(
                format!("peer[{i}].saes"),
                "SAEs are listed but the KME is off (no gateway.kme_listen)",
            );
        }
        let ownership = gateway.as_ref().map(|g| &g.ownership);
        let tunnels: Vec<Option<Tunnel>> = self
            .tunnel
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.validate(&format!("tunnel[{i}]"), &peer_roles, ownership, f))
            .collect();
        tunnel::check_tunnel_set(&tunnels, f);
        if peers.is_empty() {
            f.error(
                "peer",
                "no [[peer]] section: a gateway needs at least one peer to run a QKD link with",
            );
        }
        let peers: Option<Vec<Peer>> = peers.into_iter().collect();
        let tunnels: Option<Vec<Tunnel>> = tunnels.into_iter().collect();
        if let Some(p) = &peers {
            forecast::check_supply(p, tunnels.as_deref().unwrap_or(&[]), f);
        }
        let kme = match kme {
            Some(k) => Some(k?),
            None => None,
        };
        Some((gateway?, peers?, tunnels?, kme, network?))
    }
}
