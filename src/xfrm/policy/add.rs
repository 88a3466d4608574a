//! XFRM_MSG_NEWPOLICY for policies of ours.

use netlink_packet_xfrm::policy::ModifyMessage;
use netlink_packet_xfrm::{
    Address, IPPROTO_ESP, Id, LifetimeConfig, Mark, UserPolicyInfo, UserTemplate,
    XFRM_MSG_NEWPOLICY, XFRM_POLICY_ALLOW, XFRM_SHARE_ANY, XfrmAttrs,
};
use nix::errno::Errno;

use super::{PolicyId, PolicySpec};
use crate::xfrm::selector::family_of;
use crate::xfrm::socket::Reply;
use crate::xfrm::state::Mode;
use crate::xfrm::{XfrmError, XfrmHandle};

pub(crate) fn mark_and_if_id(
    mark: Option<crate::xfrm::XfrmMark>,
    if_id: Option<u32>,
) -> Vec<XfrmAttrs> {
    let mut nlas = Vec::new();
    if let Some(m) = mark {
        nlas.push(XfrmAttrs::Mark(Mark {
            value: m.value,
            mask: m.mask,
        }));
    }
    if let Some(id) = if_id {
        nlas.push(XfrmAttrs::IfId(id));
    }
    nlas
}

pub(crate) fn policy_message(spec: &PolicySpec) -> ModifyMessage {
    let t = &spec.template;
    let (tsrc, tdst) = match t.mode {
        Mode::Tunnel => (Address::from_ip(&t.src), Address::from_ip(&t.dst)),
        // Transport templates match any endpoints (the packet's own).
        Mode::Transport => (Address::default(), Address::default()),
    };
    let template = UserTemplate {
        id: Id {
            daddr: tdst,
            spi: 0,
            proto: IPPROTO_ESP,
        },
        family: family_of(&t.dst),
        saddr: tsrc,
        reqid: t.reqid,
        mode: t.mode.to_kernel(),
        ..UserTemplate::default()
    };
    let mut nlas = vec![XfrmAttrs::Template(vec![template])];
    nlas.extend(mark_and_if_id(spec.mark, spec.if_id));
    ModifyMessage {
        user_policy_info: UserPolicyInfo {
            selector: spec.selector.to_kernel(),
            lifetime_cfg: LifetimeConfig::default(),
            priority: spec.priority,
            direction: spec.direction.to_kernel(),
            action: XFRM_POLICY_ALLOW,
            share: XFRM_SHARE_ANY,
            ..UserPolicyInfo::default()
        },
        nlas,
    }
}

impl XfrmHandle {
    /// Installs a policy of ours (its template reqid must be owned).
    pub async fn add_policy(&self, spec: &PolicySpec) -> Result<PolicyId, XfrmError> {
        const OP: &str = "add policy";
        spec.validate()?;
        let id = spec.id();
        if !self
            .ownership
            .owns_policy(&[spec.template.reqid], spec.mark)
        {
            return Err(XfrmError::NotOwned {
                what: id.to_string(),
                ownership: self.ownership.to_string(),
            });
        }
        let result = self
            .socket
            .request(
                OP,
                XFRM_MSG_NEWPOLICY,
                &policy_message(spec),
                Reply::Ack,
                |_, _| Ok(()),
            )
            .await;
        match result {
            Err(XfrmError::Kernel {
                errno: Errno::EEXIST,
                ..
            }) => Err(XfrmError::PolicyExists {
                what: format!("{} dir {}", spec.selector, spec.direction),
            }),
            Err(e) => Err(e),
            Ok(()) => Ok(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xfrm::TrafficSelector;
    use crate::xfrm::policy::{Direction, PolicyTemplate};
    use netlink_packet_xfrm::{XFRM_MODE_TUNNEL, XFRM_POLICY_OUT};

    #[test]
    fn tunnel_policy_has_one_esp_template_with_endpoints() {
        let spec = PolicySpec::new(
            TrafficSelector::between(
                "10.1.0.0/24".parse().unwrap(),
                "10.2.0.0/24".parse().unwrap(),
            ),
            Direction::Out,
            PolicyTemplate {
                src: "192.0.2.1".parse().unwrap(),
                dst: "192.0.2.2".parse().unwrap(),
                reqid: 0x5144_0001,
                mode: Mode::Tunnel,
            },
        );
        spec.validate().unwrap();
        let m = policy_message(&spec);
        assert_eq!(m.user_policy_info.direction, XFRM_POLICY_OUT);
        assert_eq!(m.user_policy_info.selector.prefixlen_d, 24);
        let XfrmAttrs::Template(t) = &m.nlas[0] else {
            panic!("no template")
        };
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].reqid, 0x5144_0001);
        assert_eq!(t[0].mode, XFRM_MODE_TUNNEL);
        assert_eq!(t[0].id.proto, IPPROTO_ESP);
        assert_eq!(
            t[0].id.daddr,
            Address::from_ip(&"192.0.2.2".parse().unwrap())
        );
        // All algorithms allowed (masks ~0), as iproute2 does.
        assert_eq!(t[0].ealgos, u32::MAX);
    }
}
