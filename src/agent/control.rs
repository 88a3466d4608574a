//! The control stream's envelope: pool agreement and per-tunnel rekey
//! messages share the peer channel's authenticated control stream.
//!
//! Layout: one kind byte, then the kind's fields. Rekey messages name their
//! tunnel (the tunnel's configured name, identical on both gateways) and
//! carry the rekey engine's own encoding as an opaque byte string. Decoding
//! is bounded and never panics; an unknown kind is an error the caller
//! counts and drops.

use uuid::Uuid;

use crate::etsi014::api::MAX_KEYS_PER_DOCUMENT;
use crate::etsi014::source::{KeyOffer, KeyOfferAck};
use crate::keys::{AgreementCheck, BlockId, PoolSummary};
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
// Kinds 4 and 5 belong to the local applications' KME (AppKeys/AppKeysAck).
const KIND_KEY_OFFER: u8 = 6;
const KIND_KEY_OFFER_ACK: u8 = 7;

pub enum ControlMessage {
    /// "This is what I hold": the first half of the reconnect agreement.
    PoolSummary(PoolSummary),
    /// "This is what I hold now": the digest after applying the agreement.
    PoolCheck(AgreementCheck),
    /// A rekey-engine message for one tunnel.
    Rekey { tunnel: String, payload: Vec<u8> },
    /// ETSI 014 master → slave: key_IDs of a new pool block.
    KeyOffer(KeyOffer),
    /// ETSI 014 slave → master: whether it appended that block.
    KeyOfferAck(KeyOfferAck),
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
            ControlMessage::KeyOffer(o) => {
                let ids: Vec<u8> = o.key_ids.iter().flat_map(|id| *id.as_bytes()).collect();
                w.u8(KIND_KEY_OFFER)
                    .u64(o.block.0)
                    .u32(o.size_bits)
                    .bytes(&ids);
            }
            ControlMessage::KeyOfferAck(a) => {
                w.u8(KIND_KEY_OFFER_ACK)
                    .u64(a.block.0)
                    .u8(u8::from(a.accepted));
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
            KIND_KEY_OFFER => {
                let block = BlockId(r.u64("offer block")?);
                let size_bits = r.u32("offer key size")?;
                let raw = r.bytes("offer key_IDs", 16 * MAX_KEYS_PER_DOCUMENT)?;
                if raw.is_empty() || raw.len() % 16 != 0 {
                    return Err(WireError::Invalid("offer key_IDs"));
                }
                let key_ids = raw
                    .chunks_exact(16)
                    .map(|c| Uuid::from_bytes(c.try_into().expect("16 bytes")))
                    .collect();
                ControlMessage::KeyOffer(KeyOffer {
                    block,
                    size_bits,
                    key_ids,
                })
            }
            KIND_KEY_OFFER_ACK => {
                let block = BlockId(r.u64("ack block")?);
                let accepted = match r.u8("ack flag")? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Invalid("ack flag")),
                };
                ControlMessage::KeyOfferAck(KeyOfferAck { block, accepted })
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

    #[test]
    fn key_offer_and_ack_roundtrip_and_hostile_input() {
        let offer = KeyOffer {
            block: BlockId(42),
            size_bits: 256,
            key_ids: (1..=3).map(Uuid::from_u128).collect(),
        };
        let bytes = ControlMessage::KeyOffer(offer.clone()).encode();
        assert_eq!(bytes[0], 6);
        match ControlMessage::decode(&bytes).unwrap() {
            ControlMessage::KeyOffer(o) => assert_eq!(o, offer),
            _ => panic!("kind changed"),
        }
        for cut in 0..bytes.len() {
            assert!(ControlMessage::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(ControlMessage::decode(&trailing).is_err());

        let ack = KeyOfferAck {
            block: BlockId(42),
            accepted: true,
        };
        let bytes = ControlMessage::KeyOfferAck(ack).encode();
        assert_eq!(bytes[0], 7);
        match ControlMessage::decode(&bytes).unwrap() {
            ControlMessage::KeyOfferAck(a) => assert_eq!(a, ack),
            _ => panic!("kind changed"),
        }
        let mut bad_flag = bytes.clone();
        *bad_flag.last_mut().unwrap() = 2;
        assert!(ControlMessage::decode(&bad_flag).is_err());

        // Hostile offers: no IDs, a partial ID, more IDs than a document
        // may hold.
        let offer_with = |ids: &[u8]| {
            let mut w = WireWriter::new();
            w.u8(KIND_KEY_OFFER).u64(1).u32(256).bytes(ids);
            w.finish()
        };
        assert!(ControlMessage::decode(&offer_with(&[])).is_err());
        assert!(ControlMessage::decode(&offer_with(&[0; 17])).is_err());
        let too_many = vec![0; 16 * (MAX_KEYS_PER_DOCUMENT + 1)];
        assert!(ControlMessage::decode(&offer_with(&too_many)).is_err());
        // A length prefix that lies.
        let mut lying = vec![KIND_KEY_OFFER];
        lying.extend_from_slice(&[0; 12]);
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(ControlMessage::decode(&lying).is_err());
    }
}
