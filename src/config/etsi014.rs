//! `[peer.etsi014]`: where a `kind = "etsi014"` link takes its keys — the
//! local QKD device's KME over ETSI GS QKD 014 — and how many.
//!
//! The gateway whose `role` on the link is `"transmitter"` is the ETSI 014
//! **master**: it asks its KME for keys (`enc_keys` with the peer's SAE ID)
//! and tells the peer their key_IDs; the receiver is the **slave** and
//! fetches the same keys from its own KME (`dec_keys` with the master's SAE
//! ID). The role is already what decides which half of each pool block each
//! side initiates from, so no new setting can disagree with it.
//!
//! With `kind = "etsi014"` no QKD protocol runs between the agents (the
//! device did it): the simulated optics of `[peer.link]` and the
//! `[peer.postprocessing]` settings mean nothing, and a value other than
//! the default in either is refused, so that nobody believes it does
//! something. `lab_export_fibre_keys` is refused too (there is no fibre
//! stream).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Findings;
use super::gateway::anchor;
use super::link::{LinkSection, PostprocessingSection, shared_fields};
use super::values::HumanDuration;
use crate::etsi014::api::{MAX_KEY_BITS, MAX_KEYS_PER_DOCUMENT};
use crate::etsi014::client::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, KmeClientConfig, check_kme_url, check_sae_id,
};
use crate::keys::pool::{MAX_BLOCK_BYTES, MAX_BLOCKS};
use crate::tls::TlsFiles;

/// Smallest key accepted (bits): below this a key_ID costs more than the
/// key is worth, and no KME offers less.
pub const MIN_ETSI014_KEY_BITS: u32 = 64;
/// Largest `pool_target_bytes`: 64 MiB of key per peer.
pub const MAX_POOL_TARGET_BYTES: u64 = 64 << 20;

/// `[peer.etsi014]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Etsi014Section {
    /// Base URL of this gateway's KME (the local QKD device's key service);
    /// https only. Requests go to `<kme_url>/api/v1/keys/...`. Required.
    ///
    /// Example: `kme_url = "https://kme-a.example:8443"`
    pub kme_url: Option<String>,
    /// CA bundle (PEM) that the KME's server certificate must chain to.
    /// Required.
    ///
    /// Example: `ca = "/etc/qkd-ipsec/kme/ca.pem"`
    pub ca: Option<PathBuf>,
    /// This gateway's SAE client certificate (PEM, leaf first) presented
    /// to the KME (mutual TLS). Required.
    ///
    /// Example: `client_cert = "/etc/qkd-ipsec/kme/sae-gw-a.pem"`
    pub client_cert: Option<PathBuf>,
    /// The private key of `client_cert` (PEM); must be 0600 and owned by
    /// the agent's user (`check-config --secrets` checks it). Required.
    ///
    /// Example: `client_key = "/etc/qkd-ipsec/kme/sae-gw-a.key"`
    pub client_key: Option<PathBuf>,
    /// This gateway's SAE ID at its KME (letters, digits, `.`, `_`, `~`,
    /// `-`; at most 128). Required.
    ///
    /// Example: `sae_id = "sae-gw-a"`
    pub sae_id: Option<String>,
    /// The peer gateway's SAE ID (its own `sae_id`). Required.
    ///
    /// Example: `peer_sae_id = "sae-gw-b"`
    pub peer_sae_id: Option<String>,
    /// Size of each key asked for, in bits: a multiple of 8 in
    /// 64..=65536, inside the KME's `min_key_size..=max_key_size`. The
    /// same on both gateways. Default 256.
    ///
    /// Example: `key_size = 256`
    pub key_size: u32,
    /// Keys per enc_keys request (capped by the KME's
    /// `max_key_per_request`), 1..=1024; each request makes one pool block.
    /// Default 8.
    ///
    /// Example: `batch = 8`
    pub batch: u32,
    /// The master fetches keys while the pool holds fewer bytes than this
    /// (both halves counted). Default 16384.
    ///
    /// Example: `pool_target_bytes = 16384`
    pub pool_target_bytes: u64,
    /// Time allowed for the TCP connection and TLS handshake to the KME.
    /// Default "5s".
    ///
    /// Example: `connect_timeout = "5s"`
    pub connect_timeout: HumanDuration,
    /// Time allowed for one request, from sending it to the last byte of
    /// the answer. Default "10s".
    ///
    /// Example: `request_timeout = "10s"`
    pub request_timeout: HumanDuration,
    /// After a failure the key source waits 1 s, doubling on each further
    /// failure up to this. Default "60s".
    ///
    /// Example: `retry_max = "60s"`
    pub retry_max: HumanDuration,
}

impl Default for Etsi014Section {
    fn default() -> Self {
        Self {
            kme_url: None,
            ca: None,
            client_cert: None,
            client_key: None,
            sae_id: None,
            peer_sae_id: None,
            key_size: 256,
            batch: 8,
            pool_target_bytes: 16 << 10,
            connect_timeout: HumanDuration::secs(DEFAULT_CONNECT_TIMEOUT.as_secs()),
            request_timeout: HumanDuration::secs(DEFAULT_REQUEST_TIMEOUT.as_secs()),
            retry_max: HumanDuration::secs(60),
        }
    }
}

/// `[peer.etsi014]`, checked; paths anchored to the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etsi014 {
    pub kme_url: String,
    pub tls: TlsFiles,
    pub sae_id: String,
    pub peer_sae_id: String,
    pub key_size_bits: u32,
    pub batch: u32,
    pub pool_target_bytes: u64,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retry_max: Duration,
}

impl Etsi014 {
    /// The settings of this gateway's [`crate::etsi014::KmeClient`].
    pub fn client_config(&self) -> KmeClientConfig {
        KmeClientConfig {
            url: self.kme_url.clone(),
            tls: self.tls.clone(),
            sae_id: self.sae_id.clone(),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
        }
    }
}

impl Etsi014Section {
    /// Checks every field; `prefix` is the section's path
    /// (`peer[0].etsi014`).
    pub(super) fn validate(&self, prefix: &str, base: &Path, f: &mut Findings) -> Option<Etsi014> {
        let at = |field: &str| format!("{prefix}.{field}");
        let mut ok = true;
        let kme_url = match &self.kme_url {
            None => {
                f.error(
                    at("kme_url"),
                    "missing; the local KME's base URL, e.g. kme_url = \"https://kme-a.example:8443\"",
                );
                None
            }
            Some(u) => match check_kme_url(u) {
                Ok(()) => Some(u.clone()),
                Err(why) => {
                    f.error(at("kme_url"), format!("{u:?}: {why}"));
                    None
                }
            },
        };
        let mut path = |field: &str, v: &Option<PathBuf>, what: &str| match v {
            Some(p) => Some(anchor(base, p)),
            None => {
                f.error(at(field), format!("missing; {what}"));
                None
            }
        };
        let ca = path(
            "ca",
            &self.ca,
            "the CA bundle (PEM) of the KME's certificate",
        );
        let cert = path(
            "client_cert",
            &self.client_cert,
            "this SAE's client certificate (PEM) for mutual TLS with the KME",
        );
        let key = path(
            "client_key",
            &self.client_key,
            "the private key of client_cert (PEM, 0600)",
        );
        let mut sae = |field: &str, v: &Option<String>| match v {
            None => {
                f.error(
                    at(field),
                    "missing; the SAE ID the KMEs know this gateway (sae_id) or the peer \
                     (peer_sae_id) by, e.g. \"sae-gw-a\"",
                );
                None
            }
            Some(id) => match check_sae_id(id) {
                Ok(()) => Some(id.clone()),
                Err(e) => {
                    f.error(at(field), e.to_string());
                    None
                }
            },
        };
        let sae_id = sae("sae_id", &self.sae_id);
        let peer_sae_id = sae("peer_sae_id", &self.peer_sae_id);
        if sae_id.is_some() && sae_id == peer_sae_id {
            ok = false;
            f.error(
                at("peer_sae_id"),
                "equals sae_id; a link has two SAEs: this gateway's and the peer's",
            );
        }
        if self.key_size < MIN_ETSI014_KEY_BITS
            || self.key_size > MAX_KEY_BITS
            || !self.key_size.is_multiple_of(8)
        {
            ok = false;
            f.error(
                at("key_size"),
                format!(
                    "{} bits: must be a multiple of 8 in {MIN_ETSI014_KEY_BITS}..={MAX_KEY_BITS}, \
                     e.g. 256",
                    self.key_size
                ),
            );
        }
        if self.batch == 0 || self.batch as usize > MAX_KEYS_PER_DOCUMENT {
            ok = false;
            f.error(
                at("batch"),
                format!("{}: must be in 1..={MAX_KEYS_PER_DOCUMENT}", self.batch),
            );
        }
        let block = u64::from(self.batch) * u64::from(self.key_size / 8);
        if ok && block > u64::from(MAX_BLOCK_BYTES) {
            ok = false;
            f.error(
                at("batch"),
                format!(
                    "batch × key_size / 8 = {block} bytes is more than a pool block may hold \
                     ({MAX_BLOCK_BYTES}); lower batch or key_size"
                ),
            );
        }
        if ok {
            ok = check_pool_target(
                &at("pool_target_bytes"),
                self.pool_target_bytes,
                block,
                ("batch", "batches"),
                f,
            );
        }
        for (field, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.get().is_zero() {
                ok = false;
                f.error(at(field), "must be positive, e.g. \"5s\"");
            }
        }
        ok &= check_retry_max(&at("retry_max"), self.retry_max, f);
        if !ok {
            return None;
        }
        Some(Etsi014 {
            kme_url: kme_url?,
            tls: TlsFiles {
                ca: ca?,
                cert: cert?,
                key: key?,
            },
            sae_id: sae_id?,
            peer_sae_id: peer_sae_id?,
            key_size_bits: self.key_size,
            batch: self.batch,
            pool_target_bytes: self.pool_target_bytes,
            connect_timeout: self.connect_timeout.get(),
            request_timeout: self.request_timeout.get(),
            retry_max: self.retry_max.get(),
        })
    }
}

/// `pool_target_bytes` of an offered-keys link: at least one `block`
/// (what one offer adds), at most [`MAX_POOL_TARGET_BYTES`] and half the
/// pool's block limit in blocks. `unit`: what a block is called, singular
/// and plural.
pub(super) fn check_pool_target(
    path: &str,
    target: u64,
    block: u64,
    unit: (&str, &str),
    f: &mut Findings,
) -> bool {
    let block = block.max(1);
    if target < block || target > MAX_POOL_TARGET_BYTES || target / block > (MAX_BLOCKS / 2) as u64
    {
        f.error(
            path,
            format!(
                "{target}: must hold at least one {} ({block} bytes), at most \
                 {MAX_POOL_TARGET_BYTES} bytes and {} {}",
                unit.0,
                MAX_BLOCKS / 2,
                unit.1
            ),
        );
        return false;
    }
    true
}

/// `retry_max` of a key source: the first retry waits 1 s.
pub(super) fn check_retry_max(path: &str, retry_max: HumanDuration, f: &mut Findings) -> bool {
    if retry_max.get() < Duration::from_secs(1) {
        f.error(
            path,
            format!("{retry_max}: must be at least \"1s\" (the first retry waits 1 s)"),
        );
        return false;
    }
    true
}

/// Refuses simulated-link settings on an etsi014 link: every optics and
/// post-processing field must keep its default (a value written equal to
/// the default is indistinguishable and accepted).
pub(super) fn refuse_simulated_settings(
    prefix: &str,
    link: &LinkSection,
    post: &PostprocessingSection,
    f: &mut Findings,
) {
    let defaults = LinkSection {
        kind: link.kind,
        lab_export_fibre_keys: link.lab_export_fibre_keys.clone(),
        lab_seed_pool: link.lab_seed_pool.clone(),
        ..LinkSection::default()
    };
    let want = shared_fields(&defaults, &PostprocessingSection::default());
    for ((field, value), (_, default)) in shared_fields(link, post).iter().zip(&want) {
        if value != default {
            f.error(
                format!("{prefix}.{field}"),
                format!(
                    "{value}: simulated-link settings have no effect with kind = \"{}\" \
                     (no QKD protocol runs between these agents); remove it",
                    link.kind.map_or("?", |k| k.name())
                ),
            );
        }
    }
}

#[cfg(test)]
#[path = "etsi014_tests.rs"]
mod tests;
