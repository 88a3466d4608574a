//! Operations: what the agent shows to the people and tools that run it.
//!
//! Owns the status board ([`StatusBoard`]: per-peer, per-tunnel figures and
//! the alarm list), its views (the human text of `qkd-ipsec status`, JSON,
//! Prometheus metrics), the servers that publish them (a 0600 Unix socket
//! and a small HTTP endpoint), systemd readiness and watchdog notifications,
//! and the tracing setup for terminals and journald. Must not touch keys,
//! pools, the kernel or the peer channel: the agent copies public figures in
//! through [`PeerReporter`] and [`TunnelReporter`], and nothing here can
//! reach back.
//!
//! # How the agent uses it
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use qkd_ipsec::ops::*;
//! use tokio_util::{sync::CancellationToken, task::TaskTracker};
//!
//! let board = StatusBoard::new("gw-a");
//! let peer = board.register_peer("gw-b", PeerRole::Transmitter);
//! let tunnel = board.register_tunnel("site-b", "gw-b");
//!
//! let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
//! StatusServer::bind(DEFAULT_STATUS_SOCKET.as_ref())?
//!     .spawn(board.clone(), &tracker, cancel.clone());
//! MetricsServer::bind("127.0.0.1:9477".parse()?)
//!     .await?
//!     .spawn(board.clone(), &tracker, cancel.clone());
//! let notify = std::sync::Arc::new(SystemdNotify::from_env()?);
//! let liveness = Liveness::new();
//! spawn_notify_task(notify.clone(), liveness.clone(), board.clone(), &tracker, cancel.clone());
//!
//! // ... from the tasks that own the link and the tunnel:
//! tunnel.sa_installed(1, 0xc000_0001, 0xc000_0002, RekeyCause::Startup);
//! notify.ready()?;
//! // ... in the supervisor's main loop, at least every watchdog period / 4:
//! liveness.beat();
//! # let _ = peer;
//! # Ok(()) }
//! ```

pub mod alarm;
mod alarm_desk;
pub mod board;
pub mod logging;
pub mod metrics;
pub mod metrics_server;
pub mod notify;
mod peer_entry;
pub mod render;
pub mod snapshot;
pub mod status_server;
mod tunnel_entry;

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

pub use alarm::{Alarm, AlarmKind, AuthSource, QberBasis};
pub use board::{BoardOptions, Clock, KmeDelivery, RelayEvent, StatusBoard};
pub use logging::{LogFormat, init_logging};
pub use metrics::render_metrics;
pub use metrics_server::{MetricsServer, MetricsServerError};
pub use notify::{Liveness, NotifyError, SystemdNotify, spawn_notify_task};
pub use peer_entry::{PeerReporter, key_use_name};
pub use render::{render_text, summary_line};
pub use snapshot::*;
pub use status_server::{
    DEFAULT_STATUS_SOCKET, StatusFormat, StatusQueryError, StatusServer, StatusServerError,
    query_status,
};
pub use tunnel_entry::TunnelReporter;

// A panic in one updater must not take status down with it: the data behind
// a poisoned lock is plain numbers, still worth showing.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
