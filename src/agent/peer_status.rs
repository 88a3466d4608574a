//! Copies one peer's public figures to the status board: QKD block results
//! and pool levels (as the QKD task reports them), and the peer channel's
//! state and counters. Also tells the peer's tunnels when the pool has
//! grown. Holds no key material and decides nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::keys::PersistedPool;
use crate::ops::PeerReporter;
use crate::peer::PeerHandle;
use crate::qkd::link::BlockReport;
use crate::rekey::RekeyInput;

use super::qkd_task::{QkdObserver, lock};
use super::tunnel_task::TunnelEvent;

/// How often channel counters and pool levels are refreshed besides events.
const REFRESH: Duration = Duration::from_secs(2);

pub struct PeerObserver {
    pub reporter: PeerReporter,
    pub pool: Arc<Mutex<PersistedPool>>,
    /// The queues of this peer's tunnels.
    pub tunnels: Vec<mpsc::Sender<TunnelEvent>>,
}

impl QkdObserver for PeerObserver {
    fn block_done(&self, peer: &str, report: &BlockReport, appended: bool) {
        self.reporter.record_block(report);
        match report.aborted {
            None => tracing::info!(%peer, block = report.block_id, final_bits = report.final_bits,
                qber_key = report.qber_key().unwrap_or(f64::NAN), qber_test = report.qber_test(),
                appended, "QKD block done"),
            Some(cause) => tracing::warn!(%peer, block = report.block_id, cause = cause.name(),
                qber_key = report.qber_key().unwrap_or(f64::NAN), qber_test = report.qber_test(),
                "QKD block aborted: no key from it"),
        }
    }

    fn pool_changed(&self, _peer: &str) {
        self.reporter.set_pool(&lock(&self.pool).status());
        for t in &self.tunnels {
            // A full queue already holds news for the tunnel.
            let _ = t.try_send(TunnelEvent::Input(RekeyInput::PoolRefilled));
        }
    }
}

/// Follows the link's state (and refreshes counters and pool levels) until
/// `cancel`.
pub async fn report_link(
    handle: PeerHandle,
    reporter: PeerReporter,
    pool: Arc<Mutex<PersistedPool>>,
    cancel: CancellationToken,
) {
    let mut state = handle.state();
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = state.changed() => if changed.is_err() { return },
            _ = tick.tick() => reporter.set_pool(&lock(&pool).status()),
        }
        let now = state.borrow_and_update().clone();
        reporter.set_link(&now, &handle.counters());
    }
}
