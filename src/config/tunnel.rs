//! `[[tunnel]]`: an IPsec tunnel between subnets behind two gateways, keyed
//! from the QKD link to one peer, and its conversion to what
//! [`crate::xfrm`] installs: SA templates (everything but SPI and key) and
//! policies (out, in, and fwd for tunnel mode).

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::Findings;
use super::lifetime::LifetimeSection;
use super::subnets;
use super::values::{self, HumanDuration, RekeyJitter, check_name};
use crate::keys::Role;
use crate::secret::SaKey;
use crate::xfrm::state::{LEGACY_REPLAY_WINDOW_MAX, REPLAY_WINDOW_MAX};
use crate::xfrm::{
    Direction, FIRST_USABLE_SPI, Lifetimes, Mode, Ownership, PolicySpec, PolicyTemplate, Prefix,
    ReplayProtection, SaSpec, TrafficSelector, XfrmMark,
};

/// IPsec mode as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelMode {
    #[default]
    Tunnel,
    Transport,
}

/// How SA keys are made from the pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keying {
    /// Each direction's SA key (32-byte AES key + 4-byte salt) is taken
    /// straight from the pool: 72 bytes of QKD key per rekey.
    #[default]
    Direct,
    /// The initiator draws a random session key and sends it encrypted
    /// under a 32-byte pool key with AES-256-GCM (the "SSL + PSK" scheme of
    /// the original design): 32 bytes of QKD key per rekey.
    Wrapped,
}

impl Keying {
    pub fn name(self) -> &'static str {
        match self {
            Keying::Direct => "direct",
            Keying::Wrapped => "wrapped",
        }
    }

    /// Pool bytes one rekey of both directions consumes.
    pub fn pool_bytes_per_rekey(self) -> u64 {
        match self {
            Keying::Direct => 2 * 36,
            Keying::Wrapped => 32,
        }
    }
}

/// `[[tunnel]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelSection {
    /// The tunnel's name, the same in both gateways' files (rekey messages
    /// name it). Required.
    ///
    /// Example: `name = "site-a-site-b"`
    pub name: Option<String>,
    /// The `[[peer]]` whose QKD link keys this tunnel. Required.
    ///
    /// Example: `peer = "gw-b"`
    pub peer: Option<String>,
    /// Subnets behind this gateway (CIDR). Required in tunnel mode; in
    /// transport mode they default to `local_endpoint` alone.
    ///
    /// Example: `local_subnets = ["10.1.0.0/24", "2001:db8:1::/64"]`
    pub local_subnets: Option<Vec<String>>,
    /// Subnets behind the peer gateway (CIDR); the peer's
    /// `local_subnets`. Required in tunnel mode.
    ///
    /// Example: `remote_subnets = ["10.2.0.0/24"]`
    pub remote_subnets: Option<Vec<String>>,
    /// This gateway's address on the path to the peer: the outer source of
    /// ESP packets it sends. Required.
    ///
    /// Example: `local_endpoint = "192.0.2.1"`
    #[serde(deserialize_with = "values::ip_addr")]
    pub local_endpoint: Option<IpAddr>,
    /// The peer gateway's address: the outer destination. Required.
    ///
    /// Example: `remote_endpoint = "198.51.100.2"`
    #[serde(deserialize_with = "values::ip_addr")]
    pub remote_endpoint: Option<IpAddr>,
    /// `"tunnel"` (default: whole IP packets between the subnets, inside
    /// ESP between the gateways) or `"transport"` (the gateways' own traffic).
    ///
    /// Example: `mode = "tunnel"`
    pub mode: TunnelMode,
    /// The reqid linking this tunnel's SAs and policies, inside
    /// `gateway.ownership.reqids`. Default: derived from the tunnel's name
    /// (stable across restarts and reordering).
    ///
    /// Example: `reqid = 0x5144_0001`
    pub reqid: Option<u32>,
    /// How often the initiator rekeys. Default "10m".
    ///
    /// Example: `rekey_interval = "10m"`
    pub rekey_interval: HumanDuration,
    /// How much earlier than `rekey_interval` each rekey may happen (drawn
    /// at random), so tunnels do not all draw keys at once: a fraction of
    /// the interval (≤ 0.5) or a duration. Default 0.1.
    ///
    /// Example: `rekey_jitter = "30s"`
    pub rekey_jitter: RekeyJitter,
    /// Kernel lifetimes of each SA.
    ///
    /// Example: `[tunnel.lifetime]` then `hard_seconds = 1800`
    pub lifetime: LifetimeSection,
    /// Anti-replay window of inbound SAs (packets); 0 disables it (not
    /// advised). Up to 4096. Default 32.
    ///
    /// Example: `replay_window = 128`
    pub replay_window: u32,
    /// Extended 64-bit sequence numbers (RFC 4303 §2.2.1); both gateways
    /// must agree. Without ESN an SA carries at most 2^32 − 1 packets.
    /// Default false.
    ///
    /// Example: `esn = true`
    pub esn: bool,
    /// `"direct"` (default: SA keys straight from the pool) or `"wrapped"`
    /// (a random session key sent encrypted under a pool key).
    ///
    /// Example: `keying = "direct"`
    pub keying: Keying,
    /// Whether this gateway starts the rekeys of this tunnel. Exactly one
    /// side may: default true on the QKD transmitter, false on the receiver.
    /// If set, set the opposite in the peer's file.
    ///
    /// Example: `initiator = true`
    pub initiator: Option<bool>,
}

impl Default for TunnelSection {
    fn default() -> Self {
        Self {
            name: None,
            peer: None,
            local_subnets: None,
            remote_subnets: None,
            local_endpoint: None,
            remote_endpoint: None,
            mode: TunnelMode::Tunnel,
            reqid: None,
            rekey_interval: HumanDuration::secs(600),
            rekey_jitter: RekeyJitter::default(),
            lifetime: LifetimeSection::default(),
            replay_window: LEGACY_REPLAY_WINDOW_MAX,
            esn: false,
            keying: Keying::Direct,
            initiator: None,
        }
    }
}

/// `[[tunnel]]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Tunnel {
    pub name: String,
    /// The peer whose link keys this tunnel.
    pub peer: String,
    pub local_subnets: Vec<Prefix>,
    pub remote_subnets: Vec<Prefix>,
    pub local_endpoint: IpAddr,
    pub remote_endpoint: IpAddr,
    pub mode: Mode,
    pub reqid: u32,
    pub rekey_interval: Duration,
    /// The largest random advance of a rekey before `rekey_interval`.
    pub rekey_jitter: Duration,
    pub lifetimes: Lifetimes,
    pub replay: ReplayProtection,
    pub keying: Keying,
    /// Whether this gateway starts this tunnel's rekeys.
    pub initiator: bool,
    /// The ownership mark every SA and policy carries, if any.
    pub mark: Option<XfrmMark>,
}

/// Everything of an SA but its SPI and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaTemplate {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub reqid: u32,
    pub mode: Mode,
    pub replay: ReplayProtection,
    pub lifetimes: Lifetimes,
    pub mark: Option<XfrmMark>,
}

impl SaTemplate {
    /// The full spec once the SPI is allocated and the key drawn.
    pub fn with_key(&self, spi: u32, key: SaKey) -> SaSpec {
        let mut s = SaSpec::tunnel(self.src, self.dst, spi, self.reqid, key);
        s.mode = self.mode;
        s.replay = self.replay;
        s.lifetimes = self.lifetimes;
        s.mark = self.mark;
        s
    }
}

impl Tunnel {
    /// The SA carrying this gateway's traffic to the peer.
    pub fn outbound_sa(&self) -> SaTemplate {
        self.sa(self.local_endpoint, self.remote_endpoint)
    }

    /// The SA carrying the peer's traffic to this gateway.
    pub fn inbound_sa(&self) -> SaTemplate {
        self.sa(self.remote_endpoint, self.local_endpoint)
    }

    fn sa(&self, src: IpAddr, dst: IpAddr) -> SaTemplate {
        SaTemplate {
            src,
            dst,
            reqid: self.reqid,
            mode: self.mode,
            replay: self.replay,
            lifetimes: self.lifetimes,
            mark: self.mark,
        }
    }

    /// The policies that make the kernel protect this tunnel's traffic:
    /// for every local/remote subnet pair of one family, `out` (local →
    /// remote), `in` (remote → local) and, in tunnel mode, `fwd` (remote →
    /// local, for traffic the gateway routes to hosts behind it).
    pub fn policies(&self) -> Vec<PolicySpec> {
        let out = PolicyTemplate {
            src: self.local_endpoint,
            dst: self.remote_endpoint,
            reqid: self.reqid,
            mode: self.mode,
        };
        let back = PolicyTemplate {
            src: self.remote_endpoint,
            dst: self.local_endpoint,
            ..out
        };
        let mut v = Vec::new();
        for l in &self.local_subnets {
            for r in self
                .remote_subnets
                .iter()
                .filter(|r| r.addr.is_ipv4() == l.addr.is_ipv4())
            {
                let mut push = |sel, dir, t| {
                    let mut p = PolicySpec::new(sel, dir, t);
                    p.mark = self.mark;
                    v.push(p);
                };
                push(TrafficSelector::between(*l, *r), Direction::Out, out);
                push(TrafficSelector::between(*r, *l), Direction::In, back);
                if self.mode == Mode::Tunnel {
                    push(TrafficSelector::between(*r, *l), Direction::Fwd, back);
                }
            }
        }
        v
    }
}

/// The reqid a tunnel gets when none is configured: FNV-1a of its name
/// folded into the owned range, so it survives restarts and reordering.
/// (The function is part of the on-disk contract: changing it would orphan
/// installed objects across an upgrade.)
pub fn derived_reqid(name: &str, ownership: &Ownership) -> u32 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let (lo, hi) = (
        *ownership.reqids.start() as u64,
        *ownership.reqids.end() as u64,
    );
    // An empty range (refused by validation) maps everything to its start.
    let span = hi.checked_sub(lo).map_or(1, |d| d + 1);
    (lo + h % span) as u32
}

/// The peers' names and this side's role on each, for resolving tunnels.
pub(super) type PeerRoles = [(String, Option<Role>)];

impl TunnelSection {
    pub(super) fn validate(
        self,
        prefix: &str,
        peers: &PeerRoles,
        ownership: Option<&Ownership>,
        f: &mut Findings,
    ) -> Option<Tunnel> {
        let path = |field: &str| format!("{prefix}.{field}");
        let name = required(
            self.name.clone(),
            &path("name"),
            "name = \"site-a-site-b\"",
            f,
        )
        .and_then(|n| {
            check_name(&n)
                .map(|()| n)
                .map_err(|why| f.error(path("name"), why))
                .ok()
        });
        let role = self.resolve_peer(&path("peer"), peers, f);
        let local = required(
            self.local_endpoint,
            &path("local_endpoint"),
            "local_endpoint = \"192.0.2.1\"",
            f,
        );
        let remote = required(
            self.remote_endpoint,
            &path("remote_endpoint"),
            "remote_endpoint = \"198.51.100.2\"",
            f,
        );
        if let (Some(l), Some(r)) = (local, remote) {
            if l.is_ipv4() != r.is_ipv4() {
                f.error(
                    path("remote_endpoint"),
                    format!("{r} and local_endpoint {l} are of different address families"),
                );
            } else if l == r {
                f.error(
                    path("remote_endpoint"),
                    format!("{r} equals local_endpoint"),
                );
            }
        }
        let mode = match self.mode {
            TunnelMode::Tunnel => Mode::Tunnel,
            TunnelMode::Transport => Mode::Transport,
        };
        let local_subnets = subnets::subnet_list(
            &path("local_subnets"),
            self.local_subnets.as_deref(),
            mode,
            local,
            f,
        );
        let remote_subnets = subnets::subnet_list(
            &path("remote_subnets"),
            self.remote_subnets.as_deref(),
            mode,
            remote,
            f,
        );
        if let (Some(ls), Some(rs)) = (&local_subnets, &remote_subnets) {
            subnets::check_pairing(prefix, ls, rs, f);
        }
        let interval = self.rekey_interval.get();
        let jitter = self.check_timing(prefix, f);
        let lifetimes = self
            .lifetime
            .resolve(prefix, self.rekey_interval, self.esn, f);
        let replay = self.replay(prefix, f);
        let reqid = ownership.and_then(|o| match self.reqid {
            None => name.as_deref().map(|n| derived_reqid(n, o)),
            Some(r) if o.reqids.contains(&r) => Some(r),
            Some(r) => {
                f.error(
                    path("reqid"),
                    format!(
                        "{r:#x} is outside gateway.ownership.reqids {:#x}..={:#x}; choose one inside, \
                         or omit reqid to derive one",
                        o.reqids.start(),
                        o.reqids.end()
                    ),
                );
                None
            }
        });
        let initiator = role.map(|r| self.initiator.unwrap_or(r == Role::Transmitter));
        let tunnel = Tunnel {
            name: name?,
            peer: self.peer?,
            local_subnets: local_subnets?,
            remote_subnets: remote_subnets?,
            local_endpoint: local?,
            remote_endpoint: remote?,
            mode,
            reqid: reqid?,
            rekey_interval: interval,
            rekey_jitter: jitter?,
            lifetimes: lifetimes?,
            replay: replay?,
            keying: self.keying,
            initiator: initiator?,
            mark: ownership.and_then(|o| o.mark),
        };
        backstop(prefix, &tunnel, f).then_some(tunnel)
    }

    fn resolve_peer(&self, path: &str, peers: &PeerRoles, f: &mut Findings) -> Option<Role> {
        let name = required(
            self.peer.clone(),
            path,
            "peer = \"gw-b\" (a [[peer]] name)",
            f,
        )?;
        match peers.iter().find(|(n, _)| *n == name) {
            Some((_, role)) => *role,
            None => {
                let known: Vec<&str> = peers.iter().map(|(n, _)| n.as_str()).collect();
                f.error(
                    path,
                    format!("no [[peer]] is named {name:?}; peers are {known:?}"),
                );
                None
            }
        }
    }

    /// Checks the interval and jitter; returns the jitter as a duration.
    fn check_timing(&self, prefix: &str, f: &mut Findings) -> Option<Duration> {
        let interval = self.rekey_interval.get();
        if interval < Duration::from_secs(1) {
            f.error(
                format!("{prefix}.rekey_interval"),
                format!(
                    "{} is below 1s; the kernel's time limits tick once a second",
                    self.rekey_interval
                ),
            );
            return None;
        }
        let jitter = self.rekey_jitter.max_advance(interval);
        let bad = match self.rekey_jitter {
            RekeyJitter::Fraction(x) if !(0.0..=0.5).contains(&x) => {
                Some(format!("{x} must lie in [0, 0.5]"))
            }
            RekeyJitter::Duration(d) if jitter * 2 > interval => Some(format!(
                "{d} is more than half of rekey_interval ({})",
                self.rekey_interval
            )),
            _ => None,
        };
        match bad {
            Some(why) => {
                f.error(format!("{prefix}.rekey_jitter"), why);
                None
            }
            None => Some(jitter),
        }
    }

    fn replay(&self, prefix: &str, f: &mut Findings) -> Option<ReplayProtection> {
        let w = self.replay_window;
        let (ok, rule) = if self.esn {
            (
                (1..=REPLAY_WINDOW_MAX).contains(&w),
                "1..=4096 with esn = true",
            )
        } else {
            (w <= REPLAY_WINDOW_MAX, "0..=4096")
        };
        if !ok {
            f.error(
                format!("{prefix}.replay_window"),
                format!("{w} is outside {rule}"),
            );
            return None;
        }
        Some(if self.esn {
            ReplayProtection::Esn { window: w }
        } else {
            ReplayProtection::Window(w)
        })
    }
}

fn required<T>(v: Option<T>, path: &str, example: &str, f: &mut Findings) -> Option<T> {
    if v.is_none() {
        f.error(path, format!("missing; e.g. {example}"));
    }
    v
}

/// The XFRM layer's own checks on what the tunnel will install; they must
/// agree with ours, so a failure here is reported on the tunnel as a whole.
fn backstop(prefix: &str, t: &Tunnel, f: &mut Findings) -> bool {
    let sa = t
        .outbound_sa()
        .with_key(FIRST_USABLE_SPI, SaKey::zeroed())
        .validate();
    let policies = t.policies().iter().try_for_each(|p| p.validate());
    match sa.and(policies) {
        Ok(()) => true,
        Err(e) => {
            f.error(prefix, format!("rejected by the XFRM layer: {e}"));
            false
        }
    }
}

/// Checks across tunnels: distinct names, distinct reqids, no two tunnels
/// claiming the same traffic.
pub(super) fn check_tunnel_set(tunnels: &[Option<Tunnel>], f: &mut Findings) {
    let all: Vec<(usize, &Tunnel)> = tunnels
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
        .collect();
    for (k, &(i, t)) in all.iter().enumerate() {
        for &(j, u) in &all[..k] {
            if t.name == u.name {
                f.error(
                    format!("tunnel[{i}].name"),
                    format!("{:?} is also tunnel[{j}]'s name", t.name),
                );
            }
            if t.reqid == u.reqid {
                f.error(
                    format!("tunnel[{i}].reqid"),
                    format!(
                        "{:#x} is also tunnel[{j}]'s reqid; set reqid explicitly in one of them",
                        t.reqid
                    ),
                );
            }
            let theirs: Vec<_> = u
                .policies()
                .iter()
                .map(|p| (p.selector, p.direction))
                .collect();
            if let Some(p) = t
                .policies()
                .iter()
                .find(|p| theirs.contains(&(p.selector, p.direction)))
            {
                f.error(
                    format!("tunnel[{i}]"),
                    format!("claims the same traffic as tunnel[{j}] ({}); a selector can belong to one tunnel only", p.selector),
                );
            }
        }
    }
}
