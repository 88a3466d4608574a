//! The two control messages between the KMEs of a link (kinds 4 and 5 of
//! the agent's control stream, which is authenticated by the peer
//! channel). AppKeys carries public values only: key_IDs, SAE IDs and the
//! pool positions ([`KeyRef`]) of the bytes — never the bytes.
//!
//! Decoding is bounded and never panics: at most [`MAX_APP_KEYS`] key_IDs
//! and [`MAX_APP_REFS`] references, SAE IDs of at most [`MAX_SAE_ID`]
//! bytes of UTF-8, no trailing bytes.

use std::fmt;

use uuid::Uuid;

use crate::etsi014::api::{MAX_KEYS_PER_DOCUMENT, decode_key_ids, encode_key_ids};
use crate::keys::KeyRef;
use crate::qkd::wire::{WireError, WireReader, WireWriter};

/// Most keys in one AppKeys (one enc_keys request).
pub const MAX_APP_KEYS: usize = MAX_KEYS_PER_DOCUMENT;
/// Most pool references in one AppKeys: a request's bytes are taken in
/// pieces of at most [`crate::keys::pool::MAX_TAKE_BYTES`].
pub const MAX_APP_REFS: usize = 256;
/// Longest SAE ID on the wire (config IDs are at most 64 bytes).
pub const MAX_SAE_ID: usize = 64;

/// "These keys are shared between `master` and `slave`": the master's KME
/// took `key_ids.len()` keys of `key_bytes` each, in order, from the bytes
/// `refs` name (concatenated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppKeys {
    /// Matches the answer to the question (per sender, increasing).
    pub request: u64,
    pub master_sae: String,
    pub slave_sae: String,
    pub key_bytes: u32,
    pub key_ids: Vec<Uuid>,
    pub refs: Vec<KeyRef>,
}

/// The slave's KME's answer to one AppKeys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppKeysAck {
    pub request: u64,
    pub outcome: AckOutcome,
}

/// What the slave's KME did with an AppKeys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// Keys held for the slave SAE.
    Accepted,
    /// Its pending-key table is full.
    PendingFull,
    /// The SAE pair is not configured for this link there.
    UnknownSae,
    /// Its pool refused the references (not held, already used), or the
    /// pool is not agreed for this session.
    PoolRefused,
    /// The message was inconsistent (lengths, duplicate key_IDs).
    Malformed,
}

impl AckOutcome {
    fn code(self) -> u8 {
        match self {
            AckOutcome::Accepted => 0,
            AckOutcome::PendingFull => 1,
            AckOutcome::UnknownSae => 2,
            AckOutcome::PoolRefused => 3,
            AckOutcome::Malformed => 4,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => AckOutcome::Accepted,
            1 => AckOutcome::PendingFull,
            2 => AckOutcome::UnknownSae,
            3 => AckOutcome::PoolRefused,
            4 => AckOutcome::Malformed,
            _ => return None,
        })
    }
}

impl fmt::Display for AckOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AckOutcome::Accepted => "accepted",
            AckOutcome::PendingFull => "its pending-key table is full",
            AckOutcome::UnknownSae => "the SAE pair is not configured there",
            AckOutcome::PoolRefused => "its key pool refused the positions",
            AckOutcome::Malformed => "the message was inconsistent",
        })
    }
}

fn sae(r: &mut WireReader<'_>, what: &'static str) -> Result<String, WireError> {
    let b = r.bytes(what, MAX_SAE_ID)?;
    let s = std::str::from_utf8(b).map_err(|_| WireError::Invalid(what))?;
    if s.is_empty() {
        return Err(WireError::Invalid(what));
    }
    Ok(s.to_owned())
}

impl AppKeys {
    pub fn encode(&self, w: &mut WireWriter) {
        w.u64(self.request)
            .bytes(self.master_sae.as_bytes())
            .bytes(self.slave_sae.as_bytes())
            .u32(self.key_bytes);
        encode_key_ids(w, &self.key_ids);
        w.u32(self.refs.len() as u32);
        for r in &self.refs {
            r.encode(w);
        }
    }

    pub fn decode(r: &mut WireReader<'_>) -> Result<Self, WireError> {
        let request = r.u64("app keys request")?;
        let master_sae = sae(r, "master SAE ID")?;
        let slave_sae = sae(r, "slave SAE ID")?;
        let key_bytes = r.u32("app key length")?;
        if key_bytes == 0 || u64::from(key_bytes) * 8 > u64::from(crate::etsi014::api::MAX_KEY_BITS)
        {
            return Err(WireError::Invalid("app key length"));
        }
        let key_ids = decode_key_ids(r, "app key IDs", MAX_APP_KEYS)?;
        let n = r.count("app key references", MAX_APP_REFS)?;
        let mut refs = Vec::with_capacity(n);
        for _ in 0..n {
            refs.push(KeyRef::decode(r)?);
        }
        Ok(Self {
            request,
            master_sae,
            slave_sae,
            key_bytes,
            key_ids,
            refs,
        })
    }

    /// Bytes the keys need in total; the references must name exactly this.
    pub fn total_bytes(&self) -> u64 {
        self.key_ids.len() as u64 * u64::from(self.key_bytes)
    }
}

impl AppKeysAck {
    pub fn encode(&self, w: &mut WireWriter) {
        w.u64(self.request).u8(self.outcome.code());
    }

    pub fn decode(r: &mut WireReader<'_>) -> Result<Self, WireError> {
        let request = r.u64("app keys ack request")?;
        let outcome = AckOutcome::from_code(r.u8("app keys ack outcome")?)
            .ok_or(WireError::Invalid("app keys ack outcome"))?;
        Ok(Self { request, outcome })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyPool, KeyUse, Role};
    use crate::secret::SecretBytes;

    fn sample() -> AppKeys {
        let mut pool = KeyPool::new(Role::Transmitter);
        pool.append(
            crate::keys::BlockId(1),
            SecretBytes::from_slice(&[7u8; 256]),
        )
        .unwrap();
        let (key_ref, _) = pool.take(KeyUse::Application, 64).unwrap();
        AppKeys {
            request: 42,
            master_sae: "sae-a".into(),
            slave_sae: "sae-b".into(),
            key_bytes: 32,
            key_ids: vec![Uuid::new_v4(), Uuid::new_v4()],
            refs: vec![key_ref],
        }
    }

    fn roundtrip(m: &AppKeys) -> Result<AppKeys, WireError> {
        let mut w = WireWriter::new();
        m.encode(&mut w);
        let bytes = w.finish();
        let mut r = WireReader::new(&bytes);
        let got = AppKeys::decode(&mut r)?;
        r.finish()?;
        Ok(got)
    }

    #[test]
    fn app_keys_roundtrip_and_hostile_input() {
        let m = sample();
        assert_eq!(roundtrip(&m).unwrap(), m);
        assert_eq!(m.total_bytes(), 64);
        let mut w = WireWriter::new();
        m.encode(&mut w);
        let bytes = w.finish();
        for cut in 0..bytes.len() {
            let mut r = WireReader::new(&bytes[..cut]);
            assert!(
                AppKeys::decode(&mut r).and_then(|_| r.finish()).is_err(),
                "cut {cut}"
            );
        }
        // No keys, too many keys, empty or long SAE IDs, zero-length keys.
        for bad in [
            AppKeys {
                key_ids: vec![],
                ..m.clone()
            },
            AppKeys {
                key_ids: vec![Uuid::nil(); MAX_APP_KEYS + 1],
                ..m.clone()
            },
            AppKeys {
                master_sae: String::new(),
                ..m.clone()
            },
            AppKeys {
                slave_sae: "x".repeat(MAX_SAE_ID + 1),
                ..m.clone()
            },
            AppKeys {
                key_bytes: 0,
                ..m.clone()
            },
            AppKeys {
                key_bytes: 1 << 20,
                ..m.clone()
            },
            AppKeys {
                refs: vec![],
                ..m.clone()
            },
        ] {
            assert!(roundtrip(&bad).is_err(), "{bad:?}");
        }
        // A huge count is refused before anything is allocated.
        let mut w = WireWriter::new();
        w.u64(1).bytes(b"a").bytes(b"b").u32(32).u32(u32::MAX);
        let bytes = w.finish();
        assert!(AppKeys::decode(&mut WireReader::new(&bytes)).is_err());
    }

    #[test]
    fn ack_roundtrip_and_hostile_input() {
        for outcome in [
            AckOutcome::Accepted,
            AckOutcome::PendingFull,
            AckOutcome::UnknownSae,
            AckOutcome::PoolRefused,
            AckOutcome::Malformed,
        ] {
            let a = AppKeysAck {
                request: 7,
                outcome,
            };
            let mut w = WireWriter::new();
            a.encode(&mut w);
            let bytes = w.finish();
            assert_eq!(AppKeysAck::decode(&mut WireReader::new(&bytes)).unwrap(), a);
            assert!(AppKeysAck::decode(&mut WireReader::new(&bytes[..8])).is_err());
        }
        let mut w = WireWriter::new();
        w.u64(7).u8(99);
        assert!(AppKeysAck::decode(&mut WireReader::new(&w.finish())).is_err());
    }
}
