//! A key pool that is durable before it hands out a key.
//!
//! [`PersistedPool`] wraps a [`KeyPool`] and writes every change to disk
//! before returning: a take's bytes are recorded as consumed (journal record,
//! `fdatasync`) before the caller sees them, so a crash can lose key (waste)
//! but never hand the same bytes out again. An error after the in-memory
//! change leaves the bytes consumed in memory and the key dropped; the next
//! write is then a full snapshot, so memory and disk converge.
//!
//! Files in the pool directory, per peer: `<peer>.pool` (snapshot, replaced
//! atomically) and `<peer>.journal` (records appended since the snapshot).
//! Cost per change is one small encrypted append and an `fdatasync`; the
//! snapshot is rewritten (temp file, fsync, rename, fsync directory) on open,
//! after an agreement, and when the journal outgrows the snapshot. Consumed
//! bytes stay in the files' ciphertext until that rewrite, so the interval
//! bounds how long used keys remain recoverable with the pool key.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aes_gcm::Aes256Gcm;

use super::agreement::{AgreementOutcome, PoolSummary};
use super::codec::JournalOp;
use super::pool::{BlockId, KeyPool, KeyRef, KeyUse, PoolStatus, Role};
use super::store::{
    DataKey, FileIdentity, JournalContents, OpenedSnapshot, PoolKey, StoreError, journal_header,
    open_journal, open_snapshot, seal_record, seal_snapshot,
};
use crate::secret::SecretBytes;
use crate::secret::file::{
    SecretFileError, check_private, ensure_private_dir, open_private, sync_dir, temp_prefix,
    write_private_atomic,
};

/// The journal is folded into a new snapshot once it is larger than the
/// snapshot and at least this large, which keeps the amortised write volume
/// within twice the changes.
const MIN_JOURNAL_BEFORE_COMPACTION: u64 = 1 << 20;
/// Largest journal read back; a bigger file is not one this code wrote.
pub(super) const MAX_JOURNAL_FILE: u64 = 1 << 32;

/// A [`KeyPool`] persisted in a directory, encrypted under a [`PoolKey`].
pub struct PersistedPool {
    pool: KeyPool,
    ident: FileIdentity,
    snapshot_path: PathBuf,
    journal_path: PathBuf,
    kek: Aes256Gcm,
    generation: u64,
    dek: DataKey,
    next_seq: u64,
    journal: Option<File>,
    journal_len: u64,
    snapshot_len: u64,
    /// Set after any write error: the next write must be a full snapshot
    /// (never reuse a sequence number of the current DEK).
    must_compact: bool,
}

impl std::fmt::Debug for PersistedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistedPool")
            .field("pool", &self.pool)
            .field("snapshot", &self.snapshot_path)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl PersistedPool {
    /// Opens the pool shared with `peer` in `dir`, creating an empty one if
    /// neither file exists. Replays the journal, then writes a fresh
    /// snapshot under a new data key.
    pub fn open(dir: &Path, peer: &str, role: Role, key: &PoolKey) -> Result<Self, StoreError> {
        let ident = FileIdentity::new(peer, role)?;
        ensure_private_dir(dir)?;
        remove_stale_temporaries(dir, peer);
        let snapshot_path = dir.join(format!("{peer}.pool"));
        let journal_path = dir.join(format!("{peer}.journal"));
        let kek = key.cipher();
        let mut opened = match read_private(&snapshot_path, u64::MAX)? {
            Some(bytes) => open_snapshot(&snapshot_path, &bytes, &ident, &kek)?,
            None if journal_path.exists() => {
                return Err(StoreError::Corrupt {
                    path: journal_path,
                    what: format!(
                        "journal without its snapshot {}; restore the snapshot, or remove the \
                         journal (the pool then starts empty, which takes a fresh bootstrap \
                         secret on both gateways, and the peer agreement discards what the \
                         peer holds)",
                        snapshot_path.display()
                    ),
                });
            }
            None => {
                tracing::info!(peer, path = %snapshot_path.display(), "no key pool yet: starting empty");
                OpenedSnapshot {
                    pool: KeyPool::new(role),
                    generation: 0,
                    dek: DataKey::random().map_err(random_failed(&snapshot_path))?,
                    previous_dek: DataKey::random().map_err(random_failed(&snapshot_path))?,
                }
            }
        };
        replay_journal(&journal_path, &ident, &mut opened)?;
        let mut this = Self {
            pool: opened.pool,
            ident,
            snapshot_path,
            journal_path,
            kek,
            generation: opened.generation,
            // The loaded DEK becomes the "previous" key of the next snapshot,
            // so a journal its removal misses still authenticates.
            dek: opened.dek,
            next_seq: 1,
            journal: None,
            journal_len: 0,
            snapshot_len: 0,
            must_compact: true,
        };
        this.compact()?;
        Ok(this)
    }

    /// The pool, for status and read-only queries.
    pub fn pool(&self) -> &KeyPool {
        &self.pool
    }

    pub fn status(&self) -> PoolStatus {
        self.pool.status()
    }

    pub fn snapshot_path(&self) -> &Path {
        &self.snapshot_path
    }

    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    /// Low-water level (not persisted: it is configuration).
    pub fn set_low_water(&mut self, bytes: u64) {
        self.pool.set_low_water(bytes);
    }

    /// Appends a QKD block and makes it durable.
    pub fn append(&mut self, id: BlockId, data: SecretBytes) -> Result<(), StoreError> {
        let record = JournalOp::encode_append(id, data.expose());
        self.pool.append(id, data)?;
        self.persist(record)
    }

    /// [`KeyPool::take`], durable before the key is returned.
    pub fn take(&mut self, key_use: KeyUse, len: u32) -> Result<(KeyRef, SecretBytes), StoreError> {
        let (key_ref, key) = self.pool.take(key_use, len)?;
        self.persist(JournalOp::encode_take(&key_ref, key_use, true))?;
        Ok((key_ref, key))
    }

    /// [`KeyPool::take_at`], durable before the key is returned.
    pub fn take_at(
        &mut self,
        key_ref: &KeyRef,
        key_use: KeyUse,
    ) -> Result<SecretBytes, StoreError> {
        let key = self.pool.take_at(key_ref, key_use)?;
        self.persist(JournalOp::encode_take(key_ref, key_use, false))?;
        Ok(key)
    }

    /// Test seam: journals a take of `key_ref` without the pool's check,
    /// as damaged files or a defect would, so the audit can be shown to
    /// catch it.
    #[cfg(test)]
    pub(super) fn journal_unchecked_take(
        &mut self,
        key_ref: &KeyRef,
        key_use: KeyUse,
    ) -> Result<(), StoreError> {
        self.persist(JournalOp::encode_take(key_ref, key_use, true))
    }

    pub fn summary(&self) -> PoolSummary {
        self.pool.summary()
    }

    /// [`KeyPool::apply_agreement`], then a fresh snapshot.
    pub fn apply_agreement(&mut self, peer: &PoolSummary) -> Result<AgreementOutcome, StoreError> {
        let outcome = self.pool.apply_agreement(peer);
        self.must_compact = true;
        self.compact()?;
        Ok(outcome)
    }

    fn persist(&mut self, record: SecretBytes) -> Result<(), StoreError> {
        if self.must_compact {
            return self.compact();
        }
        let seq = self.next_seq;
        // Advance first: a failed write must not leave this value reusable.
        self.next_seq += 1;
        let framed = seal_record(&self.ident, &self.dek, self.generation, seq, record);
        if let Err(e) = self.append_to_journal(&framed) {
            self.must_compact = true;
            self.journal = None;
            return Err(e.into());
        }
        self.journal_len += framed.len() as u64;
        if self.journal_len > self.snapshot_len.max(MIN_JOURNAL_BEFORE_COMPACTION) {
            // The change is already durable; a failed compaction is retried
            // by the next write instead of failing this one.
            if let Err(e) = self.compact() {
                tracing::warn!(error = %e, "key pool compaction failed; retrying on the next change");
            }
        }
        Ok(())
    }

    fn append_to_journal(&mut self, framed: &[u8]) -> Result<(), SecretFileError> {
        let path = &self.journal_path;
        let io = |op| {
            move |source| SecretFileError::Io {
                path: path.clone(),
                op,
                source,
            }
        };
        let created = self.journal.is_none();
        if created {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .map_err(io("create"))?;
            check_private(path, &f)?;
            let header = journal_header(&self.ident);
            f.write_all(&header).map_err(io("write"))?;
            self.journal_len = header.len() as u64;
            self.journal = Some(f);
        }
        let f = self.journal.as_mut().expect("opened above");
        f.write_all(framed).map_err(io("write"))?;
        f.sync_data().map_err(io("fdatasync"))?;
        if created {
            sync_dir(&crate::secret::file::parent_dir(path))?;
        }
        Ok(())
    }

    /// Writes the whole pool as a new snapshot generation under a new data
    /// key, then removes the journal it absorbed.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let generation = self.generation + 1;
        let (file, dek) = seal_snapshot(&self.ident, &self.kek, generation, &self.dek, &self.pool)
            .map_err(random_failed(&self.snapshot_path))?;
        write_private_atomic(&self.snapshot_path, &[&file])?;
        self.generation = generation;
        self.dek = dek;
        self.next_seq = 1;
        self.snapshot_len = file.len() as u64;
        self.journal = None;
        self.journal_len = 0;
        self.must_compact = false;
        // The journal now only repeats the snapshot; should removal fail, the
        // next load recognises it as the previous generation and skips it.
        match fs::remove_file(&self.journal_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.journal_path.display(), error = %e, "cannot remove absorbed journal")
            }
        }
        Ok(())
    }
}

/// Applies the journal's records (of the snapshot's generation) to the
/// snapshot's pool.
fn replay_journal(
    path: &Path,
    ident: &FileIdentity,
    opened: &mut OpenedSnapshot,
) -> Result<(), StoreError> {
    let Some(bytes) = read_private(path, MAX_JOURNAL_FILE)? else {
        return Ok(());
    };
    let (records, torn_tail) = match open_journal(path, &bytes, ident, opened)? {
        JournalContents::Stale => return Ok(()),
        JournalContents::Current { records, torn_tail } => (records, torn_tail),
    };
    if torn_tail {
        tracing::warn!(
            path = %path.display(),
            "journal ends in an incomplete record (crash during a write); that change was never completed and is dropped"
        );
    }
    for (i, record) in records.iter().enumerate() {
        let bad = |what: String| StoreError::Corrupt {
            path: path.to_path_buf(),
            what: format!("record {}: {what}", i + 1),
        };
        match JournalOp::decode(record.expose()).map_err(|e| bad(e.to_string()))? {
            JournalOp::Append { id, data } => opened.pool.append(id, data),
            JournalOp::Take {
                key_ref,
                key_use,
                initiated_here,
            } => opened.pool.replay_take(&key_ref, key_use, initiated_here),
        }
        .map_err(|e| bad(format!("does not apply to the pool: {e}")))?;
    }
    Ok(())
}

fn random_failed(path: &Path) -> impl FnOnce(getrandom::Error) -> StoreError + '_ {
    move |e| {
        StoreError::File(SecretFileError::Io {
            path: path.to_path_buf(),
            op: "draw a random data key for",
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// Reads a whole private file (ciphertext: a plain `Vec` is fine), or `None`
/// if it does not exist.
pub(super) fn read_private(path: &Path, max: u64) -> Result<Option<Vec<u8>>, SecretFileError> {
    let (mut file, len) = match open_private(path) {
        Ok(x) => x,
        Err(SecretFileError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if len > max {
        return Err(SecretFileError::TooLarge {
            path: path.to_path_buf(),
            len,
            max,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes)
        .map_err(|source| SecretFileError::Io {
            path: path.to_path_buf(),
            op: "read",
            source,
        })?;
    Ok(Some(bytes))
}

/// Temporary files of snapshots whose write a crash interrupted.
fn remove_stale_temporaries(dir: &Path, peer: &str) {
    let prefix = temp_prefix(&dir.join(format!("{peer}.pool")));
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(e.path());
        }
    }
}
