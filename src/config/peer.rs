//! `[[peer]]`: a gateway this one runs a QKD link with, and
//! `[peer.channel]`, the settings of the TCP channel between the two.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Findings;
use super::etsi014::{Etsi014, Etsi014Section, refuse_simulated_settings};
use super::gateway::anchor;
use super::link::{self, LinkKind, LinkSection, PostprocessingSection};
use super::relay::{Relay, RelaySection};
use super::secrets::{SecretLocation, bootstrap_credential};
use super::values::{self, HumanDuration, PeerAddress, check_name};
use crate::keys::Role;
use crate::qkd::link::BlockConfig;

/// This gateway's QKD role on a link, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QkdRole {
    /// Alice: prepares the pulses, dials the peer's listener.
    Transmitter,
    /// Bob: measures the pulses, accepts the transmitter on `gateway.listen`.
    Receiver,
}

impl From<QkdRole> for Role {
    fn from(r: QkdRole) -> Role {
        match r {
            QkdRole::Transmitter => Role::Transmitter,
            QkdRole::Receiver => Role::Receiver,
        }
    }
}

/// `[[peer]]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSection {
    /// The peer gateway's name, exactly as its own `[gateway] name`.
    /// Required.
    ///
    /// Example: `name = "gw-b"`
    pub name: Option<String>,
    /// The peer's listener, `host:port` (IP address or DNS name). Required
    /// when this gateway is the transmitter, which dials; unused when it is
    /// the receiver.
    ///
    /// Example: `address = "198.51.100.2:9813"`
    #[serde(deserialize_with = "values::peer_address")]
    pub address: Option<PeerAddress>,
    /// THIS gateway's QKD role on the link: `"transmitter"` (prepares the
    /// pulses and dials the peer) or `"receiver"` (measures them and accepts
    /// the peer on `gateway.listen`). The peer's file must say the other.
    /// Required.
    ///
    /// Example: `role = "transmitter"`
    pub role: Option<QkdRole>,
    /// File with the secret pre-shared with this peer (the same bytes on
    /// both gateways; 0600, owned by the agent's user; at least 96 bytes).
    /// It authenticates the first channel handshake and the first QKD block;
    /// QKD keys take over after. Default: the systemd credential
    /// `bootstrap-<peer name>`.
    ///
    /// Example: `bootstrap_secret = "/etc/qkd-ipsec/credentials/bootstrap-gw-b"`
    pub bootstrap_secret: Option<PathBuf>,
    /// The kind of link (required) and its simulated optics; identical in
    /// both gateways' files (but for the lab-only key export).
    ///
    /// Example: `[peer.link]` then `kind = "simulated"`
    pub link: LinkSection,
    /// Block size, Cascade variant and security parameters; identical in
    /// both gateways' files (checked at run time by a digest).
    ///
    /// Example: `[peer.postprocessing]` then `block_sifted_bits = 200000`
    pub postprocessing: PostprocessingSection,
    /// The TCP channel to this peer.
    ///
    /// Example: `[peer.channel]` then `handshake_timeout = "10s"`
    pub channel: ChannelSection,
    /// The QKD device's key service, for `[peer.link] kind = "etsi014"`
    /// (required then, refused with `kind = "simulated"`).
    ///
    /// Example: `[peer.etsi014]` then `kme_url = "https://kme-a.example:8443"`
    pub etsi014: Option<Etsi014Section>,
    /// How keys are relayed to this peer, for `[peer.link] kind =
    /// "relayed"` (required then, refused otherwise).
    ///
    /// Example: `[peer.relay]` then `mode = "multipath"`
    pub relay: Option<RelaySection>,
    /// The SAE IDs of the applications behind this peer (its KME's local
    /// SAEs): a slave or master SAE ID in a KME request maps to this peer's
    /// key pool. Only with `[kme]`. Default: none.
    ///
    /// Example: `saes = ["sae-b"]`
    pub saes: Vec<String>,
    /// The peer KME's ID (`target_KME_ID` in the KME's status answers).
    /// Default: the peer's name.
    ///
    /// Example: `kme_id = "kme-b"`
    pub kme_id: Option<String>,
}

/// Smallest frame limit: every upper-layer message fits.
const MIN_FRAME_LIMIT: u32 = 1024;
/// Largest frame limit: a frame is buffered whole, so this bounds the
/// memory one authenticated peer can make this side hold.
const MAX_FRAME_LIMIT: u32 = 256 << 20;

/// `[peer.channel]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelSection {
    /// Time allowed to connect and complete the authenticated handshake.
    /// Default "10s".
    ///
    /// Example: `handshake_timeout = "10s"`
    pub handshake_timeout: HumanDuration,
    /// A keepalive is sent after this long without traffic. Default "10s".
    ///
    /// Example: `keepalive_interval = "10s"`
    pub keepalive_interval: HumanDuration,
    /// The connection is dropped after this long without receiving
    /// anything; must exceed `keepalive_interval`. Default "30s".
    ///
    /// Example: `idle_timeout = "30s"`
    pub idle_timeout: HumanDuration,
    /// First reconnect delay of the transmitter; it doubles on each failure
    /// up to `backoff_max` (with jitter). Default "250ms".
    ///
    /// Example: `backoff_min = "250ms"`
    pub backoff_min: HumanDuration,
    /// Longest reconnect delay. Default "30s".
    ///
    /// Example: `backoff_max = "30s"`
    pub backoff_max: HumanDuration,
    /// Largest simulated-fibre frame accepted (bytes), 1 KiB..=256 MiB.
    /// Default 16 MiB.
    ///
    /// Example: `max_fibre_frame_bytes = 16777216`
    pub max_fibre_frame_bytes: u32,
    /// Largest QKD post-processing message (bytes), 1 KiB..=256 MiB.
    /// Default 4 MiB.
    ///
    /// Example: `max_qkd_frame_bytes = 4194304`
    pub max_qkd_frame_bytes: u32,
    /// Largest rekey/control message (bytes), 1 KiB..=256 MiB. Default 64 KiB.
    ///
    /// Example: `max_control_frame_bytes = 65536`
    pub max_control_frame_bytes: u32,
}

impl Default for ChannelSection {
    fn default() -> Self {
        Self {
            handshake_timeout: HumanDuration::secs(10),
            keepalive_interval: HumanDuration::secs(10),
            idle_timeout: HumanDuration::secs(30),
            backoff_min: HumanDuration::millis(250),
            backoff_max: HumanDuration::secs(30),
            max_fibre_frame_bytes: 16 << 20,
            max_qkd_frame_bytes: 4 << 20,
            max_control_frame_bytes: 64 << 10,
        }
    }
}

impl ChannelSection {
    fn check(&self, prefix: &str, link: &LinkSection, f: &mut Findings) {
        if self.handshake_timeout.get().is_zero() {
            f.error(
                format!("{prefix}.handshake_timeout"),
                "must be positive, e.g. \"10s\"",
            );
        }
        if self.keepalive_interval.get().is_zero() {
            f.error(
                format!("{prefix}.keepalive_interval"),
                "must be positive, e.g. \"10s\"",
            );
        }
        if self.idle_timeout <= self.keepalive_interval {
            f.error(
                format!("{prefix}.idle_timeout"),
                format!(
                    "{} must exceed keepalive_interval ({}); three keepalive intervals is usual",
                    self.idle_timeout, self.keepalive_interval
                ),
            );
        }
        if self.backoff_min.get().is_zero() {
            f.error(
                format!("{prefix}.backoff_min"),
                "must be positive, e.g. \"250ms\"",
            );
        } else if self.backoff_max < self.backoff_min {
            f.error(
                format!("{prefix}.backoff_max"),
                format!(
                    "{} is below backoff_min ({})",
                    self.backoff_max, self.backoff_min
                ),
            );
        }
        for (field, v) in [
            ("max_fibre_frame_bytes", self.max_fibre_frame_bytes),
            ("max_qkd_frame_bytes", self.max_qkd_frame_bytes),
            ("max_control_frame_bytes", self.max_control_frame_bytes),
        ] {
            if !(MIN_FRAME_LIMIT..=MAX_FRAME_LIMIT).contains(&v) {
                f.error(
                    format!("{prefix}.{field}"),
                    format!("{v} bytes is outside {MIN_FRAME_LIMIT}..={MAX_FRAME_LIMIT}"),
                );
            }
        }
        let frame = link.expected_frame_bytes();
        if frame * 1.1 > self.max_fibre_frame_bytes as f64 {
            f.error(
                format!("{prefix}.max_fibre_frame_bytes"),
                format!(
                    "{} bytes is too small for a full fibre frame of link.frame_slots = {} \
                     (about {frame:.0} bytes); raise it or lower frame_slots",
                    self.max_fibre_frame_bytes, link.frame_slots
                ),
            );
        }
    }
}

/// `[[peer]]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    pub name: String,
    /// Where to dial; present when this side is the transmitter.
    pub address: Option<PeerAddress>,
    /// This gateway's QKD role on the link.
    pub role: Role,
    pub bootstrap_secret: SecretLocation,
    /// Where the link's keys come from.
    pub kind: LinkKind,
    /// The KME settings; `Some` exactly when `kind` is `Etsi014`.
    pub etsi014: Option<Etsi014>,
    /// The relay settings and paths; `Some` exactly when `kind` is
    /// `Relayed`.
    pub relay: Option<Relay>,
    /// Lab only: the fibre-key export file (anchored to the config file).
    pub lab_export_fibre_keys: Option<PathBuf>,
    /// Lab only: the seed file of a new pool (anchored to the config file).
    pub lab_seed_pool: Option<PathBuf>,
    pub link: LinkSection,
    pub postprocessing: PostprocessingSection,
    pub channel: ChannelSection,
    /// SAE IDs behind this peer (for the KME).
    pub saes: Vec<String>,
    /// The peer KME's ID, if configured.
    pub kme_id: Option<String>,
}

impl Peer {
    /// Whether the link is simulated: its keys are then only as secret as
    /// the peer channel's classical keys, and every view of it says so.
    pub fn is_simulated(&self) -> bool {
        self.kind == LinkKind::Simulated
    }

    /// Whether this side dials the peer (the transmitter does).
    pub fn dials(&self) -> bool {
        self.role == Role::Transmitter
    }

    /// The parameters of [`crate::qkd::link`] both sides run blocks with.
    pub fn block_config(&self) -> BlockConfig {
        link::block_config(&self.link, &self.postprocessing)
    }

    /// The simulated pulse clock (Hz) the transmitter paces frames to.
    pub fn pulse_rate_hz(&self) -> f64 {
        self.link.pulse_rate_hz
    }
}

impl PeerSection {
    pub(super) fn validate(self, prefix: &str, base: &Path, f: &mut Findings) -> Option<Peer> {
        let name = match &self.name {
            None => {
                f.error(
                    format!("{prefix}.name"),
                    "missing; use the peer gateway's own [gateway] name, e.g. name = \"gw-b\"",
                );
                None
            }
            Some(n) => check_name(n)
                .map_err(|why| f.error(format!("{prefix}.name"), why))
                .ok()
                .map(|()| n.clone()),
        };
        let role = self.role.map(Role::from);
        if role.is_none() {
            f.error(
                format!("{prefix}.role"),
                "missing; set this gateway's QKD role on the link: role = \"transmitter\" \
                 (dials the peer) or role = \"receiver\" (the peer dials in)",
            );
        }
        if role == Some(Role::Transmitter) && self.address.is_none() {
            f.error(
                format!("{prefix}.address"),
                "missing; this gateway is the transmitter and dials the peer: \
                 set address = \"host:port\" of the peer's listen address",
            );
        }
        let kind = check_kind(
            prefix,
            &self.link,
            self.etsi014.is_some(),
            self.relay.is_some(),
            f,
        );
        let etsi014 = match (kind, &self.etsi014) {
            (Some(LinkKind::Etsi014), Some(section)) => {
                refuse_simulated_settings(prefix, &self.link, &self.postprocessing, f);
                section.validate(&format!("{prefix}.etsi014"), base, f)
            }
            _ => None,
        };
        let relay = match (kind, &self.relay) {
            (Some(LinkKind::Relayed), Some(section)) => {
                refuse_simulated_settings(prefix, &self.link, &self.postprocessing, f);
                section.validate(&format!("{prefix}.relay"), f)
            }
            _ => None,
        };
        let link_ok = self.link.check(&format!("{prefix}.link"), f);
        let post_ok = self
            .postprocessing
            .check(&format!("{prefix}.postprocessing"), f);
        if link_ok {
            self.channel
                .check(&format!("{prefix}.channel"), &self.link, f);
        }
        if link_ok && post_ok {
            // Backstop: the QKD layers' own validation must agree with ours.
            if let Err(e) = link::block_config(&self.link, &self.postprocessing).validate() {
                f.error(prefix.to_string(), format!("link parameters rejected: {e}"));
            }
        }
        let name = name?;
        let bootstrap_secret = match self.bootstrap_secret {
            Some(p) => SecretLocation::File(anchor(base, &p)),
            None => SecretLocation::Credential(bootstrap_credential(&name)),
        };
        let lab_export_fibre_keys = self
            .link
            .lab_export_fibre_keys
            .as_deref()
            .map(|p| anchor(base, p));
        let lab_seed_pool = self.link.lab_seed_pool.as_deref().map(|p| anchor(base, p));
        Some(Peer {
            name,
            address: self.address,
            role: role?,
            bootstrap_secret,
            // A missing or unsupported kind is already an error; the peer
            // still takes part in the cross-peer checks so that every
            // finding shows at once.
            kind: kind.or(self.link.kind).unwrap_or(LinkKind::Simulated),
            etsi014,
            relay,
            lab_export_fibre_keys,
            lab_seed_pool,
            link: self.link,
            postprocessing: self.postprocessing,
            channel: self.channel,
            saes: self.saes,
            kme_id: self.kme_id,
        })
    }
}

/// The link kind: required; `etsi014` needs `[peer.etsi014]`, `relayed`
/// needs `[peer.relay]`, and each refuses the other's section. Returns the
/// kind when the agent can run it.
fn check_kind(
    prefix: &str,
    link: &LinkSection,
    has_etsi014: bool,
    has_relay: bool,
    f: &mut Findings,
) -> Option<LinkKind> {
    let path = format!("{prefix}.link.kind");
    let Some(kind) = link.kind else {
        f.error(
            path,
            "missing; say where this link's keys come from: kind = \"simulated\" \
             (simulated optics between the agents; keys only as secret as the peer \
             channel's bootstrap secret and HMAC keys, not quantum-secure), \
             kind = \"etsi014\" (a real QKD device over ETSI GS QKD 014) or \
             kind = \"relayed\" (no QKD link: keys relayed over other gateways' links)",
        );
        return None;
    };
    let mut ok = true;
    let mut refuse = |present: bool, section: &str, fix: &str| {
        if present {
            ok = false;
            f.error(
                format!("{prefix}.{section}"),
                format!(
                    "a kind = \"{}\" link takes no [peer.{section}]; {fix}",
                    kind.name()
                ),
            );
        }
    };
    if kind != LinkKind::Etsi014 {
        refuse(
            has_etsi014,
            "etsi014",
            "remove it or set [peer.link] kind = \"etsi014\"",
        );
    }
    if kind != LinkKind::Relayed {
        refuse(
            has_relay,
            "relay",
            "remove it or set [peer.link] kind = \"relayed\"",
        );
    }
    let needs = |present: bool, f: &mut Findings, what: &str| {
        if !present {
            f.error(
                path.clone(),
                format!("kind = \"{}\" needs {what}", kind.name()),
            );
        }
        present
    };
    // The lab stand-ins of a simulated link: warned about there, refused
    // on a real or relayed link.
    let lab_fields = [
        (
            "lab_export_fibre_keys",
            link.lab_export_fibre_keys.as_deref(),
            "the agent writes this link's fibre keys to",
            "whoever reads it can read every key the link makes (for `qkd-ipsec eve \
             --fibre-keys`)",
            "only a simulated link has a fibre stream to export keys of",
        ),
        (
            "lab_seed_pool",
            link.lab_seed_pool.as_deref(),
            "the new pool is filled with the bytes of",
            "those keys are as secret as that file, not QKD keys (for benches and labs)",
            "only a simulated link's pool may be seeded from a file",
        ),
    ];
    match kind {
        LinkKind::Simulated => {
            for (field, p, does, risk, _) in lab_fields {
                if let Some(p) = p {
                    f.warn(
                        format!("{prefix}.link.{field}"),
                        format!("LAB ONLY: {does} {}; {risk}", p.display()),
                    );
                }
            }
        }
        LinkKind::Etsi014 | LinkKind::Relayed => {
            for (field, p, _, _, only) in lab_fields {
                if p.is_some() {
                    ok = false;
                    f.error(
                        format!("{prefix}.link.{field}"),
                        format!("{only}; remove it with kind = \"{}\"", kind.name()),
                    );
                }
            }
            let what = if kind == LinkKind::Etsi014 {
                "the [peer.etsi014] section (the QKD device's ETSI GS QKD 014 key-delivery \
                 endpoint): kme_url, ca, client_cert, client_key, sae_id, peer_sae_id"
            } else {
                "the [peer.relay] section (mode, key_bytes, ...) and [network] with the QKD \
                 links the keys travel over"
            };
            let present = if kind == LinkKind::Etsi014 {
                has_etsi014
            } else {
                has_relay
            };
            ok &= needs(present, f, what);
        }
    }
    ok.then_some(kind)
}

/// Checks across peers: distinct names, none named like this gateway, a
/// listener when some peer dials in.
pub(super) fn check_peer_set(
    peers: &[Option<Peer>],
    gateway_name: Option<&str>,
    listen: Option<SocketAddr>,
    f: &mut Findings,
) {
    for (i, p) in peers.iter().enumerate() {
        let Some(p) = p else { continue };
        if let Some(j) = peers[..i]
            .iter()
            .position(|q| q.as_ref().is_some_and(|q| q.name == p.name))
        {
            f.error(
                format!("peer[{i}].name"),
                format!(
                    "{:?} is also the name of peer[{j}]; each peer needs its own name",
                    p.name
                ),
            );
        }
        if gateway_name == Some(p.name.as_str()) {
            f.error(
                format!("peer[{i}].name"),
                format!(
                    "{:?} is this gateway's own name; name the other gateway",
                    p.name
                ),
            );
        }
    }
    let receiver_of = peers
        .iter()
        .flatten()
        .find(|p| p.role == Role::Receiver)
        .map(|p| p.name.clone());
    if let Some(peer) = receiver_of
        && listen.is_none()
    {
        f.error(
            "gateway.listen",
            format!(
                "missing; this gateway is the QKD receiver for peer {peer:?}, which dials in: \
                 set listen = \"0.0.0.0:9813\" (or the address the peer dials)"
            ),
        );
    }
}
