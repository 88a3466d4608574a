//! `[kme]` and `[[kme.sae]]`: the agent as an ETSI GS QKD 014 KME for local
//! applications (served on `[gateway] kme_listen`), with `[[peer]] saes`
//! and `[[peer]] kme_id` naming what sits behind each peer.
//!
//! ```toml
//! [gateway]
//! kme_listen = "127.0.0.1:8443"
//!
//! [kme]
//! ca = "/etc/qkd-ipsec/kme/sae-ca.pem"
//! cert = "/etc/qkd-ipsec/kme/kme.pem"
//! key = "/etc/qkd-ipsec/kme/kme.key"
//!
//! [[kme.sae]]
//! id = "sae-a"
//! peers = ["gw-b"]
//!
//! [[peer]]
//! name = "gw-b"
//! saes = ["sae-b"]
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::Findings;
use super::gateway::anchor;
use super::peer::Peer;
use super::values::check_name;
use crate::etsi014::api::{MAX_KEY_BITS, MAX_KEYS_PER_DOCUMENT};
use crate::kme::{KmeSettings, SaeDirectory};
use crate::tls::TlsFiles;

/// Most keys the pending table may be configured to hold (each holds up
/// to `max_key_size` bits of key in memory).
const MAX_PENDING_LIMIT: usize = 1 << 20;

/// `[kme]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KmeSection {
    /// This KME's ID (`source_KME_ID` in status). Default: the gateway's
    /// name.
    ///
    /// Example: `kme_id = "kme-a"`
    pub kme_id: Option<String>,
    /// CA bundle (PEM) the SAEs' client certificates must chain to. There
    /// is no access without one. Required.
    ///
    /// Example: `ca = "/etc/qkd-ipsec/kme/sae-ca.pem"`
    pub ca: Option<PathBuf>,
    /// The KME's server certificate chain (PEM), leaf first. Required.
    ///
    /// Example: `cert = "/etc/qkd-ipsec/kme/kme.pem"`
    pub cert: Option<PathBuf>,
    /// The server certificate's private key (PEM; 0600, owned by the
    /// agent's user; `check-config --secrets` checks it). Required.
    ///
    /// Example: `key = "/etc/qkd-ipsec/kme/kme.key"`
    pub key: Option<PathBuf>,
    /// Default key size in bits, when a request names none. Default 256.
    ///
    /// Example: `key_size = 256`
    pub key_size: u32,
    /// Most keys one enc_keys or dec_keys request may ask for (at most
    /// 1024). Default 128.
    ///
    /// Example: `max_key_per_request = 128`
    pub max_key_per_request: u32,
    /// Smallest key size in bits a request may ask for (a multiple of 8).
    /// Default 64.
    ///
    /// Example: `min_key_size = 64`
    pub min_key_size: u32,
    /// Largest key size in bits (a multiple of 8, at most 65536). Default
    /// 8192.
    ///
    /// Example: `max_key_size = 8192`
    pub max_key_size: u32,
    /// Most keys held for local slave SAEs that have not fetched them yet;
    /// when full, peers' new keys are refused (their SAEs get 503).
    /// Default 4096.
    ///
    /// Example: `max_pending_keys = 4096`
    pub max_pending_keys: usize,
    /// The local SAEs: one `[[kme.sae]]` each.
    ///
    /// Example: `[[kme.sae]]` then `id = "sae-a"` and `peers = ["gw-b"]`
    pub sae: Vec<SaeSection>,
}

impl Default for KmeSection {
    fn default() -> Self {
        Self {
            kme_id: None,
            ca: None,
            cert: None,
            key: None,
            key_size: 256,
            max_key_per_request: 128,
            min_key_size: 64,
            max_key_size: 8192,
            max_pending_keys: 4096,
            sae: Vec::new(),
        }
    }
}

/// `[[kme.sae]]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaeSection {
    /// The SAE's ID: the subject CN of its client certificate. 1–64 of
    /// `A-Z a-z 0-9 . _ -`. Required.
    ///
    /// Example: `id = "sae-a"`
    pub id: Option<String>,
    /// The peers whose keys this SAE may get (as master with enc_keys, as
    /// slave with dec_keys), by `[[peer]] name`.
    ///
    /// Example: `peers = ["gw-b"]`
    pub peers: Vec<String>,
}

/// The KME, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Kme {
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    pub settings: KmeSettings,
}

impl KmeSection {
    /// Checks `[kme]` against the gateway and the peers; `None` when
    /// something is wrong (reported in `f`).
    pub(super) fn validate(
        self,
        listen: SocketAddr,
        gateway_name: Option<&str>,
        peers: &[Option<Peer>],
        base: &std::path::Path,
        f: &mut Findings,
    ) -> Option<Kme> {
        let sizes_ok = self.check_sizes(f);
        let mut file = |field: &str, p: &Option<PathBuf>| {
            if p.is_none() {
                f.error(
                    format!("kme.{field}"),
                    "missing; the KME serves mutual TLS only: set ca, cert and key",
                );
            }
            p.as_deref().map(|p| anchor(base, p))
        };
        let (ca, cert, key) = (
            file("ca", &self.ca),
            file("cert", &self.cert),
            file("key", &self.key),
        );
        let kme_id = self.kme_id.clone().or(gateway_name.map(str::to_owned));
        if let Some(id) = &self.kme_id
            && let Err(why) = check_name(id)
        {
            f.error("kme.kme_id", why);
        }
        let directory = directory(&self.sae, peers, f)?;
        if !sizes_ok {
            return None;
        }
        Some(Kme {
            listen,
            tls: TlsFiles {
                ca: ca?,
                cert: cert?,
                key: key?,
            },
            settings: KmeSettings {
                kme_id: kme_id?,
                key_size: self.key_size,
                max_key_per_request: self.max_key_per_request,
                min_key_size: self.min_key_size,
                max_key_size: self.max_key_size,
                max_pending_keys: self.max_pending_keys,
                directory,
            },
        })
    }

    fn check_sizes(&self, f: &mut Findings) -> bool {
        let mut ok = true;
        let mut bad = |field: &str, why: String| {
            ok = false;
            f.error(format!("kme.{field}"), why);
        };
        for (field, v) in [
            ("key_size", self.key_size),
            ("min_key_size", self.min_key_size),
            ("max_key_size", self.max_key_size),
        ] {
            if v == 0 || !v.is_multiple_of(8) || v > MAX_KEY_BITS {
                bad(
                    field,
                    format!("{v} bits; a key size is a multiple of 8 in 8..={MAX_KEY_BITS}"),
                );
            }
        }
        if self.min_key_size > self.max_key_size {
            bad(
                "min_key_size",
                format!(
                    "{} is above max_key_size = {}",
                    self.min_key_size, self.max_key_size
                ),
            );
        } else if !(self.min_key_size..=self.max_key_size).contains(&self.key_size) {
            bad(
                "key_size",
                format!(
                    "{} is outside min_key_size..=max_key_size ({}..={})",
                    self.key_size, self.min_key_size, self.max_key_size
                ),
            );
        }
        if self.max_key_per_request == 0
            || self.max_key_per_request as usize > MAX_KEYS_PER_DOCUMENT
        {
            bad(
                "max_key_per_request",
                format!(
                    "{}; allowed 1..={MAX_KEYS_PER_DOCUMENT}",
                    self.max_key_per_request
                ),
            );
        }
        if self.max_pending_keys == 0 || self.max_pending_keys > MAX_PENDING_LIMIT {
            bad(
                "max_pending_keys",
                format!("{}; allowed 1..={MAX_PENDING_LIMIT}", self.max_pending_keys),
            );
        }
        ok
    }
}

/// The SAE map: local SAEs name known peers, no SAE sits behind two
/// peers, and no SAE is both local and remote.
fn directory(
    saes: &[SaeSection],
    peers: &[Option<Peer>],
    f: &mut Findings,
) -> Option<SaeDirectory> {
    let mut d = SaeDirectory::new();
    let mut ok = true;
    let mut remote: Vec<(&str, usize)> = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let Some(p) = p else { continue };
        for (j, s) in p.saes.iter().enumerate() {
            let path = format!("peer[{i}].saes[{j}]");
            if let Err(why) = check_name(s) {
                ok = false;
                f.error(path, why);
            } else if let Some((_, k)) = remote.iter().find(|(r, _)| r == s) {
                ok = false;
                f.error(
                    path,
                    format!("{s:?} is also listed under peer[{k}]; an SAE sits behind one peer"),
                );
            } else {
                remote.push((s, i));
            }
        }
        d.add_peer(&p.name, p.kme_id.as_deref().unwrap_or(&p.name), &p.saes);
    }
    let mut local: Vec<&str> = Vec::new();
    for (i, s) in saes.iter().enumerate() {
        let prefix = format!("kme.sae[{i}]");
        let Some(id) = &s.id else {
            ok = false;
            f.error(
                format!("{prefix}.id"),
                "missing; the SAE's ID is its client certificate's CN, e.g. id = \"sae-a\"",
            );
            continue;
        };
        if let Err(why) = check_name(id) {
            ok = false;
            f.error(format!("{prefix}.id"), why);
        } else if local.contains(&id.as_str()) {
            ok = false;
            f.error(
                format!("{prefix}.id"),
                format!("{id:?} has two [[kme.sae]] sections"),
            );
        } else if let Some((_, k)) = remote.iter().find(|(r, _)| *r == id) {
            ok = false;
            f.error(
                format!("{prefix}.id"),
                format!(
                    "{id:?} is also listed in peer[{k}].saes; a local SAE is not behind a peer"
                ),
            );
        }
        local.push(id);
        for (j, name) in s.peers.iter().enumerate() {
            if !peers.iter().flatten().any(|p| &p.name == name) {
                ok = false;
                f.error(
                    format!("{prefix}.peers[{j}]"),
                    format!("{name:?} names no [[peer]]"),
                );
            }
        }
        if s.peers.is_empty() {
            f.warn(
                format!("{prefix}.peers"),
                format!("SAE {id:?} may get no peer's keys: every request it makes gets 401"),
            );
        }
        d.add_local(id, &s.peers);
    }
    ok.then_some(d)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::error_cases::VALID_BASE;
    use super::super::{Config, Finding};

    const KME: &str = r#"
[kme]
kme_id = "kme-a"
ca = "kme/sae-ca.pem"
cert = "kme/kme.pem"
key = "kme/kme.key"

[[kme.sae]]
id = "sae-a"
peers = ["gw-b"]
"#;

    /// VALID_BASE with the KME on, edited by `(find, replace)` pairs.
    fn with_kme(edits: &[(&str, &str)]) -> String {
        let mut t = VALID_BASE
            .replacen(
                "name = \"gw-a\"\n",
                "name = \"gw-a\"\nkme_listen = \"127.0.0.1:8443\"\n",
                1,
            )
            .replacen(
                "role = \"transmitter\"\n",
                "role = \"transmitter\"\nsaes = [\"sae-b\"]\n",
                1,
            )
            + KME;
        for (a, b) in edits {
            assert!(t.contains(a), "{a:?}");
            t = t.replacen(a, b, 1);
        }
        t
    }

    fn errors(text: &str) -> Vec<Finding> {
        match Config::parse(text, Path::new("/etc/qkd-ipsec/gateway.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e.findings().to_vec(),
        }
    }

    fn has(found: &[Finding], path: &str, fragment: &str) -> bool {
        found
            .iter()
            .any(|f| f.path == path && f.message.contains(fragment) && f.location.is_some())
    }

    #[test]
    fn a_kme_section_reads_with_its_defaults() {
        let c = Config::parse(&with_kme(&[]), Path::new("/etc/qkd-ipsec/gateway.toml")).unwrap();
        let k = c.kme.expect("KME on");
        assert_eq!(k.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(k.tls.key, Path::new("/etc/qkd-ipsec/kme/kme.key"));
        let s = &k.settings;
        assert_eq!(
            (s.kme_id.as_str(), s.key_size, s.max_key_per_request),
            ("kme-a", 256, 128)
        );
        assert_eq!(
            (s.min_key_size, s.max_key_size, s.max_pending_keys),
            (64, 8192, 4096)
        );
        assert_eq!(s.directory.peer_between("sae-a", "sae-b"), Some("gw-b"));
        assert_eq!(
            s.directory.kme_id_of("gw-b"),
            Some("gw-b"),
            "defaults to the peer's name"
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn kme_mistakes_are_refused_with_their_path() {
        let no_section = VALID_BASE.replacen(
            "name = \"gw-a\"\n",
            "name = \"gw-a\"\nkme_listen = \"127.0.0.1:8443\"\n",
            1,
        );
        assert!(has(
            &errors(&no_section),
            "gateway.kme_listen",
            "needs a [kme] section"
        ));
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case<'_>; 8] = [
            (
                &[("peers = [\"gw-b\"]", "peers = [\"gw-z\"]")],
                "kme.sae[0].peers[0]",
                "names no [[peer]]",
            ),
            (
                &[("[kme]\n", "[kme]\nkey_size = 100\n")],
                "kme.key_size",
                "multiple of 8",
            ),
            (
                &[("[kme]\n", "[kme]\nmin_key_size = 512\nmax_key_size = 256\n")],
                "kme.min_key_size",
                "above max_key_size",
            ),
            (
                &[("[kme]\n", "[kme]\nmax_key_size = 131072\n")],
                "kme.max_key_size",
                "multiple of 8",
            ),
            (
                &[("[kme]\n", "[kme]\nmax_key_per_request = 5000\n")],
                "kme.max_key_per_request",
                "1..=1024",
            ),
            (
                &[("[kme]\n", "[kme]\nmax_pending_keys = 0\n")],
                "kme.max_pending_keys",
                "allowed",
            ),
            (
                &[("id = \"sae-a\"", "id = \"sae-b\"")],
                "kme.sae[0].id",
                "also listed in peer[0].saes",
            ),
            (
                &[("key = \"kme/kme.key\"\n", "")],
                "kme.key",
                "mutual TLS only",
            ),
        ];
        for (edits, path, fragment) in cases {
            let found = errors(&with_kme(edits));
            assert!(has(&found, path, fragment), "{edits:?}: {found:#?}");
        }
    }

    #[test]
    fn an_sae_behind_two_peers_is_refused() {
        let second_peer = r#"
[[peer]]
name = "gw-c"
role = "transmitter"
address = "198.51.100.3:9813"
saes = ["sae-b"]

[peer.link]
kind = "simulated"
"#;
        let text = with_kme(&[("[[tunnel]]", &format!("{second_peer}\n[[tunnel]]"))]);
        let found = errors(&text);
        assert!(
            has(&found, "peer[1].saes[0]", "also listed under peer[0]"),
            "{found:#?}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let found = errors(&with_kme(&[("[kme]\n", "[kme]\nkeysize = 256\n")]));
        assert!(found.iter().any(|f| f.path == "kme.keysize"), "{found:#?}");
        let found = errors(&with_kme(&[(
            "id = \"sae-a\"",
            "id = \"sae-a\"\nname = \"x\"",
        )]));
        assert!(
            found.iter().any(|f| f.path == "kme.sae[0].name"),
            "{found:#?}"
        );
    }
}
