//! The control stream's envelope: pool agreement and per-tunnel rekey
//! messages share the peer channel's authenticated control stream.
//!
//! Layout: one kind byte, then the kind's fields. Rekey messages name their
//! tunnel (the tunnel's configured name, identical on both gateways) and
//! carry the rekey engine's own encoding as an opaque byte string. Decoding
//! is bounded and never panics; an unknown kind is an error the caller
//! counts and drops.

use crate::keys::{AgreementCheck, PoolSummary};
use crate::qkd::wire::{WireError, WireReader, WireWriter};

/// Longest tunnel name carried on the wire (config names are shorter).
pub const MAX_TUNNEL_NAME: usize = 64;
/// Longest rekey-engine message.
const MAX_REKEY_PAYLOAD: usize = 16 * 1024;
/// Longest pool summary (the key pool caps summaries well below this).
const MAX_SUMMARY: usize = 1 << 20;

const KIND_SUMMARY: u8 = 1;
const KIND_CHECK: u8 = 2;
const KIND_REKEY: u8 = 3;

pub enum ControlMessage {
    /// "This is what I hold": the first half of the reconnect agreement.
    PoolSummary(PoolSummary),
    /// "This is what I hold now": the digest after applying the agreement.
    PoolCheck(AgreementCheck),
    /// A rekey-engine message for one tunnel.
    Rekey { tunnel: String, payload: Vec<u8> },
}

impl ControlMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::new();
        match self {
            ControlMessage::PoolSummary(s) => {
                w.u8(KIND_SUMMARY).bytes(&s.encode());
            }
            ControlMessage::PoolCheck(c) => {
                w.u8(KIND_CHECK).bytes(&c.encode());
            }
            ControlMessage::Rekey { tunnel, payload } => {
                w.u8(KIND_REKEY).bytes(tunnel.as_bytes()).bytes(payload);
            }
        }
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = WireReader::new(buf);
        let msg = match r.u8("control kind")? {
            KIND_SUMMARY => {
                ControlMessage::PoolSummary(PoolSummary::decode(r.bytes("summary", MAX_SUMMARY)?)?)
            }
            KIND_CHECK => ControlMessage::PoolCheck(AgreementCheck::decode(r.bytes("check", 64)?)?),
            KIND_REKEY => {
                let name = r.bytes("tunnel name", MAX_TUNNEL_NAME)?;
                let tunnel = std::str::from_utf8(name)
                    .map_err(|_| WireError::Invalid("tunnel name"))?
                    .to_owned();
                let payload = r.bytes("rekey payload", MAX_REKEY_PAYLOAD)?.to_vec();
                ControlMessage::Rekey { tunnel, payload }
            }
            _ => return Err(WireError::Invalid("control kind")),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rekey_roundtrip_and_hostile_input() {
        let m = ControlMessage::Rekey {
            tunnel: "site-a-b".into(),
            payload: vec![1, 2, 3],
        };
        let bytes = m.encode();
        match ControlMessage::decode(&bytes).unwrap() {
            ControlMessage::Rekey { tunnel, payload } => {
                assert_eq!(tunnel, "site-a-b");
                assert_eq!(payload, vec![1, 2, 3]);
            }
            _ => panic!("kind changed"),
        }
        for cut in 0..bytes.len() {
            assert!(ControlMessage::decode(&bytes[..cut]).is_err());
        }
        assert!(ControlMessage::decode(&[9]).is_err());
        let mut long = vec![KIND_REKEY];
        long.extend_from_slice(&(1000u32).to_le_bytes());
        assert!(ControlMessage::decode(&long).is_err());
    }
}
