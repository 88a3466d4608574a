//! The frame codec: header layout, length bounds, MAC and sequence checks.
//!
//! Pure functions and two small stateful types ([`Sealer`], [`Opener`]); no
//! sockets, no tokio, so every rule is tested on byte buffers. Owns the wire
//! format of one frame (see the [`super`] module doc for the byte layout);
//! knows nothing of handshakes, keys' origins or what payloads mean.
//!
//! Decoding treats its input as hostile: the 16-byte header is checked
//! (magic, version, type, length against the per-type limit, sequence field)
//! *before* the caller waits for or allocates the body, and "not enough bytes
//! yet" is [`Split::Incomplete`], never an error.

use hmac::{KeyInit, Mac};
use thiserror::Error;

use crate::secret::Secret;

/// Bytes of the fixed frame header.
pub const HEADER_LEN: usize = 16;
/// Bytes of the HMAC-SHA256 tag that ends every authenticated frame
/// (RFC 2104, full 256-bit output, no truncation).
pub const TAG_LEN: usize = 32;
/// First two bytes of every frame, "QK": makes captures easy to spot and
/// rejects most stray traffic at the first read.
pub const MAGIC: [u8; 2] = *b"QK";
/// The only wire version this code speaks. A change of header, handshake or
/// key schedule bumps it; a peer speaking another version is refused.
/// Version 2 seals the fibre stream ([`super::fibre`]); version 1 sent it
/// in clear.
pub const VERSION: u8 = 2;
/// Largest handshake payload (two 64-byte names, epoch, nonce, tag fit with
/// room to spare); fixed, because it is enforced before the peer is known.
pub const MAX_HANDSHAKE_PAYLOAD: u32 = 256;
/// Largest link-internal payload (ping, key switch with a [`KeyRef`] of up to
/// 256 segments of 16 bytes).
///
/// [`KeyRef`]: crate::keys::KeyRef
pub const MAX_LINK_PAYLOAD: u32 = 8 * 1024;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What a frame carries. The numeric codes are the wire values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Handshake 1, dialer → acceptor, unauthenticated.
    Hello,
    /// Handshake 2, acceptor → dialer, carries the acceptor's confirmation.
    HelloReply,
    /// Handshake 3, dialer → acceptor, carries the dialer's confirmation.
    Finish,
    /// Simulated fibre (per-pulse records), transmitter → receiver;
    /// AES-GCM sealed under the session's fibre key ([`super::fibre`]).
    Fibre,
    /// QKD post-processing message, authenticated.
    Qkd,
    /// Rekey / agent control message, authenticated.
    Control,
    /// Link-internal message (keepalive, channel-key switch), authenticated.
    Link,
}

impl FrameType {
    pub fn code(self) -> u8 {
        match self {
            FrameType::Hello => 0x01,
            FrameType::HelloReply => 0x02,
            FrameType::Finish => 0x03,
            FrameType::Fibre => 0x10,
            FrameType::Qkd => 0x11,
            FrameType::Control => 0x12,
            FrameType::Link => 0x13,
        }
    }

    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0x01 => FrameType::Hello,
            0x02 => FrameType::HelloReply,
            0x03 => FrameType::Finish,
            0x10 => FrameType::Fibre,
            0x11 => FrameType::Qkd,
            0x12 => FrameType::Control,
            0x13 => FrameType::Link,
            _ => return None,
        })
    }

    /// Whether the frame ends with a session MAC tag and carries a sequence
    /// number. Handshake frames authenticate through their payload instead;
    /// Fibre frames carry their own GCM tag inside the payload.
    pub fn is_authenticated(self) -> bool {
        matches!(self, FrameType::Qkd | FrameType::Control | FrameType::Link)
    }

    /// Hello, HelloReply, Finish: no session key exists yet, so the
    /// sequence field is 0.
    pub fn is_handshake(self) -> bool {
        matches!(
            self,
            FrameType::Hello | FrameType::HelloReply | FrameType::Finish
        )
    }
}

/// Largest payload accepted per frame type. Checked on the header, before
/// the body is read. Both gateways must use the same values: a sender that
/// allows more than its peer gets its session dropped by an oversized frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Simulated fibre batches (per-pulse records).
    pub fibre: u32,
    /// QKD post-processing messages (Cascade parities, PA seeds, ...).
    pub qkd: u32,
    /// Rekey and agent control messages.
    pub control: u32,
}

impl Default for FrameLimits {
    /// 16 MiB fibre batches, 4 MiB QKD messages, 64 KiB control messages.
    /// A QKD block of 10^6 bits needs ~125 kB per message; a 16 MiB fibre
    /// frame holds a few million pulse records.
    fn default() -> Self {
        Self {
            fibre: 16 << 20,
            qkd: 4 << 20,
            control: 64 << 10,
        }
    }
}

impl FrameLimits {
    pub fn max_payload(&self, t: FrameType) -> u32 {
        match t {
            FrameType::Hello | FrameType::HelloReply | FrameType::Finish => MAX_HANDSHAKE_PAYLOAD,
            FrameType::Fibre => self.fibre,
            FrameType::Qkd => self.qkd,
            FrameType::Control => self.control,
            FrameType::Link => MAX_LINK_PAYLOAD,
        }
    }

    /// Limits for unauthenticated connections: data frames may have no body.
    /// Link frames (≤ 8 KiB) still pass the size check and are refused by
    /// type right after, so a pending handshake buffers at most 8 KiB.
    pub fn handshake_only() -> Self {
        Self {
            fibre: 0,
            qkd: 0,
            control: 0,
        }
    }
}

/// Why a frame was refused. Field-light: these come from the network and are
/// counted and logged, never carry payload or key bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad magic {0:02x?}: not a qkd-ipsec peer frame")]
    BadMagic([u8; 2]),
    #[error("wire version {0} is not supported (this side speaks {VERSION})")]
    BadVersion(u8),
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("{frame_type:?} frame of {len} bytes exceeds the limit of {max}")]
    TooLong {
        frame_type: FrameType,
        len: u32,
        max: u32,
    },
    #[error("{0:?} handshake frame carries a non-zero sequence field")]
    UnexpectedSequence(FrameType),
    #[error("MAC check failed on a {0:?} frame (forged, corrupted or wrong key)")]
    BadMac(FrameType),
    #[error("sequence number {got} where {expected} was due (replayed or reordered frame)")]
    Replay { expected: u64, got: u64 },
    #[error("sequence number space exhausted; the session must be renewed")]
    SequenceExhausted,
}

/// A parsed and bounds-checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub frame_type: FrameType,
    /// Payload bytes (the tag is not included).
    pub len: u32,
    pub seq: u64,
}

impl FrameHeader {
    /// Bytes of the whole frame on the wire: header, payload, tag if any.
    pub fn total_len(&self) -> usize {
        let tag = if self.frame_type.is_authenticated() {
            TAG_LEN
        } else {
            0
        };
        HEADER_LEN + self.len as usize + tag
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = VERSION;
        h[3] = self.frame_type.code();
        h[4..8].copy_from_slice(&self.len.to_le_bytes());
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        h
    }
}

/// Parses and validates a header from the first [`HEADER_LEN`] bytes of
/// `buf`. `Ok(None)` when fewer bytes are there yet.
pub fn parse_header(buf: &[u8], limits: &FrameLimits) -> Result<Option<FrameHeader>, FrameError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        // Reject a wrong magic or version as soon as those bytes are in, so
        // a peer speaking something else fails fast instead of timing out.
        if buf.len() >= 2 && buf[..2] != MAGIC {
            return Err(FrameError::BadMagic([buf[0], buf[1]]));
        }
        return Ok(None);
    };
    if h[0..2] != MAGIC {
        return Err(FrameError::BadMagic([h[0], h[1]]));
    }
    if h[2] != VERSION {
        return Err(FrameError::BadVersion(h[2]));
    }
    let frame_type = FrameType::from_code(h[3]).ok_or(FrameError::UnknownType(h[3]))?;
    let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    let seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let max = limits.max_payload(frame_type);
    if len > max {
        return Err(FrameError::TooLong {
            frame_type,
            len,
            max,
        });
    }
    // Fibre frames carry their counter here; the fibre opener checks it.
    if frame_type.is_handshake() && seq != 0 {
        return Err(FrameError::UnexpectedSequence(frame_type));
    }
    Ok(Some(FrameHeader {
        frame_type,
        len,
        seq,
    }))
}

/// One frame found at the start of a buffer, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawFrame<'a> {
    pub header: FrameHeader,
    /// Header and payload: the bytes the MAC covers.
    pub authenticated_bytes: &'a [u8],
    pub payload: &'a [u8],
    /// Present exactly for authenticated frame types.
    pub tag: Option<&'a [u8]>,
}

impl RawFrame<'_> {
    pub fn total_len(&self) -> usize {
        self.header.total_len()
    }
}

/// Outcome of looking for a frame at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split<'a> {
    /// A whole frame; `total_len()` bytes of the buffer belong to it.
    Frame(RawFrame<'a>),
    /// The frame is not all there; read at least `need` bytes in total
    /// (bounded by the limits, so the caller may reserve that much).
    Incomplete { need: usize },
}

/// Finds the frame at the start of `buf`. Structural checks only (header
/// rules, bounds); MAC and sequence are [`Opener::open`]'s job, the fibre
/// tag and counter [`super::fibre::FibreOpener::open`]'s. This is what
/// a man-in-the-middle tool uses to walk a captured or proxied stream.
pub fn split_frame<'a>(buf: &'a [u8], limits: &FrameLimits) -> Result<Split<'a>, FrameError> {
    let Some(header) = parse_header(buf, limits)? else {
        return Ok(Split::Incomplete { need: HEADER_LEN });
    };
    let total = header.total_len();
    if buf.len() < total {
        return Ok(Split::Incomplete { need: total });
    }
    let body_end = HEADER_LEN + header.len as usize;
    Ok(Split::Frame(RawFrame {
        header,
        authenticated_bytes: &buf[..body_end],
        payload: &buf[HEADER_LEN..body_end],
        tag: header
            .frame_type
            .is_authenticated()
            .then(|| &buf[body_end..total]),
    }))
}

/// Encodes a handshake frame (no session key exists yet).
///
/// # Panics
/// If `frame_type` is not a handshake type (use [`Sealer::seal`] or
/// [`super::fibre::FibreSealer::seal`]) or the payload is longer than
/// `u32::MAX` (callers bound payloads far below that).
pub fn encode_plain(frame_type: FrameType, payload: &[u8]) -> Vec<u8> {
    assert!(
        frame_type.is_handshake(),
        "{frame_type:?} frames must be sealed"
    );
    let header = FrameHeader {
        frame_type,
        len: u32::try_from(payload.len()).expect("payload below 4 GiB"),
        seq: 0,
    };
    let mut out = Vec::with_capacity(header.total_len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    out
}

fn mac(key: &Secret<32>, authenticated_bytes: &[u8]) -> HmacSha256 {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key.expose()).expect("HMAC takes any key");
    m.update(authenticated_bytes);
    m
}

/// One direction's MAC key and the sequence number due next, shared by
/// [`Sealer`] and [`Opener`]. Sequence numbers start at 1 in every session
/// (0 marks frames without a sequence number); session keys are fresh, so
/// numbers never repeat under one key. A channel-key switch replaces the key
/// and the sequence continues.
struct DirectionState {
    key: Secret<32>,
    next_seq: u64,
}

impl DirectionState {
    fn new(key: Secret<32>) -> Self {
        Self { key, next_seq: 1 }
    }

    fn debug(&self, name: &str, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(name)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// The sending half of one direction: MAC key and next sequence number.
pub struct Sealer(DirectionState);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("Sealer", f)
    }
}

impl Sealer {
    pub fn new(key: Secret<32>) -> Self {
        Self(DirectionState::new(key))
    }

    /// Replaces the key (channel-key switch); the sequence continues.
    pub fn rekey(&mut self, key: Secret<32>) {
        self.0.key = key;
    }

    pub fn next_seq(&self) -> u64 {
        self.0.next_seq
    }

    /// Encodes and tags an authenticated frame.
    pub fn seal(&mut self, frame_type: FrameType, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
        assert!(
            frame_type.is_authenticated(),
            "{frame_type:?} is not sealed"
        );
        // u64::MAX is never used so that `next_seq + 1` cannot overflow on
        // the receiving side either.
        if self.0.next_seq == u64::MAX {
            return Err(FrameError::SequenceExhausted);
        }
        let header = FrameHeader {
            frame_type,
            len: u32::try_from(payload.len()).expect("payload below 4 GiB"),
            seq: self.0.next_seq,
        };
        let mut out = Vec::with_capacity(header.total_len());
        out.extend_from_slice(&header.to_bytes());
        out.extend_from_slice(payload);
        let tag = mac(&self.0.key, &out).finalize().into_bytes();
        out.extend_from_slice(&tag);
        self.0.next_seq += 1;
        Ok(out)
    }
}

/// The receiving half of one direction: MAC key and the sequence number due.
pub struct Opener(DirectionState);

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.debug("Opener", f)
    }
}

impl Opener {
    pub fn new(key: Secret<32>) -> Self {
        Self(DirectionState::new(key))
    }

    /// Replaces the key (channel-key switch); the sequence continues.
    pub fn rekey(&mut self, key: Secret<32>) {
        self.0.key = key;
    }

    pub fn next_seq(&self) -> u64 {
        self.0.next_seq
    }

    /// Verifies an authenticated frame: MAC first (constant time), then the
    /// sequence number, which must be exactly the one due. TCP delivers in
    /// order, so anything else is a replay, a drop or a reorder by someone
    /// in the path. Frames without a session MAC (handshake; Fibre, which
    /// the fibre opener checks) pass through unchanged.
    pub fn open(&mut self, frame: &RawFrame<'_>) -> Result<(), FrameError> {
        let Some(tag) = frame.tag else {
            return Ok(());
        };
        mac(&self.0.key, frame.authenticated_bytes)
            .verify_slice(tag)
            .map_err(|_| FrameError::BadMac(frame.header.frame_type))?;
        if frame.header.seq != self.0.next_seq {
            return Err(FrameError::Replay {
                expected: self.0.next_seq,
                got: frame.header.seq,
            });
        }
        self.0.next_seq = self
            .0
            .next_seq
            .checked_add(1)
            .ok_or(FrameError::SequenceExhausted)?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
