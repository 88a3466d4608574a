//! The lab export of fibre base keys: what `qkd-ipsec eve --fibre-keys`
//! needs to attack a sealed simulated fibre.
//!
//! Owns the file format, the agent's appending writer and the bounded
//! parser. An agent writes the file only when `[peer.link]
//! lab_export_fibre_keys` is set (a lab setting, refused for real QKD
//! devices); whoever reads it can read and rewrite the fibre of every
//! session of the exported epochs, and so learns every key the link makes.
//! It never learns a channel key or a frame MAC key (the base is one-way
//! from the channel key, see [`super`]).
//!
//! One line per channel-key epoch, appended when the epoch becomes known to
//! the agent (at start for the current and pending epochs, then at each
//! switch, always before any handshake can use it):
//!
//! ```text
//! fibre-base <dialer name> <acceptor name> <epoch> <64 hex digits>
//! ```
//!
//! Lines starting with `#` and empty lines are ignored; for one (dialer,
//! acceptor, epoch) the last line wins (a re-paired link restarts at epoch
//! 0 with a new bootstrap secret). The file is 0600, refused otherwise, and
//! at most [`MAX_SECRET_FILE_BYTES`] long.
//!
//! [`MAX_SECRET_FILE_BYTES`]: crate::secret::file::MAX_SECRET_FILE_BYTES

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::FibreBase;
use crate::peer::handshake::valid_name;
use crate::secret::file::{SecretFileError, append_private, load_secret_file};
use crate::secret::{Secret, SecretBytes};

const TAG: &str = "fibre-base";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Why an export could not be written or read. Never carries key bytes.
#[derive(Debug, Error)]
pub enum ExportError {
    #[error(transparent)]
    File(#[from] SecretFileError),
    #[error(
        "{}:{line}: {why}; expected `fibre-base <dialer> <acceptor> <epoch> <64 hex digits>`",
        path.display()
    )]
    Line {
        path: PathBuf,
        line: usize,
        why: &'static str,
    },
}

/// The agent's side for one link: appends one line per epoch to a 0600
/// file.
#[derive(Debug, Clone)]
pub struct FibreKeyExport {
    path: PathBuf,
    dialer: String,
    acceptor: String,
}

impl FibreKeyExport {
    /// The export of the link `dialer → acceptor` (handshake order: the
    /// transmitter dials).
    pub fn new(path: PathBuf, dialer: &str, acceptor: &str) -> Self {
        Self {
            path,
            dialer: dialer.to_owned(),
            acceptor: acceptor.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the fibre base of `epoch`'s channel key, with a loud log
    /// line. Blocking, as [`Self::append`].
    pub fn export(&self, epoch: u64, channel_key: &SecretBytes) -> Result<(), SecretFileError> {
        self.append(
            &self.dialer,
            &self.acceptor,
            epoch,
            &FibreBase::from_channel_key(channel_key),
        )?;
        tracing::warn!(
            dialer = %self.dialer,
            acceptor = %self.acceptor,
            epoch,
            path = %self.path.display(),
            "LAB ONLY: exported this epoch's fibre base key; whoever reads the file can read every key of this link"
        );
        Ok(())
    }

    /// Appends the base of `epoch` for the link `dialer → acceptor`.
    /// Creates the file 0600; refuses an existing file others could read.
    /// Blocking: call at start-up or from `spawn_blocking`.
    pub fn append(
        &self,
        dialer: &str,
        acceptor: &str,
        epoch: u64,
        base: &FibreBase,
    ) -> Result<(), SecretFileError> {
        let prefix = format!("{TAG} {dialer} {acceptor} {epoch} ");
        // The whole line in secret memory, written with one call: O_APPEND
        // keeps lines from two agents sharing a file whole.
        let mut line = SecretBytes::zeroed(prefix.len() + 64 + 1);
        let out = line.expose_mut();
        out[..prefix.len()].copy_from_slice(prefix.as_bytes());
        for (i, b) in base.expose().iter().enumerate() {
            out[prefix.len() + 2 * i] = HEX[(b >> 4) as usize];
            out[prefix.len() + 2 * i + 1] = HEX[(b & 15) as usize];
        }
        out[prefix.len() + 64] = b'\n';
        append_private(&self.path, line.expose())
    }
}

/// Eve's side: a loaded export (0600, bounded), looked up per session.
pub struct FibreKeyFile {
    path: PathBuf,
    text: SecretBytes,
}

/// The contents show as a length, never their bytes.
impl std::fmt::Debug for FibreKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FibreKeyFile")
            .field("path", &self.path)
            .field("text", &self.text)
            .finish()
    }
}

/// One parsed line, borrowing the file text.
struct Entry<'a> {
    dialer: &'a str,
    acceptor: &'a str,
    epoch: u64,
    hex: &'a [u8],
}

impl FibreKeyFile {
    /// Reads and checks the whole file; a malformed line is an error.
    pub fn load(path: &Path) -> Result<Self, ExportError> {
        let text = load_secret_file(path)?;
        let this = Self {
            path: path.to_path_buf(),
            text,
        };
        this.entries()?;
        Ok(this)
    }

    /// Number of key lines.
    pub fn len(&self) -> usize {
        self.entries().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The base of `epoch` for `dialer → acceptor` (the last line that
    /// names it), or `None` when the file has no such line.
    pub fn find(&self, dialer: &str, acceptor: &str, epoch: u64) -> Option<FibreBase> {
        let entries = self.entries().ok()?;
        let e = entries
            .iter()
            .rev()
            .find(|e| e.dialer == dialer && e.acceptor == acceptor && e.epoch == epoch)?;
        let mut key = Secret::<32>::zeroed();
        for (i, b) in key.expose_mut().iter_mut().enumerate() {
            *b = (hex_digit(e.hex[2 * i])? << 4) | hex_digit(e.hex[2 * i + 1])?;
        }
        Some(FibreBase::from_secret(key))
    }

    fn entries(&self) -> Result<Vec<Entry<'_>>, ExportError> {
        let bad = |line: usize, why: &'static str| ExportError::Line {
            path: self.path.clone(),
            line,
            why,
        };
        let text = std::str::from_utf8(self.text.expose()).map_err(|_| bad(0, "not UTF-8"))?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let [tag, dialer, acceptor, epoch, hex] = fields[..] else {
                return Err(bad(n, "wrong number of fields"));
            };
            if tag != TAG {
                return Err(bad(n, "unknown line type"));
            }
            if !valid_name(dialer) || !valid_name(acceptor) {
                return Err(bad(n, "bad gateway name"));
            }
            let epoch = epoch.parse().map_err(|_| bad(n, "bad epoch"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| hex_digit(b).is_some()) {
                return Err(bad(n, "the key is not 64 hex digits"));
            }
            out.push(Entry {
                dialer,
                acceptor,
                epoch,
                hex: hex.as_bytes(),
            });
        }
        Ok(out)
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::secret::file::TestDir;

    fn base(b: u8) -> FibreBase {
        FibreBase::from_channel_key(&SecretBytes::from_slice(&[b; 32]))
    }

    #[test]
    fn appended_lines_read_back_and_the_last_one_wins() {
        let dir = TestDir::new("fibre-export");
        let path = dir.path().join("fibre.keys");
        let x = FibreKeyExport::new(path.clone(), "gw-a", "gw-b");
        x.append("gw-a", "gw-b", 0, &base(1)).unwrap();
        x.append("gw-a", "gw-b", 1, &base(2)).unwrap();
        x.append("gw-a", "gw-b", 0, &base(3)).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let f = FibreKeyFile::load(&path).unwrap();
        assert_eq!(f.len(), 3);
        let nd = [7u8; 32];
        let na = [8u8; 32];
        let key_of = |b: &FibreBase| {
            let mut s = super::super::FibreSealer::new(b.session_key(&nd, &na));
            s.seal(b"probe").unwrap()
        };
        assert_eq!(
            key_of(&f.find("gw-a", "gw-b", 1).unwrap()),
            key_of(&base(2))
        );
        assert_eq!(
            key_of(&f.find("gw-a", "gw-b", 0).unwrap()),
            key_of(&base(3))
        );
        assert!(f.find("gw-b", "gw-a", 0).is_none(), "direction matters");
        assert!(f.find("gw-a", "gw-b", 2).is_none());
    }

    #[test]
    fn open_or_malformed_files_are_refused() {
        let dir = TestDir::new("fibre-export-bad");
        let path = dir.path().join("fibre.keys");
        FibreKeyExport::new(path.clone(), "gw-a", "gw-b")
            .append("gw-a", "gw-b", 0, &base(1))
            .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            FibreKeyFile::load(&path),
            Err(ExportError::File(SecretFileError::TooOpen { .. }))
        ));
        // The writer refuses to add a key to a file others can read.
        assert!(
            FibreKeyExport::new(path.clone(), "gw-a", "gw-b")
                .export(1, &SecretBytes::from_slice(&[2; 32]))
                .is_err()
        );
        let bad_epoch = format!("fibre-base gw-a gw-b x {}\n", "0".repeat(64));
        for (text, why) in [
            ("fibre-base gw-a gw-b 0 abcd\n", "64 hex"),
            (bad_epoch.as_str(), "epoch"),
            ("something else\n", "fields"),
        ] {
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let e = FibreKeyFile::load(&path).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(":1:"), "{text:?}: {e}");
        }
    }
}
