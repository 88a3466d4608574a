//! LAB ONLY: the shares a gateway opens, written to a 0600 file, so that a
//! test can show what a relay learns (`[network] lab_export_relay_shares`).
//! Whoever reads the file learns every share this gateway saw: on a single
//! path, the keys themselves.
//!
//! One line per opened share, appended when it is opened:
//!
//! ```text
//! relay-share <key ID> <share> <shares> <source> <destination> <hex bytes>
//! ```

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::hop::RelayHeader;
use crate::secret::SecretBytes;
use crate::secret::file::{SecretFileError, append_private, load_secret_file};

const TAG: &str = "relay-share";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// The agent's side: appends every opened share.
#[derive(Debug, Clone)]
pub struct ShareExport {
    path: PathBuf,
}

impl ShareExport {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Appends one share (blocking; the line is built in secret memory).
    pub fn export(&self, header: &RelayHeader, share: &SecretBytes) -> Result<(), SecretFileError> {
        let prefix = format!(
            "{TAG} {} {} {} {} {} ",
            header.key_id,
            header.share,
            header.shares,
            header.source(),
            header.destination()
        );
        let mut line = SecretBytes::zeroed(prefix.len() + 2 * share.len() + 1);
        let out = line.expose_mut();
        out[..prefix.len()].copy_from_slice(prefix.as_bytes());
        for (i, b) in share.expose().iter().enumerate() {
            out[prefix.len() + 2 * i] = HEX[usize::from(b >> 4)];
            out[prefix.len() + 2 * i + 1] = HEX[usize::from(b & 15)];
        }
        *out.last_mut().expect("newline") = b'\n';
        append_private(&self.path, line.expose())
    }
}

/// One exported share, read back.
pub struct ExportedShare {
    pub key_id: Uuid,
    pub share: u8,
    pub shares: u8,
    pub source: String,
    pub destination: String,
    pub bytes: SecretBytes,
}

/// Reads an export (0600, bounded); a malformed line is an error naming
/// its number, never its contents.
pub fn load_shares(path: &Path) -> Result<Vec<ExportedShare>, String> {
    let text = load_secret_file(path).map_err(|e| e.to_string())?;
    let text = std::str::from_utf8(text.expose()).map_err(|_| "not UTF-8".to_string())?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("{}:{}: {why}", path.display(), n + 1);
        let f: Vec<&str> = line.split(' ').collect();
        let [TAG, id, share, shares, source, destination, hex] = f.as_slice() else {
            return Err(bad("expected 7 fields"));
        };
        if hex.len() % 2 != 0 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("bad hex"));
        }
        let mut bytes = SecretBytes::zeroed(hex.len() / 2);
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).expect("checked") as u8;
            bytes.expose_mut()[i] = digit(pair[0]) << 4 | digit(pair[1]);
        }
        out.push(ExportedShare {
            key_id: id.parse().map_err(|_| bad("bad key ID"))?,
            share: share.parse().map_err(|_| bad("bad share"))?,
            shares: shares.parse().map_err(|_| bad("bad share count"))?,
            source: source.to_string(),
            destination: destination.to_string(),
            bytes,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::file::TestDir;

    #[test]
    fn shares_round_trip_through_a_private_file() {
        let dir = TestDir::new("relay-export");
        let path = dir.path().join("shares");
        let x = ShareExport::new(path.clone());
        let h = RelayHeader {
            key_id: Uuid::new_v4(),
            share: 1,
            shares: 2,
            path: vec!["gw-a".into(), "gw-b".into(), "gw-d".into()],
            hop: 1,
            len: 3,
        };
        x.export(&h, &SecretBytes::from_slice(&[0, 0xab, 0xff]))
            .unwrap();
        x.export(
            &RelayHeader {
                share: 0,
                ..h.clone()
            },
            &SecretBytes::from_slice(&[1, 2, 3]),
        )
        .unwrap();
        let got = load_shares(&path).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].key_id, got[0].share, got[0].shares),
            (h.key_id, 1, 2)
        );
        assert_eq!(
            (got[0].source.as_str(), got[0].destination.as_str()),
            ("gw-a", "gw-d")
        );
        assert_eq!(got[0].bytes.expose(), &[0, 0xab, 0xff]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
