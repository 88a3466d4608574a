//! The channel key: which secret authenticates the peer channel, and its
//! durable record.
//!
//! Owns `<state dir>/<peer>.channel` (0600, written atomically) and the
//! epoch rules; does not take keys from the pool itself (the session does,
//! through [`ChannelKeyPool`]) and never logs key bytes.
//!
//! Epoch 0 is the pre-shared bootstrap secret, loaded by the caller from its
//! own 0600 file. Epoch `n + 1` is a [`CHANNEL_KEY_LEN`]-byte key taken from
//! the QKD pool while a session under epoch `n` is up (see
//! [`super::session`] for the three-message switch). At most two epochs are
//! held: `current` and, during a switch, `next`. The record is rewritten at
//! each step, so after a crash at any point the two sides hold keys from
//! which a handshake still succeeds:
//!
//! | switch step reached                        | dialer holds | acceptor holds      | next handshake          |
//! |--------------------------------------------|--------------|---------------------|-------------------------|
//! | offer sent, not accepted                   | n            | n                   | n                       |
//! | acceptor stored `next` and answered         | n            | n, next n+1         | n; acceptor drops n+1   |
//! | dialer committed n+1                        | n+1          | n, next n+1         | n+1; acceptor promotes  |
//! | acceptor promoted on `Activate`              | n+1          | n+1                 | n+1                     |
//!
//! Pool bytes consumed by an abandoned switch are simply wasted (the pool
//! agreement reconciles them). What is *not* recoverable: losing one side's
//! record (state directory wiped, disk replaced) after the first switch.
//! That side restarts at epoch 0 and the other refuses it — never a
//! downgrade to the bootstrap secret, never an unauthenticated fallback. The
//! operator re-pairs by removing the record on both sides (the bootstrap
//! secret then applies again) or by installing a new bootstrap secret on
//! both. A corrupted record is an error at start, not an empty state.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::PeerError;
use super::handshake::{CHANNEL_KEY_LEN, MIN_BOOTSTRAP_LEN};
use crate::keys::{KeyPool, KeyRef, KeyUse, PersistedPool};
use crate::qkd::wire::WireReader;
use crate::secret::SecretBytes;
use crate::secret::file::{SecretFileError, load_secret_file, write_private_atomic};

const MAGIC: &[u8; 8] = b"QKDCHAN1";

/// A key with its epoch number.
pub struct EpochKey {
    pub epoch: u64,
    pub key: SecretBytes,
}

/// The keys show as `<redacted>`, never their bytes.
impl std::fmt::Debug for EpochKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochKey")
            .field("epoch", &self.epoch)
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

/// The channel keys of one peer link and where they are recorded.
pub struct ChannelKeyStore {
    path: PathBuf,
    current: EpochKey,
    next: Option<EpochKey>,
}

/// The keys print as [`EpochKey`] does: redacted.
impl std::fmt::Debug for ChannelKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelKeyStore")
            .field("path", &self.path)
            .field("current", &self.current)
            .field("next", &self.next)
            .finish()
    }
}

impl ChannelKeyStore {
    /// Opens the record at `path` (e.g. `<state dir>/<peer>.channel`). When
    /// it does not exist the link uses `bootstrap` (epoch 0). Blocking file
    /// I/O: call at start-up or from `spawn_blocking`.
    pub fn open(path: &Path, bootstrap: SecretBytes) -> Result<Self, PeerError> {
        if bootstrap.len() < MIN_BOOTSTRAP_LEN {
            return Err(PeerError::WeakBootstrap {
                len: bootstrap.len(),
            });
        }
        let file = match load_secret_file(path) {
            Ok(bytes) => bytes,
            Err(SecretFileError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(Self {
                    path: path.to_path_buf(),
                    current: EpochKey {
                        epoch: 0,
                        key: bootstrap,
                    },
                    next: None,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let corrupt = |what: &str| PeerError::CorruptChannelKey {
            path: path.to_path_buf(),
            what: what.to_owned(),
        };
        let body_len = file
            .len()
            .checked_sub(32)
            .ok_or_else(|| corrupt("too short"))?;
        let (body, digest) = file.expose().split_at(body_len);
        if Sha256::digest(body).as_slice() != digest {
            return Err(corrupt("checksum mismatch"));
        }
        let mut r = WireReader::new(body);
        let parse = |r: &mut WireReader<'_>, bootstrap: Option<SecretBytes>| {
            let epoch = r.u64("epoch").map_err(|_| corrupt("truncated"))?;
            let key = r
                .bytes("key", CHANNEL_KEY_LEN)
                .map_err(|_| corrupt("bad key field"))?;
            match (epoch, key.len(), bootstrap) {
                (0, 0, Some(b)) => Ok(EpochKey { epoch, key: b }),
                (1.., CHANNEL_KEY_LEN, _) => Ok(EpochKey {
                    epoch,
                    key: SecretBytes::from_slice(key),
                }),
                _ => Err(corrupt("key length does not match its epoch")),
            }
        };
        let magic: Vec<u8> = (0..8).filter_map(|_| r.u8("magic").ok()).collect();
        if magic != MAGIC {
            return Err(corrupt("not a channel-key record"));
        }
        let current = parse(&mut r, Some(bootstrap))?;
        let next = match r.u8("next flag").map_err(|_| corrupt("truncated"))? {
            0 => None,
            1 => Some(parse(&mut r, None)?),
            _ => return Err(corrupt("bad next flag")),
        };
        r.finish().map_err(|_| corrupt("trailing bytes"))?;
        if next.as_ref().is_some_and(|n| n.epoch != current.epoch + 1) {
            return Err(corrupt("pending epoch does not follow the current one"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            current,
            next,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn current_epoch(&self) -> u64 {
        self.current.epoch
    }

    pub fn next_epoch(&self) -> Option<u64> {
        self.next.as_ref().map(|n| n.epoch)
    }

    pub fn current(&self) -> &EpochKey {
        &self.current
    }

    /// The key of `epoch` if it is the current or the pending one.
    pub fn key_for(&self, epoch: u64) -> Option<&SecretBytes> {
        if epoch == self.current.epoch {
            return Some(&self.current.key);
        }
        self.next
            .as_ref()
            .filter(|n| n.epoch == epoch)
            .map(|n| &n.key)
    }

    /// Acceptor, on a switch offer: records `key` as the pending epoch
    /// `current + 1` (replacing an earlier pending key). Durable on return.
    pub fn set_next(&mut self, key: SecretBytes) -> Result<u64, PeerError> {
        let epoch = self.current.epoch + 1;
        let old = self.next.replace(EpochKey { epoch, key });
        self.persist().inspect_err(|_| self.next = old)?;
        Ok(epoch)
    }

    /// Makes the pending epoch current (acceptor, on `Activate` or on a
    /// handshake under it). No-op without a pending epoch.
    pub fn promote_next(&mut self) -> Result<(), PeerError> {
        let Some(next) = self.next.take() else {
            return Ok(());
        };
        let old = std::mem::replace(&mut self.current, next);
        self.persist().inspect_err(|_| {
            self.next = Some(std::mem::replace(&mut self.current, old));
        })
    }

    /// Forgets the pending epoch (the dialer authenticated with the current
    /// one, so it never committed the pending one).
    pub fn drop_next(&mut self) -> Result<(), PeerError> {
        let Some(next) = self.next.take() else {
            return Ok(());
        };
        self.persist().inspect_err(|_| self.next = Some(next))
    }

    /// Dialer, on the acceptor's acceptance: makes `key` current as epoch
    /// `current + 1`. Durable on return; on error nothing changed.
    pub fn commit(&mut self, key: SecretBytes) -> Result<u64, PeerError> {
        let epoch = self.current.epoch + 1;
        let old = std::mem::replace(&mut self.current, EpochKey { epoch, key });
        let old_next = self.next.take();
        match self.persist() {
            Ok(()) => Ok(epoch),
            Err(e) => {
                self.current = old;
                self.next = old_next;
                Err(e)
            }
        }
    }

    /// Layout: magic, then `epoch u64 LE, key (u32 LE length + bytes)` for
    /// current (empty key at epoch 0: the bootstrap file holds it), a flag
    /// byte and the same for next, then SHA-256 of all that.
    fn persist(&self) -> Result<(), PeerError> {
        let entry = |e: &EpochKey| -> ([u8; 12], usize) {
            let n = if e.epoch == 0 { 0 } else { e.key.len() };
            let mut h = [0u8; 12];
            h[..8].copy_from_slice(&e.epoch.to_le_bytes());
            h[8..].copy_from_slice(&(n as u32).to_le_bytes());
            (h, n)
        };
        let (cur_head, cur_len) = entry(&self.current);
        let cur_key = &self.current.key.expose()[..cur_len];
        let flag = [u8::from(self.next.is_some())];
        let next = self.next.as_ref().map(|n| (entry(n), n.key.expose()));
        let mut parts: Vec<&[u8]> = vec![MAGIC, &cur_head, cur_key, &flag];
        if let Some(((head, _), key)) = &next {
            parts.push(head);
            parts.push(key);
        }
        let mut h = Sha256::new();
        for p in &parts {
            h.update(p);
        }
        let digest = h.finalize();
        parts.push(&digest);
        write_private_atomic(&self.path, &parts).map_err(PeerError::from)
    }
}

/// Where a link takes channel keys from. Both methods may block (a
/// [`PersistedPool`] fsyncs before it returns a key); the link calls them on
/// a blocking thread. Errors carry positions and reasons, never key bytes.
pub trait ChannelKeyPool: Send + Sync + 'static {
    /// Initiator: takes `len` fresh bytes with [`KeyUse::Channel`].
    fn take_channel_key(
        &self,
        len: u32,
    ) -> Result<(KeyRef, SecretBytes), Box<dyn std::error::Error + Send + Sync>>;
    /// Responder: takes exactly the bytes the initiator's reference names.
    fn accept_channel_key(
        &self,
        key_ref: &KeyRef,
    ) -> Result<SecretBytes, Box<dyn std::error::Error + Send + Sync>>;
}

impl ChannelKeyPool for std::sync::Mutex<PersistedPool> {
    fn take_channel_key(
        &self,
        len: u32,
    ) -> Result<(KeyRef, SecretBytes), Box<dyn std::error::Error + Send + Sync>> {
        let mut pool = self.lock().map_err(|_| "key pool lock poisoned")?;
        Ok(pool.take(KeyUse::Channel, len)?)
    }

    fn accept_channel_key(
        &self,
        key_ref: &KeyRef,
    ) -> Result<SecretBytes, Box<dyn std::error::Error + Send + Sync>> {
        let mut pool = self.lock().map_err(|_| "key pool lock poisoned")?;
        Ok(pool.take_at(key_ref, KeyUse::Channel)?)
    }
}

impl ChannelKeyPool for std::sync::Mutex<KeyPool> {
    fn take_channel_key(
        &self,
        len: u32,
    ) -> Result<(KeyRef, SecretBytes), Box<dyn std::error::Error + Send + Sync>> {
        let mut pool = self.lock().map_err(|_| "key pool lock poisoned")?;
        Ok(pool.take(KeyUse::Channel, len)?)
    }

    fn accept_channel_key(
        &self,
        key_ref: &KeyRef,
    ) -> Result<SecretBytes, Box<dyn std::error::Error + Send + Sync>> {
        let mut pool = self.lock().map_err(|_| "key pool lock poisoned")?;
        Ok(pool.take_at(key_ref, KeyUse::Channel)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::file::TestDir;
    use std::os::unix::fs::PermissionsExt;

    fn boot() -> SecretBytes {
        SecretBytes::from_slice(&[7u8; 32])
    }

    #[test]
    fn missing_record_means_bootstrap_and_short_bootstrap_is_refused() {
        let dir = TestDir::new("chan");
        let p = dir.path().join("b.channel");
        let s = ChannelKeyStore::open(&p, boot()).unwrap();
        assert_eq!(s.current_epoch(), 0);
        assert!(s.key_for(0).unwrap().ct_eq(&boot()));
        assert!(s.key_for(1).is_none());
        assert!(!p.exists(), "opening writes nothing");
        assert!(matches!(
            ChannelKeyStore::open(&p, SecretBytes::from_slice(b"password")),
            Err(PeerError::WeakBootstrap { len: 8 })
        ));
    }

    #[test]
    fn every_switch_step_survives_a_reopen() {
        let dir = TestDir::new("chan");
        let p = dir.path().join("b.channel");
        let k1 = SecretBytes::from_slice(&[1; 32]);
        let mut s = ChannelKeyStore::open(&p, boot()).unwrap();
        assert_eq!(s.set_next(k1.duplicate()).unwrap(), 1);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let r = ChannelKeyStore::open(&p, boot()).unwrap();
        assert_eq!((r.current_epoch(), r.next_epoch()), (0, Some(1)));
        assert!(r.key_for(0).unwrap().ct_eq(&boot()));
        assert!(r.key_for(1).unwrap().ct_eq(&k1));
        s.promote_next().unwrap();
        let r = ChannelKeyStore::open(&p, boot()).unwrap();
        assert_eq!((r.current_epoch(), r.next_epoch()), (1, None));
        assert!(r.key_for(0).is_none(), "the bootstrap secret is retired");
        // Dialer-style commit of epoch 2.
        let k2 = SecretBytes::from_slice(&[2; 32]);
        s.commit(k2.duplicate()).unwrap();
        let r = ChannelKeyStore::open(&p, boot()).unwrap();
        assert_eq!(r.current_epoch(), 2);
        assert!(r.key_for(2).unwrap().ct_eq(&k2));
        // A pending key that is dropped is gone after reopen.
        s.set_next(SecretBytes::from_slice(&[3; 32])).unwrap();
        s.drop_next().unwrap();
        let r = ChannelKeyStore::open(&p, boot()).unwrap();
        assert_eq!((r.current_epoch(), r.next_epoch()), (2, None));
    }

    #[test]
    fn corrupt_or_open_records_are_errors_not_bootstrap() {
        let dir = TestDir::new("chan");
        let p = dir.path().join("b.channel");
        let mut s = ChannelKeyStore::open(&p, boot()).unwrap();
        s.commit(SecretBytes::from_slice(&[1; 32])).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let err = ChannelKeyStore::open(&p, boot()).unwrap_err();
        assert!(matches!(err, PeerError::CorruptChannelKey { .. }), "{err}");
        assert!(err.to_string().contains("b.channel"));
        std::fs::write(&p, b"short").unwrap();
        assert!(matches!(
            ChannelKeyStore::open(&p, boot()),
            Err(PeerError::CorruptChannelKey { .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ChannelKeyStore::open(&p, boot()),
            Err(PeerError::SecretFile(SecretFileError::TooOpen { .. }))
        ));
    }

    #[test]
    fn failed_write_changes_nothing() {
        let dir = TestDir::new("chan");
        // A path whose directory does not exist: every write fails.
        let p = dir.path().join("missing-dir").join("b.channel");
        let mut s = ChannelKeyStore::open(&p, boot()).unwrap();
        assert!(s.commit(SecretBytes::from_slice(&[1; 32])).is_err());
        assert_eq!(s.current_epoch(), 0);
        assert!(s.key_for(0).unwrap().ct_eq(&boot()));
        assert!(s.set_next(SecretBytes::from_slice(&[1; 32])).is_err());
        assert_eq!(s.next_epoch(), None);
    }
}
