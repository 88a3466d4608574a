//! One hop of a relayed key: the header every hop message carries, the
//! one-time pad and Wegman–Carter tag that protect it, and the refusal
//! that travels back when a hop cannot go on.
//!
//! A hop message from node `path[hop]` to `path[hop + 1]` carries a share
//! of the end-to-end key `K` (all of `K` on a single path) XORed with `L`,
//! fresh bytes of the two nodes' own pool, and a tag over everything else
//! in the message keyed with the 32 pool bytes that follow `L`:
//!
//! ```text
//! header:  key_id (16) | share (1) | shares (1) | hop (1) | path (count, names) | len (4)
//! pad:     KeyRef of len + 32 bytes in the hop's pool (L, then the tag key)
//! sealed:  share ⊕ L  (len bytes)
//! tag:     WC_{k}(header | pad | sealed)  (16 bytes)
//! ```
//!
//! The header names the relay (key ID and share), source and destination
//! (first and last node of `path`), the hop number and the length; the pad
//! reference is covered too, so an attacker can neither move the message
//! onto other pad bytes nor change what it claims to be. `L` and the tag key
//! are taken once by the sender ([`crate::keys::KeyPool::take`]) and once by
//! the receiver ([`crate::keys::KeyPool::take_at`], which refuses bytes
//! already consumed), so a replayed or retried message can never be opened
//! with the same pad twice: a retry is a new message with fresh pad.
//!
//! The receiver checks the tag before it uses the pad (constant-time
//! compare); decoding is bounded and never panics.

use thiserror::Error;
use uuid::Uuid;

use crate::config::check_name;
use crate::keys::KeyRef;
use crate::qkd::auth::{AuthTag, OneTimeTagKey, TAG_BYTES, TAG_KEY_BYTES};
use crate::qkd::wire::{WireError, WireReader, WireWriter};
use crate::secret::SecretBytes;

/// Most nodes on a path (source and destination included).
pub const MAX_PATH_NODES: usize = 16;
/// Most shares one key is split into (one per node-disjoint path).
pub const MAX_SHARES: u8 = 8;
/// Largest relayed key (bytes).
pub const MAX_RELAYED_KEY_BYTES: u32 = 4096;
/// Longest refusal reason carried back.
pub const MAX_REASON_BYTES: usize = 256;
/// Longest node name on the wire (the config allows fewer).
const MAX_NODE_NAME: usize = 64;

/// Pool bytes a hop of a `len`-byte share consumes on each end: the pad,
/// then the tag key.
pub fn pad_len(len: u32) -> u32 {
    len + TAG_KEY_BYTES as u32
}

/// Why a hop message is refused. Never carries key bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HopError {
    #[error("malformed relay message: {0}")]
    Wire(#[from] WireError),
    #[error("relay message refused: {0}")]
    Invalid(String),
    #[error(
        "the relay message's Wegman-Carter tag does not match: altered on the hop, or the \
         two ends' pools disagree; its pad is consumed and the share is dropped"
    )]
    Tag,
}

/// What a hop message says about itself; all of it is authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayHeader {
    /// The end-to-end key's ID (the ID both ends file it under).
    pub key_id: Uuid,
    /// Which share of the key this is, `0..shares`.
    pub share: u8,
    /// How many shares the key was split into (1 on a single path).
    pub shares: u8,
    /// The whole path, source first, destination last.
    pub path: Vec<String>,
    /// Index in `path` of the node that sends this message.
    pub hop: u8,
    /// Share length in bytes.
    pub len: u32,
}

impl RelayHeader {
    pub fn source(&self) -> &str {
        &self.path[0]
    }

    pub fn destination(&self) -> &str {
        self.path.last().expect("validated: at least two nodes")
    }

    /// The node sending this hop.
    pub fn sender(&self) -> &str {
        &self.path[usize::from(self.hop)]
    }

    /// The node receiving this hop.
    pub fn receiver(&self) -> &str {
        &self.path[usize::from(self.hop) + 1]
    }

    /// Whether the receiver is the destination.
    pub fn last_hop(&self) -> bool {
        usize::from(self.hop) + 2 == self.path.len()
    }

    /// The same relay one hop further on.
    pub fn next_hop(&self) -> Self {
        Self {
            hop: self.hop + 1,
            ..self.clone()
        }
    }

    fn encode(&self, w: &mut WireWriter) {
        w.u64(self.key_id.as_u64_pair().0)
            .u64(self.key_id.as_u64_pair().1)
            .u8(self.share)
            .u8(self.shares)
            .u8(self.hop);
        encode_path(w, &self.path);
        w.u32(self.len);
    }

    fn decode(r: &mut WireReader<'_>) -> Result<Self, HopError> {
        let hi = r.u64("relay key ID")?;
        let lo = r.u64("relay key ID")?;
        let share = r.u8("relay share")?;
        let shares = r.u8("relay shares")?;
        let hop = r.u8("relay hop")?;
        let path = decode_path(r)?;
        let len = r.u32("relay length")?;
        let h = Self {
            key_id: Uuid::from_u64_pair(hi, lo),
            share,
            shares,
            path,
            hop,
            len,
        };
        h.validate()?;
        Ok(h)
    }

    /// The checks every node makes before it takes any pad.
    pub fn validate(&self) -> Result<(), HopError> {
        if self.shares == 0 || self.shares > MAX_SHARES || self.share >= self.shares {
            return Err(HopError::Invalid(format!(
                "share {} of {}: 1 to {MAX_SHARES} shares expected",
                self.share, self.shares
            )));
        }
        if usize::from(self.hop) + 1 >= self.path.len() {
            return Err(HopError::Invalid(format!(
                "hop {} on a path of {} nodes",
                self.hop,
                self.path.len()
            )));
        }
        if self.len == 0 || self.len > MAX_RELAYED_KEY_BYTES {
            return Err(HopError::Invalid(format!(
                "{} bytes: 1 to {MAX_RELAYED_KEY_BYTES} expected",
                self.len
            )));
        }
        Ok(())
    }
}

fn encode_path(w: &mut WireWriter, path: &[String]) {
    w.u32(path.len() as u32);
    for n in path {
        w.bytes(n.as_bytes());
    }
}

/// A path of 2 to [`MAX_PATH_NODES`] valid, distinct node names.
fn decode_path(r: &mut WireReader<'_>) -> Result<Vec<String>, HopError> {
    let n = r.count("relay path", MAX_PATH_NODES)?;
    let mut path = Vec::with_capacity(n);
    for _ in 0..n {
        let raw = r.bytes("relay node", MAX_NODE_NAME)?;
        let name = std::str::from_utf8(raw).map_err(|_| WireError::Invalid("relay node"))?;
        check_name(name).map_err(HopError::Invalid)?;
        if path.iter().any(|p: &String| p == name) {
            return Err(HopError::Invalid(format!("{name} twice on the path")));
        }
        path.push(name.to_string());
    }
    if path.len() < 2 {
        return Err(HopError::Invalid("a path needs two nodes".into()));
    }
    Ok(path)
}

/// One hop's message.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayHop {
    pub header: RelayHeader,
    /// Where in the hop's pool the pad and tag key are.
    pub pad: KeyRef,
    /// The share XORed with the pad. Public.
    pub sealed: Vec<u8>,
    pub tag: AuthTag,
}

/// Shows the header, never the sealed bytes (harmless, but no need).
impl std::fmt::Debug for RelayHop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHop")
            .field("header", &self.header)
            .field("pad_bytes", &self.pad.len())
            .finish_non_exhaustive()
    }
}

impl RelayHop {
    /// Seals `share` for one hop with `pad` ([`pad_len`] bytes taken from
    /// the hop's pool at `pad_ref`). The pad is consumed.
    pub fn seal(
        header: RelayHeader,
        share: &SecretBytes,
        pad_ref: KeyRef,
        pad: SecretBytes,
    ) -> Result<Self, HopError> {
        header.validate()?;
        let len = header.len as usize;
        if share.len() != len || pad.len() != pad_len(header.len) as usize {
            return Err(HopError::Invalid(format!(
                "share of {} bytes and pad of {} for a {len}-byte hop",
                share.len(),
                pad.len()
            )));
        }
        let (otp, tag_key) = split_pad(pad, len);
        let sealed: Vec<u8> = share
            .expose()
            .iter()
            .zip(otp.expose())
            .map(|(k, l)| k ^ l)
            .collect();
        let mut hop = Self {
            header,
            pad: pad_ref,
            sealed,
            tag: AuthTag([0; TAG_BYTES]),
        };
        hop.tag = tag_key.tag(&hop.authenticated());
        Ok(hop)
    }

    /// Checks the tag with `pad` (the same bytes the sender took, taken here
    /// at [`Self::pad`]) and returns the share. The pad is consumed either
    /// way.
    pub fn open(&self, pad: SecretBytes) -> Result<SecretBytes, HopError> {
        let len = self.header.len as usize;
        if self.sealed.len() != len || pad.len() != pad_len(self.header.len) as usize {
            return Err(HopError::Invalid("pad or share of the wrong length".into()));
        }
        let (otp, tag_key) = split_pad(pad, len);
        tag_key
            .verify(&self.authenticated(), &self.tag)
            .map_err(|_| HopError::Tag)?;
        let mut share = SecretBytes::zeroed(len);
        for ((s, c), l) in share
            .expose_mut()
            .iter_mut()
            .zip(&self.sealed)
            .zip(otp.expose())
        {
            *s = c ^ l;
        }
        Ok(share)
    }

    /// Header, pad reference and sealed share: what the tag covers.
    fn authenticated(&self) -> Vec<u8> {
        let mut w = WireWriter::with_capacity(128 + self.sealed.len());
        self.header.encode(&mut w);
        self.pad.encode(&mut w);
        w.bytes(&self.sealed);
        w.finish()
    }

    pub fn encode(&self, w: &mut WireWriter) {
        self.header.encode(w);
        self.pad.encode(w);
        w.bytes(&self.sealed);
        let t = u128::from_le_bytes(self.tag.0);
        w.u64(t as u64).u64((t >> 64) as u64);
    }

    pub fn decode(r: &mut WireReader<'_>) -> Result<Self, HopError> {
        let header = RelayHeader::decode(r)?;
        let pad = KeyRef::decode(r)?;
        let sealed = r
            .bytes("relay share", MAX_RELAYED_KEY_BYTES as usize)?
            .to_vec();
        let lo = r.u64("relay tag")?;
        let hi = r.u64("relay tag")?;
        if sealed.len() != header.len as usize || pad.len() != u64::from(pad_len(header.len)) {
            return Err(HopError::Invalid(format!(
                "{} sealed bytes and {} pad bytes for a {}-byte share",
                sealed.len(),
                pad.len(),
                header.len
            )));
        }
        Ok(Self {
            header,
            pad,
            sealed,
            tag: AuthTag((u128::from(lo) | u128::from(hi) << 64).to_le_bytes()),
        })
    }
}

/// The first `len` bytes (the one-time pad) and the tag key after them.
fn split_pad(pad: SecretBytes, len: usize) -> (SecretBytes, OneTimeTagKey) {
    let otp = SecretBytes::from_slice(&pad.expose()[..len]);
    let key = SecretBytes::from_slice(&pad.expose()[len..]);
    (
        otp,
        OneTimeTagKey::new(key).expect("pad_len leaves TAG_KEY_BYTES"),
    )
}

/// "This share goes no further": sent back along the path, from the node
/// that refused, to the source. Carries no key material; the peer channel
/// authenticates each hop of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRefusal {
    pub key_id: Uuid,
    pub share: u8,
    pub path: Vec<String>,
    /// Index in `path` of the node that refused.
    pub at: u8,
    pub reason: String,
}

impl RelayRefusal {
    pub fn source(&self) -> &str {
        &self.path[0]
    }

    /// The node that refused.
    pub fn refused_by(&self) -> &str {
        &self.path[usize::from(self.at)]
    }

    pub fn encode(&self, w: &mut WireWriter) {
        let (hi, lo) = self.key_id.as_u64_pair();
        w.u64(hi).u64(lo).u8(self.share).u8(self.at);
        encode_path(w, &self.path);
        // Cut to the limit on a character boundary.
        let mut end = self.reason.len().min(MAX_REASON_BYTES);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        w.bytes(&self.reason.as_bytes()[..end]);
    }

    pub fn decode(r: &mut WireReader<'_>) -> Result<Self, HopError> {
        let hi = r.u64("refusal key ID")?;
        let lo = r.u64("refusal key ID")?;
        let share = r.u8("refusal share")?;
        let at = r.u8("refusal node")?;
        let path = decode_path(r)?;
        if usize::from(at) >= path.len() || at == 0 {
            return Err(HopError::Invalid(format!(
                "refusal by node {at} of a {}-node path",
                path.len()
            )));
        }
        let reason = std::str::from_utf8(r.bytes("refusal reason", MAX_REASON_BYTES)?)
            .map_err(|_| WireError::Invalid("refusal reason"))?
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Ok(Self {
            key_id: Uuid::from_u64_pair(hi, lo),
            share,
            path,
            at,
            reason,
        })
    }
}

#[cfg(test)]
#[path = "hop_tests.rs"]
mod tests;
