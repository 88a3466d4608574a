//! The agent: one per gateway. Runs the QKD link with each peer over the
//! peer channel, keeps the per-peer key pools, and keeps every configured
//! tunnel keyed through the rekey engines and the XFRM layer.
//!
//! Task layout (all owned by one `TaskTracker`, stopped by one
//! `CancellationToken`):
//!
//! * per peer: the peer channel ([`crate::peer::PeerLink`]), a
//!   [`peer_task::PeerTask`] (pool agreement per session, control dispatch,
//!   channel-key switches) and either a [`qkd_task::QkdTask`] (a simulated
//!   QKD link) or an [`etsi014_task::Etsi014Task`] (keys from a QKD
//!   device's KME over ETSI GS QKD 014);
//! * per tunnel: a tunnel task driving its rekey engine;
//! * one XFRM event listener dispatching expiries and acquires by reqid;
//! * the status socket, metrics and the systemd watchdog;
//! * when configured, the ETSI 014 KME for local applications, whose keys
//!   come from the peers' pools ([`app_keys`]).
//!
//! This module wires; it holds no protocol logic of its own.

mod app_keys;
pub mod control;
pub mod etsi014_task;
mod kernel_events;
mod key_supply;
mod peer_status;
pub mod peer_task;
pub mod qkd_task;
pub mod relay_task;
mod supervisor;
pub mod tunnel_task;

pub use supervisor::run;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Link(#[from] crate::qkd::link::LinkError),
    #[error(transparent)]
    Xfrm(#[from] crate::xfrm::XfrmError),
    #[error(transparent)]
    Peer(#[from] crate::peer::PeerError),
    #[error(transparent)]
    Store(#[from] crate::keys::StoreError),
    #[error("agent task failed: {0}")]
    Task(String),
    #[error("{what}: {reason}")]
    Setup { what: String, reason: String },
}
