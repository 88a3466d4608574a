//! Per-peer key pools: QKD output blocks with IDs, consumed in lockstep by
//! both peers and never reused. The only module that holds pools.
//!
//! Owns: the pool of each peer ([`KeyPool`]), its durable, encrypted form
//! ([`PersistedPool`]), and the reconnect agreement ([`agreement`]). Must not
//! touch the network, the kernel or the QKD protocol: the QKD block driver
//! appends blocks, the rekey engine and the peer channel take keys, the agent
//! carries the messages.
//!
//! # Lockstep consumption
//!
//! The QKD block driver gives each output block an ID and both peers append
//! the same bytes under the same ID ([`KeyPool::append`]; IDs strictly
//! increase and are never reused). One side *initiates* a take
//! ([`KeyPool::take`]) and gets the key plus a [`KeyRef`] (block ID, offset,
//! length of each segment — public positions, no key bytes); it sends the
//! reference, and the other side *accepts* it ([`KeyPool::take_at`]), getting
//! the same bytes or an error if any of them is not held or already used.
//! Consumed bytes are zeroised at once and used-up blocks dropped.
//!
//! Both sides may initiate at the same time: every block is split into a
//! transmitter half and a receiver half, and each side's takes draw only from
//! its own half (see [`pool`] for why that is safe and what it costs).
//!
//! # Persistence
//!
//! [`PersistedPool`] records every change before returning a key:
//! `<dir>/<peer>.pool` (snapshot, rewritten atomically) plus
//! `<dir>/<peer>.journal` (encrypted change records), AES-256-GCM under a
//! pool key from a 0600 credential file ([`PoolKey::locate`]: a configured
//! path or `$CREDENTIALS_DIRECTORY/pool-key`). Format and nonce rules are in
//! [`store`]. A file that fails to authenticate or decode is an error naming
//! the file and the part, never an empty pool.
//!
//! # After a restart or lost messages
//!
//! The peers exchange [`PoolSummary`]s, keep what both hold
//! ([`KeyPool::apply_agreement`]: intersection of blocks, union of consumed
//! ranges) and compare [`HoldingsDigest`]s ([`agreement`]).

pub mod agreement;
pub mod audit;
pub mod bootstrap;
mod codec;
pub mod persisted;
pub mod pool;
mod range_set;
pub mod store;

pub use agreement::{
    AgreementCheck, AgreementOutcome, BlockSummary, HoldingsDigest, PoolSummary, agree,
};
pub use persisted::PersistedPool;
pub use pool::{
    BlockId, KeyPool, KeyRef, KeyUse, PoolCounters, PoolError, PoolStatus, Role, Segment,
    UseCounter,
};
pub use range_set::RangeSet;
pub use store::{POOL_KEY_CREDENTIAL, PoolKey, StoreError};

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod persisted_tests;
#[cfg(test)]
mod pool_tests;
