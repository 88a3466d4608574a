//! The sealed fibre stream: its key schedule and the AES-256-GCM sealing of
//! Fibre frames.
//!
//! A simulated fibre frame names every pulse's bit and basis outright, so
//! in clear it would hand the sifted key — and every pool and SA key made
//! from it — to anyone recording the gateways' TCP traffic. Fibre frames
//! are therefore encrypted and authenticated under keys only the two agents
//! hold. Owns the derivation of those keys, [`FibreSealer`] and
//! [`FibreOpener`], and the lab export of the per-epoch base keys
//! ([`export`]); knows nothing of sockets or of what a pulse record means.
//!
//! Key schedule (HKDF-SHA256, RFC 5869):
//!
//! ```text
//! fibre_base(epoch) = HKDF(IKM = channel key of the epoch, salt = none,
//!                          info = "qkd-ipsec v2 fibre base")
//! fibre_key         = HKDF(IKM = fibre_base, salt = dialer nonce ‖ acceptor nonce,
//!                          info = "qkd-ipsec v2 fibre dialer->acceptor")
//! ```
//!
//! `fibre_base` is a one-way function of the channel key: exporting it (lab
//! use only, [`export`]) reveals neither the channel key nor the frame MAC
//! keys, so whoever holds it can read and rewrite the fibre but cannot
//! forge one authenticated frame. Both handshake nonces are fresh 256-bit
//! values, so each session has a key of its own. The key of a session comes
//! from the epoch its handshake used and stays for the whole session, also
//! across in-band channel-key switches (the fibre key does not need the
//! switch: a new key takes over at the next session).
//!
//! Frame: header as every frame (16 bytes, [`super::frame`]); the sequence
//! field carries the frame counter `s` (1, 2, 3, ... per session; only the
//! transmitter sends fibre); payload = AES-256-GCM(key, nonce = `s` as u64
//! little-endian ‖ 4 zero bytes, AAD = the 16-byte header, pulse records)
//! ‖ 16-byte tag, and the header's length counts the tag. The receiver
//! accepts a frame only when its tag verifies and its counter is above the
//! last one accepted; anything else (altered, replayed, reordered, forged
//! without the key) fails the session like a bad MAC does. Gaps are allowed:
//! a man in the middle may drop light, as on a real fibre, but not replay
//! or inject it. The transmitter's counters stay below 2^63; the lab
//! eavesdropper, re-sealing what she rewrote, numbers her frames from 2^63
//! up ([`LAB_RESEAL_OFFSET`]) so no nonce is ever used twice under one key.
//!
//! This is computational secrecy: a simulated link's keys are only as
//! secret as the channel key (bootstrap secret or HMAC-era pool key) that
//! the fibre key comes from, never quantum-secure.

pub mod export;

use aes_gcm::aead::KeyInit;
use aes_gcm::{AeadInOut, Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use thiserror::Error;

use super::frame::{FrameHeader, FrameType, HEADER_LEN, RawFrame};
use super::nonce::{NONCE_LEN, session_hkdf};
use crate::secret::{Secret, SecretBytes};

/// Bytes of the GCM tag at the end of every fibre payload (full 128 bits,
/// NIST SP 800-38D §5.2.1.2).
pub const FIBRE_TAG_LEN: usize = 16;
/// Where the lab eavesdropper's re-sealed frame counters start: the
/// transmitter never reaches it, so her nonces never repeat one of its.
pub const LAB_RESEAL_OFFSET: u64 = 1 << 63;

const BASE_INFO: &[u8] = b"qkd-ipsec v2 fibre base";
const KEY_INFO: &[u8] = b"qkd-ipsec v2 fibre dialer->acceptor";

/// Why a fibre frame could not be sealed or opened. Counted and logged by
/// the session; never carries payload or key bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FibreError {
    #[error("{0:?} frame handed to the fibre opener")]
    NotFibre(FrameType),
    #[error("fibre frame of {0} bytes is shorter than its {FIBRE_TAG_LEN}-byte tag")]
    TooShort(usize),
    #[error("fibre frame {got} after frame {last}: replayed or reordered (counters must increase)")]
    Replay { last: u64, got: u64 },
    #[error("fibre frame failed its GCM tag (altered, forged or sealed under another key)")]
    BadTag,
    #[error("fibre frame counter space exhausted; the session must be renewed")]
    Exhausted,
    #[error("fibre payload of {0} bytes does not fit a frame")]
    TooLong(usize),
}

/// The fibre base key of one channel-key epoch.
pub struct FibreBase(Secret<32>);

/// The key shows as `<redacted>`, never its bytes.
impl std::fmt::Debug for FibreBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FibreBase(<redacted>)")
    }
}

impl FibreBase {
    /// `HKDF(IKM = channel key, info = "qkd-ipsec v2 fibre base")`.
    pub fn from_channel_key(channel_key: &SecretBytes) -> Self {
        let hk = Hkdf::<Sha256>::new(None, channel_key.expose());
        let mut out = Secret::<32>::zeroed();
        hk.expand(BASE_INFO, out.expose_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Self(out)
    }

    /// A base read back from a lab export.
    pub fn from_secret(key: Secret<32>) -> Self {
        Self(key)
    }

    /// The bytes, for the lab export only.
    pub(crate) fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }

    /// The session's fibre key, from both handshake nonces (public values
    /// carried in clear by Hello and HelloReply).
    pub fn session_key(
        &self,
        dialer_nonce: &[u8; NONCE_LEN],
        acceptor_nonce: &[u8; NONCE_LEN],
    ) -> FibreKey {
        let hk = session_hkdf(dialer_nonce, acceptor_nonce, self.0.expose());
        let mut out = Secret::<32>::zeroed();
        hk.expand(KEY_INFO, out.expose_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        FibreKey(out)
    }
}

/// One session's fibre key (transmitter → receiver).
pub struct FibreKey(Secret<32>);

/// The key shows as `<redacted>`, never its bytes.
impl std::fmt::Debug for FibreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FibreKey(<redacted>)")
    }
}

impl FibreKey {
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.0.expose()).expect("32-byte key")
    }
}

fn nonce(seq: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&seq.to_le_bytes());
    n.into()
}

/// Seals fibre frames with one session's key and counter.
pub struct FibreSealer {
    key: FibreKey,
    next_seq: u64,
    /// First counter not to use (the transmitter stops below the lab range).
    end: u64,
}

impl std::fmt::Debug for FibreSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FibreSealer")
            .field("key", &self.key)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl FibreSealer {
    /// The transmitter's sealer: counters 1, 2, ... below 2^63.
    pub fn new(key: FibreKey) -> Self {
        Self {
            key,
            next_seq: 1,
            end: LAB_RESEAL_OFFSET,
        }
    }

    /// The lab eavesdropper's sealer: counters from 2^63 up, so her nonces
    /// never repeat the transmitter's under the same key.
    pub fn lab_reseal(key: FibreKey) -> Self {
        Self {
            key,
            next_seq: LAB_RESEAL_OFFSET,
            end: u64::MAX,
        }
    }

    /// The counter the next frame takes.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Encodes one Fibre frame: header, encrypted payload, tag.
    pub fn seal(&mut self, payload: &[u8]) -> Result<Vec<u8>, FibreError> {
        if self.next_seq >= self.end {
            return Err(FibreError::Exhausted);
        }
        let len = payload
            .len()
            .checked_add(FIBRE_TAG_LEN)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(FibreError::TooLong(payload.len()))?;
        let header = FrameHeader {
            frame_type: FrameType::Fibre,
            len,
            seq: self.next_seq,
        }
        .to_bytes();
        let mut out = Vec::with_capacity(HEADER_LEN + len as usize);
        out.extend_from_slice(&header);
        out.extend_from_slice(payload);
        let tag: [u8; FIBRE_TAG_LEN] = self
            .key
            .cipher()
            .encrypt_inout_detached(
                &nonce(self.next_seq),
                &header,
                out[HEADER_LEN..].as_mut().into(),
            )
            .expect("a fibre frame is far below GCM's 2^36-byte input limit")
            .into();
        out.extend_from_slice(&tag);
        self.next_seq += 1;
        Ok(out)
    }
}

/// Opens fibre frames of one session: tag first, then the counter.
pub struct FibreOpener {
    key: FibreKey,
    last_seq: u64,
}

impl std::fmt::Debug for FibreOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FibreOpener")
            .field("key", &self.key)
            .field("last_seq", &self.last_seq)
            .finish()
    }
}

impl FibreOpener {
    pub fn new(key: FibreKey) -> Self {
        Self { key, last_seq: 0 }
    }

    /// The counter of the last frame accepted (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Verifies and decrypts a Fibre frame; returns the pulse-record bytes.
    /// Nothing changes on failure, so a refused frame cannot move the
    /// counter.
    pub fn open(&mut self, frame: &RawFrame<'_>) -> Result<Vec<u8>, FibreError> {
        let header = frame.header;
        if header.frame_type != FrameType::Fibre {
            return Err(FibreError::NotFibre(header.frame_type));
        }
        let body_len = frame
            .payload
            .len()
            .checked_sub(FIBRE_TAG_LEN)
            .ok_or(FibreError::TooShort(frame.payload.len()))?;
        let (body, tag) = frame.payload.split_at(body_len);
        let tag = Tag::try_from(tag).map_err(|_| FibreError::BadTag)?;
        let mut plain = body.to_vec();
        self.key
            .cipher()
            .decrypt_inout_detached(
                &nonce(header.seq),
                &frame.authenticated_bytes[..HEADER_LEN],
                plain.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| FibreError::BadTag)?;
        // Checked after the tag, so only the key holder can move the
        // counter, and a forged frame is reported as a forgery.
        if header.seq <= self.last_seq {
            return Err(FibreError::Replay {
                last: self.last_seq,
                got: header.seq,
            });
        }
        self.last_seq = header.seq;
        Ok(plain)
    }
}

#[cfg(test)]
#[path = "fibre_tests.rs"]
mod tests;
