//! Shared pieces of the privileged tests: test keys, the standard tunnel
//! between the two gateways of a [`Testbed`], and thin wrappers around the
//! system tools the tests use as independent witnesses (`ping`, `nft`,
//! `ip -s xfrm state`).
//!
//! The witnesses deliberately do not go through the library: a counter read
//! by `ip` or a packet dropped by nftables cannot be fooled by a bug in our
//! netlink code.

use std::process::Stdio;
use std::time::Duration;

use qkd_ipsec::secret::SaKey;
use qkd_ipsec::testbed::{Gateway, Host, Testbed};
use qkd_ipsec::xfrm::{
    Direction, Mode, Ownership, PolicySpec, PolicyTemplate, SaId, SaSpec, TrafficSelector,
    XfrmHandle,
};
use tokio::process::Command;

/// Reqid of the SA carrying site A → site B, and of the reverse one.
pub const REQID_AB: u32 = 0x5144_0001;
pub const REQID_BA: u32 = 0x5144_0002;

/// A deterministic test key (not secret; tests only). Different `seed`s
/// give different keys, so each rekey generation has its own.
pub fn test_key(seed: u32) -> SaKey {
    let mut k = SaKey::zeroed();
    for (i, b) in k.expose_mut().iter_mut().enumerate() {
        *b = (seed.wrapping_mul(31).wrapping_add(i as u32 * 7) & 0xff) as u8;
    }
    k
}

/// The SA `from → to` between two gateways, tunnel mode, reqid `reqid`.
/// SPI 0: the receiver allocates it.
pub fn sa_spec(from: &Gateway, to: &Gateway, reqid: u32, key: SaKey) -> SaSpec {
    SaSpec::tunnel(from.wan, to.wan, 0, reqid, key)
}

/// Handles on both gateways with the default ownership rule.
pub async fn gateway_handles(bed: &Testbed) -> (XfrmHandle, XfrmHandle) {
    let a = XfrmHandle::connect(&bed.gw_a.netns, Ownership::default())
        .await
        .expect("XFRM handle in gw-a");
    let b = XfrmHandle::connect(&bed.gw_b.netns, Ownership::default())
        .await
        .expect("XFRM handle in gw-b");
    (a, b)
}

/// Installs the SA `spec` as inbound at `receiver` (SPI allocated there)
/// and as outbound at `sender` with the same SPI and a duplicate key.
pub async fn install_sa_pair(receiver: &XfrmHandle, sender: &XfrmHandle, mut spec: SaSpec) -> SaId {
    let out_key = spec.key.duplicate();
    let id = receiver
        .add_inbound_sa(&mut spec)
        .await
        .unwrap_or_else(|e| panic!("inbound SA at the receiver: {e}"));
    // The outbound half is the same SA (ESN setting included: both ends
    // must agree) with its own copy of the key.
    let outbound = SaSpec {
        key: out_key,
        ..spec
    };
    let out_id = sender
        .add_sa(&outbound)
        .await
        .unwrap_or_else(|e| panic!("outbound SA at the sender: {e}"));
    assert_eq!(id, out_id, "both halves of an SA must have the same id");
    id
}

/// Policies for the site-to-site tunnel: on each gateway an `out` policy
/// for its site → the other site, and `in` + `fwd` policies for the
/// reverse traffic, each requiring ESP by the direction's reqid.
pub async fn install_tunnel_policies(a: &XfrmHandle, b: &XfrmHandle, bed: &Testbed) {
    let (ga, gb) = (&bed.gw_a, &bed.gw_b);
    let ab = TrafficSelector::between(ga.site, gb.site);
    let ba = TrafficSelector::between(gb.site, ga.site);
    let t_ab = PolicyTemplate {
        src: ga.wan,
        dst: gb.wan,
        reqid: REQID_AB,
        mode: Mode::Tunnel,
    };
    let t_ba = PolicyTemplate {
        src: gb.wan,
        dst: ga.wan,
        reqid: REQID_BA,
        mode: Mode::Tunnel,
    };
    for (handle, specs) in [
        (
            a,
            [
                PolicySpec::new(ab, Direction::Out, t_ab),
                PolicySpec::new(ba, Direction::In, t_ba),
                PolicySpec::new(ba, Direction::Fwd, t_ba),
            ],
        ),
        (
            b,
            [
                PolicySpec::new(ba, Direction::Out, t_ba),
                PolicySpec::new(ab, Direction::In, t_ab),
                PolicySpec::new(ab, Direction::Fwd, t_ab),
            ],
        ),
    ] {
        for spec in specs {
            handle
                .add_policy(&spec)
                .await
                .unwrap_or_else(|e| panic!("policy {}: {e}", spec.direction));
        }
    }
}

/// `ip netns exec NS PROGRAM ARGS…`
pub fn in_netns(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program])
        .args(args)
        .kill_on_drop(true)
        .stdin(Stdio::null());
    c
}

/// Runs a command to completion, panicking with its stderr on failure.
pub async fn run_ok(mut c: Command, what: &str) -> String {
    let out = c
        .output()
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `ping` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingStats {
    pub transmitted: u64,
    pub received: u64,
}

/// Parses ping's summary line "N packets transmitted, M received, …".
pub fn parse_ping(output: &str) -> Option<PingStats> {
    let line = output.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u64>());
    Some(PingStats {
        transmitted: nums.next()?.ok()?,
        received: nums.next()?.ok()?,
    })
}

/// Starts `ping -q -c COUNT -i INTERVAL DST` in `ns`; returns the child.
pub fn spawn_ping(ns: &str, dst: &str, count: u64, interval: &str) -> tokio::process::Child {
    let count = count.to_string();
    in_netns(
        ns,
        "ping",
        &["-q", "-n", "-c", &count, "-i", interval, "-W", "5", dst],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn ping")
}

/// Pings and returns the statistics (ping exits non-zero on loss, which is
/// a result here, not an error).
pub async fn ping(ns: &str, dst: &str, count: u64, interval: &str) -> PingStats {
    ping_stats(spawn_ping(ns, dst, count, interval)).await
}

/// Waits for a [`spawn_ping`] and returns its statistics.
pub async fn ping_stats(child: tokio::process::Child) -> PingStats {
    let out = child.wait_with_output().await.expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping(&text).unwrap_or_else(|| {
        panic!(
            "no ping summary: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Applies an nftables ruleset in `ns`.
pub async fn nft_apply(ns: &str, ruleset: &str) {
    let mut c = in_netns(ns, "nft", &["-f", "-"]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn nft");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("nft stdin");
        stdin
            .write_all(ruleset.as_bytes())
            .await
            .expect("write ruleset");
    }
    let out = child.wait_with_output().await.expect("nft");
    assert!(
        out.status.success(),
        "nft -f failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Packets counted by a named nftables counter in table `inet qkdtest`.
pub async fn nft_counter(ns: &str, name: &str) -> u64 {
    let out = run_ok(
        in_netns(ns, "nft", &["list", "counter", "inet", "qkdtest", name]),
        "nft list counter",
    )
    .await;
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("packets"))
        .unwrap_or_else(|| panic!("no packets line in {out}"));
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad counter line {line}"))
}

/// Per-SA packet counters as `ip -s xfrm state` prints them ("lifetime
/// current: B(bytes), P(packets)"), keyed by SPI. Only SPIs and counters are
/// extracted; the output (which shows keys) is never printed.
pub async fn ip_xfrm_packets(ns: &str) -> Vec<(u32, u64)> {
    let out = run_ok(
        in_netns(ns, "ip", &["-s", "xfrm", "state"]),
        "ip -s xfrm state",
    )
    .await;
    let mut result = Vec::new();
    let mut spi = None;
    let mut lines = out.lines();
    while let Some(line) = lines.next() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("proto esp spi 0x") {
            let hex: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            spi = u32::from_str_radix(&hex, 16).ok();
        } else if l.starts_with("lifetime current:") {
            let counters = lines.next().unwrap_or_default();
            let packets = counters
                .split(',')
                .find(|p| p.contains("(packets)"))
                .and_then(|p| p.trim().trim_end_matches("(packets)").parse().ok());
            if let (Some(s), Some(p)) = (spi.take(), packets) {
                result.push((s, p));
            }
        }
    }
    result
}

/// The SPIs `ip xfrm state` lists in `ns` (all SAs, ours or not).
pub async fn ip_xfrm_spis(ns: &str) -> Vec<u32> {
    ip_xfrm_packets(ns)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

/// Runs `f` with a timeout, failing the test with `what` on expiry.
pub async fn within<T>(limit: Duration, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}

/// What a [`UdpStream`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamStats {
    pub sent: u64,
    /// The first few sequence numbers that never arrived.
    pub first_missing: [Option<u64>; 4],
    /// Distinct sequence numbers that arrived.
    pub received: u64,
    pub duplicates: u64,
    pub send_errors: u64,
    /// Achieved send rate, packets per second.
    pub rate: f64,
}

/// A one-way stream of numbered UDP datagrams between two hosts of the
/// testbed at a fixed rate; the receiver records every sequence number, so
/// loss and duplication are counted exactly. Sockets are created inside the
/// hosts' namespaces.
pub struct UdpStream {
    stop_sending: tokio_util::sync::CancellationToken,
    stop_receiving: tokio_util::sync::CancellationToken,
    sender: tokio::task::JoinHandle<(u64, u64, Duration)>,
    receiver: tokio::task::JoinHandle<(Vec<bool>, u64)>,
}

impl UdpStream {
    pub async fn start(from: &Host, to: &Host, port: u16, rate: u32) -> Self {
        use std::net::{SocketAddr, UdpSocket};
        let bind = |netns: &qkd_ipsec::netns::Netns, addr: SocketAddr| {
            let socket = netns
                .run(move || UdpSocket::bind(addr))
                .expect("enter host namespace")
                .expect("bind UDP socket");
            socket.set_nonblocking(true).expect("non-blocking");
            tokio::net::UdpSocket::from_std(socket).expect("register UDP socket")
        };
        let rx = bind(&to.netns, SocketAddr::new(to.addr, port));
        let tx = bind(&from.netns, SocketAddr::new(from.addr, 0));
        let dst = SocketAddr::new(to.addr, port);
        let stop_sending = tokio_util::sync::CancellationToken::new();
        let stop_receiving = tokio_util::sync::CancellationToken::new();

        let receiver = {
            let stop = stop_receiving.clone();
            tokio::spawn(async move {
                let mut seen: Vec<bool> = Vec::new();
                let mut duplicates = 0;
                let mut buf = [0u8; 64];
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        r = rx.recv(&mut buf) => {
                            let Ok(n) = r else { continue };
                            if n < 8 { continue; }
                            let seq = u64::from_be_bytes(buf[..8].try_into().unwrap()) as usize;
                            if seq >= seen.len() { seen.resize(seq + 1, false); }
                            if seen[seq] { duplicates += 1 } else { seen[seq] = true }
                        }
                    }
                }
                (seen, duplicates)
            })
        };
        let sender = {
            let stop = stop_sending.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
                // Late wake-ups (an emulated CPU) are made up with bursts, so
                // the average rate holds whenever the CPU can sustain it.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let started = tokio::time::Instant::now();
                let (mut sent, mut errors) = (0u64, 0u64);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {
                            match tx.send_to(&sent.to_be_bytes(), dst).await {
                                Ok(_) => {}
                                Err(_) => errors += 1,
                            }
                            sent += 1;
                        }
                    }
                }
                (sent, errors, started.elapsed())
            })
        };
        Self {
            stop_sending,
            stop_receiving,
            sender,
            receiver,
        }
    }

    /// Stops sending, waits `drain` for packets in flight, stops receiving.
    pub async fn finish(self, drain: Duration) -> StreamStats {
        // Stop the sender first, then give the last packets time to arrive.
        self.stop_sending.cancel();
        let (sent, send_errors, elapsed) = self.sender.await.expect("sender task");
        tokio::time::sleep(drain).await;
        self.stop_receiving.cancel();
        let (seen, duplicates) = self.receiver.await.expect("receiver task");
        let mut first_missing = [None; 4];
        let missing = (0..sent).filter(|&i| !seen.get(i as usize).copied().unwrap_or(false));
        for (slot, seq) in first_missing.iter_mut().zip(missing) {
            *slot = Some(seq);
        }
        StreamStats {
            sent,
            first_missing,
            received: seen.iter().filter(|&&s| s).count() as u64,
            duplicates,
            send_errors,
            rate: sent as f64 / elapsed.as_secs_f64(),
        }
    }
}

/// The non-zero XFRM error counters of a namespace (/proc/net/xfrm_stat),
/// which say where the kernel dropped IPsec packets.
pub async fn xfrm_stat(ns: &str) -> String {
    run_ok(
        in_netns(ns, "cat", &["/proc/net/xfrm_stat"]),
        "read xfrm_stat",
    )
    .await
    .lines()
    .filter(|l| !l.trim_end().ends_with(" 0") && !l.trim_end().ends_with("\t0"))
    .collect::<Vec<_>>()
    .join(", ")
}
