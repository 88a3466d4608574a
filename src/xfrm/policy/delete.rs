//! XFRM_MSG_DELPOLICY for policies of ours.

use netlink_packet_xfrm::policy::DelGetMessage;
use netlink_packet_xfrm::{UserPolicyId, XFRM_MSG_DELPOLICY};
use nix::errno::Errno;

use super::PolicyId;
use super::add::mark_and_if_id;
use crate::xfrm::socket::Reply;
use crate::xfrm::{XfrmError, XfrmHandle};

impl XfrmHandle {
    /// Deletes one policy of ours: by kernel index when known (from a dump),
    /// else by selector, direction and mark.
    pub async fn delete_policy(&self, id: &PolicyId) -> Result<(), XfrmError> {
        const OP: &str = "delete policy";
        if !self.ownership.owns_policy(&[id.reqid()], id.mark()) {
            return Err(XfrmError::NotOwned {
                what: id.to_string(),
                ownership: self.ownership.to_string(),
            });
        }
        let message = DelGetMessage {
            user_policy_id: UserPolicyId {
                selector: id.selector().to_kernel(),
                index: id.index().unwrap_or(0),
                direction: id.direction().to_kernel(),
            },
            nlas: mark_and_if_id(id.mark(), id.if_id),
        };
        let result = self
            .socket
            .request(OP, XFRM_MSG_DELPOLICY, &message, Reply::Ack, |_, _| Ok(()))
            .await;
        match result {
            Err(XfrmError::Kernel {
                errno: Errno::ENOENT | Errno::ESRCH,
                ..
            }) => Err(XfrmError::NotFound {
                operation: OP,
                what: id.to_string(),
            }),
            other => other,
        }
    }
}
