//! The classical messages of the block protocol and their encoding.
//!
//! Layout: one kind byte, then (except for `Detections`, which Bob sends
//! before he knows the block) the block ID as u64, then the kind's fields.
//! Stage messages (sift, Cascade, verification, Toeplitz seed, tags) are
//! embedded as length-prefixed byte strings in their own canonical
//! encodings, so the whole message is canonical and the transcript is
//! exactly the bytes on the wire. Decoding is bounded by the link's key-size
//! limit and never panics.

use crate::qkd::amplify::ToeplitzSeed;
use crate::qkd::auth::AuthTag;
use crate::qkd::cascade::{ParityReply, ParityRequest};
use crate::qkd::sift::{DetectionReport, SiftReply};
use crate::qkd::verify::VerifyRequest;
use crate::qkd::wire::{WireError, WireReader, WireWriter};

use super::LinkError;
use super::report::AbortCause;

/// Largest embedded stage message. Sift messages of a 2^26-slot frame and
/// Cascade requests of a 2^26-bit key stay far below it.
const MAX_EMBEDDED: usize = 256 << 20;
/// Largest authentication-key reference (a key-pool `KeyRef` is ≤ 4 KiB).
pub const MAX_AUTH_REF: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    Detections = 1,
    Sift = 2,
    CascadeStart = 3,
    Parities = 4,
    ParityReply = 5,
    Reconciled = 6,
    Amplify = 7,
    TagA = 8,
    TagB = 9,
    Confirm = 10,
    Abort = 15,
}

impl MessageKind {
    fn from_u8(b: u8) -> Option<Self> {
        use MessageKind::*;
        Some(match b {
            1 => Detections,
            2 => Sift,
            3 => CascadeStart,
            4 => Parities,
            5 => ParityReply,
            6 => Reconciled,
            7 => Amplify,
            8 => TagA,
            9 => TagB,
            10 => Confirm,
            15 => Abort,
            _ => return None,
        })
    }
}

/// One classical message of the block protocol.
pub enum LinkMessage {
    /// Bob → Alice: what clicked in one frame.
    Detections(DetectionReport),
    /// Alice → Bob: the sifting answer for one frame; `last` closes the
    /// block's quantum phase. `digest` is [`super::BlockConfig::agreement_digest`].
    Sift {
        block: u64,
        digest: u64,
        last: bool,
        reply: SiftReply,
    },
    /// Bob → Alice: Cascade's public shuffle seed and first request.
    CascadeStart {
        block: u64,
        seed: [u8; 32],
        request: ParityRequest,
    },
    Parities {
        block: u64,
        request: ParityRequest,
    },
    ParityReply {
        block: u64,
        reply: ParityReply,
    },
    /// Bob → Alice: reconciliation is over.
    Reconciled {
        block: u64,
        key_errors: u64,
        leaked_bits: u64,
        verify: VerifyRequest,
    },
    /// Alice → Bob: verification passed; the final length and Toeplitz seed.
    Amplify {
        block: u64,
        secret_bits: u64,
        seed: ToeplitzSeed,
    },
    TagA {
        block: u64,
        auth_ref: Vec<u8>,
        tag: AuthTag,
    },
    TagB {
        block: u64,
        tag: AuthTag,
    },
    Confirm {
        block: u64,
    },
    Abort {
        block: u64,
        cause: AbortCause,
    },
}

impl LinkMessage {
    pub fn kind(&self) -> MessageKind {
        match self {
            LinkMessage::Detections(_) => MessageKind::Detections,
            LinkMessage::Sift { .. } => MessageKind::Sift,
            LinkMessage::CascadeStart { .. } => MessageKind::CascadeStart,
            LinkMessage::Parities { .. } => MessageKind::Parities,
            LinkMessage::ParityReply { .. } => MessageKind::ParityReply,
            LinkMessage::Reconciled { .. } => MessageKind::Reconciled,
            LinkMessage::Amplify { .. } => MessageKind::Amplify,
            LinkMessage::TagA { .. } => MessageKind::TagA,
            LinkMessage::TagB { .. } => MessageKind::TagB,
            LinkMessage::Confirm { .. } => MessageKind::Confirm,
            LinkMessage::Abort { .. } => MessageKind::Abort,
        }
    }

    /// The block this message belongs to (`None` for detections).
    pub fn block(&self) -> Option<u64> {
        match self {
            LinkMessage::Detections(_) => None,
            LinkMessage::Sift { block, .. }
            | LinkMessage::CascadeStart { block, .. }
            | LinkMessage::Parities { block, .. }
            | LinkMessage::ParityReply { block, .. }
            | LinkMessage::Reconciled { block, .. }
            | LinkMessage::Amplify { block, .. }
            | LinkMessage::TagA { block, .. }
            | LinkMessage::TagB { block, .. }
            | LinkMessage::Confirm { block }
            | LinkMessage::Abort { block, .. } => Some(*block),
        }
    }

    /// Whether the message is part of the authenticated transcript (the
    /// tags, the confirmation and aborts are not: they come after it).
    pub fn in_transcript(&self) -> bool {
        !matches!(
            self.kind(),
            MessageKind::TagA | MessageKind::TagB | MessageKind::Confirm | MessageKind::Abort
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::new();
        w.u8(self.kind() as u8);
        if let Some(block) = self.block() {
            w.u64(block);
        }
        match self {
            LinkMessage::Detections(r) => {
                w.bytes(&r.encode());
            }
            LinkMessage::Sift {
                digest,
                last,
                reply,
                ..
            } => {
                w.u64(*digest).u8(*last as u8).bytes(&reply.encode());
            }
            LinkMessage::CascadeStart { seed, request, .. } => {
                w.bytes(seed).bytes(&request.encode());
            }
            LinkMessage::Parities { request, .. } => {
                w.bytes(&request.encode());
            }
            LinkMessage::ParityReply { reply, .. } => {
                w.bytes(&reply.encode());
            }
            LinkMessage::Reconciled {
                key_errors,
                leaked_bits,
                verify,
                ..
            } => {
                w.u64(*key_errors).u64(*leaked_bits).bytes(&verify.encode());
            }
            LinkMessage::Amplify {
                secret_bits, seed, ..
            } => {
                w.u64(*secret_bits).bytes(&seed.encode());
            }
            LinkMessage::TagA { auth_ref, tag, .. } => {
                w.bytes(auth_ref).bytes(&tag.encode());
            }
            LinkMessage::TagB { tag, .. } => {
                w.bytes(&tag.encode());
            }
            LinkMessage::Confirm { .. } => {}
            LinkMessage::Abort { cause, .. } => {
                w.u8(cause.code());
            }
        }
        w.finish()
    }

    /// Decodes an untrusted message; `max_key_bits` bounds every embedded
    /// key-sized field.
    pub fn decode(buf: &[u8], max_key_bits: u64) -> Result<Self, LinkError> {
        let mut r = WireReader::new(buf);
        let kind_byte = r.u8("message kind")?;
        let kind =
            MessageKind::from_u8(kind_byte).ok_or(WireError::Invalid("link message kind"))?;
        let bad = |e: &dyn std::fmt::Display| LinkError::Malformed {
            kind,
            reason: e.to_string(),
        };
        if kind == MessageKind::Detections {
            let report = DetectionReport::decode(r.bytes("detections", MAX_EMBEDDED)?)
                .map_err(|e| bad(&e))?;
            r.finish()?;
            return Ok(LinkMessage::Detections(report));
        }
        let block = r.u64("block")?;
        let max_nodes = max_key_bits as usize;
        let msg = match kind {
            MessageKind::Detections => unreachable!("handled above"),
            MessageKind::Sift => {
                let digest = r.u64("digest")?;
                let last = match r.u8("last")? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Invalid("last flag").into()),
                };
                let reply =
                    SiftReply::decode(r.bytes("sift", MAX_EMBEDDED)?).map_err(|e| bad(&e))?;
                LinkMessage::Sift {
                    block,
                    digest,
                    last,
                    reply,
                }
            }
            MessageKind::CascadeStart => {
                let seed: [u8; 32] = r
                    .bytes("seed", 32)?
                    .try_into()
                    .map_err(|_| WireError::Invalid("seed length"))?;
                let request = ParityRequest::decode(r.bytes("request", MAX_EMBEDDED)?, max_nodes)?;
                LinkMessage::CascadeStart {
                    block,
                    seed,
                    request,
                }
            }
            MessageKind::Parities => LinkMessage::Parities {
                block,
                request: ParityRequest::decode(r.bytes("request", MAX_EMBEDDED)?, max_nodes)?,
            },
            MessageKind::ParityReply => LinkMessage::ParityReply {
                block,
                reply: ParityReply::decode(r.bytes("reply", MAX_EMBEDDED)?, max_key_bits)?,
            },
            MessageKind::Reconciled => {
                let key_errors = r.u64("key errors")?;
                let leaked_bits = r.u64("leaked bits")?;
                let verify =
                    VerifyRequest::decode(r.bytes("verify", 1024)?).map_err(|e| bad(&e))?;
                LinkMessage::Reconciled {
                    block,
                    key_errors,
                    leaked_bits,
                    verify,
                }
            }
            MessageKind::Amplify => {
                let secret_bits = r.u64("secret bits")?;
                let seed =
                    ToeplitzSeed::decode(r.bytes("toeplitz seed", MAX_EMBEDDED)?, max_key_bits)
                        .map_err(|e| bad(&e))?;
                LinkMessage::Amplify {
                    block,
                    secret_bits,
                    seed,
                }
            }
            MessageKind::TagA => {
                let auth_ref = r.bytes("auth ref", MAX_AUTH_REF)?.to_vec();
                let tag = AuthTag::decode(r.bytes("tag", 64)?).map_err(|e| bad(&e))?;
                LinkMessage::TagA {
                    block,
                    auth_ref,
                    tag,
                }
            }
            MessageKind::TagB => LinkMessage::TagB {
                block,
                tag: AuthTag::decode(r.bytes("tag", 64)?).map_err(|e| bad(&e))?,
            },
            MessageKind::Confirm => LinkMessage::Confirm { block },
            MessageKind::Abort => LinkMessage::Abort {
                block,
                cause: AbortCause::from_code(r.u8("abort cause")?)
                    .ok_or(WireError::Invalid("abort cause"))?,
            },
        };
        r.finish()?;
        Ok(msg)
    }
}
