//! The agent as a KME for local applications: an ETSI GS QKD 014 V1.1.1
//! key-delivery server (§5: Get status, Get key, Get key with key IDs).
//!
//! Owns the HTTPS endpoints (mutual TLS only: the caller's SAE ID is its
//! client certificate's CN), the map of which SAE may get keys shared with
//! which peer ([`SaeDirectory`]), the request bounds, the table of keys a
//! peer KME sent for local slave SAEs ([`PendingTable`]) and the control
//! messages that carry key_IDs between the two KMEs of a link
//! ([`AppKeys`], [`AppKeysAck`]). Reads keys through a [`KeyService`]; the
//! agent implements it over the per-peer pools (keys taken with
//! [`crate::keys::KeyUse::Application`], so no SA ever used those bytes)
//! and carries the messages. Must not touch pools, the kernel or the peer
//! channel itself, and never puts key bytes in a log line or an error.
//!
//! The two agents of a link are the two KMEs. SAE A (behind gw-a) calls
//! `enc_keys` at gw-a naming SAE B (behind gw-b) as slave; gw-a takes the
//! keys from its pool shared with gw-b, names each with a UUID v4 key_ID,
//! sends the key_IDs and the pool positions to gw-b, and answers SAE A
//! once gw-b has confirmed. gw-b took the same bytes and keeps them, under
//! their key_IDs, until SAE B fetches them with `dec_keys` (master = SAE A):
//! each key_ID is delivered once to each side.
//!
//! | file | owns |
//! |------|------|
//! | `directory` | SAE IDs, the peers behind them, the settings of the KME |
//! | `service` | [`KeyService`]: the seam between HTTP and the pools |
//! | `pending` | keys waiting for their slave SAE's `dec_keys` |
//! | `wire` | AppKeys / AppKeysAck on the peer control stream |
//! | `server` | routes, query and body parsing, answers and error bodies |
//! | `memory` | an in-memory [`KeyService`] pair for tests and benches |

mod directory;
pub mod memory;
mod pending;
mod server;
mod service;
mod wire;

#[cfg(test)]
mod server_tests;

pub use directory::{KmeSettings, SaeDirectory};
pub use memory::MemoryKeyService;
pub use pending::{PendingError, PendingTable};
pub use server::{KME_LIMITS, KmeServer, KmeStartError};
pub use service::{
    DecRequest, DeliveryLog, EncRequest, KeyService, KeySupply, NoLog, ServiceError,
};
pub use wire::{AckOutcome, AppKeys, AppKeysAck, MAX_APP_KEYS, MAX_APP_REFS};
