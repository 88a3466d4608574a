//! Where the secret files are, and whether they are safe to use.
//!
//! Two kinds of secret file: the pool key (32 random bytes that encrypt the
//! key pools at rest) and one bootstrap secret per peer (pre-shared, it
//! authenticates the first peer-channel handshake and the first QKD
//! block). Each is either a configured path or, by default, a systemd
//! credential (`LoadCredential=`), found under `$CREDENTIALS_DIRECTORY`.
//!
//! Owns the resolution rule and the checks `check-config` runs: the file
//! exists, is a regular file owned by us with no group/other access (the
//! rule of [`crate::secret::file`]), and has a usable length. The bytes are
//! read into [`crate::secret::SecretBytes`] and dropped at once; nothing
//! here keeps or prints them.

use std::path::{Path, PathBuf};

use super::{Config, Finding};
use crate::keys::POOL_KEY_CREDENTIAL;
use crate::qkd::auth::AUTH_KEY_BYTES_PER_BLOCK;
use crate::secret::{SecretBytes, load_secret_file};
use crate::tls::TlsFiles;

/// The peer channel's first handshake is authenticated with HMAC-SHA256
/// under the bootstrap secret; 32 bytes (256 bits) keep an offline search of
/// a recorded handshake out of reach (and 128-bit security against Grover).
pub const CHANNEL_BOOTSTRAP_BYTES: usize = 32;

/// Shortest bootstrap secret accepted: the channel's HMAC key
/// (32 bytes, see `CHANNEL_BOOTSTRAP_BYTES`) plus the one-time Wegman–Carter
/// keys of the first QKD block ([`AUTH_KEY_BYTES_PER_BLOCK`] = 64: Alice's
/// and Bob's tags), twice over: the agent makes the rest of the secret the
/// pool's first block, and the pool gives the transmitter — who takes
/// authentication key — only its half of every block. Later blocks are
/// authenticated with key from earlier blocks, so the bootstrap secret only
/// has to carry the first one. Every block that fails authentication burns
/// 64 more bytes, so the install guide generates 512 bytes: the first block
/// may then fail twice before the pair must be re-bootstrapped.
pub const MIN_BOOTSTRAP_SECRET_BYTES: usize =
    CHANNEL_BOOTSTRAP_BYTES + 2 * AUTH_KEY_BYTES_PER_BLOCK;

/// Where `check-config` looks for credentials when `$CREDENTIALS_DIRECTORY`
/// is unset and no `--credentials-dir` is given: the directory that
/// `deploy/qkd-ipsec.service` loads them from.
pub const DEFAULT_CREDENTIALS_SOURCE: &str = "/etc/qkd-ipsec/credentials";

/// The systemd credential name of the bootstrap secret shared with `peer`.
pub fn bootstrap_credential(peer: &str) -> String {
    format!("bootstrap-{peer}")
}

/// Where a secret file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretLocation {
    /// A configured path (absolute after loading).
    File(PathBuf),
    /// A systemd credential of this name: `$CREDENTIALS_DIRECTORY/<name>`.
    Credential(String),
}

impl SecretLocation {
    /// The path, with credentials looked up in `credentials_dir`.
    pub fn resolve(&self, credentials_dir: Option<&Path>) -> Result<PathBuf, String> {
        match (self, credentials_dir) {
            (SecretLocation::File(p), _) => Ok(p.clone()),
            (SecretLocation::Credential(name), Some(dir)) => Ok(dir.join(name)),
            (SecretLocation::Credential(name), None) => Err(format!(
                "not configured, and $CREDENTIALS_DIRECTORY is unset: run under systemd with \
                 LoadCredential={name}:/path/to/file, or set the path in the config"
            )),
        }
    }

    /// The path the agent uses: credentials from `$CREDENTIALS_DIRECTORY`.
    pub fn resolve_from_env(&self) -> Result<PathBuf, String> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        self.resolve(dir.as_deref())
    }

    /// How to tell an operator where this secret comes from.
    pub fn describe(&self) -> String {
        match self {
            SecretLocation::File(p) => p.display().to_string(),
            SecretLocation::Credential(n) => format!("credential {n}"),
        }
    }

    /// The pool key's default: the `pool-key` credential.
    pub(crate) fn pool_key_default() -> Self {
        SecretLocation::Credential(POOL_KEY_CREDENTIAL.to_string())
    }
}

/// A secret file that passed its checks, described without its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSecret {
    /// The config path of the field naming it (`gateway.pool_key`, ...).
    pub field: String,
    pub path: PathBuf,
    pub len: usize,
}

impl Config {
    /// Checks every secret file the configuration names: present, private
    /// (mode, owner), and of usable length. Credentials are looked up in
    /// `credentials_dir`. Returns the secrets that passed and the findings.
    pub fn check_secrets(
        &self,
        credentials_dir: Option<&Path>,
    ) -> (Vec<CheckedSecret>, Vec<Finding>) {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        let mut check =
            |field: String, loc: &SecretLocation, want: &dyn Fn(usize) -> Option<String>| {
                match read_secret(loc, credentials_dir) {
                    Ok((path, secret)) => match want(secret.len()) {
                        None => ok.push(CheckedSecret {
                            field,
                            path,
                            len: secret.len(),
                        }),
                        Some(why) => {
                            bad.push(Finding::new(field, format!("{}: {why}", path.display())))
                        }
                    },
                    Err(why) => bad.push(Finding::new(field, why)),
                }
            };
        check("gateway.pool_key".into(), &self.gateway.pool_key, &|len| {
            (len != 32).then(|| {
                format!(
                    "{len} bytes; the pool key must be exactly 32 random bytes \
                     (create it with `head -c 32 /dev/urandom > FILE`)"
                )
            })
        });
        for (i, peer) in self.peers.iter().enumerate() {
            check(
                format!("peer[{i}].bootstrap_secret"),
                &peer.bootstrap_secret,
                &|len| {
                    (len < MIN_BOOTSTRAP_SECRET_BYTES).then(|| {
                    format!(
                        "{len} bytes; a bootstrap secret needs at least {MIN_BOOTSTRAP_SECRET_BYTES} \
                         random bytes (32 for the channel's first handshake, 128 of which the \
                         first QKD block's authentication takes half); create 512 with `head -c 512 /dev/urandom > FILE` \
                         and copy the same file to the peer"
                    )
                })
                },
            );
        }
        // TLS private keys: 0600 like every secret, and each with its
        // certificate and CA a usable mutual-TLS identity.
        let mut tls: Vec<(String, &TlsFiles, bool)> = Vec::new();
        for (i, peer) in self.peers.iter().enumerate() {
            if let Some(e) = &peer.etsi014 {
                tls.push((format!("peer[{i}].etsi014"), &e.tls, false));
            }
        }
        if let Some(kme) = &self.kme {
            tls.push(("kme".into(), &kme.tls, true));
        }
        let mut identities = Vec::new();
        for (section, files, server) in tls {
            let field = format!("{section}.{}", if server { "key" } else { "client_key" });
            check(
                field.clone(),
                &SecretLocation::File(files.key.clone()),
                &|len| (len == 0).then(|| "empty; it must hold a PEM private key".into()),
            );
            let usable = if server {
                crate::tls::server_config(files).map(drop)
            } else {
                crate::tls::client_config(files).map(drop)
            };
            if let Err(err) = usable {
                identities.push((field, Finding::new(section, err.to_string())));
            }
        }
        for (field, finding) in identities {
            // A bad key file is reported once, under its own field.
            if !bad.iter().any(|b| b.path == field) {
                bad.push(finding);
            }
        }
        (ok, self.locate(bad))
    }
}

/// Reads a secret (checking mode and owner) for a length check or a
/// comparison. The message says where the secret was expected.
pub(crate) fn read_secret(
    loc: &SecretLocation,
    credentials_dir: Option<&Path>,
) -> Result<(PathBuf, SecretBytes), String> {
    let path = loc.resolve(credentials_dir)?;
    let secret = load_secret_file(&path).map_err(|e| match loc {
        SecretLocation::Credential(name) => format!(
            "{e} (the systemd credential {name}; check-config looked in {})",
            path.parent().unwrap_or(Path::new("")).display()
        ),
        SecretLocation::File(_) => e.to_string(),
    })?;
    Ok((path, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_resolve_only_with_a_directory() {
        let loc = SecretLocation::Credential("bootstrap-gw-b".into());
        assert_eq!(
            loc.resolve(Some(Path::new("/run/credentials/x"))).unwrap(),
            Path::new("/run/credentials/x/bootstrap-gw-b")
        );
        let e = loc.resolve(None).unwrap_err();
        assert!(e.contains("LoadCredential=bootstrap-gw-b:"), "{e}");
        let file = SecretLocation::File("/etc/k".into());
        assert_eq!(file.resolve(None).unwrap(), Path::new("/etc/k"));
    }
}
