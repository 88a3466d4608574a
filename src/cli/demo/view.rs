//! The pair demo's live view: one plain-text frame per second from both
//! agents' status snapshots, the ping counters and the WAN filters'
//! counters — and the pieces of a frame every topology shows the same way
//! (header, tunnel lines, traffic, alarms), which the relay view
//! ([`super::relay_view`]) reuses. Pure functions of their inputs (no
//! clock, no I/O), so they are unit-tested. Shows only public figures:
//! counts, rates, SPIs — never key bytes.

use std::fmt::Write;

use crate::ops::{BoardSnapshot, PeerSnapshot, PoolSnapshot, TunnelSnapshot, key_use_name};

/// What ping has reported so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PingCounts {
    /// Highest `icmp_seq` seen (ping numbers from 1).
    pub sent: u64,
    pub received: u64,
    /// Requests ping gave up waiting for (`-O`: "no answer yet").
    pub unanswered: u64,
    pub last_rtt_ms: Option<f64>,
}

impl PingCounts {
    /// Updates the counts from one line of `ping -n -O` output.
    pub fn observe(&mut self, line: &str) {
        if let Some(seq) = field(line, "icmp_seq=").and_then(|s| s.parse::<u64>().ok()) {
            self.sent = self.sent.max(seq);
        }
        if line.contains(" bytes from ") {
            self.received += 1;
            self.last_rtt_ms = field(line, "time=").and_then(|t| t.parse().ok());
        } else if line.starts_with("no answer yet") {
            self.unanswered += 1;
        }
    }

    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            100.0 * self.unanswered as f64 / self.sent as f64
        }
    }
}

/// The value after `key` up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    Some(rest.split_whitespace().next().unwrap_or(rest))
}

/// What the demo loop measures itself, the same for every topology.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveFigures {
    pub elapsed_s: u64,
    pub duration_s: Option<u64>,
    pub in_vm: bool,
    pub ping: PingCounts,
    /// Clear-text packets between the sites that each gateway's WAN filter
    /// (an nftables counter) dropped, in the scene's gateway order, if the
    /// filters are installed.
    pub clear_on_wan: Option<Vec<u64>>,
}

impl LiveFigures {
    /// The clear-text packets on every WAN together.
    pub fn clear_total(&self) -> Option<u64> {
        self.clear_on_wan.as_ref().map(|c| c.iter().sum())
    }

    /// The end of the title line: time, how it stops, where it runs.
    pub fn title_tail(&self) -> String {
        let stop = match self.duration_s {
            Some(d) => format!("stops after {d} s"),
            None => "Ctrl-C stops and tears down".into(),
        };
        format!(
            "{} s — {stop}{}",
            self.elapsed_s,
            if self.in_vm {
                " — inside a VM (host kernel lacks ESP)"
            } else {
                ""
            }
        )
    }
}

/// Everything one frame of the pair demo shows.
pub struct Frame<'a> {
    pub length_km: f64,
    pub a: Option<&'a BoardSnapshot>,
    pub b: Option<&'a BoardSnapshot>,
    pub live: &'a LiveFigures,
}

fn peer(s: Option<&BoardSnapshot>) -> Option<&PeerSnapshot> {
    s.and_then(|s| s.peers.first())
}

pub fn tunnel(s: Option<&BoardSnapshot>) -> Option<&TunnelSnapshot> {
    s.and_then(|s| s.tunnels.first())
}

fn percent(x: Option<f64>) -> String {
    x.map_or("-".into(), |q| format!("{:.2} %", 100.0 * q))
}

/// Bits per second with a unit.
pub fn rate(bps: f64) -> String {
    if bps >= 1e6 {
        format!("{:.2} Mbit/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.1} kbit/s", bps / 1e3)
    } else {
        format!("{bps:.0} bit/s")
    }
}

/// The frame as text (no terminal control codes).
pub fn render(f: &Frame) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "qkd-ipsec demo — gw-a ⇄ gw-b over {} km of simulated fibre — {}",
        f.length_km,
        f.live.title_tail()
    );
    out.push_str(
        "  host-a 10.1.0.2 ── gw-a 192.0.2.1 ══ ESP ══ 192.0.2.2 gw-b ── host-b 10.2.0.2\n",
    );
    let _ = writeln!(out, "  {}\n", crate::ops::SIMULATED_LINK_CAVEAT);
    render_link(&mut out, f);
    out.push('\n');
    let _ = writeln!(
        out,
        "Tunnel  10.1.0.0/24 ⇄ 10.2.0.0/24, ESP rfc4106(gcm(aes)), keys from the pool"
    );
    for (name, s) in [("gw-a", f.a), ("gw-b", f.b)] {
        render_tunnel_line(&mut out, name, s);
    }
    out.push('\n');
    render_traffic(&mut out, "host-a → host-b", f.live);
    if let Some(n) = f.live.clear_total() {
        let _ = writeln!(
            out,
            "         clear-text packets between the sites on the WAN: {n} (nftables counter)"
        );
    }
    out.push('\n');
    render_alarms(&mut out, &[("gw-a", f.a), ("gw-b", f.b)]);
    out
}

/// The ping line.
pub fn render_traffic(out: &mut String, route: &str, live: &LiveFigures) {
    let p = &live.ping;
    let _ = writeln!(
        out,
        "Traffic  ping {route}: {} sent, {} answered, {} lost ({:.1} %){}",
        p.sent,
        p.received,
        p.unanswered,
        p.loss_percent(),
        p.last_rtt_ms
            .map_or(String::new(), |r| format!(", last rtt {r:.2} ms"))
    );
}

fn render_link(out: &mut String, f: &Frame) {
    let (pa, pb) = (peer(f.a), peer(f.b));
    let state = |p: Option<&PeerSnapshot>| p.map_or("no status", |p| p.channel.state.name());
    let _ = writeln!(
        out,
        "QKD link  channel: gw-a {}, gw-b {}",
        state(pa),
        state(pb)
    );
    // The receiver (gw-b) measures; both sides count the same blocks.
    let Some(q) = pa.or(pb).map(|p| &p.qkd) else {
        return;
    };
    let _ = writeln!(
        out,
        "  blocks {} with key, {} aborted   key rate {}   key made {} bits",
        q.blocks_ok,
        q.blocks_aborted_total(),
        rate(q.key_rate_bps),
        q.key_bits_total
    );
    if let Some(b) = &q.last_block {
        let _ = writeln!(
            out,
            "  last block #{}: QBER key {}  test {}  → {}",
            b.block_id,
            percent(b.qber_key),
            percent(Some(b.qber_test)),
            match &b.aborted {
                Some(cause) => format!("aborted ({cause})"),
                None => format!("{} final bits", b.final_bits),
            }
        );
    }
    for (name, p) in [("gw-a", pa), ("gw-b", pb)] {
        let Some(pool) = p.and_then(|p| p.pool.as_ref()) else {
            continue;
        };
        let _ = writeln!(
            out,
            "  pool {name}: {} bytes available ({} blocks); used: {}",
            pool.available_bytes,
            pool.blocks,
            pool_uses(pool)
        );
    }
}

/// What a pool's bytes were used for (`sa_key 144, auth 64`).
pub fn pool_uses(pool: &PoolSnapshot) -> String {
    let used: Vec<String> = pool
        .consumed
        .iter()
        .filter(|u| u.bytes > 0)
        .map(|u| format!("{} {}", u.key_use, u.bytes))
        .collect();
    if used.is_empty() {
        "nothing yet".into()
    } else {
        used.join(", ")
    }
}

/// One gateway's view of the first tunnel: state, generation, SPIs, rekeys.
pub fn render_tunnel_line(out: &mut String, name: &str, s: Option<&BoardSnapshot>) {
    let Some(t) = tunnel(s) else {
        let _ = writeln!(out, "  {name}: no status");
        return;
    };
    let spi = |x: Option<u32>| x.map_or("-".into(), |s| format!("{s:#010x}"));
    let next = match (t.next_rekey_at_unix_ms, s) {
        (Some(at), Some(s)) => format!(
            ", next in {} s",
            at.saturating_sub(s.taken_at_unix_ms).div_ceil(1000)
        ),
        _ => String::new(),
    };
    let last = t
        .last_rekey
        .map_or(String::new(), |r| format!(", last by {}", r.cause.name()));
    let _ = writeln!(
        out,
        "  {name}: {:<18} generation {:>3}  SPI in {} out {}  rekeys {} ok {} failed{last}{next}",
        t.state.name(),
        t.generation,
        spi(t.spi_in),
        spi(t.spi_out),
        t.rekeys_done(),
        t.rekeys_failed()
    );
}

/// The active alarms of every gateway, on one line.
pub fn render_alarms(out: &mut String, gateways: &[(&str, Option<&BoardSnapshot>)]) {
    let active: Vec<String> = gateways
        .iter()
        .filter_map(|&(n, s)| Some((n, s?)))
        .flat_map(|(n, s)| {
            s.alarms
                .iter()
                .filter(|a| a.active)
                .map(move |a| format!("{n}: {}", alarm_name(&a.alarm)))
        })
        .collect();
    if active.is_empty() {
        out.push_str("Alarms  none\n");
    } else {
        let _ = writeln!(out, "Alarms  {}", active.join("; "));
    }
}

fn alarm_name(a: &crate::ops::Alarm) -> String {
    // The JSON tag is the stable name.
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_string))
        .unwrap_or_else(|| "alarm".into())
}

/// Bytes of pool key consumed for SA keys on this side.
pub fn sa_key_bytes(s: &BoardSnapshot) -> u64 {
    let name = key_use_name(crate::keys::KeyUse::SaKey);
    s.peers
        .iter()
        .filter_map(|p| p.pool.as_ref())
        .flat_map(|p| &p.consumed)
        .filter(|u| u.key_use == name)
        .map(|u| u.bytes)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_lines_are_counted() {
        let mut p = PingCounts::default();
        for line in [
            "PING 10.2.0.2 (10.2.0.2) 56(84) bytes of data.",
            "no answer yet for icmp_seq=1",
            "64 bytes from 10.2.0.2: icmp_seq=2 ttl=62 time=0.404 ms",
            "64 bytes from 10.2.0.2: icmp_seq=3 ttl=62 time=1.5 ms",
        ] {
            p.observe(line);
        }
        assert_eq!(p.sent, 3);
        assert_eq!(p.received, 2);
        assert_eq!(p.unanswered, 1);
        assert_eq!(p.last_rtt_ms, Some(1.5));
        assert!((p.loss_percent() - 100.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn rates_have_units() {
        assert_eq!(rate(512.0), "512 bit/s");
        assert_eq!(rate(43_100.0), "43.1 kbit/s");
        assert_eq!(rate(2.5e6), "2.50 Mbit/s");
    }

    #[test]
    fn a_frame_without_status_still_renders() {
        let live = LiveFigures {
            elapsed_s: 3,
            duration_s: Some(30),
            in_vm: true,
            ping: PingCounts::default(),
            clear_on_wan: Some(vec![0, 0]),
        };
        let f = Frame {
            length_km: 25.0,
            a: None,
            b: None,
            live: &live,
        };
        let text = render(&f);
        assert!(text.contains("inside a VM"));
        assert!(text.contains("SIMULATED link") && text.contains("not quantum-secure"));
        assert!(text.contains("gw-a: no status"));
        assert!(text.contains("clear-text packets between the sites on the WAN: 0"));
    }
}
