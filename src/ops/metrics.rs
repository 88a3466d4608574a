//! Prometheus text exposition (format 0.0.4) of a [`BoardSnapshot`]. Owns
//! metric names, help texts and labels; the HTTP side is in
//! [`super::metrics_server`]. Every family is written whole (HELP, TYPE,
//! then all its samples) because the format requires a family's lines to be
//! contiguous. Label values are escaped (`\\`, `\"`, `\n`) since peer and
//! tunnel names come from the config.

use std::fmt::Write;

use super::alarm::AlarmKind;
use super::snapshot::{BoardSnapshot, ChannelState, LinkSource, TunnelState};

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy)]
enum Type {
    Counter,
    Gauge,
}

/// Writes one family at a time.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: Type, help: &str) -> Family<'_> {
        let kind = match kind {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
        };
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        Family {
            out: &mut self.out,
            name: name.to_string(),
        }
    }
}

struct Family<'a> {
    out: &'a mut String,
    name: String,
}

impl Family<'_> {
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(&self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
        self
    }
}

/// Label values need escaping only in the rare name with `\`, `"` or a
/// newline; the usual case is borrowed (a scrape writes ~26 series per
/// tunnel).
fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Go-style floats: integers without a fraction, `NaN`, `+Inf`, `-Inf`.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// The whole exposition.
pub fn render_metrics(s: &BoardSnapshot) -> String {
    let mut e = Exposition { out: String::new() };
    e.family("qkd_ipsec_info", Type::Gauge, "Agent identity; always 1.")
        .sample(&[("gateway", &s.gateway), ("version", &s.version)], 1.0);
    e.family(
        "qkd_ipsec_start_time_seconds",
        Type::Gauge,
        "Unix time the agent started.",
    )
    .sample(&[], secs(s.started_at_unix_ms));
    render_peers(&mut e, s);
    render_tunnels(&mut e, s);
    render_alarms(&mut e, s);
    render_kme(&mut e, s);
    render_relay(&mut e, s);
    e.out
}

fn render_peers(e: &mut Exposition, s: &BoardSnapshot) {
    let mut f = e.family(
        "qkd_ipsec_link_simulated",
        Type::Gauge,
        "1 if the link is simulated: its keys are only as secret as the peer channel's \
         classical keys (bootstrap secret, HMAC channel keys), not quantum-secure.",
    );
    for p in &s.peers {
        let simulated = p.source == LinkSource::Simulated;
        f.sample(&[("peer", &p.name)], f64::from(u8::from(simulated)));
    }
    let mut f = e.family(
        "qkd_ipsec_etsi014_keys_total",
        Type::Counter,
        "Keys taken from the KME over ETSI GS QKD 014 and appended to the pool.",
    );
    for p in &s.peers {
        if let Some(k) = &p.key_source {
            f.sample(&[("peer", &p.name)], k.keys_fetched as f64);
        }
    }
    let mut f = e.family(
        "qkd_ipsec_etsi014_errors_total",
        Type::Counter,
        "Failed ETSI GS QKD 014 key fetches (KME errors, refused offers, missing acks).",
    );
    for p in &s.peers {
        if let Some(k) = &p.key_source {
            f.sample(&[("peer", &p.name)], k.errors as f64);
        }
    }
    let mut f = e.family(
        "qkd_ipsec_link_up",
        Type::Gauge,
        "1 if the peer channel has an authenticated session.",
    );
    for p in &s.peers {
        let up = p.channel.state == ChannelState::Connected;
        f.sample(&[("peer", &p.name)], f64::from(u8::from(up)));
    }
    let mut f = e.family(
        "qkd_ipsec_link_reconnects_total",
        Type::Counter,
        "Peer channel sessions established after the first.",
    );
    for p in &s.peers {
        f.sample(&[("peer", &p.name)], p.channel.reconnects as f64);
    }
    let mut f = e.family(
        "qkd_ipsec_link_auth_failures_total",
        Type::Counter,
        "Peer channel handshake confirmations or frame MACs that failed.",
    );
    for p in &s.peers {
        f.sample(&[("peer", &p.name)], p.channel.auth_failures as f64);
    }
    let mut f = e.family(
        "qkd_ipsec_blocks_total",
        Type::Counter,
        "QKD blocks finished, by outcome and abort cause.",
    );
    for p in &s.peers {
        let q = &p.qkd;
        f.sample(
            &[("peer", &p.name), ("outcome", "ok"), ("cause", "none")],
            q.blocks_ok as f64,
        );
        for c in &q.blocks_aborted {
            f.sample(
                &[
                    ("peer", &p.name),
                    ("outcome", "aborted"),
                    ("cause", &c.cause),
                ],
                c.count as f64,
            );
        }
    }
    let mut f = e.family(
        "qkd_ipsec_qber",
        Type::Gauge,
        "QBER of the last block, by basis (key: corrected errors; test: revealed test bits).",
    );
    for p in &s.peers {
        if let Some(b) = &p.qkd.last_block {
            if let Some(k) = b.qber_key {
                f.sample(&[("peer", &p.name), ("basis", "key")], k);
            }
            f.sample(&[("peer", &p.name), ("basis", "test")], b.qber_test);
        }
    }
    let mut f = e.family(
        "qkd_ipsec_key_bits_total",
        Type::Counter,
        "Final (privacy-amplified) key bits produced.",
    );
    for p in &s.peers {
        f.sample(&[("peer", &p.name)], p.qkd.key_bits_total as f64);
    }
    let mut f = e.family(
        "qkd_ipsec_key_rate_bits_per_second",
        Type::Gauge,
        "Final key bits per second over the board's sliding window.",
    );
    for p in &s.peers {
        f.sample(&[("peer", &p.name)], p.qkd.key_rate_bps);
    }
    render_pools(e, s);
}

fn render_pools(e: &mut Exposition, s: &BoardSnapshot) {
    let pools = || {
        s.peers
            .iter()
            .filter_map(|p| Some((&p.name, p.pool.as_ref()?)))
    };
    let mut f = e.family(
        "qkd_ipsec_pool_available_bytes",
        Type::Gauge,
        "Unconsumed key bytes in the pool.",
    );
    for (peer, pool) in pools() {
        f.sample(&[("peer", peer)], pool.available_bytes as f64);
    }
    let mut f = e.family(
        "qkd_ipsec_pool_below_low_water",
        Type::Gauge,
        "1 if the bytes this side may take are below the low-water mark.",
    );
    for (peer, pool) in pools() {
        f.sample(&[("peer", peer)], f64::from(u8::from(pool.below_low_water)));
    }
    let mut f = e.family(
        "qkd_ipsec_pool_consumed_bytes_total",
        Type::Counter,
        "Key bytes consumed from the pool, by use.",
    );
    for (peer, pool) in pools() {
        for u in &pool.consumed {
            f.sample(&[("peer", peer), ("use", &u.key_use)], u.bytes as f64);
        }
    }
}

fn render_tunnels(e: &mut Exposition, s: &BoardSnapshot) {
    let mut f = e.family(
        "qkd_ipsec_tunnel_state",
        Type::Gauge,
        "1 for the tunnel's current state, 0 for the others.",
    );
    for t in &s.tunnels {
        for st in TunnelState::ALL {
            let v = f64::from(u8::from(t.state == st));
            f.sample(&[("tunnel", &t.name), ("state", st.name())], v);
        }
    }
    let mut f = e.family(
        "qkd_ipsec_tunnel_generation",
        Type::Gauge,
        "SA generation of the tunnel (increases with every rekey).",
    );
    for t in &s.tunnels {
        f.sample(
            &[("tunnel", &t.name), ("peer", &t.peer)],
            t.generation as f64,
        );
    }
    let mut f = e.family(
        "qkd_ipsec_tunnel_sa_age_seconds",
        Type::Gauge,
        "Seconds since the current SAs were installed.",
    );
    for t in &s.tunnels {
        if let Some(at) = t.sa_installed_at_unix_ms {
            f.sample(
                &[("tunnel", &t.name)],
                secs(s.taken_at_unix_ms.saturating_sub(at)),
            );
        }
    }
    let usage = [
        (
            "qkd_ipsec_tunnel_sa_bytes",
            "Bytes through the current SAs (kernel counters; reset on rekey).",
        ),
        (
            "qkd_ipsec_tunnel_sa_packets",
            "Packets through the current SAs (kernel counters; reset on rekey).",
        ),
    ];
    for (i, (name, help)) in usage.into_iter().enumerate() {
        let mut f = e.family(name, Type::Gauge, help);
        for t in &s.tunnels {
            let u = &t.sa_usage;
            let (vin, vout) = if i == 0 {
                (u.bytes_in, u.bytes_out)
            } else {
                (u.packets_in, u.packets_out)
            };
            f.sample(&[("tunnel", &t.name), ("direction", "in")], vin as f64);
            f.sample(&[("tunnel", &t.name), ("direction", "out")], vout as f64);
        }
    }
    let mut f = e.family(
        "qkd_ipsec_tunnel_next_rekey_timestamp_seconds",
        Type::Gauge,
        "Unix time the next timer rekey is due.",
    );
    for t in &s.tunnels {
        if let Some(at) = t.next_rekey_at_unix_ms {
            f.sample(&[("tunnel", &t.name)], secs(at));
        }
    }
    let mut f = e.family(
        "qkd_ipsec_rekeys_total",
        Type::Counter,
        "Rekeys by cause and result.",
    );
    for t in &s.tunnels {
        for r in &t.rekeys {
            let cause = r.cause.name();
            f.sample(
                &[("tunnel", &t.name), ("cause", cause), ("result", "ok")],
                r.ok as f64,
            );
            f.sample(
                &[("tunnel", &t.name), ("cause", cause), ("result", "failed")],
                r.failed as f64,
            );
        }
    }
    let mut f = e.family(
        "qkd_ipsec_tunnel_keys_wasted_bytes_total",
        Type::Counter,
        "Key bytes taken from the pool but never installed.",
    );
    for t in &s.tunnels {
        f.sample(&[("tunnel", &t.name)], t.keys_wasted_bytes as f64);
    }
}

/// A KME family: name, help, and the count it shows.
type SaeFamily = (
    &'static str,
    &'static str,
    fn(&super::snapshot::SaeSnapshot) -> u64,
);

fn render_kme(e: &mut Exposition, s: &BoardSnapshot) {
    let families: [SaeFamily; 3] = [
        (
            "qkd_ipsec_kme_enc_keys_total",
            "Keys the ETSI 014 KME delivered to this master SAE (enc_keys).",
            |k| k.enc_keys_total,
        ),
        (
            "qkd_ipsec_kme_dec_keys_total",
            "Keys the ETSI 014 KME delivered to this slave SAE (dec_keys).",
            |k| k.dec_keys_total,
        ),
        (
            "qkd_ipsec_kme_refused_requests_total",
            "ETSI 014 KME requests refused (400, 401, 503); sae=\"(unknown)\" for certificates no SAE is configured for.",
            |k| k.refused_requests_total,
        ),
    ];
    if s.kme.is_empty() {
        return;
    }
    for (name, help, value) in families {
        let mut f = e.family(name, Type::Counter, help);
        for k in &s.kme {
            f.sample(&[("sae", &k.sae)], value(k) as f64);
        }
    }
}

/// A relay family: name, help, and the count it shows.
type RelayFamily = (
    &'static str,
    &'static str,
    fn(&super::snapshot::RelayLinkSnapshot) -> u64,
);

fn render_relay(e: &mut Exposition, s: &BoardSnapshot) {
    let families: [RelayFamily; 7] = [
        (
            "qkd_ipsec_relay_sent_shares_total",
            "Relayed-key shares sealed and sent on this QKD link.",
            |r| r.sent_shares_total,
        ),
        (
            "qkd_ipsec_relay_sent_bytes_total",
            "Bytes of relayed-key shares sent on this QKD link (each also took 32 bytes of tag key).",
            |r| r.sent_bytes_total,
        ),
        (
            "qkd_ipsec_relay_received_shares_total",
            "Relayed-key shares received on this QKD link with a valid tag.",
            |r| r.received_shares_total,
        ),
        (
            "qkd_ipsec_relay_received_bytes_total",
            "Bytes of relayed-key shares received on this QKD link.",
            |r| r.received_bytes_total,
        ),
        (
            "qkd_ipsec_relay_forwarded_shares_total",
            "Shares received on this link that this gateway relayed on to the next hop.",
            |r| r.forwarded_shares_total,
        ),
        (
            "qkd_ipsec_relay_delivered_shares_total",
            "Shares received on this link of keys addressed to this gateway.",
            |r| r.delivered_shares_total,
        ),
        (
            "qkd_ipsec_relay_refused_shares_total",
            "Shares from this link that this gateway refused to take further.",
            |r| r.refused_shares_total,
        ),
    ];
    if s.relay.is_empty() {
        return;
    }
    for (name, help, value) in families {
        let mut f = e.family(name, Type::Counter, help);
        for r in &s.relay {
            f.sample(&[("link", &r.link)], value(r) as f64);
        }
    }
}

fn render_alarms(e: &mut Exposition, s: &BoardSnapshot) {
    let mut f = e.family(
        "qkd_ipsec_alarms_active",
        Type::Gauge,
        "Active alarms by kind.",
    );
    for k in AlarmKind::ALL {
        let n = s
            .alarms
            .iter()
            .filter(|a| a.active && a.alarm.kind() == k)
            .count();
        f.sample(&[("kind", k.name())], n as f64);
    }
    let mut f = e.family(
        "qkd_ipsec_alarms_raised_total",
        Type::Counter,
        "Alarm raisings by kind, repeats included.",
    );
    for t in &s.alarms_raised_total {
        f.sample(&[("kind", &t.kind)], t.raised as f64);
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
pub(crate) mod tests;
