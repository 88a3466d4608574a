//! Security associations (the SAD): what an SA of ours looks like
//! ([`SaSpec`]), how it is named once installed ([`SaId`]), what a listing
//! reports ([`SaInfo`]), and the verbs — one file each: [`add`] (NEWSA and
//! the UPDSA that completes an ALLOCSPI), [`delete`], [`get`] (GETSA and the
//! owned-SA dump) and [`allocspi`].
//!
//! Every SA is ESP with the AEAD `rfc4106(gcm(aes))`; the key comes from a
//! [`SaKey`] and leaves it only inside a zeroised netlink buffer.

pub mod add;
pub mod allocspi;
pub mod delete;
pub mod get;

use std::fmt;
use std::net::IpAddr;

use netlink_packet_xfrm::{LifetimeConfig, XFRM_INF, XFRM_MODE_TRANSPORT, XFRM_MODE_TUNNEL};

use super::{TrafficSelector, XfrmError, XfrmMark};
use crate::secret::SaKey;

/// Key material length of `rfc4106(gcm(aes))` with AES-256: 32 key bytes and
/// a 4-byte salt (RFC 4106 §8.1), i.e. `alg_key_len` = 288 bits.
pub const AEAD_KEY_BITS: u32 = 36 * 8;
/// ICV length: RFC 4106 §8 allows 8, 12 or 16 octets; we use the full 16.
pub const AEAD_ICV_BITS: u32 = 128;
/// The legacy `replay_window` field is a bitmap of 32 packets
/// (`struct xfrm_replay_state`); larger windows need XFRMA_REPLAY_ESN_VAL.
pub const LEGACY_REPLAY_WINDOW_MAX: u32 = 32;
/// The kernel caps ESN/bitmap replay windows at XFRMA_REPLAY_ESN_MAX bits
/// (`verify_replay` in net/xfrm/xfrm_user.c: bmp_len ≤ 128 words).
pub const REPLAY_WINDOW_MAX: u32 = 4096;

/// Tunnel (IP-in-ESP between gateways) or transport mode (RFC 4301 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Transport,
    Tunnel,
}

impl Mode {
    pub(crate) fn to_kernel(self) -> u8 {
        match self {
            Mode::Transport => XFRM_MODE_TRANSPORT,
            Mode::Tunnel => XFRM_MODE_TUNNEL,
        }
    }

    pub(crate) fn from_kernel(mode: u8) -> Option<Self> {
        match mode {
            XFRM_MODE_TRANSPORT => Some(Mode::Transport),
            XFRM_MODE_TUNNEL => Some(Mode::Tunnel),
            _ => None,
        }
    }
}

/// Anti-replay protection of an inbound SA (RFC 4303 §3.4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayProtection {
    /// A window of this many packets with 32-bit sequence numbers. Up to 32
    /// uses the legacy field; larger windows (≤ 4096) use a bitmap in
    /// XFRMA_REPLAY_ESN_VAL without the ESN flag. 0 disables replay checks.
    Window(u32),
    /// Extended (64-bit) sequence numbers (RFC 4303 §2.2.1) with a window of
    /// `window` packets (1..=4096). Both ends of the SA must agree.
    Esn { window: u32 },
}

impl Default for ReplayProtection {
    fn default() -> Self {
        ReplayProtection::Window(LEGACY_REPLAY_WINDOW_MAX)
    }
}

/// One set of limits; `None` means unlimited. Byte and packet limits are
/// checked per packet; time limits tick once a second (xfrm_timer_handler).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub bytes: Option<u64>,
    pub packets: Option<u64>,
    /// Seconds since the SA was added.
    pub seconds: Option<u64>,
}

/// Soft limits raise XFRM_MSG_EXPIRE with hard=0 (time to rekey); hard
/// limits delete the SA and raise hard=1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetimes {
    pub soft: Limits,
    pub hard: Limits,
}

impl Lifetimes {
    pub(crate) fn to_kernel(self) -> LifetimeConfig {
        let count = |v: Option<u64>| v.unwrap_or(XFRM_INF);
        let secs = |v: Option<u64>| v.unwrap_or(0);
        LifetimeConfig {
            soft_byte_limit: count(self.soft.bytes),
            hard_byte_limit: count(self.hard.bytes),
            soft_packet_limit: count(self.soft.packets),
            hard_packet_limit: count(self.hard.packets),
            soft_add_expires_seconds: secs(self.soft.seconds),
            hard_add_expires_seconds: secs(self.hard.seconds),
            soft_use_expires_seconds: 0,
            hard_use_expires_seconds: 0,
        }
    }

    pub(crate) fn from_kernel(cfg: &LifetimeConfig) -> Self {
        let count = |v: u64| (v != XFRM_INF).then_some(v);
        let secs = |v: u64| (v != 0).then_some(v);
        Self {
            soft: Limits {
                bytes: count(cfg.soft_byte_limit),
                packets: count(cfg.soft_packet_limit),
                seconds: secs(cfg.soft_add_expires_seconds),
            },
            hard: Limits {
                bytes: count(cfg.hard_byte_limit),
                packets: count(cfg.hard_packet_limit),
                seconds: secs(cfg.hard_add_expires_seconds),
            },
        }
    }

    fn validate(&self) -> Result<(), XfrmError> {
        let pairs = [
            ("bytes", self.soft.bytes, self.hard.bytes),
            ("packets", self.soft.packets, self.hard.packets),
            ("seconds", self.soft.seconds, self.hard.seconds),
        ];
        for (what, soft, hard) in pairs {
            if let (Some(s), Some(h)) = (soft, hard)
                && s > h
            {
                return Err(XfrmError::InvalidSpec {
                    what: "lifetimes",
                    reason: format!("soft {what} limit {s} exceeds the hard limit {h}"),
                });
            }
            if soft == Some(0) || hard == Some(0) {
                return Err(XfrmError::InvalidSpec {
                    what: "lifetimes",
                    reason: format!(
                        "a {what} limit of 0 would expire at once; use None for unlimited"
                    ),
                });
            }
        }
        if self.hard.seconds.is_some_and(|s| s > i64::MAX as u64) {
            return Err(XfrmError::InvalidSpec {
                what: "lifetimes",
                reason: "hard seconds out of range".into(),
            });
        }
        Ok(())
    }
}

/// Everything needed to install one ESP SA of ours.
///
/// Holds the key, so it is not `Clone`, and its `Debug` leaves the key out.
pub struct SaSpec {
    /// Outer source (tunnel endpoint / host address).
    pub src: IpAddr,
    /// Outer destination.
    pub dst: IpAddr,
    /// The SPI (≥ 256, RFC 4303 §2.1); for inbound SAs chosen by the
    /// receiver, usually with [`super::XfrmHandle::allocate_spi`].
    pub spi: u32,
    /// Links the SA to policy templates; must be in the ownership range.
    pub reqid: u32,
    pub mode: Mode,
    /// 32-byte AES key + 4-byte salt.
    pub key: SaKey,
    pub replay: ReplayProtection,
    pub lifetimes: Lifetimes,
    pub mark: Option<XfrmMark>,
    /// XFRM interface id (`ip link add … type xfrm if_id N`), if any.
    pub if_id: Option<u32>,
    /// Restricts the SA to these packets; `None` for all (usual in tunnel
    /// mode, where the policy selects).
    pub selector: Option<TrafficSelector>,
}

/// The key shows as `<redacted>`, never its bytes.
impl std::fmt::Debug for SaSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaSpec")
            .field("src", &self.src)
            .field("dst", &self.dst)
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("reqid", &format_args!("{:#x}", self.reqid))
            .field("mode", &self.mode)
            .field("replay", &self.replay)
            .field("lifetimes", &self.lifetimes)
            .field("mark", &self.mark)
            .field("if_id", &self.if_id)
            .field("selector", &self.selector)
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

impl SaSpec {
    /// A tunnel-mode SA with a 32-packet replay window, no lifetimes, no
    /// mark: adjust the public fields for anything else.
    pub fn tunnel(src: IpAddr, dst: IpAddr, spi: u32, reqid: u32, key: SaKey) -> Self {
        Self {
            src,
            dst,
            spi,
            reqid,
            mode: Mode::Tunnel,
            key,
            replay: ReplayProtection::default(),
            lifetimes: Lifetimes::default(),
            mark: None,
            if_id: None,
            selector: None,
        }
    }

    /// Checks the spec against kernel rules, so mistakes fail here with a
    /// clear message instead of as EINVAL.
    pub fn validate(&self) -> Result<(), XfrmError> {
        let invalid = |reason: String| {
            Err(XfrmError::InvalidSpec {
                what: "SA spec",
                reason,
            })
        };
        if self.src.is_ipv4() != self.dst.is_ipv4() {
            return invalid(format!(
                "{} and {} are of different families",
                self.src, self.dst
            ));
        }
        if self.spi < super::ownership::FIRST_USABLE_SPI {
            return invalid(format!("SPI {:#x} is reserved (RFC 4303 §2.1)", self.spi));
        }
        match self.replay {
            ReplayProtection::Window(w) if w > REPLAY_WINDOW_MAX => {
                return invalid(format!("replay window {w} exceeds {REPLAY_WINDOW_MAX}"));
            }
            ReplayProtection::Esn { window } if window == 0 || window > REPLAY_WINDOW_MAX => {
                return invalid(format!(
                    "ESN replay window must be 1..={REPLAY_WINDOW_MAX}, got {window}"
                ));
            }
            _ => {}
        }
        if let Some(sel) = &self.selector {
            sel.validate()?;
        }
        self.lifetimes.validate()
    }

    /// The name the SA will have once installed.
    pub fn id(&self) -> SaId {
        SaId {
            src: self.src,
            dst: self.dst,
            spi: self.spi,
            reqid: self.reqid,
            mark: self.mark,
        }
    }
}

/// Names an installed ESP SA: the kernel looks SAs up by (destination, SPI,
/// protocol, mark). Only the library creates these — from an SA it installed
/// or from a dump filtered by ownership — so holding one is proof the SA is
/// ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SaId {
    src: IpAddr,
    dst: IpAddr,
    spi: u32,
    reqid: u32,
    mark: Option<XfrmMark>,
}

impl SaId {
    pub fn src(&self) -> IpAddr {
        self.src
    }
    pub fn dst(&self) -> IpAddr {
        self.dst
    }
    pub fn spi(&self) -> u32 {
        self.spi
    }
    pub fn reqid(&self) -> u32 {
        self.reqid
    }
    pub fn mark(&self) -> Option<XfrmMark> {
        self.mark
    }

    pub(crate) fn new(
        src: IpAddr,
        dst: IpAddr,
        spi: u32,
        reqid: u32,
        mark: Option<XfrmMark>,
    ) -> Self {
        Self {
            src,
            dst,
            spi,
            reqid,
            mark,
        }
    }
}

impl fmt::Display for SaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ESP SA {} -> {} spi {:#010x} reqid {:#x}",
            self.src, self.dst, self.spi, self.reqid
        )?;
        if let Some(m) = self.mark {
            write!(f, " mark {m}")?;
        }
        Ok(())
    }
}

/// Traffic an SA has carried (`ip -s xfrm state`: "lifetime current").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaCounters {
    pub bytes: u64,
    pub packets: u64,
    /// Seconds since the epoch when the SA was added.
    pub add_time: u64,
    /// Seconds since the epoch of first use, 0 if unused.
    pub use_time: u64,
    /// Packets dropped by the replay check.
    pub replay_dropped: u32,
    /// Packets that failed ICV verification.
    pub integrity_failed: u32,
}

/// An installed SA as reported by the kernel, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaInfo {
    pub id: SaId,
    pub mode: Option<Mode>,
    pub lifetimes: Lifetimes,
    pub counters: SaCounters,
    pub esn: bool,
    pub if_id: Option<u32>,
    /// The AEAD name if the SA uses one (never the key).
    pub aead: Option<String>,
}
