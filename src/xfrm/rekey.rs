//! The make-before-break rekey of one direction of a tunnel.
//!
//! Traffic flows sender → receiver through an SA installed twice: as the
//! outbound SA in the sender's SAD and as the inbound SA in the receiver's.
//! Replacing it without losing a packet needs this order (DESIGN.md; the
//! order strongSwan uses, and the only one that works on kernels ≥ ~6.13
//! which cache the outbound state at the policy):
//!
//! 1. receiver: add the new inbound SA (it picks the SPI);
//! 2. sender: add the new outbound SA under that SPI;
//! 3. sender: delete the old outbound SA — traffic moves to the new one;
//! 4. receiver: after a grace period (packets still in flight under the old
//!    SPI), delete the old inbound SA.
//!
//! In the agent, sender and receiver are different machines coordinated over
//! the peer channel, so each side's steps are exposed on its own
//! ([`ReceiverSide`], [`SenderSide`]) in the order given by
//! [`RekeyStep::ORDER`]. [`rekey_direction`] runs all four against two
//! handles for tests and benchmarks.

use std::time::Duration;

use super::state::{SaCounters, SaId, SaSpec};
use super::{XfrmError, XfrmHandle};

/// strongSwan keeps old inbound SAs 5 s after a rekey; in-flight packets
/// need far less on a LAN, but a WAN with queues can hold them for seconds.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Pause between adding the new outbound SA and deleting the old one. On
/// kernels that pick the newest SA for new bundles (adding an SA bumps the
/// genid of its siblings, invalidating cached bundles), traffic has moved by
/// then; a packet that looked up the old bundle just before, and is still
/// on its way to `xfrm_output`, would be dropped ("XfrmOutStateInvalid") if
/// the old SA vanished under it. 50 ms covers scheduling stalls even of an
/// emulated CPU and costs nothing at rekey intervals of minutes.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(50);

/// The waits of a rekey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RekeyTiming {
    /// Sender: between step 2 and step 3.
    pub settle: Duration,
    /// Receiver: between step 3 (confirmed by the sender) and step 4.
    pub grace: Duration,
}

impl Default for RekeyTiming {
    fn default() -> Self {
        Self {
            settle: DEFAULT_SETTLE,
            grace: DEFAULT_GRACE,
        }
    }
}

/// Which machine performs a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Receiver,
    Sender,
}

/// The steps of one rekey, in the only safe order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RekeyStep {
    AddNewInbound,
    AddNewOutbound,
    DeleteOldOutbound,
    DeleteOldInbound,
}

impl RekeyStep {
    /// The order the steps must run in; each may start only once the
    /// previous one has completed on its side.
    pub const ORDER: [RekeyStep; 4] = [
        RekeyStep::AddNewInbound,
        RekeyStep::AddNewOutbound,
        RekeyStep::DeleteOldOutbound,
        RekeyStep::DeleteOldInbound,
    ];

    pub fn side(self) -> Side {
        match self {
            RekeyStep::AddNewInbound | RekeyStep::DeleteOldInbound => Side::Receiver,
            RekeyStep::AddNewOutbound | RekeyStep::DeleteOldOutbound => Side::Sender,
        }
    }
}

/// The receiver's half of a rekey: steps 1 and 4.
pub struct ReceiverSide<'h> {
    handle: &'h XfrmHandle,
    old_inbound: Option<SaId>,
    grace: Duration,
}

impl<'h> ReceiverSide<'h> {
    /// `old_inbound` is `None` for the first keying of a tunnel.
    pub fn new(handle: &'h XfrmHandle, old_inbound: Option<SaId>, grace: Duration) -> Self {
        Self {
            handle,
            old_inbound,
            grace,
        }
    }

    /// Step 1: installs the new inbound SA. With `spec.spi == 0` (or a
    /// colliding SPI) the kernel picks a free SPI in the owned range;
    /// `spec.spi` then holds the SPI to send to the peer for step 2.
    pub async fn add_new_inbound(&self, spec: &mut SaSpec) -> Result<SaId, XfrmError> {
        self.handle.add_inbound_sa(spec).await
    }

    /// Step 4: waits the grace period, then deletes the old inbound SA and
    /// returns what it carried (exact: nothing uses it any more). `None` if
    /// there was none or the kernel already removed it (hard expiry).
    pub async fn delete_old_inbound(&self) -> Result<Option<SaCounters>, XfrmError> {
        let Some(old) = &self.old_inbound else {
            return Ok(None);
        };
        tokio::time::sleep(self.grace).await;
        tolerate_gone(self.handle.retire_sa(old).await)
    }
}

/// The sender's half of a rekey: steps 2 and 3.
pub struct SenderSide<'h> {
    handle: &'h XfrmHandle,
    old_outbound: Option<SaId>,
}

impl<'h> SenderSide<'h> {
    pub fn new(handle: &'h XfrmHandle, old_outbound: Option<SaId>) -> Self {
        Self {
            handle,
            old_outbound,
        }
    }

    /// Step 2: installs the new outbound SA; `spec.spi` must be the SPI the
    /// receiver reported after step 1.
    pub async fn add_new_outbound(&self, spec: &SaSpec) -> Result<SaId, XfrmError> {
        self.handle.add_sa(spec).await
    }

    /// Step 3: deletes the old outbound SA, moving traffic to the new one.
    /// Run it [`RekeyTiming::settle`] after step 2 (see [`DEFAULT_SETTLE`]).
    /// Returns its counters read just before deletion (a packet or two may
    /// still go out in between). `None` if there was none or it is gone.
    pub async fn delete_old_outbound(&self) -> Result<Option<SaCounters>, XfrmError> {
        let Some(old) = &self.old_outbound else {
            return Ok(None);
        };
        tolerate_gone(self.handle.retire_sa(old).await)
    }
}

fn tolerate_gone(r: Result<SaCounters, XfrmError>) -> Result<Option<SaCounters>, XfrmError> {
    match r {
        Ok(c) => Ok(Some(c)),
        Err(XfrmError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a rekey replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyOutcome {
    /// The new SA (same id on both sides).
    pub new: SaId,
    /// Final counters of the old outbound SA at the sender.
    pub retired_outbound: Option<SaCounters>,
    /// Final counters of the old inbound SA at the receiver.
    pub retired_inbound: Option<SaCounters>,
}

/// Runs all four steps against two handles (receiver's and sender's
/// namespaces). `new_inbound` is the receiver's spec; `new_outbound` the
/// sender's spec of the same SA (same addresses, reqid and key — each side
/// derives it from the shared key); its SPI is overwritten with the one the
/// receiver chose. If step 2 fails, step 1 is undone and the old SAs stay in
/// place, so traffic is unaffected.
pub async fn rekey_direction(
    receiver: &XfrmHandle,
    sender: &XfrmHandle,
    old_inbound: Option<SaId>,
    old_outbound: Option<SaId>,
    mut new_inbound: SaSpec,
    mut new_outbound: SaSpec,
    timing: RekeyTiming,
) -> Result<RekeyOutcome, XfrmError> {
    let rx = ReceiverSide::new(receiver, old_inbound, timing.grace);
    let tx = SenderSide::new(sender, old_outbound);
    let new = rx.add_new_inbound(&mut new_inbound).await?;
    new_outbound.spi = new_inbound.spi;
    if let Err(e) = tx.add_new_outbound(&new_outbound).await {
        if let Err(undo) = receiver.delete_sa(&new).await {
            tracing::warn!(sa = %new, error = %undo, "could not undo the new inbound SA");
        }
        return Err(e);
    }
    if old_outbound.is_some() {
        tokio::time::sleep(timing.settle).await;
    }
    let retired_outbound = tx.delete_old_outbound().await?;
    let retired_inbound = rx.delete_old_inbound().await?;
    Ok(RekeyOutcome {
        new,
        retired_outbound,
        retired_inbound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_alternates_sides_as_make_before_break_requires() {
        let sides: Vec<Side> = RekeyStep::ORDER.iter().map(|s| s.side()).collect();
        assert_eq!(
            sides,
            vec![Side::Receiver, Side::Sender, Side::Sender, Side::Receiver]
        );
        // Both additions come before both deletions.
        let pos = |s| RekeyStep::ORDER.iter().position(|&x| x == s).unwrap();
        assert!(pos(RekeyStep::AddNewInbound) < pos(RekeyStep::AddNewOutbound));
        assert!(pos(RekeyStep::AddNewOutbound) < pos(RekeyStep::DeleteOldOutbound));
        assert!(pos(RekeyStep::DeleteOldOutbound) < pos(RekeyStep::DeleteOldInbound));
    }
}
