//! The control stream's envelope: pool agreement, per-tunnel rekey
//! messages and the KMEs' application keys share the peer channel's
//! authenticated control stream.
//!
//! Layout: one kind byte, then the kind's fields. Rekey messages name their
//! tunnel (the tunnel's configured name, identical on both gateways) and
//! carry the rekey engine's own encoding as an opaque byte string. Decoding
//! is bounded and never panics; an unknown kind is an error the caller
//! counts and drops.

use crate::etsi014::source::{KeyOffer, KeyOfferAck};
use crate::keys::{AgreementCheck, PoolSummary};
use crate::kme::{AppKeys, AppKeysAck};
use crate::qkd::wire::{WireError, WireReader, WireWriter};
use crate::relay::{RelayHop, RelayRefusal};

/// Longest tunnel name carried on the wire (config names are shorter).
pub const MAX_TUNNEL_NAME: usize = 64;
/// Longest rekey-engine message.
const MAX_REKEY_PAYLOAD: usize = 16 * 1024;
/// Longest pool summary (the key pool caps summaries well below this).
const MAX_SUMMARY: usize = 1 << 20;

const KIND_SUMMARY: u8 = 1;
const KIND_CHECK: u8 = 2;
const KIND_REKEY: u8 = 3;
/// Kinds 4 and 5 are the KME's ([`crate::kme`]): keys for local
/// applications. 6 and 7 are the ETSI GS QKD 014 key source's
/// ([`crate::etsi014::source`]): key_IDs of a device's keys.
const KIND_APP_KEYS: u8 = 4;
const KIND_APP_KEYS_ACK: u8 = 5;
const KIND_KEY_OFFER: u8 = 6;
const KIND_KEY_OFFER_ACK: u8 = 7;
/// Kinds 8 and 9 are the relay's ([`crate::relay`]): a one-time-padded
/// share of a relayed key on this hop, and a refusal travelling back.
const KIND_RELAY_HOP: u8 = 8;
const KIND_RELAY_REFUSAL: u8 = 9;

/// A rekey message for one tunnel, with the session it arrived on.
pub struct TunnelInbound {
    pub session: u64,
    pub payload: Vec<u8>,
}

pub enum ControlMessage {
    /// "This is what I hold": the first half of the reconnect agreement.
    PoolSummary(PoolSummary),
    /// "This is what I hold now": the digest after applying the agreement.
    PoolCheck(AgreementCheck),
    /// A rekey-engine message for one tunnel.
    Rekey { tunnel: String, payload: Vec<u8> },
    /// Keys the sender's KME gave a local master SAE, for a slave SAE here.
    AppKeys(AppKeys),
    /// The answer to an [`ControlMessage::AppKeys`].
    AppKeysAck(AppKeysAck),
    /// ETSI 014 master → slave: key_IDs of a new pool block.
    KeyOffer(KeyOffer),
    /// ETSI 014 slave → master: whether it appended that block.
    KeyOfferAck(KeyOfferAck),
    /// A relayed key's share on this hop.
    RelayHop(RelayHop),
    /// A relayed share went no further; on its way back to the source.
    RelayRefusal(RelayRefusal),
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
            ControlMessage::AppKeys(m) => m.encode(w.u8(KIND_APP_KEYS)),
            ControlMessage::AppKeysAck(a) => a.encode(w.u8(KIND_APP_KEYS_ACK)),
            ControlMessage::KeyOffer(o) => o.encode(w.u8(KIND_KEY_OFFER)),
            ControlMessage::KeyOfferAck(a) => a.encode(w.u8(KIND_KEY_OFFER_ACK)),
            ControlMessage::RelayHop(h) => h.encode(w.u8(KIND_RELAY_HOP)),
            ControlMessage::RelayRefusal(r) => r.encode(w.u8(KIND_RELAY_REFUSAL)),
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
            KIND_APP_KEYS => ControlMessage::AppKeys(AppKeys::decode(&mut r)?),
            KIND_APP_KEYS_ACK => ControlMessage::AppKeysAck(AppKeysAck::decode(&mut r)?),
            KIND_KEY_OFFER => ControlMessage::KeyOffer(KeyOffer::decode(&mut r)?),
            KIND_KEY_OFFER_ACK => ControlMessage::KeyOfferAck(KeyOfferAck::decode(&mut r)?),
            KIND_RELAY_HOP => {
                ControlMessage::RelayHop(RelayHop::decode(&mut r).map_err(relay_wire)?)
            }
            KIND_RELAY_REFUSAL => {
                ControlMessage::RelayRefusal(RelayRefusal::decode(&mut r).map_err(relay_wire)?)
            }
            _ => return Err(WireError::Invalid("control kind")),
        };
        r.finish()?;
        Ok(msg)
    }
}

/// A relay message that does not decode is malformed like any other.
fn relay_wire(e: crate::relay::HopError) -> WireError {
    match e {
        crate::relay::HopError::Wire(w) => w,
        _ => WireError::Invalid("relay message"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etsi014::api::MAX_KEYS_PER_DOCUMENT;
    use crate::keys::BlockId;
    use uuid::Uuid;

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
        let offer_with = |count: u32, ids: usize| {
            let mut w = WireWriter::new();
            w.u8(KIND_KEY_OFFER).u64(1).u32(256).u32(count);
            for _ in 0..ids {
                w.u64(0).u64(0);
            }
            w.finish()
        };
        assert!(ControlMessage::decode(&offer_with(1, 1)).is_ok());
        assert!(ControlMessage::decode(&offer_with(0, 0)).is_err());
        assert!(ControlMessage::decode(&offer_with(2, 1)).is_err());
        let too_many = MAX_KEYS_PER_DOCUMENT + 1;
        assert!(ControlMessage::decode(&offer_with(too_many as u32, too_many)).is_err());
        // A count that lies.
        assert!(ControlMessage::decode(&offer_with(u32::MAX, 1)).is_err());
    }

    #[test]
    fn app_keys_travel_as_kinds_4_and_5() {
        let mut pool = crate::keys::KeyPool::new(crate::keys::Role::Receiver);
        pool.append(
            crate::keys::BlockId(1),
            crate::secret::SecretBytes::from_slice(&[3; 128]),
        )
        .unwrap();
        let (key_ref, _) = pool.take(crate::keys::KeyUse::Application, 32).unwrap();
        let m = AppKeys {
            request: 9,
            master_sae: "sae-a".into(),
            slave_sae: "sae-b".into(),
            key_bytes: 32,
            key_ids: vec![uuid::Uuid::new_v4()],
            refs: vec![key_ref],
        };
        let bytes = ControlMessage::AppKeys(m.clone()).encode();
        assert_eq!(bytes[0], 4);
        match ControlMessage::decode(&bytes).unwrap() {
            ControlMessage::AppKeys(got) => assert_eq!(got, m),
            _ => panic!("kind changed"),
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(ControlMessage::decode(&trailing).is_err());
        let ack = AppKeysAck {
            request: 9,
            outcome: crate::kme::AckOutcome::PendingFull,
        };
        let bytes = ControlMessage::AppKeysAck(ack).encode();
        assert_eq!(bytes[0], 5);
        assert!(
            matches!(ControlMessage::decode(&bytes).unwrap(), ControlMessage::AppKeysAck(a) if a == ack)
        );
        assert!(
            ControlMessage::decode(&[10]).is_err(),
            "kind 10 is nobody's"
        );
    }
}
