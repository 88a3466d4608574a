//! The session handshake and key schedule, as pure state machines.
//!
//! Owns the three handshake messages (Hello, HelloReply, Finish), the
//! transcript hash, and the HKDF-SHA256 derivation of confirmation and
//! per-direction frame keys (RFC 5869). Takes the channel key as an argument
//! and nonces from the caller (so tests are deterministic); does no I/O and
//! never stores or logs the channel key. The async drivers live in
//! [`super::session`] and [`super::listener`].
//!
//! ```text
//! dialer                                             acceptor
//!   Hello{dialer, acceptor, epoch, Nd}        ───►   look up (dialer, acceptor) and the
//!                                                    channel key of `epoch`
//!                                             ◄───   HelloReply{epoch, Na, HMAC(Kca, th)}
//!   check acceptor's confirmation
//!   Finish{HMAC(Kcd, th)}                     ───►   check dialer's confirmation
//!   frames dialer→acceptor under Kda          ◄──►   frames acceptor→dialer under Kad
//! ```
//!
//! `th = SHA-256("qkd-ipsec/1 transcript" ‖ Hello frame ‖ HelloReply frame
//! without its last 32 bytes)`; `PRK = HKDF-Extract(salt = Nd ‖ Na, IKM =
//! channel key)`; `Kca`, `Kcd`, `Kda`, `Kad` = `HKDF-Expand(PRK, label ‖ th,
//! 32)` with distinct labels (the frame-key labels also carry the epoch).
//! Both nonces are fresh 256-bit random values, so every session has new
//! keys even under an unchanged channel key; the names and the epoch are in
//! the transcript, so a frame or confirmation of one peer pair, direction or
//! epoch is worthless in another. The session's fibre key comes from the
//! same channel key and both nonces, through a one-way base key
//! ([`super::fibre`]).

use hkdf::Hkdf;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::fibre::{FibreBase, FibreKey};
use super::frame::{FrameError, FrameHeader, FrameType, RawFrame, TAG_LEN, encode_plain};
pub use super::nonce::NONCE_LEN;
use super::nonce::session_hkdf;
use crate::qkd::wire::{WireError, WireReader, WireWriter};
use crate::secret::{Secret, SecretBytes};

/// Bytes of each side's handshake nonce (256 bits: collisions between
/// sessions are negligible, NIST SP 800-108 style context freshness).
/// Longest gateway name on the wire.
pub const MAX_NAME_LEN: usize = 64;
/// Bytes of a QKD channel key taken from the pool: a 256-bit HMAC-SHA256
/// key keeps 128-bit security against Grover search.
pub const CHANNEL_KEY_LEN: usize = 32;
/// Shortest bootstrap secret accepted. The acceptor answers any Hello with
/// a MAC under a key derived from the channel key, so a guessable secret
/// could be searched offline; 256 random bits cannot.
pub const MIN_BOOTSTRAP_LEN: usize = 32;

const REPLY_PAYLOAD_LEN: u32 = 8 + NONCE_LEN as u32 + TAG_LEN as u32;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Why a handshake failed. Carries names, epochs and kinds, never key bytes.
#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("bad handshake frame: {0}")]
    Frame(#[from] FrameError),
    #[error("expected a {expected:?} frame, got {got:?}")]
    UnexpectedFrame { expected: FrameType, got: FrameType },
    #[error("malformed handshake message: {0}")]
    Malformed(#[from] WireError),
    #[error("gateway name is empty, longer than {MAX_NAME_LEN} bytes, or not [A-Za-z0-9._-]")]
    BadName,
    #[error(
        "no link from gateway {dialer:?} to {acceptor:?} is configured here; check both sides' gateway and peer names"
    )]
    UnknownPeer { dialer: String, acceptor: String },
    #[error(
        "peer authenticates with channel-key epoch {theirs}, this side holds epoch {current}{}; if one side's state directory was lost, stop both agents and remove the channel-key file on both to return to the bootstrap secret",
        next.map(|n| format!(" (and {n} pending)")).unwrap_or_default()
    )]
    UnknownEpoch {
        theirs: u64,
        current: u64,
        next: Option<u64>,
    },
    #[error("peer answered for channel-key epoch {got}, this side asked for {sent}")]
    EpochMismatch { sent: u64, got: u64 },
    #[error(
        "handshake confirmation failed: the peer does not hold this side's channel key (wrong secret, or an impostor)"
    )]
    BadConfirmation,
    #[error("handshake timed out")]
    Timeout,
    #[error(
        "connection closed during the handshake (a peer that refuses a handshake closes it and logs why: unknown gateway names or channel-key epoch)"
    )]
    Closed,
    #[error("socket error during the handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("no randomness for the handshake nonce: {0}")]
    Random(getrandom::Error),
}

impl HandshakeError {
    /// Whether the failure means "someone could not prove the key" (counted
    /// as an authentication failure) rather than noise or a timeout.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, HandshakeError::BadConfirmation)
    }
}

/// A fresh handshake nonce from the operating system's CSPRNG.
pub fn fresh_nonce() -> Result<[u8; NONCE_LEN], HandshakeError> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(HandshakeError::Random)?;
    Ok(n)
}

/// Checks a gateway name: 1..=64 bytes of `[A-Za-z0-9._-]`, so it is safe to
/// log and compare.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The dialer's opening message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub dialer: String,
    pub acceptor: String,
    /// Channel-key epoch the dialer authenticates with (0 = bootstrap).
    pub epoch: u64,
    pub nonce: [u8; NONCE_LEN],
}

impl Hello {
    fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::new();
        w.bytes(self.dialer.as_bytes())
            .bytes(self.acceptor.as_bytes())
            .u64(self.epoch);
        let mut out = w.finish();
        out.extend_from_slice(&self.nonce);
        out
    }

    /// Decodes and validates a Hello frame.
    pub fn decode(frame: &RawFrame<'_>) -> Result<Self, HandshakeError> {
        expect_type(frame, FrameType::Hello)?;
        let mut r = WireReader::new(frame.payload);
        let dialer = read_name(&mut r, "dialer name")?;
        let acceptor = read_name(&mut r, "acceptor name")?;
        let epoch = r.u64("channel-key epoch")?;
        let nonce = read_array(&mut r, "dialer nonce")?;
        r.finish()?;
        Ok(Self {
            dialer,
            acceptor,
            epoch,
            nonce,
        })
    }
}

fn read_name(r: &mut WireReader<'_>, what: &'static str) -> Result<String, HandshakeError> {
    let raw = r.bytes(what, MAX_NAME_LEN)?;
    let name = std::str::from_utf8(raw).map_err(|_| HandshakeError::BadName)?;
    if !valid_name(name) {
        return Err(HandshakeError::BadName);
    }
    Ok(name.to_owned())
}

fn read_array<const N: usize>(
    r: &mut WireReader<'_>,
    what: &'static str,
) -> Result<[u8; N], WireError> {
    let mut out = [0u8; N];
    for b in &mut out {
        *b = r.u8(what)?;
    }
    Ok(out)
}

fn expect_type(frame: &RawFrame<'_>, expected: FrameType) -> Result<(), HandshakeError> {
    if frame.header.frame_type == expected {
        Ok(())
    } else {
        Err(HandshakeError::UnexpectedFrame {
            expected,
            got: frame.header.frame_type,
        })
    }
}

/// Public values a session's keys are bound to; kept for the whole session
/// so a channel-key switch can derive the next epoch's frame keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionContext {
    pub dialer_nonce: [u8; NONCE_LEN],
    pub acceptor_nonce: [u8; NONCE_LEN],
    pub transcript: [u8; 32],
}

/// The two directions' frame MAC keys of one epoch.
pub struct FrameKeys {
    pub dialer_to_acceptor: Secret<32>,
    pub acceptor_to_dialer: Secret<32>,
}

/// The keys show as `<redacted>`, never their bytes.
impl std::fmt::Debug for FrameKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameKeys")
            .field("dialer_to_acceptor", &format_args!("<redacted>"))
            .field("acceptor_to_dialer", &format_args!("<redacted>"))
            .finish()
    }
}

impl FrameKeys {
    /// `(sending, receiving)` for the given side.
    pub fn for_side(self, dialer: bool) -> (Secret<32>, Secret<32>) {
        if dialer {
            (self.dialer_to_acceptor, self.acceptor_to_dialer)
        } else {
            (self.acceptor_to_dialer, self.dialer_to_acceptor)
        }
    }
}

fn hkdf(channel_key: &SecretBytes, ctx_nonces: (&[u8], &[u8])) -> Hkdf<Sha256> {
    session_hkdf(ctx_nonces.0, ctx_nonces.1, channel_key.expose())
}

fn expand(prk: &Hkdf<Sha256>, parts: &[&[u8]]) -> Secret<32> {
    let mut out = Secret::<32>::zeroed();
    prk.expand_multi_info(parts, out.expose_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// The frame keys of `epoch` under `channel_key` for a session.
pub fn frame_keys(channel_key: &SecretBytes, epoch: u64, ctx: &SessionContext) -> FrameKeys {
    let prk = hkdf(channel_key, (&ctx.dialer_nonce, &ctx.acceptor_nonce));
    let e = epoch.to_le_bytes();
    FrameKeys {
        dialer_to_acceptor: expand(
            &prk,
            &[b"qkd-ipsec/1 frames dialer->acceptor", &e, &ctx.transcript],
        ),
        acceptor_to_dialer: expand(
            &prk,
            &[b"qkd-ipsec/1 frames acceptor->dialer", &e, &ctx.transcript],
        ),
    }
}

/// `(Kca, Kcd)`: the keys of the acceptor's and the dialer's confirmation.
fn confirm_keys(channel_key: &SecretBytes, ctx: &SessionContext) -> (Secret<32>, Secret<32>) {
    let prk = hkdf(channel_key, (&ctx.dialer_nonce, &ctx.acceptor_nonce));
    (
        expand(&prk, &[b"qkd-ipsec/1 confirm acceptor", &ctx.transcript]),
        expand(&prk, &[b"qkd-ipsec/1 confirm dialer", &ctx.transcript]),
    )
}

fn confirmation(key: &Secret<32>, transcript: &[u8; 32]) -> HmacSha256 {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key.expose()).expect("any key length");
    m.update(transcript);
    m
}

fn transcript(hello_frame: &[u8], reply_without_tag: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"qkd-ipsec/1 transcript");
    h.update(hello_frame);
    h.update(reply_without_tag);
    h.finalize().into()
}

/// A completed handshake: what the session needs.
#[derive(Debug)]
pub struct Established {
    /// Channel-key epoch the session authenticated with.
    pub epoch: u64,
    pub context: SessionContext,
    pub keys: FrameKeys,
    /// The fibre key of the whole session (kept across channel-key
    /// switches, see [`super::fibre`]).
    pub fibre: FibreKey,
}

fn fibre_key(channel_key: &SecretBytes, ctx: &SessionContext) -> FibreKey {
    FibreBase::from_channel_key(channel_key).session_key(&ctx.dialer_nonce, &ctx.acceptor_nonce)
}

/// The public fields of a HelloReply frame: the epoch echoed and the
/// acceptor's nonce. For a lab tool that was handed the fibre base keys and
/// derives each session's fibre key from the nonces it sees in clear.
pub fn reply_public_fields(reply: &RawFrame<'_>) -> Result<(u64, [u8; NONCE_LEN]), HandshakeError> {
    expect_type(reply, FrameType::HelloReply)?;
    if reply.header.len != REPLY_PAYLOAD_LEN {
        return Err(WireError::Invalid("HelloReply length").into());
    }
    let mut r = WireReader::new(reply.payload);
    let epoch = r.u64("channel-key epoch")?;
    let nonce = read_array(&mut r, "acceptor nonce")?;
    Ok((epoch, nonce))
}

/// The dialer's side, between sending Hello and receiving HelloReply.
#[derive(Debug)]
pub struct DialerHandshake {
    hello_frame: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    epoch: u64,
}

impl DialerHandshake {
    /// Builds the Hello frame to send.
    pub fn start(hello: Hello) -> Result<(Self, Vec<u8>), HandshakeError> {
        if !valid_name(&hello.dialer) || !valid_name(&hello.acceptor) {
            return Err(HandshakeError::BadName);
        }
        let frame = encode_plain(FrameType::Hello, &hello.encode());
        let this = Self {
            hello_frame: frame.clone(),
            nonce: hello.nonce,
            epoch: hello.epoch,
        };
        Ok((this, frame))
    }

    /// Checks the acceptor's confirmation; returns the Finish frame to send
    /// and the session keys.
    pub fn on_reply(
        self,
        reply: &RawFrame<'_>,
        channel_key: &SecretBytes,
    ) -> Result<(Vec<u8>, Established), HandshakeError> {
        expect_type(reply, FrameType::HelloReply)?;
        if reply.header.len != REPLY_PAYLOAD_LEN {
            return Err(WireError::Invalid("HelloReply length").into());
        }
        let mut r = WireReader::new(reply.payload);
        let epoch = r.u64("channel-key epoch")?;
        let acceptor_nonce = read_array(&mut r, "acceptor nonce")?;
        let tag: [u8; TAG_LEN] = read_array(&mut r, "acceptor confirmation")?;
        r.finish()?;
        if epoch != self.epoch {
            return Err(HandshakeError::EpochMismatch {
                sent: self.epoch,
                got: epoch,
            });
        }
        let reply_bytes = reply.authenticated_bytes;
        let context = SessionContext {
            dialer_nonce: self.nonce,
            acceptor_nonce,
            transcript: transcript(
                &self.hello_frame,
                &reply_bytes[..reply_bytes.len() - TAG_LEN],
            ),
        };
        let (kca, kcd) = confirm_keys(channel_key, &context);
        confirmation(&kca, &context.transcript)
            .verify_slice(&tag)
            .map_err(|_| HandshakeError::BadConfirmation)?;
        let mine = confirmation(&kcd, &context.transcript)
            .finalize()
            .into_bytes();
        let finish = encode_plain(FrameType::Finish, &mine);
        let keys = frame_keys(channel_key, epoch, &context);
        let fibre = fibre_key(channel_key, &context);
        Ok((
            finish,
            Established {
                epoch,
                context,
                keys,
                fibre,
            },
        ))
    }
}

/// The acceptor's side, between sending HelloReply and receiving Finish.
pub struct AcceptorHandshake {
    epoch: u64,
    context: SessionContext,
    dialer_confirm_key: Secret<32>,
    keys: FrameKeys,
    fibre: FibreKey,
}

/// The keys show as `<redacted>`, never their bytes.
impl std::fmt::Debug for AcceptorHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptorHandshake")
            .field("epoch", &self.epoch)
            .field("context", &self.context)
            .field("dialer_confirm_key", &format_args!("<redacted>"))
            .field("keys", &self.keys)
            .field("fibre", &self.fibre)
            .finish()
    }
}

impl AcceptorHandshake {
    /// Answers a Hello (already decoded from `hello_frame`) with the key of
    /// the epoch it names; returns the HelloReply frame to send.
    pub fn respond(
        hello_frame: &RawFrame<'_>,
        hello: &Hello,
        channel_key: &SecretBytes,
        nonce: [u8; NONCE_LEN],
    ) -> (Self, Vec<u8>) {
        let header = FrameHeader {
            frame_type: FrameType::HelloReply,
            len: REPLY_PAYLOAD_LEN,
            seq: 0,
        };
        let mut reply = Vec::with_capacity(header.total_len());
        reply.extend_from_slice(&header.to_bytes());
        reply.extend_from_slice(&hello.epoch.to_le_bytes());
        reply.extend_from_slice(&nonce);
        let context = SessionContext {
            dialer_nonce: hello.nonce,
            acceptor_nonce: nonce,
            transcript: transcript(hello_frame.authenticated_bytes, &reply),
        };
        let (kca, kcd) = confirm_keys(channel_key, &context);
        reply.extend_from_slice(
            &confirmation(&kca, &context.transcript)
                .finalize()
                .into_bytes(),
        );
        let keys = frame_keys(channel_key, hello.epoch, &context);
        let fibre = fibre_key(channel_key, &context);
        let this = Self {
            epoch: hello.epoch,
            context,
            dialer_confirm_key: kcd,
            keys,
            fibre,
        };
        (this, reply)
    }

    /// Checks the dialer's confirmation.
    pub fn on_finish(self, finish: &RawFrame<'_>) -> Result<Established, HandshakeError> {
        expect_type(finish, FrameType::Finish)?;
        if finish.payload.len() != TAG_LEN {
            return Err(WireError::Invalid("Finish length").into());
        }
        confirmation(&self.dialer_confirm_key, &self.context.transcript)
            .verify_slice(finish.payload)
            .map_err(|_| HandshakeError::BadConfirmation)?;
        Ok(Established {
            epoch: self.epoch,
            context: self.context,
            keys: self.keys,
            fibre: self.fibre,
        })
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
