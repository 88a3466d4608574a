//! The status board's public picture at one moment: plain serde data that the
//! status socket sends as JSON, the renderer prints and the metrics endpoint
//! exposes. Owns no state and no behaviour beyond naming things; it must
//! never carry key bytes — only counts, rates, SPIs, times and names.
//!
//! Times are Unix milliseconds so that the JSON is readable by any tool and
//! a client can compute ages against `taken_at_unix_ms`.

use serde::{Deserialize, Serialize};

use super::alarm::Alarm;

/// Everything `qkd-ipsec status` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoardSnapshot {
    pub gateway: String,
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub version: String,
    pub started_at_unix_ms: u64,
    pub taken_at_unix_ms: u64,
    pub peers: Vec<PeerSnapshot>,
    pub tunnels: Vec<TunnelSnapshot>,
    /// Recent alarms, active first, then most recently seen first.
    pub alarms: Vec<AlarmSnapshot>,
    /// Lifetime count of raisings per alarm kind (kept when entries are
    /// evicted from the bounded list), in [`AlarmKind::ALL`] order.
    ///
    /// [`AlarmKind::ALL`]: super::alarm::AlarmKind::ALL
    pub alarms_raised_total: Vec<AlarmTally>,
    /// Keys the ETSI 014 KME delivered, per local SAE (empty when the KME
    /// is off).
    #[serde(default)]
    pub kme: Vec<SaeSnapshot>,
    /// Relayed-key shares this gateway sent, received, passed on and
    /// refused, per QKD link (empty when it relays nothing).
    #[serde(default)]
    pub relay: Vec<RelayLinkSnapshot>,
}

/// Relayed-key shares over one QKD link, counted by this gateway. Each share
/// sent or received consumed its length plus 32 bytes of that link's pool
/// (the pool's `relay` use).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayLinkSnapshot {
    /// The neighbour at the other end of the link.
    pub link: String,
    pub sent_shares_total: u64,
    pub sent_bytes_total: u64,
    pub received_shares_total: u64,
    pub received_bytes_total: u64,
    /// Received shares this gateway passed on to the next hop (it is a
    /// relay for them).
    pub forwarded_shares_total: u64,
    /// Received shares for keys addressed to this gateway.
    pub delivered_shares_total: u64,
    /// Shares from this link this gateway refused to take further.
    pub refused_shares_total: u64,
}

/// One SAE's deliveries from the KME. `sae` is a configured SAE ID, or
/// `"(unknown)"` for refusals of certificates no `[[kme.sae]]` names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaeSnapshot {
    pub sae: String,
    pub enc_keys_total: u64,
    pub dec_keys_total: u64,
    pub refused_requests_total: u64,
}

/// The QKD role of this gateway on one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRole {
    Transmitter,
    Receiver,
}

impl PeerRole {
    pub fn name(self) -> &'static str {
        match self {
            PeerRole::Transmitter => "transmitter",
            PeerRole::Receiver => "receiver",
        }
    }
}

/// Where a link's keys come from (`[peer.link] kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkSource {
    /// Simulated optics between the agents.
    Simulated,
    /// A real QKD device over ETSI GS QKD 014.
    Etsi014,
    /// Keys relayed hop by hop over other gateways' QKD links.
    Relayed,
}

/// What every view of a relayed link says about its keys.
pub const RELAYED_LINK_CAVEAT: &str = "RELAYED keys: the trusted relays on a path can read \
    them (multipath: only relays on every path together), and they are only as secret as the \
    QKD links they crossed (simulated hops make them simulated-grade)";

/// What every view of a link says whose pool was seeded from a file.
pub const LAB_SEEDED_POOL_CAVEAT: &str = "LAB-SEEDED pool: part of its key came from a seed \
    file (lab_seed_pool), as secret as that file, not QKD key";

/// What every view of a simulated link says about its keys.
pub const SIMULATED_LINK_CAVEAT: &str = "SIMULATED link: its keys are only as secret as the peer \
    channel's classical keys (bootstrap secret, HMAC channel keys), not quantum-secure";

impl LinkSource {
    pub fn name(self) -> &'static str {
        match self {
            LinkSource::Simulated => "simulated",
            LinkSource::Etsi014 => "etsi014",
            LinkSource::Relayed => "relayed",
        }
    }

    /// The caveat to show with the link, if any.
    pub fn caveat(self) -> Option<&'static str> {
        match self {
            LinkSource::Simulated => Some(SIMULATED_LINK_CAVEAT),
            LinkSource::Etsi014 => None,
            LinkSource::Relayed => Some(RELAYED_LINK_CAVEAT),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerSnapshot {
    pub name: String,
    pub role: PeerRole,
    /// Where the link's keys come from.
    pub source: LinkSource,
    /// Said with every simulated link, so no reader of the JSON mistakes
    /// its keys for quantum-secure ones ([`SIMULATED_LINK_CAVEAT`]).
    pub caveat: Option<String>,
    pub channel: ChannelSnapshot,
    pub qkd: QkdSnapshot,
    /// `None` until the agent first reports the pool.
    pub pool: Option<PoolSnapshot>,
    /// The ETSI 014 key source of a `kind = "etsi014"` link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_source: Option<KeySourceSnapshot>,
}

/// An ETSI GS QKD 014 key source: where keys come from and how it fares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySourceSnapshot {
    /// Base URL of this gateway's KME.
    pub kme_url: String,
    /// `"master"` (calls enc_keys; the link's transmitter) or `"slave"`
    /// (calls dec_keys).
    pub role: String,
    /// Keys taken from the KME and appended to the pool.
    pub keys_fetched: u64,
    /// Their bytes.
    pub bytes_fetched: u64,
    /// Failed attempts (KME errors, refused offers, missing acks).
    pub errors: u64,
    /// The latest failure, until the next success.
    pub last_error: Option<String>,
    pub last_success_unix_ms: Option<u64>,
    /// The last block's delivery: master, from its status call to the
    /// slave's acceptance (status, enc_keys, offer, the slave's dec_keys,
    /// ack); slave, from the offer to the block in its pool.
    #[serde(default)]
    pub last_delivery_us: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelState {
    /// No report yet.
    Unknown,
    Connected,
    Disconnected,
    /// The link task has ended.
    Stopped,
}

impl ChannelState {
    pub fn name(self) -> &'static str {
        match self {
            ChannelState::Unknown => "unknown",
            ChannelState::Connected => "connected",
            ChannelState::Disconnected => "disconnected",
            ChannelState::Stopped => "stopped",
        }
    }
}

/// The peer channel (authenticated TCP between the agents).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelSnapshot {
    pub state: ChannelState,
    /// When `state` last changed.
    pub since_unix_ms: u64,
    /// Remote address of the current session.
    pub remote: Option<String>,
    /// Number of the current (or last) session, from 1.
    pub session: u64,
    /// Channel-key epoch of the current session (0 = bootstrap secret).
    pub epoch: u64,
    /// Failed dials in the current backoff run (dialer only).
    pub dial_attempts: u32,
    pub last_error: Option<String>,
    pub reconnects: u64,
    pub auth_failures: u64,
    pub replays: u64,
    pub protocol_errors: u64,
}

/// QKD block outcomes on one link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QkdSnapshot {
    pub blocks_ok: u64,
    /// Aborted blocks per cause name (`AbortCause::name`), causes that
    /// occurred only.
    pub blocks_aborted: Vec<CauseCount>,
    pub last_block: Option<LastBlock>,
    /// Final key bits of every block that produced key.
    pub key_bits_total: u64,
    /// Final key bits per second over the last `key_rate_window_s` seconds
    /// (or since registration, if shorter).
    pub key_rate_bps: f64,
    pub key_rate_window_s: f64,
}

impl QkdSnapshot {
    pub fn blocks_aborted_total(&self) -> u64 {
        self.blocks_aborted.iter().map(|c| c.count).sum()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CauseCount {
    pub cause: String,
    pub count: u64,
}

/// The most recent block's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastBlock {
    pub block_id: u64,
    pub at_unix_ms: u64,
    /// Errors Cascade corrected / sifted key bits; `None` if the block ended
    /// before reconciliation finished.
    pub qber_key: Option<f64>,
    /// Errors among the revealed test-basis bits.
    pub qber_test: f64,
    pub final_bits: u64,
    /// Abort cause name, `None` when the block produced key.
    pub aborted: Option<String>,
}

/// The key pool of one peer (positions and sizes only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolSnapshot {
    pub updated_at_unix_ms: u64,
    pub blocks: u64,
    pub available_bytes: u64,
    /// Of `available_bytes`, what this side's own takes may draw from.
    pub available_to_initiate: u64,
    pub low_water: u64,
    pub below_low_water: bool,
    pub appended_bytes: u64,
    pub discarded_bytes: u64,
    /// Bytes consumed per use (initiated + accepted takes), every use listed.
    pub consumed: Vec<UseBytes>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UseBytes {
    /// `sa_key`, `auth`, `wrap`, `application`, `channel`, `relay`.
    #[serde(rename = "use")]
    pub key_use: String,
    pub bytes: u64,
}

/// What a tunnel is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelState {
    /// Registered; no SA installed yet.
    Starting,
    /// Current SAs installed and valid.
    Up,
    /// A rekey is in progress (the old SAs still carry traffic).
    Rekeying,
    /// A rekey is due but the pool cannot pay for it; current SAs remain
    /// until their hard lifetime.
    WaitingForKeys,
    /// No valid SA: the policies drop traffic (fail closed, never clear text).
    DownFailedClosed,
    /// The agent stopped managing the tunnel.
    Stopped,
}

impl TunnelState {
    pub const ALL: [TunnelState; 6] = [
        TunnelState::Starting,
        TunnelState::Up,
        TunnelState::Rekeying,
        TunnelState::WaitingForKeys,
        TunnelState::DownFailedClosed,
        TunnelState::Stopped,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TunnelState::Starting => "starting",
            TunnelState::Up => "up",
            TunnelState::Rekeying => "rekeying",
            TunnelState::WaitingForKeys => "waiting_for_keys",
            TunnelState::DownFailedClosed => "down_failed_closed",
            TunnelState::Stopped => "stopped",
        }
    }

    /// Whether traffic can flow (current SAs are valid).
    pub fn carries_traffic(self) -> bool {
        matches!(
            self,
            TunnelState::Up | TunnelState::Rekeying | TunnelState::WaitingForKeys
        )
    }
}

/// What started a rekey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RekeyCause {
    /// The first SAs after the agent started.
    Startup,
    /// The rekey interval elapsed.
    Timer,
    /// The kernel reported a soft lifetime expiry (bytes, packets, seconds).
    SoftExpire,
    /// The kernel reported an ACQUIRE: a policy without an SA saw traffic.
    Acquire,
    /// The peer initiated it (this side followed).
    Peer,
    /// An operator asked for it.
    Manual,
}

impl RekeyCause {
    pub const ALL: [RekeyCause; 6] = [
        RekeyCause::Startup,
        RekeyCause::Timer,
        RekeyCause::SoftExpire,
        RekeyCause::Acquire,
        RekeyCause::Peer,
        RekeyCause::Manual,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RekeyCause::Startup => "startup",
            RekeyCause::Timer => "timer",
            RekeyCause::SoftExpire => "soft_expire",
            RekeyCause::Acquire => "acquire",
            RekeyCause::Peer => "peer",
            RekeyCause::Manual => "manual",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Kernel counters of the current SAs, as last refreshed by the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaUsage {
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub packets_out: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TunnelSnapshot {
    pub name: String,
    pub peer: String,
    pub state: TunnelState,
    pub state_since_unix_ms: u64,
    /// Increases with every installed SA pair (0 = none yet).
    pub generation: u64,
    pub spi_in: Option<u32>,
    pub spi_out: Option<u32>,
    pub sa_installed_at_unix_ms: Option<u64>,
    pub sa_usage: SaUsage,
    /// When `sa_usage` was last refreshed.
    pub sa_usage_at_unix_ms: Option<u64>,
    pub last_rekey: Option<RekeyEvent>,
    pub last_failure: Option<RekeyFailure>,
    pub next_rekey_at_unix_ms: Option<u64>,
    /// Per cause, in [`RekeyCause::ALL`] order.
    pub rekeys: Vec<RekeyTally>,
    /// Key bytes taken from the pool but never used in an SA (failed or
    /// superseded rekeys).
    pub keys_wasted_bytes: u64,
}

impl TunnelSnapshot {
    pub fn rekeys_done(&self) -> u64 {
        self.rekeys.iter().map(|t| t.ok).sum()
    }

    pub fn rekeys_failed(&self) -> u64 {
        self.rekeys.iter().map(|t| t.failed).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeyEvent {
    pub at_unix_ms: u64,
    pub cause: RekeyCause,
    pub generation: u64,
    /// From the trigger (initiator) or the peer's first message (responder)
    /// to the old outbound SA being gone, when the agent knows it.
    #[serde(default)]
    pub latency_us: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeyFailure {
    pub at_unix_ms: u64,
    pub cause: RekeyCause,
    pub error: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeyTally {
    pub cause: RekeyCause,
    pub ok: u64,
    pub failed: u64,
}

/// One entry of the bounded alarm list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmSnapshot {
    /// The alarm with its latest details.
    pub alarm: Alarm,
    pub severity: Severity,
    pub active: bool,
    pub first_seen_unix_ms: u64,
    pub last_seen_unix_ms: u64,
    /// Raisings since it was first seen (repeats included).
    pub count: u64,
    pub cleared_at_unix_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmTally {
    pub kind: String,
    pub raised: u64,
}
