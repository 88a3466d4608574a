//! Kernel IPsec (XFRM) over netlink: SAs, policies, events — netns-aware.
//!
//! The only module that talks to the kernel's XFRM. It touches only objects
//! it owns (recognised by reqid range, SPI range or mark, see
//! [`Ownership`]) and never flushes a whole SAD/SPD. Netlink messages that
//! carry key bytes are never logged and their buffers are zeroised after
//! sending; replies that carry keys (GETSA) are parsed without copying the
//! key and their buffers are wiped.
//!
//! Layout, one folder per object and one file per verb:
//!
//! | path | owns |
//! |------|------|
//! | [`state`] | [`SaSpec`], [`SaId`], add/complete (NEWSA/UPDSA), delete, get/list, allocspi |
//! | [`policy`] | [`PolicySpec`], [`PolicyId`], add, delete, list |
//! | [`events`] | the EXPIRE/ACQUIRE stream |
//! | [`rekey`] | the make-before-break primitive |
//! | `socket` | framing, acks, dumps, zeroised buffers |
//! | `ownership`, `selector`, `error` | shared types |
//!
//! A [`XfrmHandle`] is bound to one network namespace (its socket was created
//! there) and one [`Ownership`] rule; every verb is a method on it.

mod error;
pub mod events;
mod ownership;
pub mod policy;
pub mod rekey;
mod selector;
mod socket;
pub mod state;

pub use error::{AEAD_NAME, MissingModule, XfrmError};
pub use events::{AcquireRequest, ExpiredSa, XfrmEvent, XfrmEvents};
pub use ownership::{FIRST_USABLE_SPI, Ownership, XfrmMark};
pub use policy::{Direction, PolicyId, PolicyInfo, PolicySpec, PolicyTemplate};
pub use rekey::{
    ReceiverSide, RekeyOutcome, RekeyStep, RekeyTiming, SenderSide, Side, rekey_direction,
};
pub use selector::{Prefix, TrafficSelector};
pub use state::{Lifetimes, Limits, Mode, ReplayProtection, SaCounters, SaId, SaInfo, SaSpec};

use netlink_packet_core::Emitable;

use crate::netns::Netns;
use socket::XfrmSocket;

/// A connection to the XFRM layer of one network namespace, acting only on
/// objects its [`Ownership`] rule claims.
pub struct XfrmHandle {
    socket: XfrmSocket,
    netns: Netns,
    ownership: Ownership,
}

impl std::fmt::Debug for XfrmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XfrmHandle")
            .field("netns", &self.netns)
            .field("ownership", &self.ownership)
            .finish_non_exhaustive()
    }
}

/// What [`XfrmHandle::remove_owned`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub sas: usize,
    pub policies: usize,
}

/// Several failures from one clean-up; every object was attempted.
#[derive(Debug, thiserror::Error)]
#[error("{} of the owned objects could not be removed: {}", errors.len(), errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct RemovalErrors {
    pub removed: Removed,
    pub errors: Vec<XfrmError>,
}

impl XfrmHandle {
    /// Opens an XFRM netlink socket inside `netns`. Must be called inside a
    /// tokio runtime. Fails with [`XfrmError::XfrmUserMissing`] when the
    /// kernel has no xfrm_user.
    pub async fn connect(netns: &Netns, ownership: Ownership) -> Result<Self, XfrmError> {
        ownership.validate()?;
        Ok(Self {
            socket: XfrmSocket::open(netns)?,
            netns: netns.clone(),
            ownership,
        })
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    /// Removes every policy, then every SA, that the ownership rule claims,
    /// and nothing else. Attempts all of them; objects that vanish meanwhile
    /// (hard expiry) are not errors.
    pub async fn remove_owned(&self) -> Result<Removed, RemovalErrors> {
        let mut removed = Removed::default();
        let mut errors = Vec::new();
        // Policies first: with the SAs gone but policies present, traffic
        // would raise ACQUIREs (and be dropped) during the clean-up.
        match self.list_owned_policies().await {
            Ok(policies) => {
                for p in policies {
                    match self.delete_policy(&p.id).await {
                        Ok(()) => removed.policies += 1,
                        Err(XfrmError::NotFound { .. }) => {}
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        match self.list_owned_sas().await {
            Ok(sas) => {
                for sa in sas {
                    match self.delete_sa(&sa.id).await {
                        Ok(()) => removed.sas += 1,
                        Err(XfrmError::NotFound { .. }) => {}
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        if errors.is_empty() {
            Ok(removed)
        } else {
            Err(RemovalErrors { removed, errors })
        }
    }
}

/// An empty request body (dump requests carry no filter).
pub(crate) struct EmptyPayload;

impl Emitable for EmptyPayload {
    fn buffer_len(&self) -> usize {
        0
    }
    fn emit(&self, _buffer: &mut [u8]) {}
}
