//! The human view of a [`BoardSnapshot`] (`qkd-ipsec status`, the demo's
//! live view) and the one-line summary for systemd's STATUS. Pure functions
//! of a snapshot: no clock of their own, ages are relative to the
//! snapshot's `taken_at_unix_ms`.

use std::fmt::Write;

use super::snapshot::{AlarmSnapshot, BoardSnapshot, PeerSnapshot, PoolSnapshot, TunnelSnapshot};

/// A multi-line report of peers, tunnels and alarms.
pub fn render_text(s: &BoardSnapshot) -> String {
    let now = s.taken_at_unix_ms;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "qkd-ipsec {} on gateway {} — up {}",
        s.version,
        s.gateway,
        age(now, s.started_at_unix_ms)
    );
    let _ = writeln!(out, "{}", summary_line(s));
    out.push_str("\nPeers\n");
    if s.peers.is_empty() {
        out.push_str("  (none)\n");
    }
    for p in &s.peers {
        render_peer(&mut out, p, now);
    }
    out.push_str("\nTunnels\n");
    if s.tunnels.is_empty() {
        out.push_str("  (none)\n");
    }
    for t in &s.tunnels {
        render_tunnel(&mut out, t, now);
    }
    if !s.kme.is_empty() {
        out.push_str("\nKME (ETSI GS QKD 014) deliveries\n");
        for k in &s.kme {
            let _ = writeln!(
                out,
                "  SAE {}: {} keys by enc_keys, {} by dec_keys, {} requests refused",
                k.sae, k.enc_keys_total, k.dec_keys_total, k.refused_requests_total
            );
        }
    }
    if !s.relay.is_empty() {
        out.push_str("\nRelayed-key shares per QKD link\n");
        for r in &s.relay {
            let _ = writeln!(
                out,
                "  {}: sent {} ({} B), received {} ({} B): {} relayed on, {} for this gateway, \
                 {} refused",
                r.link,
                r.sent_shares_total,
                r.sent_bytes_total,
                r.received_shares_total,
                r.received_bytes_total,
                r.forwarded_shares_total,
                r.delivered_shares_total,
                r.refused_shares_total
            );
        }
    }
    out.push_str("\nAlarms\n");
    if s.alarms.is_empty() {
        out.push_str("  (none)\n");
    }
    for a in &s.alarms {
        render_alarm(&mut out, a, now);
    }
    out
}

/// One line: peers connected, tunnels up, active alarms (systemd STATUS=).
pub fn summary_line(s: &BoardSnapshot) -> String {
    let connected = s
        .peers
        .iter()
        .filter(|p| p.channel.state == super::ChannelState::Connected)
        .count();
    let up = s
        .tunnels
        .iter()
        .filter(|t| t.state.carries_traffic())
        .count();
    let active: Vec<_> = s.alarms.iter().filter(|a| a.active).collect();
    let critical = active
        .iter()
        .filter(|a| a.severity == super::Severity::Critical)
        .count();
    let mut line = format!(
        "{connected}/{} peers connected, {up}/{} tunnels keyed, {} active alarms",
        s.peers.len(),
        s.tunnels.len(),
        active.len()
    );
    if critical > 0 {
        let _ = write!(line, " ({critical} critical)");
    }
    line
}

fn render_peer(out: &mut String, p: &PeerSnapshot, now: u64) {
    let c = &p.channel;
    let _ = write!(
        out,
        "  {}  ({})  channel {} for {}",
        p.name,
        p.role.name(),
        c.state.name(),
        age(now, c.since_unix_ms)
    );
    if let Some(remote) = &c.remote {
        let _ = write!(
            out,
            ", session {} epoch {} with {remote}",
            c.session, c.epoch
        );
    }
    let _ = writeln!(
        out,
        ", reconnects {}, auth failures {}",
        c.reconnects, c.auth_failures
    );
    let _ = writeln!(
        out,
        "      link: {}{}",
        p.source.name(),
        p.caveat
            .as_deref()
            .map_or(String::new(), |c| format!(" — {c}"))
    );
    if let Some(k) = &p.key_source {
        let _ = writeln!(
            out,
            "      key source: {} {} at {}, {} keys ({} bytes) fetched{}, {} errors{}",
            match p.source {
                super::LinkSource::Relayed => "relayed,",
                _ => "ETSI 014",
            },
            k.role,
            k.kme_url,
            k.keys_fetched,
            k.bytes_fetched,
            k.last_delivery_us.map_or(String::new(), |us| format!(
                ", last block in {:.1} ms",
                us as f64 / 1e3
            )),
            k.errors,
            k.last_error
                .as_deref()
                .map_or(String::new(), |e| format!("; last error: {e}"))
        );
    }
    if let Some(err) = c
        .last_error
        .as_deref()
        .filter(|_| c.state != super::ChannelState::Connected)
    {
        let _ = writeln!(
            out,
            "      last error ({} dial attempts): {err}",
            c.dial_attempts
        );
    }
    let q = &p.qkd;
    let _ = write!(
        out,
        "      QKD: {} blocks ok, {} aborted",
        q.blocks_ok,
        q.blocks_aborted_total()
    );
    if !q.blocks_aborted.is_empty() {
        let causes: Vec<_> = q
            .blocks_aborted
            .iter()
            .map(|c| format!("{} {}", c.cause, c.count))
            .collect();
        let _ = write!(out, " ({})", causes.join(", "));
    }
    let _ = writeln!(
        out,
        "; key rate {} over {:.0} s, {} key bits in total",
        bit_rate(q.key_rate_bps),
        q.key_rate_window_s,
        q.key_bits_total
    );
    if let Some(b) = &q.last_block {
        let key = b.qber_key.map_or("n/a".to_string(), percent);
        let outcome = match &b.aborted {
            None => format!("{} final bits", b.final_bits),
            Some(cause) => format!("aborted: {cause}"),
        };
        let _ = writeln!(
            out,
            "      last block #{} {} ago: QBER key {key}, test {}; {outcome}",
            b.block_id,
            age(now, b.at_unix_ms),
            percent(b.qber_test)
        );
    }
    match &p.pool {
        Some(pool) => render_pool(out, pool),
        None => out.push_str("      pool: not reported yet\n"),
    }
}

fn render_pool(out: &mut String, pool: &PoolSnapshot) {
    let _ = writeln!(
        out,
        "      pool: {} available ({} for own takes), low water {}{}",
        bytes(pool.available_bytes),
        bytes(pool.available_to_initiate),
        bytes(pool.low_water),
        if pool.below_low_water {
            " — BELOW LOW WATER"
        } else {
            ""
        }
    );
    let used: Vec<_> = pool
        .consumed
        .iter()
        .filter(|u| u.bytes > 0)
        .map(|u| format!("{} {}", u.key_use, bytes(u.bytes)))
        .collect();
    if !used.is_empty() {
        let _ = writeln!(out, "      consumed: {}", used.join(", "));
    }
}

fn render_tunnel(out: &mut String, t: &TunnelSnapshot, now: u64) {
    let spi = |s: Option<u32>| s.map_or("-".to_string(), |v| format!("0x{v:08x}"));
    let _ = write!(
        out,
        "  {}  peer {}  {} for {}  generation {}  SPI in {} out {}",
        t.name,
        t.peer,
        t.state.name(),
        age(now, t.state_since_unix_ms),
        t.generation,
        spi(t.spi_in),
        spi(t.spi_out)
    );
    if let Some(at) = t.sa_installed_at_unix_ms {
        let _ = write!(out, "  age {}", age(now, at));
    }
    out.push('\n');
    let u = &t.sa_usage;
    let _ = writeln!(
        out,
        "      current SAs: in {} / {} packets, out {} / {} packets",
        bytes(u.bytes_in),
        u.packets_in,
        bytes(u.bytes_out),
        u.packets_out
    );
    let last = t.last_rekey.map_or("never".to_string(), |r| {
        format!("{} ago ({})", age(now, r.at_unix_ms), r.cause.name())
    });
    let next = t
        .next_rekey_at_unix_ms
        .map_or("not scheduled".to_string(), |at| {
            if at >= now {
                format!("in {}", duration_ms(at - now))
            } else {
                format!("overdue by {}", duration_ms(now - at))
            }
        });
    let _ = writeln!(
        out,
        "      last rekey {last}; next {next}; rekeys {} ok, {} failed; key wasted {}",
        t.rekeys_done(),
        t.rekeys_failed(),
        bytes(t.keys_wasted_bytes)
    );
    if let Some(f) = &t.last_failure {
        let _ = writeln!(
            out,
            "      last failure {} ago ({}): {}",
            age(now, f.at_unix_ms),
            f.cause.name(),
            f.error
        );
    }
}

fn render_alarm(out: &mut String, a: &AlarmSnapshot, now: u64) {
    let state = match a.cleared_at_unix_ms {
        None => "ACTIVE ".to_string(),
        Some(at) => format!("cleared {} ago,", age(now, at)),
    };
    let _ = writeln!(
        out,
        "  {state} {} {} ×{} (first {} ago, last {} ago): {}",
        a.severity.name(),
        a.alarm.kind(),
        a.count,
        age(now, a.first_seen_unix_ms),
        age(now, a.last_seen_unix_ms),
        a.alarm.describe()
    );
}

fn age(now_ms: u64, then_ms: u64) -> String {
    duration_ms(now_ms.saturating_sub(then_ms))
}

/// `3h 02m`, `4m 05s`, `12.3 s`.
fn duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 86_400 {
        format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn percent(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn bit_rate(bps: f64) -> String {
    if bps >= 1e6 {
        format!("{:.2} Mbit/s", bps / 1e6)
    } else if bps >= 1e3 {
        format!("{:.2} kbit/s", bps / 1e3)
    } else {
        format!("{bps:.0} bit/s")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::keys::{BlockId, KeyPool, KeyUse, Role};
    use crate::ops::board::tests::{aborted_block, board_with_clock, good_block};
    use crate::ops::snapshot::{PeerRole, RekeyCause, SaUsage, TunnelState};
    use crate::qkd::link::AbortCause;
    use crate::secret::SecretBytes;

    #[test]
    fn the_text_view_shows_every_figure_an_operator_needs() {
        let (board, clock) = board_with_clock();
        let peer = board.register_peer("gw-b", PeerRole::Transmitter);
        let mut pool = KeyPool::new(Role::Transmitter);
        pool.append(BlockId(1), SecretBytes::from_slice(&[5u8; 4096]))
            .unwrap();
        let _ = pool.take(KeyUse::SaKey, 72).unwrap();
        peer.set_pool(&pool.status());
        clock.advance(Duration::from_secs(30));
        peer.record_block(&good_block(41, 12_000));
        peer.record_block(&aborted_block(42, AbortCause::TestQber, 50));
        let t = board.register_tunnel("site-b", "gw-b");
        t.sa_installed(12, 0xc000_0001, 0xc000_0002, RekeyCause::Timer);
        t.set_sa_usage(SaUsage {
            bytes_in: 1_500_000,
            packets_in: 1200,
            bytes_out: 2048,
            packets_out: 3,
        });
        t.set_next_rekey(Some(
            std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + 90_000),
        ));
        t.set_state(TunnelState::Rekeying);
        clock.advance(Duration::from_secs(5));
        let text = render_text(&board.snapshot());
        println!("{text}");
        for needle in [
            "gateway gw-a",
            "1/1 tunnels keyed, 1 active alarms (1 critical)",
            "gw-b  (transmitter)  channel unknown",
            "link: simulated — SIMULATED link: its keys are only as secret as the peer channel's classical keys",
            "1 blocks ok, 1 aborted (test_qber 1)",
            "key rate 343 bit/s over 35 s, 12000 key bits in total",
            "last block #42 5.0 s ago: QBER key n/a, test 25.00 %; aborted: test_qber",
            "pool: 3.9 KiB available (1.9 KiB for own takes)",
            "consumed: sa_key 72 B",
            "site-b  peer gw-b  rekeying for 5.0 s  generation 12  SPI in 0xc0000001 out 0xc0000002  age 5.0 s",
            "in 1.4 MiB / 1200 packets, out 2.0 KiB / 3 packets",
            "last rekey 5.0 s ago (timer); next in 55.0 s; rekeys 1 ok, 0 failed",
            "ACTIVE  critical qber_above_threshold ×1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn units_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(duration_ms(12_345), "12.3 s");
        assert_eq!(duration_ms(245_000), "4m 05s");
        assert_eq!(duration_ms(3 * 3600 * 1000 + 120_000), "3h 02m");
        assert_eq!(bit_rate(1234.0), "1.23 kbit/s");
        assert_eq!(percent(0.0311), "3.11 %");
    }
}
