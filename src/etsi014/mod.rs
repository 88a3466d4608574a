//! ETSI GS QKD 014 V1.1.1: the REST key-delivery interface between a key
//! management entity (KME) and the secure application entities (SAEs) it
//! serves.
//!
//! Owns the interface's JSON documents ([`api`]), shared by both ends this
//! project has: the client that takes keys from a QKD device's KME
//! ([`client`]; with [`source`] and [`seen`] a key source beside
//! [`crate::qkd`], feeding [`crate::keys`]) and the agent's own KME server
//! for local applications. Must not hold pools or talk to the
//! kernel; key bytes leave the documents only as [`crate::secret`] types.
//!
//! Spec sections cited in the code are those of ETSI GS QKD 014 V1.1.1
//! (2019-02): §5 the methods, §6 the data formats.

pub mod api;
pub mod client;
pub mod seen;
pub mod source;

pub use api::{
    ApiError, CheckedRequest, ErrorBody, KeyContainer, KeyIdItem, KeyIds, KeyItem, KeyRequest,
    MAX_BODY_BYTES, RequestLimits, Status, decode,
};

pub use client::{KmeCall, KmeClient, KmeClientConfig, KmeError, plan_request};
