//! TOML sections that both fixtures write — `[gateway]`, a simulated
//! `[peer.link]` with its `[peer.postprocessing]`, `[peer.channel]`, a
//! site-to-site `[[tunnel]]` — and the TOML value helpers they use. Each
//! section is rendered from a small description, so that
//! [`super::pair_config`] (two gateways) and [`super::network_config`]
//! (a topology) emit the same text for the same settings.
//!
//! Owns only text; it knows no topology, writes no file and starts nothing.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::pair_config::LifetimeOptions;
use crate::config::{Keying, OnStop};
use crate::tls::TlsFiles;
use crate::xfrm::Prefix;

/// A TOML basic string.
pub(super) fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub(super) fn path_str(p: &Path) -> String {
    quoted(&p.to_string_lossy())
}

pub(super) fn duration_str(d: Duration) -> String {
    quoted(&format!("{}ms", d.as_millis()))
}

pub(super) fn toml_list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| quoted(i.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}

/// `[gateway]` without the optional services (`kme_listen` and the like,
/// which the caller appends).
pub(super) struct GatewaySection<'a> {
    pub name: &'a str,
    /// The peer-channel listening address, if this gateway accepts peers.
    pub listen: Option<SocketAddr>,
    pub state_dir: &'a Path,
    pub status_socket: &'a Path,
    pub pool_key: &'a Path,
    pub on_stop: OnStop,
}

impl GatewaySection<'_> {
    pub(super) fn render(&self, line: &mut impl FnMut(String)) {
        line("[gateway]".into());
        line(format!("name = {}", quoted(self.name)));
        if let Some(listen) = self.listen {
            line(format!("listen = {}", quoted(&listen.to_string())));
        }
        line(format!("state_dir = {}", path_str(self.state_dir)));
        line(format!("status_socket = {}", path_str(self.status_socket)));
        line(format!("pool_key = {}", path_str(self.pool_key)));
        line(format!("on_stop = {}", quoted(self.on_stop.name())));
    }
}

/// A simulated QKD link: `[peer.link]` and `[peer.postprocessing]`.
pub(super) struct SimulatedLink<'a> {
    pub length_km: f64,
    pub pulse_rate_hz: f64,
    pub block_sifted_bits: usize,
    /// Where the transmitter exports its fibre keys for Eve, if she runs.
    pub lab_export_fibre_keys: Option<&'a Path>,
    /// LAB ONLY: the seed file of a new pool, for benches.
    pub lab_seed_pool: Option<&'a Path>,
}

impl SimulatedLink<'_> {
    pub(super) fn render(&self, line: &mut impl FnMut(String)) {
        // The link settings of deploy/gateway-a.toml: decoy-state BB84 with
        // the GYS parameters (Ma et al., PRA 72, 012326 (2005)).
        line("[peer.link]".into());
        // Simulated optics: keys only as secret as the peer channel's keys.
        line("kind = \"simulated\"".into());
        if let Some(path) = self.lab_export_fibre_keys {
            line(format!("lab_export_fibre_keys = {}", path_str(path)));
        }
        if let Some(path) = self.lab_seed_pool {
            line(format!("lab_seed_pool = {}", path_str(path)));
        }
        line(format!("length_km = {:?}", self.length_km));
        line("intensities = [0.6, 0.2, 0.0]".into());
        line("probabilities = [0.4, 0.4, 0.2]".into());
        line("p_z = 0.5".into());
        line(format!("pulse_rate_hz = {:?}", self.pulse_rate_hz));
        line(String::new());
        line("[peer.postprocessing]".into());
        line(format!("block_sifted_bits = {}", self.block_sifted_bits));
        line(String::new());
    }
}

/// `[peer.channel]`: a short reconnect backoff, so that a restarted agent
/// is redialled within seconds.
pub(super) fn render_channel(backoff_max: Duration, line: &mut impl FnMut(String)) {
    line("[peer.channel]".into());
    line("backoff_min = \"100ms\"".into());
    line(format!("backoff_max = {}", duration_str(backoff_max)));
    line(String::new());
}

/// A `[[tunnel]]` between two sites, keyed from `peer`'s pool, with its
/// `[tunnel.lifetime]`.
pub(super) struct TunnelSection<'a> {
    pub name: &'a str,
    pub peer: &'a str,
    pub local_site: Prefix,
    pub remote_site: Prefix,
    pub local_endpoint: IpAddr,
    pub remote_endpoint: IpAddr,
    pub keying: Keying,
    pub rekey_interval: Duration,
    pub rekey_jitter: f64,
    pub lifetime: &'a LifetimeOptions,
}

impl TunnelSection<'_> {
    pub(super) fn render(&self, line: &mut impl FnMut(String)) {
        line("[[tunnel]]".into());
        line(format!("name = {}", quoted(self.name)));
        line(format!("peer = {}", quoted(self.peer)));
        line(format!(
            "local_subnets = [{}]",
            quoted(&self.local_site.to_string())
        ));
        line(format!(
            "remote_subnets = [{}]",
            quoted(&self.remote_site.to_string())
        ));
        line(format!(
            "local_endpoint = {}",
            quoted(&self.local_endpoint.to_string())
        ));
        line(format!(
            "remote_endpoint = {}",
            quoted(&self.remote_endpoint.to_string())
        ));
        line("mode = \"tunnel\"".into());
        line(format!("keying = {}", quoted(self.keying.name())));
        line(format!(
            "rekey_interval = {}",
            duration_str(self.rekey_interval)
        ));
        line(format!("rekey_jitter = {:?}", self.rekey_jitter));
        line(String::new());
        line("[tunnel.lifetime]".into());
        let l = self.lifetime;
        for (field, value) in [
            ("soft_seconds", l.soft_seconds),
            ("hard_seconds", l.hard_seconds),
            ("soft_packets", l.soft_packets),
            ("hard_packets", l.hard_packets),
        ] {
            if let Some(v) = value {
                line(format!("{field} = {v}"));
            }
        }
    }
}

/// `[kme]`: the gateway serves keys to its local SAEs (ETSI GS QKD 014),
/// each SAE sharing keys with the SAEs behind the peers named beside it.
pub(super) struct KmeSection<'a> {
    pub kme_id: &'a str,
    /// The KME's server identity and the CA its SAEs' certificates chain to.
    pub tls: &'a TlsFiles,
    /// Each local SAE's ID and the peers whose SAEs it may share keys with.
    pub saes: Vec<(String, Vec<&'a str>)>,
}

impl KmeSection<'_> {
    pub(super) fn render(&self, line: &mut impl FnMut(String)) {
        line("[kme]".into());
        line(format!("kme_id = {}", quoted(self.kme_id)));
        line(format!("ca = {}", path_str(&self.tls.ca)));
        line(format!("cert = {}", path_str(&self.tls.cert)));
        line(format!("key = {}", path_str(&self.tls.key)));
        for (id, peers) in &self.saes {
            line(String::new());
            line("[[kme.sae]]".into());
            line(format!("id = {}", quoted(id)));
            line(format!("peers = {}", toml_list(peers)));
        }
    }
}
