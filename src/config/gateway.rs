//! `[gateway]`: who this gateway is, where it keeps state, what it does on
//! stop, and which kernel XFRM objects are its own.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Findings;
use super::secrets::SecretLocation;
use super::values::{self, check_name};
use crate::netns::{Netns, NetnsError};
use crate::xfrm::{Ownership, XfrmError, XfrmMark};

/// Default state directory (systemd's `StateDirectory=qkd-ipsec`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/qkd-ipsec";
/// Default status socket (in systemd's `RuntimeDirectory=qkd-ipsec`).
pub const DEFAULT_STATUS_SOCKET: &str = "/run/qkd-ipsec/status.sock";

/// `[gateway]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// This gateway's name; each peer's config names it in its `[[peer]]`
    /// section, and it names this side in the peer handshake. 1–64 of
    /// `A-Z a-z 0-9 . _ -`. Required.
    ///
    /// Example: `name = "gw-a"`
    pub name: Option<String>,
    /// Address the peer-channel listener binds. Required when this gateway
    /// is the QKD receiver on any link (the transmitter dials the receiver);
    /// unused otherwise.
    ///
    /// Example: `listen = "0.0.0.0:9813"`
    #[serde(deserialize_with = "values::socket_addr")]
    pub listen: Option<SocketAddr>,
    /// Directory for the key pools and channel-key records (created 0700 by
    /// systemd's `StateDirectory=`). Default `/var/lib/qkd-ipsec`.
    ///
    /// Example: `state_dir = "/var/lib/qkd-ipsec"`
    pub state_dir: PathBuf,
    /// File holding the 32-byte key that encrypts the pools at rest (0600,
    /// owned by the agent's user). Default: the systemd credential
    /// `pool-key` (`LoadCredential=pool-key:/etc/qkd-ipsec/credentials/pool-key`).
    ///
    /// Example: `pool_key = "/etc/qkd-ipsec/credentials/pool-key"`
    pub pool_key: Option<PathBuf>,
    /// Unix socket (0600) that `qkd-ipsec status` reads. Default
    /// `/run/qkd-ipsec/status.sock`.
    ///
    /// Example: `status_socket = "/run/qkd-ipsec/status.sock"`
    pub status_socket: PathBuf,
    /// Address for Prometheus metrics over plain HTTP; off when absent. The
    /// endpoint is unauthenticated: bind it to loopback or firewall it.
    ///
    /// Example: `metrics_listen = "127.0.0.1:9814"`
    #[serde(deserialize_with = "values::socket_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the ETSI GS QKD 014 key service for local applications
    /// (HTTPS, mutual TLS only; needs the `[kme]` section); off when
    /// absent.
    ///
    /// Example: `kme_listen = "127.0.0.1:8443"`
    #[serde(deserialize_with = "values::socket_addr")]
    pub kme_listen: Option<SocketAddr>,
    /// Run the kernel side (XFRM) in this named network namespace
    /// (`/run/netns/<name>`, as `ip netns add` makes) instead of the agent's
    /// own. For tests and the demo; entering a namespace needs
    /// CAP_SYS_ADMIN, which the shipped systemd unit does not grant.
    ///
    /// Example: `netns = "qkd-gw-a"`
    pub netns: Option<String>,
    /// What happens to the SAs and policies this agent owns when it stops
    /// on SIGTERM: `"keep"` (default), `"remove-sas"` or `"remove-all"`.
    /// See [`OnStop`] for what each means for traffic.
    ///
    /// Example: `on_stop = "keep"`
    pub on_stop: OnStop,
    /// Which kernel XFRM objects are this agent's (see
    /// [`crate::xfrm::Ownership`]). The defaults suit almost everyone.
    ///
    /// Example: `[gateway.ownership]` then `reqids = [0x5144_0000, 0x5144_ffff]`
    pub ownership: OwnershipSection,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            name: None,
            listen: None,
            state_dir: DEFAULT_STATE_DIR.into(),
            pool_key: None,
            status_socket: DEFAULT_STATUS_SOCKET.into(),
            metrics_listen: None,
            kme_listen: None,
            netns: None,
            on_stop: OnStop::default(),
            ownership: OwnershipSection::default(),
        }
    }
}

/// What the agent does with the SAs and policies it owns on SIGTERM.
///
/// Policies are what make IPsec fail closed: while an `out` policy for the
/// subnets exists, the kernel sends their traffic only through an SA, and
/// drops it when there is none. Removing the policies therefore lets the
/// traffic go wherever routing sends it — in clear text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnStop {
    /// Leave SAs and policies in place (default). Traffic keeps flowing,
    /// encrypted, under the current keys until their hard lifetime; then the
    /// policies make the kernel drop it. Never clear text. A restart within
    /// the hard lifetime (upgrade, crash recovery) causes no interruption.
    /// Cost: the current SA keys stay in the kernel until they expire.
    #[default]
    Keep,
    /// Delete the SAs, keep the policies: traffic between the subnets is
    /// dropped from the moment the agent stops until it is back (fail
    /// closed), and no key outlives the agent in the kernel.
    RemoveSas,
    /// Delete SAs and policies. Traffic between the subnets then flows IN
    /// CLEAR TEXT wherever routing sends it, unless a firewall stops it. For
    /// decommissioning a gateway; `check-config` warns about it.
    RemoveAll,
}

impl OnStop {
    pub fn name(self) -> &'static str {
        match self {
            OnStop::Keep => "keep",
            OnStop::RemoveSas => "remove-sas",
            OnStop::RemoveAll => "remove-all",
        }
    }

    /// One line for the operator: what stopping the agent does to traffic.
    pub fn consequence(self) -> &'static str {
        match self {
            OnStop::Keep => {
                "SAs and policies stay; traffic stays encrypted until the hard lifetime, then is dropped"
            }
            OnStop::RemoveSas => {
                "SAs removed, policies stay; traffic is dropped until the agent is back"
            }
            OnStop::RemoveAll => {
                "SAs and policies removed; traffic between the subnets then flows in CLEAR TEXT"
            }
        }
    }
}

/// `[gateway.ownership]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OwnershipSection {
    /// First and last reqid of this agent's SAs and policies; tunnel reqids
    /// are chosen inside. Must not include 0 nor overlap other IPsec
    /// software (strongSwan counts from 1). Default `[0x5144_0000, 0x5144_ffff]`.
    ///
    /// Example: `reqids = [0x5144_0000, 0x5144_ffff]`
    pub reqids: [u32; 2],
    /// First and last SPI this agent allocates for inbound SAs. Configure
    /// both gateways alike (each side's outbound SAs carry the other side's
    /// SPIs). SPIs below 256 are reserved (RFC 4303 §2.1). Default
    /// `[0x5144_0000, 0x5144_ffff]`.
    ///
    /// Example: `spis = [0x5144_0000, 0x5144_ffff]`
    pub spis: [u32; 2],
    /// An XFRM mark that all this agent's SAs and policies carry, if any
    /// (for setups that route by mark). Default: none.
    ///
    /// Example: `mark = 0x51`
    pub mark: Option<u32>,
    /// The mark's mask; only with `mark`. Default `0xffffffff`.
    ///
    /// Example: `mark_mask = 0xff`
    pub mark_mask: Option<u32>,
}

impl Default for OwnershipSection {
    fn default() -> Self {
        let o = Ownership::default();
        let spis = o.spis.unwrap_or(0x5144_0000..=0x5144_ffff);
        Self {
            reqids: [*o.reqids.start(), *o.reqids.end()],
            spis: [*spis.start(), *spis.end()],
            mark: None,
            mark_mask: None,
        }
    }
}

/// `[gateway]`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    pub name: String,
    /// The peer-channel listener; present when any link has this side as
    /// receiver.
    pub listen: Option<SocketAddr>,
    pub state_dir: PathBuf,
    pub pool_key: SecretLocation,
    pub status_socket: PathBuf,
    pub metrics_listen: Option<SocketAddr>,
    /// The KME listener (then [`super::Config::kme`] is set).
    pub kme_listen: Option<SocketAddr>,
    /// The namespace for the kernel side, if not the agent's own.
    pub netns: Option<String>,
    pub on_stop: OnStop,
    pub ownership: Ownership,
}

impl Gateway {
    /// The network namespace the XFRM handle should be opened in. (The
    /// name was checked when the file was loaded; an error here means the
    /// value was changed since, and must not fall back to another
    /// namespace.)
    pub fn xfrm_netns(&self) -> Result<Netns, NetnsError> {
        match &self.netns {
            Some(name) => Netns::named(name),
            None => Ok(Netns::current()),
        }
    }
}

/// Makes a relative path absolute against the config file's directory.
pub(super) fn anchor(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl GatewaySection {
    pub(super) fn validate(self, base: &Path, f: &mut Findings) -> Option<Gateway> {
        let name = match self.name {
            None => {
                f.error(
                    "gateway.name",
                    "missing; name this gateway, e.g. name = \"gw-a\"",
                );
                None
            }
            Some(n) => match check_name(&n) {
                Ok(()) => Some(n),
                Err(why) => {
                    f.error("gateway.name", why);
                    None
                }
            },
        };
        if let Some(ns) = &self.netns
            && let Err(e) = Netns::named(ns)
        {
            f.error("gateway.netns", e.to_string());
        }
        if let Some(m) = self.metrics_listen
            && !m.ip().is_loopback()
        {
            f.warn(
                "gateway.metrics_listen",
                format!(
                    "{m} is not a loopback address: the metrics endpoint is unauthenticated; \
                     bind it to 127.0.0.1 or firewall the port"
                ),
            );
        }
        if self.on_stop == OnStop::RemoveAll {
            f.warn(
                "gateway.on_stop",
                "\"remove-all\" deletes the IPsec policies on stop: traffic between the \
                 tunnels' subnets then flows in CLEAR TEXT until the agent is back; \
                 use \"keep\" or \"remove-sas\" to fail closed",
            );
        }
        let ownership = self.ownership.validate(f);
        let pool_key = self
            .pool_key
            .map_or_else(SecretLocation::pool_key_default, |p| {
                SecretLocation::File(anchor(base, &p))
            });
        Some(Gateway {
            name: name?,
            listen: self.listen,
            state_dir: anchor(base, &self.state_dir),
            pool_key,
            status_socket: anchor(base, &self.status_socket),
            metrics_listen: self.metrics_listen,
            kme_listen: self.kme_listen,
            netns: self.netns,
            on_stop: self.on_stop,
            ownership: ownership?,
        })
    }
}

impl OwnershipSection {
    fn validate(self, f: &mut Findings) -> Option<Ownership> {
        let range = |[a, b]: [u32; 2]| -> RangeInclusive<u32> { a..=b };
        let mark = match (self.mark, self.mark_mask) {
            (Some(value), mask) => Some(XfrmMark {
                value,
                mask: mask.unwrap_or(u32::MAX),
            }),
            (None, Some(_)) => {
                f.error(
                    "gateway.ownership.mark_mask",
                    "a mask without a mark; set mark = ... too, or remove mark_mask",
                );
                None
            }
            (None, None) => None,
        };
        let o = Ownership {
            reqids: range(self.reqids),
            spis: Some(range(self.spis)),
            mark,
        };
        let mut ok = true;
        // Check each range on its own so both can be reported.
        for (field, probe) in [
            (
                "reqids",
                Ownership {
                    spis: None,
                    ..o.clone()
                },
            ),
            (
                "spis",
                Ownership {
                    reqids: 1..=1,
                    ..o.clone()
                },
            ),
        ] {
            if let Err(e) = probe.validate() {
                ok = false;
                let [a, b] = if field == "reqids" {
                    self.reqids
                } else {
                    self.spis
                };
                let why = match e {
                    XfrmError::InvalidSpec { reason, .. } => reason,
                    other => other.to_string(),
                };
                f.error(
                    format!("gateway.ownership.{field}"),
                    format!("[{a:#x}, {b:#x}]: {why}"),
                );
            }
        }
        ok.then_some(o)
    }
}
