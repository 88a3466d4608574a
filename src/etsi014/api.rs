//! The JSON documents of ETSI GS QKD 014 V1.1.1 §6, with the spec's field
//! names, and their bounds.
//!
//! Decoding treats every document as hostile: bodies are bounded
//! ([`MAX_BODY_BYTES`]) before parsing, numbers and list lengths are checked
//! by [`KeyRequest::validate`] and the callers' limits, key_IDs must be
//! UUIDs (§6.3 "Key ID: UUID format", RFC 4122), keys base64 (RFC 4648).
//! Extensions are accepted as opaque JSON and, when mandatory, refused
//! unless understood (§6.2: "the KME shall return an error" for unsupported
//! mandatory extensions) — this implementation understands none.
//!
//! [`KeyItem`] holds key bytes: its Debug prints `<redacted>`, it is not
//! Clone, and it is decoded straight into [`SecretBytes`].

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::qkd::wire::{WireError, WireReader, WireWriter};
use crate::secret::SecretBytes;

/// Largest request or response body either end reads (a key container of
/// 1,024 keys of 1,024 bytes in base64 with IDs is ~1.5 MiB; more is an
/// attack or a misconfiguration).
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// Largest number of keys in one request or container this code accepts.
pub const MAX_KEYS_PER_DOCUMENT: usize = 1024;

/// Largest key this code handles, in bits (8 KiB of key per key_ID).
pub const MAX_KEY_BITS: u32 = 65_536;

/// §6.1 Status: what a KME can deliver between a master and a slave SAE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    #[serde(rename = "source_KME_ID")]
    pub source_kme_id: String,
    #[serde(rename = "target_KME_ID")]
    pub target_kme_id: String,
    #[serde(rename = "master_SAE_ID")]
    pub master_sae_id: String,
    #[serde(rename = "slave_SAE_ID")]
    pub slave_sae_id: String,
    /// Default key size in bits.
    pub key_size: u32,
    pub stored_key_count: u64,
    pub max_key_count: u64,
    pub max_key_per_request: u32,
    /// Bits.
    pub max_key_size: u32,
    /// Bits.
    pub min_key_size: u32,
    /// 0: no multicast (additional slave SAEs) supported.
    #[serde(rename = "max_SAE_ID_count")]
    pub max_sae_id_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_extension: Option<Value>,
}

/// §6.2 Key request (the body of a POST to enc_keys; GET carries `number`
/// and `size` as query parameters).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyRequest {
    /// Number of keys; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    /// Key size in bits; default the status's `key_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    #[serde(
        rename = "additional_slave_SAE_IDs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub additional_slave_sae_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_mandatory: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_optional: Option<Vec<Value>>,
}

/// §6.3 Key container: the answer to enc_keys and dec_keys.
#[derive(Default, Serialize, Deserialize)]
pub struct KeyContainer {
    pub keys: Vec<KeyItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_container_extension: Option<Value>,
}

/// One key of a container. The `key` field is base64 on the wire and
/// key bytes in memory.
#[derive(Serialize, Deserialize)]
pub struct KeyItem {
    #[serde(rename = "key_ID")]
    pub key_id: Uuid,
    #[serde(
        rename = "key_ID_extension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub key_id_extension: Option<Value>,
    #[serde(serialize_with = "ser_key", deserialize_with = "de_key")]
    pub key: SecretBytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_extension: Option<Value>,
}

/// Written by hand, like every key-holding type: key_IDs and a count,
/// never key bytes.
impl std::fmt::Debug for KeyContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&Uuid> = self.keys.iter().map(|k| &k.key_id).collect();
        f.debug_struct("KeyContainer")
            .field("key_ids", &ids)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for KeyItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyItem")
            .field("key_id", &self.key_id)
            .field("key", &format_args!("<redacted {} bytes>", self.key.len()))
            .finish_non_exhaustive()
    }
}

impl KeyItem {
    pub fn new(key_id: Uuid, key: SecretBytes) -> Self {
        Self {
            key_id,
            key_id_extension: None,
            key,
            key_extension: None,
        }
    }
}

fn ser_key<S: serde::Serializer>(key: &SecretBytes, s: S) -> Result<S::Ok, S::Error> {
    // The encoded copy is key material too: zeroised after serialisation.
    let encoded = Zeroizing::new(B64.encode(key.expose()));
    s.serialize_str(&encoded)
}

fn de_key<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretBytes, D::Error> {
    let text = Zeroizing::new(String::deserialize(d)?);
    let max = (MAX_KEY_BITS / 8) as usize;
    if text.len() > max.div_ceil(3) * 4 {
        return Err(serde::de::Error::custom(format_args!(
            "key longer than {MAX_KEY_BITS} bits"
        )));
    }
    let bytes = Zeroizing::new(
        B64.decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("key is not valid base64"))?,
    );
    Ok(SecretBytes::from_slice(&bytes))
}

/// §6.4 Key IDs: the body of a POST to dec_keys (GET carries one
/// `key_ID` query parameter).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyIds {
    #[serde(rename = "key_IDs")]
    pub key_ids: Vec<KeyIdItem>,
    #[serde(
        rename = "key_IDs_extension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub key_ids_extension: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyIdItem {
    #[serde(rename = "key_ID")]
    pub key_id: Uuid,
    #[serde(
        rename = "key_ID_extension",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub key_id_extension: Option<Value>,
}

impl KeyIds {
    pub fn new(ids: impl IntoIterator<Item = Uuid>) -> Self {
        Self {
            key_ids: ids
                .into_iter()
                .map(|key_id| KeyIdItem {
                    key_id,
                    key_id_extension: None,
                })
                .collect(),
            key_ids_extension: None,
        }
    }
}

/// §6.5 Error: the body of every 400, 401 and 503 answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<Value>>,
}

impl ErrorBody {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            details: None,
        }
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        let mut map = serde_json::Map::new();
        map.insert(key.to_owned(), value.into());
        self.details
            .get_or_insert_with(Vec::new)
            .push(Value::Object(map));
        self
    }
}

/// Why a document is refused. Messages name fields, never key bytes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("body of {len} bytes exceeds the {MAX_BODY_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("{field} = {value} is out of range ({why})")]
    OutOfRange {
        field: &'static str,
        value: u64,
        why: String,
    },
    #[error("mandatory extension {0:?} is not supported")]
    UnsupportedExtension(String),
    #[error("additional slave SAEs (key multicast) are not supported")]
    Multicast,
    #[error("key_ID {0} appears twice")]
    DuplicateKeyId(Uuid),
}

/// Parses a body after checking its size. Serde's error text names the
/// field and position, never a value.
pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::TooLarge { len: body.len() });
    }
    serde_json::from_slice(body).map_err(|e| ApiError::Json(redacted_json_error(&e)))
}

/// serde_json's message may quote a string value (which could be a key);
/// keep its category and position only.
fn redacted_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "I/O error",
        Category::Syntax => "syntax error",
        Category::Data => "wrong type or value",
        Category::Eof => "unexpected end of input",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// Limits a KME applies to a key request (§5.2, from its status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    pub default_size: u32,
    pub max_per_request: u32,
    pub min_size: u32,
    pub max_size: u32,
}

/// A key request after defaults and checks: `number` keys of `size_bits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckedRequest {
    pub number: u32,
    pub size_bits: u32,
}

impl KeyRequest {
    /// Applies defaults and checks the request against `limits`; refuses
    /// multicast and every mandatory extension (none is supported).
    pub fn validate(&self, limits: &RequestLimits) -> Result<CheckedRequest, ApiError> {
        if let Some(ext) = self.extension_mandatory.iter().flatten().next() {
            let name = match ext {
                Value::Object(m) => m.keys().next().cloned().unwrap_or_default(),
                other => other.to_string(),
            };
            return Err(ApiError::UnsupportedExtension(name));
        }
        if self
            .additional_slave_sae_ids
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        {
            return Err(ApiError::Multicast);
        }
        let number = self.number.unwrap_or(1);
        if number == 0 || number > limits.max_per_request {
            return Err(ApiError::OutOfRange {
                field: "number",
                value: number.into(),
                why: format!("1..={}", limits.max_per_request),
            });
        }
        let size_bits = self.size.unwrap_or(limits.default_size);
        if size_bits < limits.min_size
            || size_bits > limits.max_size
            || !size_bits.is_multiple_of(8)
        {
            return Err(ApiError::OutOfRange {
                field: "size",
                value: size_bits.into(),
                why: format!(
                    "a multiple of 8 in {}..={} bits",
                    limits.min_size, limits.max_size
                ),
            });
        }
        Ok(CheckedRequest { number, size_bits })
    }
}

impl KeyIds {
    /// Checks the list: 1..=`max` entries, no key_ID twice.
    pub fn validate(&self, max: usize) -> Result<Vec<Uuid>, ApiError> {
        let n = self.key_ids.len();
        if n == 0 || n > max {
            return Err(ApiError::OutOfRange {
                field: "key_IDs",
                value: n as u64,
                why: format!("1..={max} entries"),
            });
        }
        let mut seen = std::collections::HashSet::with_capacity(n);
        for item in &self.key_ids {
            if !seen.insert(item.key_id) {
                return Err(ApiError::DuplicateKeyId(item.key_id));
            }
        }
        Ok(self.key_ids.iter().map(|i| i.key_id).collect())
    }
}

/// Key_IDs on the peer channel (AppKeys, key offers): a count (1..=`max`),
/// then each ID as two big-endian u64 halves.
pub fn encode_key_ids(w: &mut WireWriter, ids: &[Uuid]) {
    w.u32(ids.len() as u32);
    for id in ids {
        let v = id.as_u128();
        w.u64((v >> 64) as u64).u64(v as u64);
    }
}

/// Reads what [`encode_key_ids`] wrote; a count of 0 or above `max` is an
/// error before anything is allocated.
pub fn decode_key_ids(
    r: &mut WireReader<'_>,
    what: &'static str,
    max: usize,
) -> Result<Vec<Uuid>, WireError> {
    let n = r.count(what, max)?;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let hi = r.u64(what)?;
        let lo = r.u64(what)?;
        ids.push(Uuid::from_u128((u128::from(hi) << 64) | u128::from(lo)));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests;
