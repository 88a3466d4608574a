//! The seam between the HTTP layer and where keys come from. The server
//! has checked the caller, the SAE pair and the bounds before it calls a
//! [`KeyService`]; the service only finds, shares and hands out keys.

use std::future::Future;

use thiserror::Error;
use uuid::Uuid;

use super::wire::AckOutcome;
use crate::etsi014::api::KeyItem;

/// `number` keys of `size_bits` for `master` (the caller) to share with
/// `slave`, from the pool shared with `peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncRequest {
    pub peer: String,
    pub master: String,
    pub slave: String,
    pub number: u32,
    pub size_bits: u32,
}

/// The keys `master` shared with `slave` (the caller) under `key_ids`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecRequest {
    pub peer: String,
    pub master: String,
    pub slave: String,
    pub key_ids: Vec<Uuid>,
}

/// What a peer's pool can give applications now, and at most.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeySupply {
    pub stored_bytes: u64,
    pub max_bytes: u64,
}

/// Why keys were not delivered. Never carries key bytes; the server maps
/// each to its HTTP status (§7: 400 for a request that cannot be served
/// as asked, 503 for a KME that cannot serve now).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ServiceError {
    #[error("not enough key material: {available_bytes} bytes available")]
    NotEnoughKey { available_bytes: u64 },
    #[error("the link to the slave SAE's KME is down or its key pool is not agreed")]
    PeerUnavailable,
    #[error("the slave SAE's KME did not confirm the keys in time")]
    PeerTimeout,
    #[error("the slave SAE's KME refused the keys ({0})")]
    PeerRefused(AckOutcome),
    #[error("key_IDs unknown or already delivered")]
    UnknownKeyIds,
    #[error("unauthorized")]
    NotYourKeys,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<super::PendingError> for ServiceError {
    fn from(e: super::PendingError) -> Self {
        match e {
            super::PendingError::NotYours => ServiceError::NotYourKeys,
            super::PendingError::Unknown => ServiceError::UnknownKeyIds,
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

/// Where keys come from. Implemented by the agent over its pools, and by
/// [`super::MemoryKeyService`] for tests and benches.
pub trait KeyService: Send + Sync + 'static {
    /// What the pool shared with `peer` holds for applications.
    fn supply(&self, peer: &str) -> KeySupply;

    /// New keys, confirmed by the slave SAE's KME before they return.
    fn enc_keys(
        &self,
        req: EncRequest,
    ) -> impl Future<Output = Result<Vec<KeyItem>, ServiceError>> + Send;

    /// Keys the master's KME sent; each is removed as it is returned, and
    /// a request naming any key_ID not held for this pair returns none.
    fn dec_keys(
        &self,
        req: DecRequest,
    ) -> impl Future<Output = Result<Vec<KeyItem>, ServiceError>> + Send;
}

/// Counts deliveries for status and metrics (public numbers only).
pub trait DeliveryLog: Send + Sync + 'static {
    /// `keys` keys delivered to `sae` by enc_keys.
    fn enc_keys(&self, sae: &str, keys: u64);
    /// `keys` keys delivered to `sae` by dec_keys.
    fn dec_keys(&self, sae: &str, keys: u64);
    /// A request refused (any 4xx/5xx answer). `sae` is a configured SAE
    /// ID, or `"(unknown)"` for a certificate no `[[kme.sae]]` names.
    fn refused(&self, sae: &str);
}

/// A log that counts nothing.
pub struct NoLog;

impl DeliveryLog for NoLog {
    fn enc_keys(&self, _: &str, _: u64) {}
    fn dec_keys(&self, _: &str, _: u64) {}
    fn refused(&self, _: &str) {}
}
