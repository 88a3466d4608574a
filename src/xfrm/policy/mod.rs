//! Security policies (the SPD): which traffic must be protected by which SA
//! template ([`PolicySpec`]), how an installed policy is named
//! ([`PolicyId`]), and the verbs — [`add`], [`delete`], [`get`] (the owned
//! policy dump).
//!
//! A policy is ours when its template carries a reqid in the ownership range
//! (see [`crate::xfrm::Ownership`]).

pub mod add;
pub mod delete;
pub mod get;

use std::fmt;
use std::net::IpAddr;

use netlink_packet_xfrm::{XFRM_POLICY_FWD, XFRM_POLICY_IN, XFRM_POLICY_OUT};

use super::state::Mode;
use super::{TrafficSelector, XfrmError, XfrmMark};

/// Which packets the policy applies to (RFC 4301 §4.4.1): leaving this host,
/// arriving for it, or forwarded through it (a gateway needs `Fwd` for the
/// decrypted traffic it routes to hosts behind it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    In,
    Out,
    Fwd,
}

impl Direction {
    pub(crate) fn to_kernel(self) -> u8 {
        match self {
            Direction::In => XFRM_POLICY_IN,
            Direction::Out => XFRM_POLICY_OUT,
            Direction::Fwd => XFRM_POLICY_FWD,
        }
    }

    pub(crate) fn from_kernel(dir: u8) -> Option<Self> {
        match dir {
            XFRM_POLICY_IN => Some(Direction::In),
            XFRM_POLICY_OUT => Some(Direction::Out),
            XFRM_POLICY_FWD => Some(Direction::Fwd),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::In => "in",
            Direction::Out => "out",
            Direction::Fwd => "fwd",
        })
    }
}

/// The SA a policy requires: ESP, by reqid, between the tunnel endpoints
/// (ignored by the kernel in transport mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyTemplate {
    /// Outer source of the required SA (the sending gateway).
    pub src: IpAddr,
    /// Outer destination of the required SA (the receiving gateway).
    pub dst: IpAddr,
    pub reqid: u32,
    pub mode: Mode,
}

/// One policy of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicySpec {
    pub selector: TrafficSelector,
    pub direction: Direction,
    pub template: PolicyTemplate,
    /// Lower values win when several policies match.
    pub priority: u32,
    pub mark: Option<XfrmMark>,
    pub if_id: Option<u32>,
}

impl PolicySpec {
    /// A policy requiring `template` for `selector` in `direction`, with
    /// iproute2's default priority 0 and no mark.
    pub fn new(selector: TrafficSelector, direction: Direction, template: PolicyTemplate) -> Self {
        Self {
            selector,
            direction,
            template,
            priority: 0,
            mark: None,
            if_id: None,
        }
    }

    pub fn validate(&self) -> Result<(), XfrmError> {
        self.selector.validate()?;
        if self.template.src.is_ipv4() != self.template.dst.is_ipv4() {
            return Err(XfrmError::InvalidSpec {
                what: "policy template",
                reason: format!(
                    "{} and {} are of different families",
                    self.template.src, self.template.dst
                ),
            });
        }
        if self.template.mode == Mode::Transport
            && self.template.src.is_ipv4() != self.selector.src.addr.is_ipv4()
        {
            return Err(XfrmError::InvalidSpec {
                what: "policy template",
                reason: "transport mode cannot change the address family".into(),
            });
        }
        Ok(())
    }

    pub fn id(&self) -> PolicyId {
        PolicyId {
            selector: self.selector,
            direction: self.direction,
            mark: self.mark,
            if_id: self.if_id,
            index: None,
            reqid: self.template.reqid,
        }
    }
}

/// Names an installed policy of ours: by selector + direction (+ mark,
/// if_id), or by the kernel's index when it came from a dump. Only the
/// library creates these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyId {
    selector: TrafficSelector,
    direction: Direction,
    mark: Option<XfrmMark>,
    if_id: Option<u32>,
    index: Option<u32>,
    reqid: u32,
}

impl PolicyId {
    pub fn selector(&self) -> &TrafficSelector {
        &self.selector
    }
    pub fn direction(&self) -> Direction {
        self.direction
    }
    pub fn mark(&self) -> Option<XfrmMark> {
        self.mark
    }
    pub fn index(&self) -> Option<u32> {
        self.index
    }
    /// The (first owned) template reqid that makes this policy ours.
    pub fn reqid(&self) -> u32 {
        self.reqid
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "policy {} dir {} reqid {:#x}",
            self.selector, self.direction, self.reqid
        )?;
        if let Some(m) = self.mark {
            write!(f, " mark {m}")?;
        }
        Ok(())
    }
}

/// An installed policy as reported by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    pub id: PolicyId,
    pub priority: u32,
    pub templates: Vec<PolicyTemplate>,
}
