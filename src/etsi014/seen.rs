//! The key_IDs one link has already used, so that a key_ID offered twice —
//! a replayed offer, a KME that repeats itself — is refused on both sides,
//! also after a restart.
//!
//! Bound: the newest [`MAX_SEEN`] key_IDs (1 MiB of UUIDs; at the default
//! 256-bit keys that is the last 2 MiB of key the link took). An older
//! key_ID falls out of the set; it is still refused by the KMEs (ETSI GS
//! QKD 014 delivers each key_ID once to each SAE) and its bytes could not
//! enter the pool again anyway, because pool block IDs only increase.
//!
//! File: `<state_dir>/<peer>.etsi014-seen`, 0600: a header, then 16-byte
//! key_IDs appended and `fdatasync`ed before the keys they name enter the
//! pool (a crash loses keys, never the record). When the file holds twice
//! the bound it is rewritten atomically with the newest [`MAX_SEEN`].
//! Key_IDs are not secret (they cross the peer channel), but the file sits
//! with the pool state and is written like it.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;
use uuid::Uuid;

use crate::secret::file::{SecretFileError, check_private, write_private_atomic};

/// Most key_IDs remembered per link.
pub const MAX_SEEN: usize = 65_536;
const HEADER: &[u8; 16] = b"qkd-ipsec seen1\n";

#[derive(Debug, Error)]
pub enum SeenError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] SecretFileError),
    #[error("{}: not a key_ID record of this program (bad header or length); move it away to start afresh", path.display())]
    Corrupt { path: PathBuf },
}

/// A bounded, persisted set of key_IDs.
pub struct SeenKeyIds {
    order: VecDeque<Uuid>,
    set: HashSet<Uuid>,
    path: Option<PathBuf>,
    /// Records in the file (grows until the rewrite).
    in_file: usize,
}

impl std::fmt::Debug for SeenKeyIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeenKeyIds")
            .field("len", &self.order.len())
            .field("path", &self.path)
            .finish()
    }
}

impl SeenKeyIds {
    /// An empty set that is not persisted (tests, lab tools).
    pub fn in_memory() -> Self {
        Self {
            order: VecDeque::new(),
            set: HashSet::new(),
            path: None,
            in_file: 0,
        }
    }

    /// The file of `peer` in `dir`.
    pub fn file_for(dir: &Path, peer: &str) -> PathBuf {
        dir.join(format!("{peer}.etsi014-seen"))
    }

    /// Opens (or creates) the record at `path`.
    pub fn open(path: &Path) -> Result<Self, SeenError> {
        let io = |source| SeenError::Io {
            path: path.to_owned(),
            source,
        };
        let mut this = Self::in_memory();
        this.path = Some(path.to_owned());
        match File::open(path) {
            Ok(mut file) => {
                check_private(path, &file)?;
                let mut raw = Vec::new();
                file.read_to_end(&mut raw).map_err(io)?;
                let corrupt = || SeenError::Corrupt {
                    path: path.to_owned(),
                };
                let body = raw.strip_prefix(HEADER.as_slice()).ok_or_else(corrupt)?;
                if body.len() % 16 != 0 {
                    return Err(corrupt());
                }
                for chunk in body.chunks_exact(16) {
                    let id = Uuid::from_bytes(chunk.try_into().expect("16 bytes"));
                    this.remember(id);
                }
                this.in_file = body.len() / 16;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => this.rewrite()?,
            Err(e) => return Err(io(e)),
        }
        Ok(this)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn contains(&self, id: &Uuid) -> bool {
        self.set.contains(id)
    }

    /// The first of `ids` already seen (or repeated within `ids`).
    pub fn first_seen(&self, ids: &[Uuid]) -> Option<Uuid> {
        let mut within = HashSet::with_capacity(ids.len());
        ids.iter()
            .find(|id| self.contains(id) || !within.insert(**id))
            .copied()
    }

    /// Records `ids` (durably, when persisted) before their keys are used.
    /// Refuses the whole list if any of them was seen.
    pub fn record(&mut self, ids: &[Uuid]) -> Result<(), RecordError> {
        if let Some(id) = self.first_seen(ids) {
            return Err(RecordError::Seen(id));
        }
        if let Some(path) = self.path.clone() {
            self.append_file(&path, ids).map_err(RecordError::Store)?;
        }
        for id in ids {
            self.remember(*id);
        }
        if self.path.is_some() && self.in_file >= 2 * MAX_SEEN {
            self.rewrite().map_err(RecordError::Store)?;
        }
        Ok(())
    }

    fn remember(&mut self, id: Uuid) {
        if self.set.insert(id) {
            self.order.push_back(id);
        }
        while self.order.len() > MAX_SEEN {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    fn append_file(&mut self, path: &Path, ids: &[Uuid]) -> Result<(), SeenError> {
        let io = |source| SeenError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mut buf = Vec::with_capacity(ids.len() * 16);
        for id in ids {
            buf.extend_from_slice(id.as_bytes());
        }
        file.write_all(&buf).map_err(io)?;
        file.sync_data().map_err(io)?;
        self.in_file += ids.len();
        Ok(())
    }

    fn rewrite(&mut self) -> Result<(), SeenError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut body = Vec::with_capacity(self.order.len() * 16);
        for id in &self.order {
            body.extend_from_slice(id.as_bytes());
        }
        write_private_atomic(path, &[HEADER.as_slice(), &body])?;
        self.in_file = self.order.len();
        Ok(())
    }
}

/// Why [`SeenKeyIds::record`] refused.
#[derive(Debug, Error)]
pub enum RecordError {
    #[error(
        "key_ID {0} was used before on this link: refused (a replay, or a KME repeating itself)"
    )]
    Seen(Uuid),
    #[error("cannot record key_IDs: {0}")]
    Store(SeenError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::file::TestDir;

    fn ids(r: std::ops::Range<u128>) -> Vec<Uuid> {
        r.map(Uuid::from_u128).collect()
    }

    #[test]
    fn a_key_id_is_refused_twice_also_after_reopening() {
        let dir = TestDir::new("etsi014-seen");
        let path = SeenKeyIds::file_for(dir.path(), "gw-b");
        let mut s = SeenKeyIds::open(&path).unwrap();
        s.record(&ids(1..4)).unwrap();
        assert!(
            matches!(s.record(&ids(3..5)), Err(RecordError::Seen(id)) if id == Uuid::from_u128(3))
        );
        // Refused whole: 4 was not recorded.
        assert!(!s.contains(&Uuid::from_u128(4)));
        assert!(s.record(&[Uuid::from_u128(7), Uuid::from_u128(7)]).is_err());
        drop(s);
        let s = SeenKeyIds::open(&path).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.first_seen(&ids(2..3)), Some(Uuid::from_u128(2)));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_set_is_bounded_and_the_file_compacted() {
        let dir = TestDir::new("etsi014-seen-bound");
        let path = SeenKeyIds::file_for(dir.path(), "gw-b");
        let mut s = SeenKeyIds::open(&path).unwrap();
        let batch = 4096u128;
        let rounds = (3 * MAX_SEEN as u128) / batch;
        for r in 0..rounds {
            s.record(&ids(r * batch..(r + 1) * batch)).unwrap();
        }
        assert_eq!(s.len(), MAX_SEEN);
        assert!(!s.contains(&Uuid::from_u128(0)), "oldest evicted");
        let newest = Uuid::from_u128(rounds * batch - 1);
        assert!(s.contains(&newest));
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        assert!(len <= 16 + 2 * MAX_SEEN * 16, "{len}");
        let reopened = SeenKeyIds::open(&path).unwrap();
        assert_eq!(reopened.len(), MAX_SEEN);
        assert!(reopened.contains(&newest));
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = TestDir::new("etsi014-seen-bad");
        let path = dir.path().join("x");
        write_private_atomic(&path, &[b"not ours"]).unwrap();
        assert!(matches!(
            SeenKeyIds::open(&path),
            Err(SeenError::Corrupt { .. })
        ));
    }
}
