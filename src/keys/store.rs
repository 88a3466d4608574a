//! The at-rest format of a pool: an encrypted snapshot plus an encrypted
//! journal of the changes since, and the key that protects them.
//!
//! Owns encryption, file layout and decoding of what is on disk; the policy
//! of when to write lives in [`super::persisted`]. Never logs contents.
//!
//! # Keys and nonces (AES-256-GCM, NIST SP 800-38D)
//!
//! * The **pool key** (KEK, 32 bytes from a credential file) only wraps a
//!   fresh random data key (DEK), together with the previous generation's
//!   DEK, once per snapshot, under a random 96-bit
//!   nonce. SP 800-38D §8.3 allows 2^32 random-nonce invocations per key
//!   (collision chance below 2^-32); snapshots are written on start-up, after
//!   an agreement and when the journal outgrows the snapshot (≥ 1 MiB of
//!   changes), so even one a second would take 136 years to reach it.
//! * The **DEK** is new for every snapshot generation and is used only by the
//!   process that generated it: nonce 0 for the snapshot body, then the
//!   journal record sequence number 1, 2, … (a deterministic counter nonce,
//!   SP 800-38D §8.2.1). After loading, the pool is always re-snapshotted
//!   under a new DEK before anything is appended, and any write error forces
//!   the same, so a counter value can never be written twice under one DEK,
//!   not even after a torn write.
//!
//! # Authenticated data
//!
//! Every byte of both files is either authenticated data, a nonce or
//! ciphertext: the header (magic, format version, QKD role, peer name,
//! generation) is the AAD of the DEK wrap and, with the wrapped key and the
//! body length, of the body; each journal record's AAD is the journal header
//! plus the record's length, generation and sequence number. So a file that
//! was altered, belongs to another peer or role, or is read with the wrong
//! credential fails to load, with the path and the part that failed.
//!
//! Two cases are not errors, because a crash produces them:
//! * a journal of the previous generation (the crash fell between writing a
//!   snapshot and removing the journal it absorbed): its records are still
//!   authenticated, with the previous DEK that the new snapshot carries, and
//!   then ignored;
//! * a torn last record (the crash fell inside a write, before its fsync
//!   returned, so the change was never reported done): it is dropped with a
//!   warning. A record's length is stored twice (`len`, `!len`) so that a
//!   flipped length byte is an error rather than a "torn" record; cutting
//!   the file short is indistinguishable from a crash, and so is a rollback
//!   of both files: the peer's view repairs that ([`super::agreement`]
//!   unites consumed ranges).

use std::path::{Path, PathBuf};

use aes_gcm::aead::KeyInit;
use aes_gcm::{AeadInOut, Aes256Gcm, Nonce, Tag};
use thiserror::Error;

use super::codec::{decode_pool, encode_pool};
use super::pool::{KeyPool, PoolError, Role};
use crate::qkd::wire::{WireError, WireReader, WireWriter};
use crate::secret::file::SecretFileError;
use crate::secret::{Secret, SecretBytes, load_secret_file};

/// Name of the systemd credential holding the pool key
/// (`LoadCredential=pool-key:/etc/qkd-ipsec/pool.key`).
pub const POOL_KEY_CREDENTIAL: &str = "pool-key";

const SNAPSHOT_MAGIC: &[u8; 8] = b"QKDPOOL\0";
const JOURNAL_MAGIC: &[u8; 8] = b"QKDJRNL\0";
/// 2 added the `relay` key use to the snapshot's counters; version 1
/// files (five uses) are still read, and rewritten as 2 at the next
/// compaction.
const FORMAT_VERSION: u16 = 2;
const OLDEST_READABLE_VERSION: u16 = 1;
const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 12;
/// Journal record header: length u32, its complement u32, generation u64,
/// sequence number u64.
pub(super) const RECORD_HEADER_LEN: usize = 4 + 4 + 8 + 8;
/// The wrapped data keys: this generation's and the previous one's.
const WRAPPED_LEN: usize = 64;
/// Largest record: an append of the largest block plus its framing.
const MAX_RECORD_LEN: u32 = super::pool::MAX_BLOCK_BYTES + 64 + TAG_LEN as u32;
/// Peer names become file names; keep them short and plain.
const MAX_PEER_NAME: usize = 64;

/// Why a pool file could not be loaded or saved. Names the file and the
/// part; never carries key bytes.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error(transparent)]
    File(#[from] SecretFileError),
    #[error("pool key {}: {reason}", path.display())]
    BadPoolKey { path: PathBuf, reason: String },
    #[error(
        "no pool key: configure its path, or run under systemd with \
         LoadCredential={POOL_KEY_CREDENTIAL}:/path/to/key (32 random bytes, \
         e.g. `head -c 32 /dev/urandom > key; chmod 600 key`)"
    )]
    NoPoolKey,
    #[error(
        "peer name {0:?} cannot name a pool file: use 1-64 of A-Z a-z 0-9 . _ -, not starting with '.'"
    )]
    BadPeerName(String),
    #[error(
        "{}: cannot authenticate the {part}: wrong pool key, or the file was modified",
        path.display()
    )]
    Authentication { path: PathBuf, part: String },
    #[error("{}: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error(
        "{}: written for peer {found:?} as QKD {found_role:?}, but opened for peer {expected:?} \
         as {expected_role:?}; a pool cannot change peer or role (remove the pool on both sides and start \
         over with a fresh bootstrap secret)",
        path.display()
    )]
    WrongOwner {
        path: PathBuf,
        found: String,
        found_role: Option<Role>,
        expected: String,
        expected_role: Role,
    },
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(
        "this bootstrap secret already started a key pool here (with {first_peer}; recorded in \
         {}), so a new pool with {peer} would reuse its one-time authentication key: make a \
         fresh secret (head -c 512 /dev/urandom), give the same bytes to both gateways, and \
         start over with the pools removed on both (docs/install.md, section 4)",
        path.display()
    )]
    BootstrapReused {
        path: PathBuf,
        first_peer: String,
        peer: String,
    },
}

impl StoreError {
    pub(super) fn corrupt(path: &Path, what: impl Into<String>) -> Self {
        StoreError::Corrupt {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }

    fn wire(path: &Path, part: &str) -> impl FnOnce(WireError) -> Self {
        move |e| StoreError::corrupt(path, format!("{part} does not decode: {e}"))
    }
}

/// The key-encryption key of pool files (32 bytes from a credential file).
pub struct PoolKey(Secret<32>);

impl std::fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolKey(<redacted>)")
    }
}

impl PoolKey {
    pub fn from_secret(key: Secret<32>) -> Self {
        Self(key)
    }

    /// Reads a 0600 file of exactly 32 raw bytes.
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        let raw = load_secret_file(path)?;
        let key = Secret::<32>::from_slice(raw.expose()).ok_or_else(|| StoreError::BadPoolKey {
            path: path.to_path_buf(),
            reason: format!(
                "{} bytes, need exactly 32 raw bytes (create with `head -c 32 /dev/urandom`)",
                raw.len()
            ),
        })?;
        Ok(Self(key))
    }

    /// The configured path if any, else `$CREDENTIALS_DIRECTORY/pool-key`.
    pub fn locate(configured: Option<&Path>) -> Result<PathBuf, StoreError> {
        locate_in(configured, std::env::var_os("CREDENTIALS_DIRECTORY"))
    }

    pub(super) fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.0.expose()).expect("32-byte key")
    }
}

fn locate_in(
    configured: Option<&Path>,
    credentials_dir: Option<std::ffi::OsString>,
) -> Result<PathBuf, StoreError> {
    match (configured, credentials_dir) {
        (Some(p), _) => Ok(p.to_path_buf()),
        (None, Some(d)) => Ok(Path::new(&d).join(POOL_KEY_CREDENTIAL)),
        (None, None) => Err(StoreError::NoPoolKey),
    }
}

#[cfg(test)]
pub(super) fn locate_for_test(
    configured: Option<&Path>,
    credentials_dir: Option<&str>,
) -> Result<PathBuf, StoreError> {
    locate_in(configured, credentials_dir.map(Into::into))
}

/// Who a pool file belongs to; bound into every AAD.
#[derive(Clone, Debug)]
pub(super) struct FileIdentity {
    pub(super) peer: String,
    pub(super) role: Role,
}

impl FileIdentity {
    pub(super) fn new(peer: &str, role: Role) -> Result<Self, StoreError> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if peer.is_empty()
            || peer.len() > MAX_PEER_NAME
            || peer.starts_with('.')
            || !peer.chars().all(ok_char)
        {
            return Err(StoreError::BadPeerName(peer.to_string()));
        }
        Ok(Self {
            peer: peer.to_string(),
            role,
        })
    }

    fn header(&self, magic: &[u8; 8]) -> Vec<u8> {
        let mut w = WireWriter::new();
        for b in magic {
            w.u8(*b);
        }
        w.u16(FORMAT_VERSION)
            .u8(self.role.code())
            .bytes(self.peer.as_bytes());
        w.finish()
    }

    /// Reads and checks a header written by [`Self::header`]; returns its
    /// format version.
    fn check_header(
        &self,
        r: &mut WireReader<'_>,
        magic: &[u8; 8],
        path: &Path,
    ) -> Result<u16, StoreError> {
        let mut found = [0u8; 8];
        for b in &mut found {
            *b = r.u8("magic").map_err(StoreError::wire(path, "header"))?;
        }
        if &found != magic {
            return Err(StoreError::corrupt(
                path,
                "not a qkd-ipsec pool file of this kind (bad magic)",
            ));
        }
        let version = r.u16("version").map_err(StoreError::wire(path, "header"))?;
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(StoreError::corrupt(
                path,
                format!(
                    "format version {version}, this build reads \
                     {OLDEST_READABLE_VERSION} to {FORMAT_VERSION}"
                ),
            ));
        }
        let role = Role::from_code(r.u8("role").map_err(StoreError::wire(path, "header"))?);
        let peer = r
            .bytes("peer", MAX_PEER_NAME)
            .map_err(StoreError::wire(path, "header"))?;
        if role != Some(self.role) || peer != self.peer.as_bytes() {
            return Err(StoreError::WrongOwner {
                path: path.to_path_buf(),
                found: String::from_utf8_lossy(peer).into_owned(),
                found_role: role,
                expected: self.peer.clone(),
                expected_role: self.role,
            });
        }
        Ok(version)
    }
}

/// A DEK nonce from a counter: 64-bit little-endian value, 32 zero bits.
fn counter_nonce(seq: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; NONCE_LEN];
    n[..8].copy_from_slice(&seq.to_le_bytes());
    n.into()
}

fn seal(
    cipher: &Aes256Gcm,
    nonce: &Nonce<aes_gcm::aead::consts::U12>,
    aad: &[u8],
    buf: &mut [u8],
) -> [u8; TAG_LEN] {
    cipher
        .encrypt_inout_detached(nonce, aad, buf.into())
        .expect("AES-GCM input far below its 2^36-byte limit")
        .into()
}

fn open(
    cipher: &Aes256Gcm,
    nonce: &Nonce<aes_gcm::aead::consts::U12>,
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8],
) -> Result<(), ()> {
    let tag = Tag::try_from(tag).map_err(|_| ())?;
    cipher
        .decrypt_inout_detached(nonce, aad, buf.into(), &tag)
        .map_err(|_| ())
}

/// A data key (DEK) and the cipher made from it.
pub(super) struct DataKey {
    key: Secret<32>,
    pub(super) cipher: Aes256Gcm,
}

impl DataKey {
    fn from_bytes(bytes: &[u8]) -> Self {
        let key = Secret::<32>::from_slice(bytes).expect("32-byte data key");
        let cipher = Aes256Gcm::new_from_slice(key.expose()).expect("32-byte key");
        Self { key, cipher }
    }

    /// A fresh random DEK, also used as the "previous" key of a first
    /// snapshot (where no journal can be stale).
    pub(super) fn random() -> Result<Self, getrandom::Error> {
        Ok(Self::from_bytes(Secret::<32>::random()?.expose()))
    }
}

/// Serialises `pool` under a fresh DEK wrapped by `kek` (with `previous`,
/// the DEK of the generation before). Returns the file bytes (ciphertext and
/// public header only) and the new DEK.
pub(super) fn seal_snapshot(
    ident: &FileIdentity,
    kek: &Aes256Gcm,
    generation: u64,
    previous: &DataKey,
    pool: &KeyPool,
) -> Result<(Vec<u8>, DataKey), getrandom::Error> {
    let dek = DataKey::random()?;
    let mut kek_nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut kek_nonce)?;

    let mut header = ident.header(SNAPSHOT_MAGIC);
    header.extend_from_slice(&generation.to_le_bytes());
    let mut wrapped = SecretBytes::zeroed(WRAPPED_LEN);
    wrapped.expose_mut()[..32].copy_from_slice(dek.key.expose());
    wrapped.expose_mut()[32..].copy_from_slice(previous.key.expose());
    // Encrypted in place: `wrapped` holds ciphertext from here on.
    let wrap_tag = seal(kek, &kek_nonce.into(), &header, wrapped.expose_mut());
    let mut body = encode_pool(pool);
    let mut pre = header;
    pre.extend_from_slice(&kek_nonce);
    pre.extend_from_slice(wrapped.expose());
    pre.extend_from_slice(&wrap_tag);
    pre.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let body_tag = seal(&dek.cipher, &counter_nonce(0), &pre, body.expose_mut());
    let mut file = pre;
    file.extend_from_slice(body.expose());
    file.extend_from_slice(&body_tag);
    Ok((file, dek))
}

/// A decrypted snapshot.
pub(super) struct OpenedSnapshot {
    pub(super) pool: KeyPool,
    pub(super) generation: u64,
    pub(super) dek: DataKey,
    pub(super) previous_dek: DataKey,
}

/// Decrypts and decodes a snapshot: the pool, its generation and the DEKs
/// needed to read a journal of this or the previous generation.
pub(super) fn open_snapshot(
    path: &Path,
    file: &[u8],
    ident: &FileIdentity,
    kek: &Aes256Gcm,
) -> Result<OpenedSnapshot, StoreError> {
    let mut r = WireReader::new(file);
    let version = ident.check_header(&mut r, SNAPSHOT_MAGIC, path)?;
    let generation = r
        .u64("generation")
        .map_err(StoreError::wire(path, "header"))?;
    let header_len = file.len() - r.remaining();
    let wrapped_at = header_len + NONCE_LEN;
    let body_at = wrapped_at + WRAPPED_LEN + TAG_LEN + 8;
    if file.len() < body_at + TAG_LEN {
        return Err(StoreError::corrupt(path, "truncated snapshot header"));
    }
    let header = &file[..header_len];
    let kek_nonce: [u8; NONCE_LEN] = file[header_len..wrapped_at].try_into().expect("12");
    let wrap_tag = &file[wrapped_at + WRAPPED_LEN..body_at - 8];
    let body_len = u64::from_le_bytes(file[body_at - 8..body_at].try_into().expect("8"));
    if body_len != (file.len() - body_at - TAG_LEN) as u64 {
        return Err(StoreError::corrupt(
            path,
            format!(
                "body length {body_len} does not match the file size {}",
                file.len()
            ),
        ));
    }
    let mut keys = SecretBytes::from_slice(&file[wrapped_at..wrapped_at + WRAPPED_LEN]);
    open(kek, &kek_nonce.into(), header, keys.expose_mut(), wrap_tag).map_err(|()| {
        StoreError::Authentication {
            path: path.to_path_buf(),
            part: "data key (header)".into(),
        }
    })?;
    let dek = DataKey::from_bytes(&keys.expose()[..32]);
    let previous_dek = DataKey::from_bytes(&keys.expose()[32..]);
    drop(keys);
    let mut body = SecretBytes::from_slice(&file[body_at..file.len() - TAG_LEN]);
    let tag = &file[file.len() - TAG_LEN..];
    open(
        &dek.cipher,
        &counter_nonce(0),
        &file[..body_at],
        body.expose_mut(),
        tag,
    )
    .map_err(|()| StoreError::Authentication {
        path: path.to_path_buf(),
        part: "pool contents".into(),
    })?;
    let pool = decode_pool(body.expose(), ident.role, version)
        .map_err(StoreError::wire(path, "pool contents"))?;
    Ok(OpenedSnapshot {
        pool,
        generation,
        dek,
        previous_dek,
    })
}

/// The bytes that open a journal file.
pub(super) fn journal_header(ident: &FileIdentity) -> Vec<u8> {
    ident.header(JOURNAL_MAGIC)
}

/// Encrypts one journal record in place (`plaintext` holds ciphertext after)
/// and returns it framed: header, ciphertext, tag.
pub(super) fn seal_record(
    ident: &FileIdentity,
    dek: &DataKey,
    generation: u64,
    seq: u64,
    mut plaintext: SecretBytes,
) -> Vec<u8> {
    let rec_header = record_header(plaintext.len() as u32 + TAG_LEN as u32, generation, seq);
    let mut aad = journal_header(ident);
    aad.extend_from_slice(&rec_header);
    let tag = seal(
        &dek.cipher,
        &counter_nonce(seq),
        &aad,
        plaintext.expose_mut(),
    );
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&rec_header);
    out.extend_from_slice(plaintext.expose());
    out.extend_from_slice(&tag);
    out
}

fn record_header(len: u32, generation: u64, seq: u64) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&(!len).to_le_bytes());
    h[8..16].copy_from_slice(&generation.to_le_bytes());
    h[16..].copy_from_slice(&seq.to_le_bytes());
    h
}

/// What reading a journal found.
pub(super) enum JournalContents {
    /// Authentic records of the previous generation, already folded into the
    /// snapshot: nothing to replay.
    Stale,
    /// Decrypted records of the snapshot's generation, in order, and whether
    /// the file ended in a torn (incomplete) record.
    Current {
        records: Vec<SecretBytes>,
        torn_tail: bool,
    },
}

/// Authenticates and decrypts every record of a journal file.
pub(super) fn open_journal(
    path: &Path,
    file: &[u8],
    ident: &FileIdentity,
    snapshot: &OpenedSnapshot,
) -> Result<JournalContents, StoreError> {
    let header = journal_header(ident);
    if file.len() < header.len() || is_zero(file) {
        // Torn while the header was written: it never held a record.
        return Ok(JournalContents::Current {
            records: Vec::new(),
            torn_tail: !file.is_empty(),
        });
    }
    ident.check_header(
        &mut WireReader::new(&file[..header.len()]),
        JOURNAL_MAGIC,
        path,
    )?;
    let mut at = header.len();
    let mut records = Vec::new();
    let mut file_generation = None;
    let mut expected_seq = 1u64;
    let done = |records, torn_tail, file_generation: Option<u64>| {
        if file_generation.is_some_and(|g| g != snapshot.generation) {
            JournalContents::Stale
        } else {
            JournalContents::Current { records, torn_tail }
        }
    };
    while at < file.len() {
        // A crash inside a write leaves a prefix of the record, or (on some
        // file systems) zeros past the old end.
        let Some(h) = file
            .get(at..at + RECORD_HEADER_LEN)
            .filter(|_| !is_zero(&file[at..]))
        else {
            return Ok(done(records, true, file_generation));
        };
        let len = u32::from_le_bytes(h[..4].try_into().expect("4"));
        let not_len = u32::from_le_bytes(h[4..8].try_into().expect("4"));
        let rec_gen = u64::from_le_bytes(h[8..16].try_into().expect("8"));
        let seq = u64::from_le_bytes(h[16..].try_into().expect("8"));
        if len != !not_len || !(TAG_LEN as u32..=MAX_RECORD_LEN).contains(&len) {
            return Err(StoreError::corrupt(
                path,
                format!("record {expected_seq}: damaged length field"),
            ));
        }
        let generation = *file_generation.get_or_insert(rec_gen);
        let dek = if generation == snapshot.generation {
            &snapshot.dek
        } else if generation.checked_add(1) == Some(snapshot.generation) {
            &snapshot.previous_dek
        } else {
            generation_error(path, generation, snapshot.generation)?
        };
        if rec_gen != generation || seq != expected_seq {
            return Err(StoreError::corrupt(
                path,
                format!(
                    "record {expected_seq} is generation {rec_gen} sequence {seq}, expected \
                     generation {generation} sequence {expected_seq} (records lost or reordered)"
                ),
            ));
        }
        let end = at + RECORD_HEADER_LEN + len as usize;
        let Some(body) = file.get(at + RECORD_HEADER_LEN..end) else {
            return Ok(done(records, true, file_generation));
        };
        let mut aad = header.clone();
        aad.extend_from_slice(h);
        let (ct, tag) = body.split_at(body.len() - TAG_LEN);
        let mut plain = SecretBytes::from_slice(ct);
        let nonce = counter_nonce(seq);
        if open(&dek.cipher, &nonce, &aad, plain.expose_mut(), tag).is_err() {
            // The last record's size reached the disk but its data did not
            // (zeros): torn. A real tag is all-zero with chance 2^-128.
            if end == file.len() && is_zero(tag) {
                return Ok(done(records, true, file_generation));
            }
            return Err(StoreError::Authentication {
                path: path.to_path_buf(),
                part: format!("journal record {seq}"),
            });
        }
        records.push(plain);
        expected_seq += 1;
        at = end;
    }
    Ok(done(records, false, file_generation))
}

fn generation_error<T>(path: &Path, found: u64, snapshot: u64) -> Result<T, StoreError> {
    Err(StoreError::corrupt(
        path,
        format!(
            "journal of generation {found} does not belong to snapshot generation {snapshot} \
             (one of the two files was replaced by an older or newer copy)"
        ),
    ))
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0)
}
