//! The rekey protocol's messages and their canonical encoding.
//!
//! Carried as opaque bytes on the peer channel's control stream, so decoding
//! treats them as hostile ([`crate::qkd::wire`]: bounded, no trailing bytes,
//! one encoding per message, never a panic). No message carries key bytes:
//! direct mode sends pool positions ([`KeyRef`]), wrapped mode AES-GCM
//! ciphertext.
//!
//! Layout: version `u8`, kind `u8`, sender epoch `u64`, sender's oldest
//! outbound exchange (`u8` 0/1, then epoch `u64`, generation `u64`), body.

use crate::keys::KeyRef;
use crate::qkd::wire::{WireError, WireReader, WireWriter};

use super::keying::{DIRECT_TAKE_LEN, SEALED_LEN, WRAP_KEY_LEN};
use super::{ExchangeId, MIN_SPI, Spi};

pub const VERSION: u8 = 1;
/// Longest tunnel name (the control envelope's limit).
pub const MAX_TUNNEL_NAME: usize = 64;
/// Longest encoded message: a Start naming the most segments a 72-byte
/// reference can have (one byte each) plus the sealed keys fits well below.
pub const MAX_MESSAGE_LEN: usize = 2048;

const KIND_START: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_DONE: u8 = 3;
const KIND_NACK: u8 = 4;
const KIND_REQUEST: u8 = 5;

const MODE_DIRECT: u8 = 1;
const MODE_WRAPPED: u8 = 2;

/// One rekey message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RekeyMessage {
    /// The sender engine instance's epoch: a change means it restarted.
    pub sender_epoch: u64,
    /// The exchange of the *oldest* outbound SA the sender still holds
    /// (`None`: it holds none, or its oldest predates its last restart).
    /// The receiver may retire inbound SAs older than that one.
    pub sender_out: Option<ExchangeId>,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Initiator → responder: new keys and the initiator's new inbound SPI,
    /// already installed.
    Start {
        id: ExchangeId,
        initiator_spi: Spi,
        keys: KeyMaterial,
    },
    /// Responder → initiator: both new SAs installed, old outbound deleted.
    Ack { id: ExchangeId, responder_spi: Spi },
    /// Initiator → responder: new outbound installed, old one deleted.
    Done { id: ExchangeId },
    /// Either way: the exchange cannot proceed. `released`: the sender holds
    /// no outbound SA that could carry this exchange's SPI, so the receiver
    /// may delete its new inbound SA at once.
    Nack {
        id: ExchangeId,
        reason: NackReason,
        released: bool,
    },
    /// Responder → initiator: please rekey. `about` is the responder's
    /// newest outbound exchange, so a stale request can be recognised.
    Request {
        reason: RequestReason,
        about: Option<ExchangeId>,
    },
}

/// The keys of a Start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyMaterial {
    /// Both SA keys straight from the pool: 72 bytes at these positions.
    Direct { key_ref: KeyRef },
    /// Both SA keys drawn at random by the initiator and sealed under the
    /// 32 pool bytes at `wrap_ref`.
    Wrapped { wrap_ref: KeyRef, sealed: Vec<u8> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackReason {
    /// Transient (key block not received yet): retransmit later.
    Retry,
    /// The keys were refused for good (not held, used, failed to unwrap).
    KeysRefused,
    /// A kernel operation failed.
    KernelFailed,
    /// Keying mode or role differs between the gateways.
    ConfigMismatch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestReason {
    Restarted,
    SoftExpire,
    HardExpire,
    Acquire,
}

impl NackReason {
    fn code(self) -> u8 {
        match self {
            NackReason::Retry => 1,
            NackReason::KeysRefused => 2,
            NackReason::KernelFailed => 3,
            NackReason::ConfigMismatch => 4,
        }
    }

    fn from_code(c: u8) -> Result<Self, WireError> {
        Ok(match c {
            1 => NackReason::Retry,
            2 => NackReason::KeysRefused,
            3 => NackReason::KernelFailed,
            4 => NackReason::ConfigMismatch,
            _ => return Err(WireError::Invalid("nack reason")),
        })
    }
}

impl RequestReason {
    fn code(self) -> u8 {
        match self {
            RequestReason::Restarted => 1,
            RequestReason::SoftExpire => 2,
            RequestReason::HardExpire => 3,
            RequestReason::Acquire => 4,
        }
    }

    fn from_code(c: u8) -> Result<Self, WireError> {
        Ok(match c {
            1 => RequestReason::Restarted,
            2 => RequestReason::SoftExpire,
            3 => RequestReason::HardExpire,
            4 => RequestReason::Acquire,
            _ => return Err(WireError::Invalid("request reason")),
        })
    }
}

impl RekeyMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::with_capacity(128);
        w.u8(VERSION).u8(self.body.kind()).u64(self.sender_epoch);
        put_opt_id(&mut w, self.sender_out);
        match &self.body {
            MessageBody::Start {
                id,
                initiator_spi,
                keys,
            } => {
                put_id(&mut w, *id);
                w.u32(*initiator_spi);
                match keys {
                    KeyMaterial::Direct { key_ref } => {
                        w.u8(MODE_DIRECT);
                        key_ref.encode(&mut w);
                    }
                    KeyMaterial::Wrapped { wrap_ref, sealed } => {
                        w.u8(MODE_WRAPPED);
                        wrap_ref.encode(&mut w);
                        w.bytes(sealed);
                    }
                }
            }
            MessageBody::Ack { id, responder_spi } => {
                put_id(&mut w, *id);
                w.u32(*responder_spi);
            }
            MessageBody::Done { id } => put_id(&mut w, *id),
            MessageBody::Nack {
                id,
                reason,
                released,
            } => {
                put_id(&mut w, *id);
                w.u8(reason.code()).u8(u8::from(*released));
            }
            MessageBody::Request { reason, about } => {
                w.u8(reason.code());
                put_opt_id(&mut w, *about);
            }
        }
        w.finish()
    }

    /// Decodes an untrusted message; every field is range-checked.
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(WireError::TooLong {
                what: "rekey message",
                len: buf.len() as u64,
                max: MAX_MESSAGE_LEN as u64,
            });
        }
        let mut r = WireReader::new(buf);
        if r.u8("rekey version")? != VERSION {
            return Err(WireError::Invalid("rekey version"));
        }
        let kind = r.u8("rekey kind")?;
        let sender_epoch = r.u64("sender epoch")?;
        let sender_out = get_opt_id(&mut r)?;
        let body = match kind {
            KIND_START => {
                let id = get_id(&mut r)?;
                if id.epoch != sender_epoch {
                    return Err(WireError::Invalid("start epoch"));
                }
                let initiator_spi = get_spi(&mut r)?;
                let keys = match r.u8("keying mode")? {
                    MODE_DIRECT => KeyMaterial::Direct {
                        key_ref: get_key_ref(&mut r, DIRECT_TAKE_LEN)?,
                    },
                    MODE_WRAPPED => {
                        let wrap_ref = get_key_ref(&mut r, WRAP_KEY_LEN)?;
                        let sealed = r.bytes("sealed keys", SEALED_LEN)?;
                        if sealed.len() != SEALED_LEN {
                            return Err(WireError::Invalid("sealed keys length"));
                        }
                        KeyMaterial::Wrapped {
                            wrap_ref,
                            sealed: sealed.to_vec(),
                        }
                    }
                    _ => return Err(WireError::Invalid("keying mode")),
                };
                MessageBody::Start {
                    id,
                    initiator_spi,
                    keys,
                }
            }
            KIND_ACK => MessageBody::Ack {
                id: get_id(&mut r)?,
                responder_spi: get_spi(&mut r)?,
            },
            KIND_DONE => MessageBody::Done {
                id: get_id(&mut r)?,
            },
            KIND_NACK => MessageBody::Nack {
                id: get_id(&mut r)?,
                reason: NackReason::from_code(r.u8("nack reason")?)?,
                released: get_bool(&mut r, "nack released")?,
            },
            KIND_REQUEST => MessageBody::Request {
                reason: RequestReason::from_code(r.u8("request reason")?)?,
                about: get_opt_id(&mut r)?,
            },
            _ => return Err(WireError::Invalid("rekey kind")),
        };
        r.finish()?;
        Ok(Self {
            sender_epoch,
            sender_out,
            body,
        })
    }
}

impl MessageBody {
    fn kind(&self) -> u8 {
        match self {
            MessageBody::Start { .. } => KIND_START,
            MessageBody::Ack { .. } => KIND_ACK,
            MessageBody::Done { .. } => KIND_DONE,
            MessageBody::Nack { .. } => KIND_NACK,
            MessageBody::Request { .. } => KIND_REQUEST,
        }
    }

    /// The kind's name, for notices.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::Start { .. } => "Start",
            MessageBody::Ack { .. } => "Ack",
            MessageBody::Done { .. } => "Done",
            MessageBody::Nack { .. } => "Nack",
            MessageBody::Request { .. } => "Request",
        }
    }
}

fn put_id(w: &mut WireWriter, id: ExchangeId) {
    w.u64(id.epoch).u64(id.generation);
}

fn put_opt_id(w: &mut WireWriter, id: Option<ExchangeId>) {
    match id {
        None => {
            w.u8(0);
        }
        Some(id) => {
            w.u8(1);
            put_id(w, id);
        }
    }
}

fn get_id(r: &mut WireReader<'_>) -> Result<ExchangeId, WireError> {
    let epoch = r.u64("exchange epoch")?;
    let generation = r.u64("exchange generation")?;
    if generation == 0 {
        return Err(WireError::Invalid("exchange generation"));
    }
    Ok(ExchangeId { epoch, generation })
}

fn get_opt_id(r: &mut WireReader<'_>) -> Result<Option<ExchangeId>, WireError> {
    Ok(if get_bool(r, "exchange present")? {
        Some(get_id(r)?)
    } else {
        None
    })
}

fn get_bool(r: &mut WireReader<'_>, what: &'static str) -> Result<bool, WireError> {
    match r.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(WireError::Invalid(what)),
    }
}

fn get_spi(r: &mut WireReader<'_>) -> Result<Spi, WireError> {
    let spi = r.u32("spi")?;
    if spi < MIN_SPI {
        return Err(WireError::Invalid("spi"));
    }
    Ok(spi)
}

/// A key reference of exactly `len` bytes in non-empty segments.
/// [`KeyRef::decode`] caps the segment count ([`crate::keys::pool::MAX_SEGMENTS`]),
/// so a hostile count allocates at most a few kilobytes.
fn get_key_ref(r: &mut WireReader<'_>, len: u32) -> Result<KeyRef, WireError> {
    let key_ref = KeyRef::decode(r)?;
    if key_ref.len() != u64::from(len) || key_ref.segments().iter().any(|s| s.len == 0) {
        return Err(WireError::Invalid("key reference length"));
    }
    Ok(key_ref)
}
