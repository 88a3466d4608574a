//! Each bootstrap secret starts at most one key pool on a gateway.
//!
//! A new pool's block 0 is the bootstrap secret's tail, and the first QKD
//! blocks' one-time Wegman–Carter tags draw their keys from it, from offset
//! 0. Removing a pool to start over and creating it again from the same
//! secret would use those one-time keys a second time, and a second tag
//! under the same key lets an observer of both forge tags. So before block
//! 0 is built, the secret's fingerprint is looked up in, then appended to,
//! the state directory's record ([`RECORD_FILE`], 0600, one line per
//! secret: the peer's name and the fingerprint); a secret already there is
//! refused. The record is kept apart from the per-peer pool files, so
//! removing `<peer>.*` to start over leaves it in place.
//!
//! The fingerprint is SHA-256 over a domain label and the whole secret: the
//! secret is at least 160 random bytes, so its hash reveals nothing of it,
//! and the same bytes are refused whichever peer they are offered for.
//!
//! Claiming happens before block 0 is appended: a crash in between leaves
//! the secret claimed with no pool, and the next start refuses it. That
//! costs a fresh secret, never a reused key.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::store::StoreError;
use crate::secret::SecretBytes;
use crate::secret::file::{append_private, load_secret_file, sync_dir};

/// The record's file name in the state directory.
pub const RECORD_FILE: &str = "bootstrap-secrets.used";

const DOMAIN: &[u8] = b"qkd-ipsec bootstrap secret v1\0";

/// The fingerprint the record holds for `secret`, in hex.
pub fn fingerprint(secret: &SecretBytes) -> String {
    let digest = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(secret.expose())
        .finalize();
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// Records `secret` as having started the pool with `peer`, or refuses it
/// if it started a pool here before (with any peer).
pub fn claim(state_dir: &Path, peer: &str, secret: &SecretBytes) -> Result<(), StoreError> {
    let path = record_path(state_dir);
    let fp = fingerprint(secret);
    let existed = path.exists();
    if existed {
        let record = load_secret_file(&path)?;
        let text = std::str::from_utf8(record.expose()).map_err(|_| {
            StoreError::corrupt(&path, "not the text this agent writes".to_string())
        })?;
        if let Some(first) = text
            .lines()
            .find_map(|l| l.split_once(' ').filter(|(_, f)| *f == fp))
            .map(|(p, _)| p.to_string())
        {
            return Err(StoreError::BootstrapReused {
                path,
                first_peer: first,
                peer: peer.to_string(),
            });
        }
    }
    append_private(&path, format!("{peer} {fp}\n").as_bytes())?;
    if !existed {
        sync_dir(state_dir)?;
    }
    Ok(())
}

/// The record's path in `state_dir`, for messages.
pub fn record_path(state_dir: &Path) -> PathBuf {
    state_dir.join(RECORD_FILE)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::secret::file::TestDir;

    #[test]
    fn a_secret_is_claimed_once_whichever_peer_offers_it() {
        let dir = TestDir::new("bootstrap-record");
        let (one, two) = (
            SecretBytes::from_slice(&[1; 512]),
            SecretBytes::from_slice(&[2; 512]),
        );
        claim(dir.path(), "gw-b", &one).unwrap();
        claim(dir.path(), "gw-c", &two).unwrap();
        let again = claim(dir.path(), "gw-b", &one).unwrap_err();
        assert!(
            matches!(&again, StoreError::BootstrapReused { first_peer, .. } if first_peer == "gw-b"),
            "{again}"
        );
        assert!(again.to_string().contains("fresh"), "{again}");
        assert!(
            claim(dir.path(), "gw-d", &two).is_err(),
            "the same bytes for another peer"
        );
        let path = record_path(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Fingerprints only: no byte of a secret in the file.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(
            text,
            format!("gw-b {}\ngw-c {}\n", fingerprint(&one), fingerprint(&two))
        );
    }

    #[test]
    fn a_record_others_can_read_is_refused() {
        let dir = TestDir::new("bootstrap-record-mode");
        claim(dir.path(), "gw-b", &SecretBytes::from_slice(&[1; 512])).unwrap();
        let path = record_path(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(claim(dir.path(), "gw-c", &SecretBytes::from_slice(&[3; 512])).is_err());
    }
}
