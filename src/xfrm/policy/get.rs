//! The owned-policy dump (XFRM_MSG_GETPOLICY with NLM_F_DUMP). Policies
//! carry no keys; parsing is still bounded and length-checked because the
//! crate's message parsers slice without checking.

use netlink_packet_core::{NLA_TYPE_MASK, NlasIterator, parse_u32};
use netlink_packet_xfrm::{
    Mark, UserPolicyInfo, UserTemplate, XFRM_MSG_GETPOLICY, XFRM_MSG_NEWPOLICY,
    XFRM_USER_POLICY_INFO_LEN, XFRM_USER_TEMPLATE_LEN, XFRMA_IF_ID, XFRMA_MARK, XFRMA_TMPL,
};

use super::{Direction, PolicyId, PolicyInfo, PolicyTemplate};
use crate::xfrm::selector::address_of;
use crate::xfrm::state::Mode;
use crate::xfrm::{TrafficSelector, XfrmError, XfrmHandle, XfrmMark};

/// A parsed policy before the ownership decision.
pub(crate) struct RawPolicy {
    pub selector: Option<TrafficSelector>,
    pub direction: Option<Direction>,
    pub priority: u32,
    pub index: u32,
    pub mark: Option<XfrmMark>,
    pub if_id: Option<u32>,
    pub template_reqids: Vec<u32>,
    pub templates: Vec<PolicyTemplate>,
}

pub(crate) fn parse_policy(operation: &'static str, body: &[u8]) -> Result<RawPolicy, XfrmError> {
    let malformed = |detail: String| XfrmError::Malformed { operation, detail };
    if body.len() < XFRM_USER_POLICY_INFO_LEN {
        return Err(malformed(format!("policy message of {} bytes", body.len())));
    }
    let info = UserPolicyInfo::parse(&body[..XFRM_USER_POLICY_INFO_LEN])
        .map_err(|e| malformed(e.to_string()))?;
    let mut raw = RawPolicy {
        selector: TrafficSelector::from_kernel(&info.selector),
        direction: Direction::from_kernel(info.direction),
        priority: info.priority,
        index: info.index,
        mark: None,
        if_id: None,
        template_reqids: Vec::new(),
        templates: Vec::new(),
    };
    for nla in NlasIterator::new(&body[XFRM_USER_POLICY_INFO_LEN..]) {
        let nla = nla.map_err(|e| malformed(e.to_string()))?;
        let value = nla.value();
        match nla.kind() & NLA_TYPE_MASK {
            XFRMA_TMPL => {
                for chunk in value.chunks_exact(XFRM_USER_TEMPLATE_LEN) {
                    let t = UserTemplate::parse(chunk).map_err(|e| malformed(e.to_string()))?;
                    raw.template_reqids.push(t.reqid);
                    if let (Some(src), Some(dst), Some(mode)) = (
                        address_of(t.family, &t.saddr),
                        address_of(t.family, &t.id.daddr),
                        Mode::from_kernel(t.mode),
                    ) {
                        raw.templates.push(PolicyTemplate {
                            src,
                            dst,
                            reqid: t.reqid,
                            mode,
                        });
                    }
                }
            }
            XFRMA_MARK => {
                let m = Mark::parse(value).map_err(|e| malformed(e.to_string()))?;
                raw.mark = Some(XfrmMark {
                    value: m.value,
                    mask: m.mask,
                })
                .filter(|m| m.value != 0 || m.mask != 0);
            }
            XFRMA_IF_ID => {
                raw.if_id = Some(parse_u32(value).map_err(|e| malformed(e.to_string()))?)
            }
            _ => {}
        }
    }
    Ok(raw)
}

impl XfrmHandle {
    /// Every policy in the namespace that the ownership rule says is ours.
    pub async fn list_owned_policies(&self) -> Result<Vec<PolicyInfo>, XfrmError> {
        const OP: &str = "dump policies";
        let mut attempts = 0;
        loop {
            let mut owned = Vec::new();
            let result = self
                .socket
                .request(
                    OP,
                    XFRM_MSG_GETPOLICY,
                    &crate::xfrm::EmptyPayload,
                    crate::xfrm::socket::Reply::Dump,
                    |kind, body| {
                        if kind != XFRM_MSG_NEWPOLICY {
                            return Ok(());
                        }
                        let raw = parse_policy(OP, body)?;
                        if !self.ownership.owns_policy(&raw.template_reqids, raw.mark) {
                            return Ok(());
                        }
                        let (Some(selector), Some(direction)) = (raw.selector, raw.direction)
                        else {
                            return Ok(());
                        };
                        let reqid = raw
                            .template_reqids
                            .iter()
                            .copied()
                            .find(|r| self.ownership.reqids.contains(r))
                            .unwrap_or_default();
                        owned.push(PolicyInfo {
                            id: PolicyId {
                                selector,
                                direction,
                                mark: raw.mark,
                                if_id: raw.if_id,
                                index: Some(raw.index),
                                reqid,
                            },
                            priority: raw.priority,
                            templates: raw.templates,
                        });
                        Ok(())
                    },
                )
                .await;
            match result {
                Err(XfrmError::DumpInterrupted { .. }) if attempts < 5 => attempts += 1,
                Err(e) => return Err(e),
                Ok(()) => return Ok(owned),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xfrm::policy::PolicySpec;
    use crate::xfrm::policy::add::policy_message;
    use netlink_packet_core::Emitable;

    #[test]
    fn round_trips_our_own_message_layout() {
        let mut spec = PolicySpec::new(
            TrafficSelector::between(
                "10.1.0.0/24".parse().unwrap(),
                "10.2.0.0/24".parse().unwrap(),
            ),
            Direction::Fwd,
            PolicyTemplate {
                src: "192.0.2.2".parse().unwrap(),
                dst: "192.0.2.1".parse().unwrap(),
                reqid: 0x5144_0002,
                mode: Mode::Tunnel,
            },
        );
        spec.mark = Some(XfrmMark::exact(3));
        let m = policy_message(&spec);
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        let raw = parse_policy("t", &buf).unwrap();
        assert_eq!(raw.selector, Some(spec.selector));
        assert_eq!(raw.direction, Some(Direction::Fwd));
        assert_eq!(raw.template_reqids, vec![0x5144_0002]);
        assert_eq!(raw.templates, vec![spec.template]);
        assert_eq!(raw.mark, Some(XfrmMark::exact(3)));
        for cut in 0..buf.len() {
            let _ = parse_policy("t", &buf[..cut]);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(data: Vec<u8>) {
            let _ = parse_policy("t", &data);
        }
    }
}
