//! XFRM_MSG_DELSA for SAs of ours, and "retire" (read the final counters,
//! then delete) used by the rekey primitive to report what each generation
//! carried.

use netlink_packet_xfrm::XFRM_MSG_DELSA;
use nix::errno::Errno;

use super::get::sa_id_message;
use super::{SaCounters, SaId};
use crate::xfrm::socket::Reply;
use crate::xfrm::{XfrmError, XfrmHandle};

impl XfrmHandle {
    /// Deletes one SA of ours. [`XfrmError::NotFound`] if it is already
    /// gone (deleted, or hard-expired by the kernel).
    pub async fn delete_sa(&self, id: &SaId) -> Result<(), XfrmError> {
        const OP: &str = "delete SA";
        self.ownership
            .check_sa(id.reqid(), id.spi(), id.mark(), || id.to_string())?;
        let result = self
            .socket
            .request(
                OP,
                XFRM_MSG_DELSA,
                &sa_id_message(id),
                Reply::Ack,
                |_, _| Ok(()),
            )
            .await;
        match result {
            Err(XfrmError::Kernel {
                errno: Errno::ESRCH | Errno::ENOENT,
                ..
            }) => Err(XfrmError::NotFound {
                operation: OP,
                what: id.to_string(),
            }),
            other => other,
        }
    }

    /// Reads the SA's counters, then deletes it; returns the counters. Used
    /// when the SA no longer receives traffic (an old inbound SA after its
    /// grace period), so the figures are final.
    pub async fn retire_sa(&self, id: &SaId) -> Result<SaCounters, XfrmError> {
        let info = self.get_sa(id).await?;
        self.delete_sa(id).await?;
        Ok(info.counters)
    }
}
