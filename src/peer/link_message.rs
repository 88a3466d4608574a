//! Link-internal messages (frame type `Link`): keepalive and the
//! channel-key switch. Pure encode/decode; the session acts on them.
//!
//! Payload: one tag byte, then little-endian fields ([`crate::qkd::wire`]).
//!
//! | tag | message     | fields                                   |
//! |-----|-------------|------------------------------------------|
//! | 1   | `Ping`      | —                                        |
//! | 2   | `KeyOffer`  | epoch u64, key reference (see [`KeyRef::encode`]) |
//! | 3   | `KeyAccept` | epoch u64                                |
//! | 4   | `KeyReject` | epoch u64                                |
//! | 5   | `KeyActivate` | epoch u64                              |

use crate::keys::KeyRef;
use crate::qkd::wire::{WireError, WireReader, WireWriter};

/// A link-internal message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkMessage {
    /// Keepalive; proves the path and the peer are alive.
    Ping,
    /// Dialer → acceptor: "switch to the pool key at `key_ref` as `epoch`".
    KeyOffer { epoch: u64, key_ref: KeyRef },
    /// Acceptor → dialer: key taken and recorded as pending; every frame the
    /// acceptor sends after this one uses the new epoch's keys.
    KeyAccept { epoch: u64 },
    /// Acceptor → dialer: the pool could not give the referenced bytes (or
    /// the record could not be written); both stay on the current epoch.
    KeyReject { epoch: u64 },
    /// Dialer → acceptor: committed; every frame the dialer sends after this
    /// one uses the new epoch's keys.
    KeyActivate { epoch: u64 },
}

impl LinkMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::new();
        match self {
            LinkMessage::Ping => {
                w.u8(1);
            }
            LinkMessage::KeyOffer { epoch, key_ref } => {
                w.u8(2).u64(*epoch);
                key_ref.encode(&mut w);
            }
            LinkMessage::KeyAccept { epoch } => {
                w.u8(3).u64(*epoch);
            }
            LinkMessage::KeyReject { epoch } => {
                w.u8(4).u64(*epoch);
            }
            LinkMessage::KeyActivate { epoch } => {
                w.u8(5).u64(*epoch);
            }
        }
        w.finish()
    }

    pub fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let mut r = WireReader::new(payload);
        let m = match r.u8("link message tag")? {
            1 => LinkMessage::Ping,
            2 => LinkMessage::KeyOffer {
                epoch: r.u64("epoch")?,
                key_ref: KeyRef::decode(&mut r)?,
            },
            3 => LinkMessage::KeyAccept {
                epoch: r.u64("epoch")?,
            },
            4 => LinkMessage::KeyReject {
                epoch: r.u64("epoch")?,
            },
            5 => LinkMessage::KeyActivate {
                epoch: r.u64("epoch")?,
            },
            _ => return Err(WireError::Invalid("link message tag")),
        };
        r.finish()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{BlockId, KeyPool, KeyUse, Role};
    use crate::peer::frame::MAX_LINK_PAYLOAD;
    use crate::secret::SecretBytes;

    #[test]
    fn roundtrip_and_rejects() {
        let mut pool = KeyPool::new(Role::Transmitter);
        pool.append(BlockId(1), SecretBytes::from_slice(&[9; 128]))
            .unwrap();
        let (key_ref, _) = pool.take(KeyUse::Channel, 32).unwrap();
        for m in [
            LinkMessage::Ping,
            LinkMessage::KeyOffer { epoch: 4, key_ref },
            LinkMessage::KeyAccept { epoch: 4 },
            LinkMessage::KeyReject { epoch: 4 },
            LinkMessage::KeyActivate { epoch: u64::MAX },
        ] {
            let b = m.encode();
            assert!(b.len() <= MAX_LINK_PAYLOAD as usize);
            assert_eq!(LinkMessage::decode(&b).unwrap(), m);
            let mut long = b.clone();
            long.push(0);
            assert!(LinkMessage::decode(&long).is_err());
            if b.len() > 1 {
                assert!(LinkMessage::decode(&b[..b.len() - 1]).is_err());
            }
        }
        assert!(LinkMessage::decode(&[]).is_err());
        assert!(LinkMessage::decode(&[9]).is_err());
        // A reference claiming 2^32-1 segments is refused before allocating.
        let mut w = WireWriter::new();
        w.u8(2).u64(1).u32(u32::MAX);
        assert!(matches!(
            LinkMessage::decode(&w.finish()),
            Err(WireError::TooLong { .. })
        ));
    }
}
