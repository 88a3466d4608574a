//! Shared pieces of the agent tests: starting an [`AgentPair`] of real
//! agent processes, reading their status, the kernel's own view of the
//! SAs (`ip xfrm state`, keys included, parsed straight into secret types
//! and never printed), and the WAN filter that proves nothing but ESP and
//! the peer channel crosses between the gateways.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use qkd_ipsec::ops::{Alarm, BoardSnapshot, PeerSnapshot, TunnelSnapshot};
use qkd_ipsec::secret::SecretBytes;
use qkd_ipsec::testbed::{AgentPair, AgentPairOptions, PEER_PORT, Side};
use zeroize::Zeroize;

use crate::support::*;

/// The agent binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_qkd-ipsec");

/// Key bytes per tunnel generation: two `rfc4106(gcm(aes))` keys of
/// 32 + 4 bytes (RFC 4106 §8.1), one per direction.
pub const SA_KEY_BYTES_PER_GENERATION: u64 = 72;

pub fn options(tag: &str) -> AgentPairOptions {
    AgentPairOptions::new(tag, BIN)
}

pub async fn start_pair(opts: AgentPairOptions) -> AgentPair {
    AgentPair::start(opts)
        .await
        .unwrap_or_else(|e| panic!("starting the agent pair: {e}"))
}

pub fn tunnel(s: &BoardSnapshot) -> &TunnelSnapshot {
    s.tunnels
        .first()
        .unwrap_or_else(|| panic!("{} reports no tunnel", s.gateway))
}

pub fn link(s: &BoardSnapshot) -> &PeerSnapshot {
    s.peers
        .first()
        .unwrap_or_else(|| panic!("{} reports no peer", s.gateway))
}

/// Pool bytes consumed for `key_use` (`"sa_key"`, `"auth"`, ...).
pub fn consumed(s: &BoardSnapshot, key_use: &str) -> u64 {
    pool_use(s, &link(s).name, key_use)
}

/// Bytes of `s`'s pool with `peer` consumed for `key_use`.
pub fn pool_use(s: &BoardSnapshot, peer: &str, key_use: &str) -> u64 {
    let p = s
        .peers
        .iter()
        .find(|p| p.name == peer)
        .unwrap_or_else(|| panic!("{} has no peer {peer}", s.gateway));
    p.pool.as_ref().map_or(0, |pool| {
        pool.consumed
            .iter()
            .filter(|u| u.key_use == key_use)
            .map(|u| u.bytes)
            .sum()
    })
}

/// The first tunnel carries traffic at generation ≥ `min`.
pub fn tunnel_keyed(s: &BoardSnapshot, min: u64) -> bool {
    s.tunnels
        .first()
        .is_some_and(|t| t.state.carries_traffic() && t.generation >= min)
}

/// Key bytes the key source of the link to `peer` appended (relayed or
/// ETSI 014 keys).
pub fn source_bytes(s: &BoardSnapshot, peer: &str) -> u64 {
    s.peers
        .iter()
        .find(|p| p.name == peer)
        .and_then(|p| p.key_source.as_ref())
        .map_or(0, |k| k.bytes_fetched)
}

/// Whether an alarm matching `is` is active.
pub fn alarm_active(s: &BoardSnapshot, is: impl Fn(&Alarm) -> bool) -> bool {
    s.alarms.iter().any(|a| a.active && is(&a.alarm))
}

/// Lifetime raisings of the alarm kind `name` (e.g. `"qber_above_threshold"`).
pub fn alarms_raised(s: &BoardSnapshot, name: &str) -> u64 {
    s.alarms_raised_total
        .iter()
        .filter(|t| t.kind == name)
        .map(|t| t.raised)
        .sum()
}

/// Both agents report the tunnel carrying traffic on the same SPI pair
/// (A's outbound is B's inbound and vice versa).
pub fn keyed_alike(a: &BoardSnapshot, b: &BoardSnapshot) -> bool {
    let (ta, tb) = (tunnel(a), tunnel(b));
    ta.state.carries_traffic()
        && tb.state.carries_traffic()
        && ta.spi_out.is_some()
        && ta.spi_in.is_some()
        && ta.spi_out == tb.spi_in
        && ta.spi_in == tb.spi_out
}

/// Waits until both sides are keyed alike with A at generation ≥ `min`.
pub async fn wait_keyed(
    pair: &AgentPair,
    min: u64,
    limit: Duration,
) -> (BoardSnapshot, BoardSnapshot) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let a = pair
            .wait_status(Side::A, limit, "A's tunnel keyed", |s| {
                s.tunnels.first().is_some_and(|t| t.generation >= min)
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if let Ok(b) = pair.status(Side::B)
            && keyed_alike(&a, &b)
        {
            return (a, b);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agents did not agree on the tunnel's SAs within {limit:?}: A {:?}, B {:?}",
            tunnel(&a),
            pair.status(Side::B).ok().map(|b| tunnel(&b).clone())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until gw-a (the initiator) may take at least `bytes` from the
/// pool: the emulated link makes key slowly, so a test that rekeys faster
/// than the link refills lets the pool fill first.
pub async fn wait_pool(pair: &AgentPair, bytes: u64, limit: Duration) -> BoardSnapshot {
    pair.wait_status(
        Side::A,
        limit,
        &format!("{bytes} pool bytes for gw-a"),
        |s| {
            link(s)
                .pool
                .as_ref()
                .is_some_and(|p| p.available_to_initiate >= bytes)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// One SA as `ip xfrm state` lists it.
pub struct KernelSa {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub spi: u32,
    /// The AEAD key (36 bytes for `rfc4106(gcm(aes))` with AES-256);
    /// `None` for a larval SA (ALLOCSPI) that has no key yet.
    pub key: Option<SecretBytes>,
}

impl KernelSa {
    pub fn id(&self) -> (IpAddr, IpAddr, u32) {
        (self.src, self.dst, self.spi)
    }
}

/// Compares the key of every SA both namespaces hold (same addresses and
/// SPI); panics naming the SA on a difference and returns how many were
/// compared. `when` says at which point of the test.
pub async fn same_sa_keys(ns_x: &str, ns_y: &str, when: &str) -> usize {
    let ys = kernel_sas(ns_y).await;
    let mut compared = 0;
    for sa in kernel_sas(ns_x).await {
        let twin = ys.iter().find(|y| y.id() == sa.id());
        if let (Some(k), Some(Some(t))) = (&sa.key, twin.map(|t| &t.key)) {
            assert!(
                k.ct_eq(t),
                "SA {:?} has different keys in {ns_x} and {ns_y} {when}",
                sa.id()
            );
            compared += 1;
        }
    }
    compared
}

/// Every SA of `ns`, keys included (read from `ip xfrm state`, which prints
/// them). The text is zeroised after parsing and never printed.
pub async fn kernel_sas(ns: &str) -> Vec<KernelSa> {
    let mut text = run_ok(in_netns(ns, "ip", &["xfrm", "state"]), "ip xfrm state").await;
    let sas = parse_xfrm_state(&text);
    text.zeroize();
    sas
}

fn parse_xfrm_state(text: &str) -> Vec<KernelSa> {
    let mut out: Vec<KernelSa> = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["src", src, "dst", dst, ..] => out.push(KernelSa {
                src: src.parse().expect("src address"),
                dst: dst.parse().expect("dst address"),
                spi: 0,
                key: None,
            }),
            ["proto", "esp", "spi", spi, ..] => {
                if let Some(sa) = out.last_mut() {
                    sa.spi = u32::from_str_radix(spi.trim_start_matches("0x"), 16).expect("spi");
                }
            }
            ["aead", _name, key, ..] => {
                if let Some(sa) = out.last_mut() {
                    sa.key = Some(hex_secret(key));
                }
            }
            _ => {}
        }
    }
    out
}

fn hex_secret(hex: &str) -> SecretBytes {
    let digits = hex.trim_start_matches("0x").as_bytes();
    assert!(
        digits.len().is_multiple_of(2),
        "odd-length key in ip xfrm state"
    );
    let mut key = SecretBytes::zeroed(digits.len() / 2);
    for (i, pair) in digits.chunks(2).enumerate() {
        let nibble = |c: u8| (c as char).to_digit(16).expect("hex digit") as u8;
        key.expose_mut()[i] = nibble(pair[0]) << 4 | nibble(pair[1]);
    }
    key
}

/// The SAs of both gateways by (src, dst, SPI), with each SA's key on the
/// sender and on the receiver where both hold it.
pub async fn sa_pairs(
    pair: &AgentPair,
) -> BTreeMap<(IpAddr, IpAddr, u32), [Option<SecretBytes>; 2]> {
    let mut map: BTreeMap<_, [Option<SecretBytes>; 2]> = BTreeMap::new();
    for (i, side) in Side::BOTH.into_iter().enumerate() {
        for sa in kernel_sas(pair.netns_name(side)).await {
            let id = sa.id();
            map.entry(id).or_default()[i] = sa.key;
        }
    }
    map
}

/// On each gateway: accept what the kernel decapsulated from ESP, ESP
/// itself and the agents' peer channel (TCP port 9813); count and drop
/// every other IPv4 packet arriving from the WAN, clear-text packets
/// between the two sites separately.
pub fn wan_filter() -> String {
    wan_filter_for("10.1.0.0/24, 10.2.0.0/24")
}

/// [`wan_filter`] for the sites `sites` (an nftables set's elements).
pub fn wan_filter_for(sites: &str) -> String {
    format!(
        r#"
table inet qkdtest {{
  counter esp_in {{}}
  counter clear_sites {{}}
  counter other_dropped {{}}
  chain wan_in {{
    type filter hook prerouting priority raw; policy accept;
    iifname "wan" meta ipsec exists accept
    iifname "wan" ip protocol esp counter name "esp_in" accept
    iifname "wan" tcp dport {PEER_PORT} accept
    iifname "wan" tcp sport {PEER_PORT} accept
    iifname "wan" ip saddr {{ {sites} }} counter name "clear_sites" drop
    iifname "wan" meta nfproto ipv4 counter name "other_dropped" drop
  }}
}}
"#
    )
}

pub async fn apply_wan_filter(pair: &AgentPair) {
    for side in Side::BOTH {
        nft_apply(pair.netns_name(side), &wan_filter()).await;
    }
}

/// Sum of a WAN filter counter over both gateways.
pub async fn wan_counter(pair: &AgentPair, name: &str) -> u64 {
    let mut total = 0;
    for side in Side::BOTH {
        total += nft_counter(pair.netns_name(side), name).await;
    }
    total
}

/// Whether any 8-byte window of `key` occurs in `haystack` (a key copied
/// from a file, even in part, would).
pub fn shares_window(key: &[u8], haystack: &[u8]) -> bool {
    key.windows(8).any(|w| haystack.windows(8).any(|h| h == w))
}

/// Watches both kernels in the background: every keyed SA that gw-b
/// holds must have been seen in gw-a's kernel with the same key (gw-a is
/// the initiator: every legitimate key passes through it). An SA whose
/// twin has not appeared within a few seconds, or whose twin's key
/// differs, was keyed from something else — a violation.
pub struct SaTwinWatch {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Result<usize, String>>,
}

/// How long a gw-b SA may wait for its twin at gw-a (make-before-break adds
/// the receiver's half first).
const TWIN_WAIT: Duration = Duration::from_secs(5);

impl SaTwinWatch {
    pub fn start(pair: &AgentPair) -> Self {
        let (ns_a, ns_b) = (
            pair.netns_name(Side::A).to_string(),
            pair.netns_name(Side::B).to_string(),
        );
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen_at_a: BTreeMap<(IpAddr, IpAddr, u32), SecretBytes> = BTreeMap::new();
            let mut pending: BTreeMap<(IpAddr, IpAddr, u32), tokio::time::Instant> =
                BTreeMap::new();
            let mut checked = std::collections::BTreeSet::new();
            while !token.is_cancelled() {
                for sa in kernel_sas(&ns_a).await {
                    let id = sa.id();
                    if let Some(k) = sa.key {
                        seen_at_a.entry(id).or_insert(k);
                    }
                }
                for sa in kernel_sas(&ns_b).await {
                    let id = sa.id();
                    let Some(kb) = sa.key else { continue };
                    match seen_at_a.get(&id) {
                        Some(ka) if ka.ct_eq(&kb) => {
                            pending.remove(&id);
                            checked.insert(id);
                        }
                        Some(_) => {
                            return Err(format!("SA {:#x}: gw-b's key differs from gw-a's", id.2));
                        }
                        None => {
                            let since =
                                *pending.entry(id).or_insert_with(tokio::time::Instant::now);
                            if since.elapsed() > TWIN_WAIT {
                                return Err(format!(
                                    "gw-b holds SA {}→{} {:#x} that gw-a never held",
                                    id.0, id.1, id.2
                                ));
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(checked.len())
        });
        Self { stop, task }
    }

    /// Stops watching; the number of SAs checked, or the violation.
    pub async fn finish(self) -> Result<usize, String> {
        self.stop.cancel();
        self.task.await.expect("SA watch task")
    }

    /// Whether the watch has already stopped on a violation.
    pub fn failed(&self) -> bool {
        self.task.is_finished()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfrm_state_text_parses() {
        let text = "src 192.0.2.1 dst 192.0.2.2\n\tproto esp spi 0x51440001 reqid 7 mode tunnel\n\
                    \treplay-window 0 flag af-unspec\n\taead rfc4106(gcm(aes)) 0x0102 128\n\
                    src 192.0.2.2 dst 192.0.2.1\n\tproto esp spi 0x00000100 reqid 0 mode tunnel\n";
        let sas = parse_xfrm_state(text);
        assert_eq!(sas.len(), 2);
        assert_eq!(sas[0].spi, 0x5144_0001);
        assert_eq!(sas[0].key.as_ref().unwrap().expose(), &[1, 2]);
        assert!(sas[1].key.is_none());
    }
}
