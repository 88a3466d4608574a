//! Authentication of the classical channel: one Wegman–Carter tag from each
//! side over the block's whole transcript, each with one-time key material.
//!
//! Both state machines append every message they send or receive to a
//! [`Transcript`]. At the end of the block each side takes the block's
//! authentication key from an [`AuthKeySource`] in lockstep (Alice's tag key
//! first, then Bob's), sends its own tag, and checks the peer's tag against
//! its own transcript. Any difference between what Alice and Bob saw makes
//! a check fail, and a block whose check fails must yield no key.
//!
//! This module owns the transcript encoding, the tag, the key-source trait
//! and an in-memory source. It does not decide what the driver does with a
//! failed block, and holds key bytes only in `crate::secret` types.
//!
//! # Tag and security bound
//!
//! A tag key is 32 fresh bytes: a hash point `k` (16 bytes) and a pad `r`
//! (16 bytes), both read as little-endian GF(2^128) elements. For a
//! transcript `T` of `B` bytes, split into `⌈B/16⌉` little-endian blocks
//! (the last zero-padded) followed by one block holding `B`,
//!
//! ```text
//! tag = H_k(T) ⊕ r,   H_k(m_1 … m_L) = Σ_{i=1}^{L} m_i · k^{L+1−i},  L = ⌈B/16⌉ + 1
//! ```
//!
//! (Wegman and Carter, "New hash functions and their use in authentication
//! and set equality", JCSS 22, 1981; polynomial evaluation hash as in
//! Bernstein, "The Poly1305-AES message-authentication code", FSE 2005.)
//!
//! `H` is ε-almost-XOR-universal with ε = L/2^128: for transcripts `T ≠ T'`
//! (of up to `L` blocks) and any `c`, `H_k(T) ⊕ H_k(T') ⊕ c` is a polynomial
//! in `k` with no constant term from `H`, of degree ≤ L, and nonzero — the
//! block sequences differ because the encoding is injective (different
//! lengths differ in the final length block, the coefficient of `k^1`).
//! So it has at most `L` roots and `Pr_k[H_k(T) ⊕ H_k(T') = c] ≤ L/2^128`.
//! The pad `r` is uniform and used once, so the tag an attacker sees tells
//! it nothing about `k`; substituting `(T', tag')` for `(T, tag)` succeeds
//! only if `H_k(T) ⊕ H_k(T') = tag ⊕ tag'`, with probability ≤ L/2^128:
//!
//! ```text
//! ε_auth(B) = (⌈B/16⌉ + 1) / 2^128   per tag, B = transcript bytes
//! ```
//!
//! (≈ 2^−102 at the default 1 GiB transcript limit). Keys taken from earlier
//! QKD output are ε_sec-close to uniform rather than uniform, which adds
//! their ε_sec to the composed bound. Each block consumes
//! [`AUTH_KEY_BITS_PER_BLOCK`] = 512 bits, which the driver subtracts from
//! the block's net output.

use std::collections::VecDeque;

use thiserror::Error;
use zeroize::Zeroize;

use super::wire::{WireError, WireReader};
use crate::gf2::{ClmulBackend, Gf128, poly_hash};
use crate::secret::{Secret, SecretBytes};

/// First byte of an encoded [`AuthTag`] message.
pub const AUTH_TAG_KIND: u8 = 0x41;
/// Bytes of one tag.
pub const TAG_BYTES: usize = 16;
/// One-time key bytes per tag: hash point (16) + pad (16).
pub const TAG_KEY_BYTES: usize = 32;
/// Key bytes per block: Alice's tag key, then Bob's.
pub const AUTH_KEY_BYTES_PER_BLOCK: usize = 2 * TAG_KEY_BYTES;
/// Key bits per block, to subtract from the block's net output.
pub const AUTH_KEY_BITS_PER_BLOCK: u64 = 8 * AUTH_KEY_BYTES_PER_BLOCK as u64;
/// Default transcript limit (1 GiB), which bounds ε_auth at about 2^−102.
pub const MAX_TRANSCRIPT_BYTES: usize = 1 << 30;

/// Why authentication failed or could not run.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "authentication key exhausted: {needed} bytes needed, {available} left; \
         replenish the source from the next block's key or re-bootstrap"
    )]
    KeyExhausted { needed: usize, available: usize },
    #[error(
        "the peer's authentication tag does not match this side's transcript: \
         the classical channel was tampered with or the transcripts diverged; \
         the block must yield no key"
    )]
    TagMismatch,
    #[error("the transcript would exceed its limit of {limit} bytes; the block must be aborted")]
    TranscriptTooLong { limit: usize },
    #[error("message kind {0:#04x} is not an authentication tag")]
    Kind(u8),
    #[error("malformed authentication tag: {0}")]
    Wire(#[from] WireError),
}

/// Which side of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Alice,
    Bob,
}

/// Who sent a transcript entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    AliceToBob = 0,
    BobToAlice = 1,
}

impl Role {
    /// Direction of messages this side sends.
    pub fn sending(self) -> Direction {
        match self {
            Role::Alice => Direction::AliceToBob,
            Role::Bob => Direction::BobToAlice,
        }
    }

    /// Direction of messages this side receives.
    pub fn receiving(self) -> Direction {
        match self {
            Role::Alice => Direction::BobToAlice,
            Role::Bob => Direction::AliceToBob,
        }
    }
}

/// Every classical message of one block, both directions, in protocol
/// order. Each entry is `direction (1 byte) ‖ length (u64 LE) ‖ message`,
/// an injective encoding of the message sequence. Messages are public, so
/// the transcript is ordinary memory; `Debug` shows sizes only.
///
/// Both sides must append in the same order. The stages are
/// request/response, so "append on send, append on receive" gives both
/// sides the same sequence.
#[derive(Clone, PartialEq, Eq)]
pub struct Transcript {
    bytes: Vec<u8>,
    messages: usize,
    limit: usize,
}

impl std::fmt::Debug for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Transcript({} messages, {} bytes)",
            self.messages,
            self.bytes.len()
        )
    }
}

impl Default for Transcript {
    fn default() -> Self {
        Self::new()
    }
}

impl Transcript {
    /// An empty transcript with the default limit.
    pub fn new() -> Self {
        Self::with_limit(MAX_TRANSCRIPT_BYTES)
    }

    /// An empty transcript that refuses to grow past `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            messages: 0,
            limit,
        }
    }

    /// Appends one message.
    pub fn record(&mut self, direction: Direction, message: &[u8]) -> Result<(), AuthError> {
        let entry = 1 + 8 + message.len();
        if self.bytes.len().saturating_add(entry) > self.limit {
            return Err(AuthError::TranscriptTooLong { limit: self.limit });
        }
        self.bytes.push(direction as u8);
        self.bytes
            .extend_from_slice(&(message.len() as u64).to_le_bytes());
        self.bytes.extend_from_slice(message);
        self.messages += 1;
        Ok(())
    }

    /// Appends a message `role` sent.
    pub fn record_sent(&mut self, role: Role, message: &[u8]) -> Result<(), AuthError> {
        self.record(role.sending(), message)
    }

    /// Appends a message `role` received.
    pub fn record_received(&mut self, role: Role, message: &[u8]) -> Result<(), AuthError> {
        self.record(role.receiving(), message)
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Hash blocks `L = ⌈B/16⌉ + 1` (data plus the length block).
    pub fn hash_blocks(&self) -> u64 {
        self.bytes.len().div_ceil(16) as u64 + 1
    }

    /// ε_auth for a tag over this transcript: `L / 2^128`.
    pub fn forgery_bound(&self) -> f64 {
        self.hash_blocks() as f64 * 2f64.powi(-128)
    }
}

#[cfg(test)]
impl Transcript {
    fn hash(&self, backend: ClmulBackend, point: Gf128) -> Gf128 {
        hash_bytes(backend, point, &self.bytes)
    }
}

/// `H_k(m)`: `m` in little-endian 16-byte blocks (the last zero-padded),
/// then one block holding its length (see the module docs).
fn hash_bytes(backend: ClmulBackend, point: Gf128, bytes: &[u8]) -> Gf128 {
    let chunks = bytes.chunks(16).map(|c| {
        let mut block = [0u8; 16];
        block[..c.len()].copy_from_slice(c);
        u128::from_le_bytes(block)
    });
    let length = std::iter::once(bytes.len() as u128);
    poly_hash(backend, point, chunks.chain(length))
}

/// Where one-time authentication key comes from. Both peers take the same
/// amounts in the same order, so they read the same bytes; an
/// implementation must never hand out the same bytes twice and must fail
/// rather than wrap around.
pub trait AuthKeySource {
    /// The next `len` bytes of authentication key.
    fn take(&mut self, len: usize) -> Result<SecretBytes, AuthError>;
    /// Bytes that can still be taken.
    fn available(&self) -> usize;
}

/// An [`AuthKeySource`] in memory: starts from a pre-shared bootstrap secret
/// and is replenished from final keys by the driver. Bytes are zeroised in
/// place as soon as they are taken.
pub struct InMemoryAuthKeys {
    chunks: VecDeque<SecretBytes>,
    /// Bytes of the front chunk already taken.
    front_taken: usize,
    available: usize,
    consumed: u64,
}

impl std::fmt::Debug for InMemoryAuthKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InMemoryAuthKeys(<redacted>, {} bytes available, {} consumed)",
            self.available, self.consumed
        )
    }
}

impl InMemoryAuthKeys {
    /// Starts from the pre-shared bootstrap secret.
    pub fn from_bootstrap(secret: SecretBytes) -> Self {
        let mut s = Self {
            chunks: VecDeque::new(),
            front_taken: 0,
            available: 0,
            consumed: 0,
        };
        s.replenish(secret);
        s
    }

    /// Appends fresh key (e.g. part of a block's final key, identical on
    /// both sides and appended at the same point of the protocol).
    pub fn replenish(&mut self, key: SecretBytes) {
        if !key.is_empty() {
            self.available += key.len();
            self.chunks.push_back(key);
        }
    }

    /// Total bytes taken so far: the offset the next `take` starts at.
    pub fn consumed_bytes(&self) -> u64 {
        self.consumed
    }
}

impl AuthKeySource for InMemoryAuthKeys {
    fn take(&mut self, len: usize) -> Result<SecretBytes, AuthError> {
        if len > self.available {
            return Err(AuthError::KeyExhausted {
                needed: len,
                available: self.available,
            });
        }
        let mut out = SecretBytes::zeroed(len);
        let mut filled = 0;
        while filled < len {
            let front = self
                .chunks
                .front_mut()
                .expect("available counts chunk bytes");
            let n = (front.len() - self.front_taken).min(len - filled);
            let taken = &mut front.expose_mut()[self.front_taken..self.front_taken + n];
            out.expose_mut()[filled..filled + n].copy_from_slice(taken);
            taken.zeroize();
            filled += n;
            self.front_taken += n;
            if self.front_taken == front.len() {
                self.chunks.pop_front();
                self.front_taken = 0;
            }
        }
        self.available -= len;
        self.consumed += len as u64;
        Ok(out)
    }

    fn available(&self) -> usize {
        self.available
    }
}

/// A tag as sent on the wire. Public.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthTag(pub [u8; TAG_BYTES]);

impl AuthTag {
    /// Kind byte, then the 16 tag bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + TAG_BYTES);
        v.push(AUTH_TAG_KIND);
        v.extend_from_slice(&self.0);
        v
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, AuthError> {
        let mut r = WireReader::new(bytes);
        let kind = r.u8("tag kind")?;
        if kind != AUTH_TAG_KIND {
            return Err(AuthError::Kind(kind));
        }
        let lo = r.u64("tag")?;
        let hi = r.u64("tag")?;
        r.finish()?;
        Ok(Self((u128::from(lo) | u128::from(hi) << 64).to_le_bytes()))
    }
}

/// One-time key of one tag: hash point then pad. Consumed by the one tag it
/// makes.
struct TagKey(SecretBytes);

impl TagKey {
    fn tag(self, backend: ClmulBackend, transcript: &Transcript) -> Secret<TAG_BYTES> {
        self.tag_bytes(backend, &transcript.bytes)
    }

    fn tag_bytes(self, backend: ClmulBackend, message: &[u8]) -> Secret<TAG_BYTES> {
        let key = self.0.expose();
        let point = Gf128(u128::from_le_bytes(key[..16].try_into().expect("16 bytes")));
        let pad = u128::from_le_bytes(key[16..].try_into().expect("16 bytes"));
        let tag = (hash_bytes(backend, point, message).0 ^ pad).to_le_bytes();
        Secret::from_slice(&tag).expect("16 bytes")
    }
}

/// A Wegman–Carter key for exactly one message outside a QKD block (a
/// relayed key's hop, [`crate::relay`]): [`TAG_KEY_BYTES`] fresh bytes,
/// consumed by the one tag it makes or checks. Same tag and bound as the
/// block tags: ε = (⌈B/16⌉ + 1) / 2^128 for a message of B bytes.
pub struct OneTimeTagKey(TagKey);

impl std::fmt::Debug for OneTimeTagKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneTimeTagKey(<redacted>)")
    }
}

impl OneTimeTagKey {
    /// `None` unless `key` is exactly [`TAG_KEY_BYTES`] long.
    pub fn new(key: SecretBytes) -> Option<Self> {
        (key.len() == TAG_KEY_BYTES).then(|| Self(TagKey(key)))
    }

    /// The tag of `message`.
    pub fn tag(self, message: &[u8]) -> AuthTag {
        AuthTag(*self.0.tag_bytes(ClmulBackend::detect(), message).expose())
    }

    /// Checks `received` against `message` in constant time.
    pub fn verify(self, message: &[u8], received: &AuthTag) -> Result<(), AuthError> {
        let expected = self.0.tag_bytes(ClmulBackend::detect(), message);
        if crate::secret::ct_eq(expected.expose(), &received.0) {
            Ok(())
        } else {
            Err(AuthError::TagMismatch)
        }
    }
}

/// The authentication keys of one block for one side.
pub struct BlockAuthenticator {
    role: Role,
    own: TagKey,
    peer: TagKey,
}

impl std::fmt::Debug for BlockAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockAuthenticator({:?}, <redacted keys>)", self.role)
    }
}

impl BlockAuthenticator {
    /// Takes this block's [`AUTH_KEY_BYTES_PER_BLOCK`] from `keys`: Alice's
    /// tag key first, then Bob's, whatever `role` is, so both peers read
    /// the same bytes. Both must call this once per block, at the same point
    /// (including for aborted blocks), or their sources drift apart.
    pub fn take<S: AuthKeySource + ?Sized>(role: Role, keys: &mut S) -> Result<Self, AuthError> {
        if keys.available() < AUTH_KEY_BYTES_PER_BLOCK {
            return Err(AuthError::KeyExhausted {
                needed: AUTH_KEY_BYTES_PER_BLOCK,
                available: keys.available(),
            });
        }
        let alice = TagKey(keys.take(TAG_KEY_BYTES)?);
        let bob = TagKey(keys.take(TAG_KEY_BYTES)?);
        let (own, peer) = match role {
            Role::Alice => (alice, bob),
            Role::Bob => (bob, alice),
        };
        Ok(Self { role, own, peer })
    }

    /// Key bits this block consumed.
    pub fn key_bits_consumed(&self) -> u64 {
        AUTH_KEY_BITS_PER_BLOCK
    }

    /// Tags `transcript` with this side's key (send the returned tag) and
    /// prepares the check of the peer's tag over the same transcript. Both
    /// keys are consumed, so neither can tag a second transcript.
    pub fn finish(self, transcript: &Transcript) -> (AuthTag, PeerTagCheck) {
        let backend = ClmulBackend::detect();
        let own = self.own.tag(backend, transcript);
        let expected = self.peer.tag(backend, transcript);
        (AuthTag(*own.expose()), PeerTagCheck { expected })
    }
}

/// The tag the peer must send. Kept secret until compared: it would let an
/// attacker who altered this side's transcript forge the peer's tag.
pub struct PeerTagCheck {
    expected: Secret<TAG_BYTES>,
}

impl std::fmt::Debug for PeerTagCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTagCheck(<redacted>)")
    }
}

impl PeerTagCheck {
    /// Compares in constant time. `Err(TagMismatch)`: the block yields no
    /// key.
    pub fn verify(self, received: &AuthTag) -> Result<(), AuthError> {
        if crate::secret::ct_eq(self.expected.expose(), &received.0) {
            Ok(())
        } else {
            Err(AuthError::TagMismatch)
        }
    }
}

#[cfg(test)]
mod tests;
