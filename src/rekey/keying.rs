//! Where a generation's SA keys come from, in the two keying modes.
//!
//! Owns the key layout of an exchange and the wrapping of session keys; the
//! pool itself stays in [`crate::keys`] and is reached through
//! [`KeySource`]. Key bytes stay in [`crate::secret`] types throughout.
//!
//! * `direct`: one take of 72 pool bytes (`KeyUse::SaKey`): bytes 0..36
//!   key the initiator→responder SA, 36..72 the responder→initiator SA
//!   (each a 32-byte AES key and a 4-byte salt, RFC 4106 §8.1). One take
//!   instead of two keeps a generation all-or-nothing in the pool.
//! * `wrapped` (the "SSL + PSK" scheme of the original design): the
//!   initiator draws the same 72 bytes from the OS CSPRNG and seals them
//!   with AES-256-GCM under 32 fresh pool bytes (`KeyUse::Wrap`); the
//!   responder takes the same pool bytes and opens them. The associated
//!   data binds the tunnel name, the exchange id and the initiator's SPI,
//!   so sealed keys cannot be replayed into another tunnel or generation.
//!   Each wrap key seals exactly one message, so a fixed all-zero nonce
//!   keeps (key, nonce) unique, the requirement of NIST SP 800-38D §8.

use aes_gcm::aead::KeyInit;
use aes_gcm::{AeadInOut, Aes256Gcm, Nonce, Tag};
use thiserror::Error;

use super::messages::KeyMaterial;
use super::{ExchangeId, Spi};
use crate::keys::{BlockId, KeyPool, KeyRef, KeyUse, PersistedPool, PoolError, StoreError};
use crate::qkd::wire::WireWriter;
use crate::secret::{SaKey, Secret, SecretBytes};

/// Bytes of one `rfc4106(gcm(aes))` SA key: AES-256 key + salt.
pub const SA_KEY_LEN: usize = 36;
/// Pool bytes of one direct-mode generation (both directions).
pub const DIRECT_TAKE_LEN: u32 = 2 * SA_KEY_LEN as u32;
/// Pool bytes of one wrapped-mode generation (an AES-256 key).
pub const WRAP_KEY_LEN: u32 = 32;
/// GCM tag length (128 bits, the full tag of SP 800-38D).
pub const TAG_LEN: usize = 16;
/// Sealed keys of a wrapped Start: both SA keys and the tag.
pub const SEALED_LEN: usize = 2 * SA_KEY_LEN + TAG_LEN;
/// Domain separation of the associated data.
const WRAP_LABEL: &[u8] = b"qkd-ipsec rekey wrap v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyingMode {
    Direct,
    Wrapped,
}

/// Why the pool gave no key.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TakeError {
    #[error("the pool has only {available} bytes for this side's takes; waiting for QKD key")]
    Exhausted { available: u64 },
    #[error("the referenced key block has not arrived here yet")]
    NotYetHeld,
    #[error("the pool refused the reference: {0}")]
    Refused(PoolError),
    #[error("the pool store failed: {0}")]
    Store(String),
}

/// The pool operations an engine needs: [`KeyPool`] in tests and benches,
/// [`PersistedPool`] in the agent.
pub trait KeySource {
    fn take(&mut self, key_use: KeyUse, len: u32) -> Result<(KeyRef, SecretBytes), TakeError>;
    fn take_at(&mut self, key_ref: &KeyRef, key_use: KeyUse) -> Result<SecretBytes, TakeError>;
}

impl KeySource for KeyPool {
    fn take(&mut self, key_use: KeyUse, len: u32) -> Result<(KeyRef, SecretBytes), TakeError> {
        KeyPool::take(self, key_use, len).map_err(|e| classify(e, self.high_water()))
    }

    fn take_at(&mut self, key_ref: &KeyRef, key_use: KeyUse) -> Result<SecretBytes, TakeError> {
        KeyPool::take_at(self, key_ref, key_use).map_err(|e| classify(e, self.high_water()))
    }
}

impl KeySource for PersistedPool {
    fn take(&mut self, key_use: KeyUse, len: u32) -> Result<(KeyRef, SecretBytes), TakeError> {
        PersistedPool::take(self, key_use, len).map_err(|e| classify_store(e, self))
    }

    fn take_at(&mut self, key_ref: &KeyRef, key_use: KeyUse) -> Result<SecretBytes, TakeError> {
        PersistedPool::take_at(self, key_ref, key_use).map_err(|e| classify_store(e, self))
    }
}

/// A block above the highest ID seen has simply not arrived yet (the two
/// pools append the same block at slightly different times); anything else
/// is a permanent refusal.
fn classify(e: PoolError, high_water: Option<BlockId>) -> TakeError {
    match e {
        PoolError::Exhausted { available, .. } => TakeError::Exhausted { available },
        PoolError::NotHeld { block } if high_water.is_none_or(|h| block > h) => {
            TakeError::NotYetHeld
        }
        e => TakeError::Refused(e),
    }
}

fn classify_store(e: StoreError, pool: &PersistedPool) -> TakeError {
    match e {
        StoreError::Pool(p) => classify(p, pool.pool().high_water()),
        other => TakeError::Store(other.to_string()),
    }
}

/// Why keys could not be drawn or accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyingError {
    #[error(transparent)]
    Take(#[from] TakeError),
    #[error("the peer sent {got:?} keys but this tunnel is configured for {want:?} keying")]
    ModeMismatch { want: KeyingMode, got: KeyingMode },
    #[error(
        "wrapped keys failed to authenticate (tampered, or bound to another tunnel, generation or SPI)"
    )]
    Unwrap,
    #[error("the OS random generator failed: {0}")]
    Random(String),
}

/// The two SA keys of a generation.
pub struct SaKeyPair {
    pub initiator_to_responder: SaKey,
    pub responder_to_initiator: SaKey,
}

impl std::fmt::Debug for SaKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaKeyPair(<redacted>)")
    }
}

impl SaKeyPair {
    /// Splits 72 bytes: first the initiator→responder key, then the other.
    fn split(bytes: &[u8]) -> Self {
        assert_eq!(bytes.len(), 2 * SA_KEY_LEN, "an SA key pair is 72 bytes");
        Self {
            initiator_to_responder: SaKey::from_slice(&bytes[..SA_KEY_LEN]).expect("36 bytes"),
            responder_to_initiator: SaKey::from_slice(&bytes[SA_KEY_LEN..]).expect("36 bytes"),
        }
    }

    /// The key of the SA this side receives on.
    pub fn inbound(&self, initiator: bool) -> &SaKey {
        if initiator {
            &self.responder_to_initiator
        } else {
            &self.initiator_to_responder
        }
    }

    /// The key of the SA this side sends on.
    pub fn outbound(&self, initiator: bool) -> &SaKey {
        self.inbound(!initiator)
    }
}

/// What binds wrapped keys to one use.
pub struct WrapContext<'a> {
    pub tunnel: &'a str,
    pub id: ExchangeId,
    pub initiator_spi: Spi,
}

impl WrapContext<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut w = WireWriter::new();
        w.bytes(WRAP_LABEL).bytes(self.tunnel.as_bytes());
        w.u64(self.id.epoch)
            .u64(self.id.generation)
            .u32(self.initiator_spi);
        w.finish()
    }
}

/// Keys the initiator drew for one exchange, not yet sent.
pub struct DrawnKeys {
    keys: SaKeyPair,
    origin: Origin,
}

enum Origin {
    Direct(KeyRef),
    Wrapped {
        wrap_ref: KeyRef,
        wrap_key: Secret<32>,
    },
}

impl DrawnKeys {
    /// Takes the pool bytes of one generation (and, wrapped, draws the
    /// session keys first so a CSPRNG failure costs no pool key).
    pub fn draw(mode: KeyingMode, pool: &mut dyn KeySource) -> Result<Self, KeyingError> {
        match mode {
            KeyingMode::Direct => {
                let (key_ref, bytes) = pool.take(KeyUse::SaKey, DIRECT_TAKE_LEN)?;
                Ok(Self {
                    keys: SaKeyPair::split(bytes.expose()),
                    origin: Origin::Direct(key_ref),
                })
            }
            KeyingMode::Wrapped => {
                let session = SecretBytes::random(2 * SA_KEY_LEN)
                    .map_err(|e| KeyingError::Random(e.to_string()))?;
                let (wrap_ref, wrap) = pool.take(KeyUse::Wrap, WRAP_KEY_LEN)?;
                Ok(Self {
                    keys: SaKeyPair::split(session.expose()),
                    origin: Origin::Wrapped {
                        wrap_ref,
                        wrap_key: Secret::from_slice(wrap.expose()).expect("32 bytes"),
                    },
                })
            }
        }
    }

    pub fn keys(&self) -> &SaKeyPair {
        &self.keys
    }

    /// Pool bytes these keys consumed (what is wasted if they go unused).
    pub fn pool_bytes(&self) -> u64 {
        match self.origin {
            Origin::Direct(_) => DIRECT_TAKE_LEN.into(),
            Origin::Wrapped { .. } => WRAP_KEY_LEN.into(),
        }
    }

    /// What the Start message carries: the reference, or the sealed keys.
    pub fn material(&self, ctx: &WrapContext<'_>) -> KeyMaterial {
        match &self.origin {
            Origin::Direct(key_ref) => KeyMaterial::Direct {
                key_ref: key_ref.clone(),
            },
            Origin::Wrapped { wrap_ref, wrap_key } => KeyMaterial::Wrapped {
                wrap_ref: wrap_ref.clone(),
                sealed: seal(wrap_key, &self.keys, ctx),
            },
        }
    }
}

/// The responder's side: takes the referenced pool bytes and returns the
/// keys. On [`KeyingError::Unwrap`] the wrap key is consumed (wasted).
pub fn accept(
    mode: KeyingMode,
    material: &KeyMaterial,
    ctx: &WrapContext<'_>,
    pool: &mut dyn KeySource,
) -> Result<SaKeyPair, KeyingError> {
    let got = match material {
        KeyMaterial::Direct { .. } => KeyingMode::Direct,
        KeyMaterial::Wrapped { .. } => KeyingMode::Wrapped,
    };
    if got != mode {
        return Err(KeyingError::ModeMismatch { want: mode, got });
    }
    match material {
        KeyMaterial::Direct { key_ref } => {
            let bytes = pool.take_at(key_ref, KeyUse::SaKey)?;
            Ok(SaKeyPair::split(bytes.expose()))
        }
        KeyMaterial::Wrapped { wrap_ref, sealed } => {
            let wrap = pool.take_at(wrap_ref, KeyUse::Wrap)?;
            let wrap_key = Secret::<32>::from_slice(wrap.expose()).ok_or(KeyingError::Unwrap)?;
            open(&wrap_key, sealed, ctx)
        }
    }
}

fn nonce() -> Nonce<aes_gcm::aead::consts::U12> {
    [0u8; 12].into()
}

fn seal(wrap_key: &Secret<32>, keys: &SaKeyPair, ctx: &WrapContext<'_>) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(wrap_key.expose()).expect("32-byte key");
    let mut buf = SecretBytes::zeroed(2 * SA_KEY_LEN);
    buf.expose_mut()[..SA_KEY_LEN].copy_from_slice(keys.initiator_to_responder.expose());
    buf.expose_mut()[SA_KEY_LEN..].copy_from_slice(keys.responder_to_initiator.expose());
    let tag: [u8; TAG_LEN] = cipher
        .encrypt_inout_detached(&nonce(), &ctx.aad(), buf.expose_mut().into())
        .expect("72 bytes are far below the GCM input limit")
        .into();
    let mut sealed = Vec::with_capacity(SEALED_LEN);
    sealed.extend_from_slice(buf.expose());
    sealed.extend_from_slice(&tag);
    sealed
}

fn open(
    wrap_key: &Secret<32>,
    sealed: &[u8],
    ctx: &WrapContext<'_>,
) -> Result<SaKeyPair, KeyingError> {
    if sealed.len() != SEALED_LEN {
        return Err(KeyingError::Unwrap);
    }
    let cipher = Aes256Gcm::new_from_slice(wrap_key.expose()).expect("32-byte key");
    let (body, tag) = sealed.split_at(2 * SA_KEY_LEN);
    let tag = Tag::try_from(tag).map_err(|_| KeyingError::Unwrap)?;
    // Decrypt inside secret memory so the plaintext never sits in a Vec.
    let mut buf = SecretBytes::from_slice(body);
    cipher
        .decrypt_inout_detached(&nonce(), &ctx.aad(), buf.expose_mut().into(), &tag)
        .map_err(|_| KeyingError::Unwrap)?;
    Ok(SaKeyPair::split(buf.expose()))
}
