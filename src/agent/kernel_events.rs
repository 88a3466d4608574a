//! Routes XFRM kernel events to the tunnels they concern: soft and hard
//! EXPIREs by the SA's reqid (the direction from its destination), ACQUIREs
//! by the policy's template reqids, and a lost-events notice to every
//! tunnel. Owns no state beyond the routing table; must not act on events.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Tunnel;
use crate::rekey::RekeyInput;
use crate::xfrm::{XfrmEvent, XfrmEvents};

use super::tunnel_task::{TunnelEvent, direction_of};

/// A reqid's tunnel and the queue of its task.
pub struct Route {
    pub tunnel: Tunnel,
    pub tx: mpsc::Sender<TunnelEvent>,
}

/// Reads `events` until `cancel` and forwards each to its tunnel. Events
/// for reqids no tunnel has (another program's SAs are filtered out by the
/// subscription's ownership rule already) are ignored.
pub async fn dispatch(
    mut events: XfrmEvents,
    routes: HashMap<u32, Route>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => return,
            e = events.next() => e,
        };
        let event = match event {
            Ok(e) => {
                failures = 0;
                e
            }
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, "reading XFRM events failed");
                // Expiries may have been missed: every tunnel rechecks.
                for r in routes.values() {
                    let _ = r.tx.send(TunnelEvent::Resync).await;
                }
                let pause = Duration::from_millis(100 << failures.min(6));
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        match event {
            XfrmEvent::SoftExpire(ref x) | XfrmEvent::HardExpire(ref x) => {
                let hard = matches!(event, XfrmEvent::HardExpire(_));
                let Some(r) = routes.get(&x.id.reqid()) else {
                    continue;
                };
                let dir = direction_of(&r.tunnel, x.id.dst());
                let spi = x.id.spi();
                tracing::debug!(tunnel = %r.tunnel.name, ?dir, spi, hard, bytes = x.counters.bytes,
                    packets = x.counters.packets, "SA lifetime event");
                let input = if hard {
                    RekeyInput::HardExpire { dir, spi }
                } else {
                    RekeyInput::SoftExpire { dir, spi }
                };
                let _ = r.tx.send(TunnelEvent::Input(input)).await;
            }
            XfrmEvent::Acquire(a) => {
                for reqid in &a.reqids {
                    if let Some(r) = routes.get(reqid) {
                        tracing::debug!(tunnel = %r.tunnel.name, "ACQUIRE: traffic found no SA");
                        let _ = r.tx.send(TunnelEvent::Input(RekeyInput::Acquire)).await;
                    }
                }
            }
            XfrmEvent::ResyncNeeded => {
                tracing::warn!("XFRM events were lost; resynchronising every tunnel");
                for r in routes.values() {
                    let _ = r.tx.send(TunnelEvent::Resync).await;
                }
            }
        }
    }
}
