//! The kernel's XFRM events as an async stream: SA lifetime expiry (soft:
//! time to rekey; hard: the SA is gone) and ACQUIRE (a policy matched
//! traffic but has no SA).
//!
//! Subscription is by `add_membership` of XFRMNLGRP_EXPIRE and
//! XFRMNLGRP_ACQUIRE (not a bind mask: groups above 32 and per-namespace
//! sockets need the setsockopt). A socket receive buffer overrun (ENOBUFS)
//! means events were lost; it is reported as [`XfrmEvent::ResyncNeeded`] so
//! the caller re-reads all SAs (the DESIGN rule: "re-dump").
//!
//! netlink-packet-xfrm's EXPIRE/ACQUIRE parsers slice their input without a
//! length check; every body is length-checked here first. Neither message
//! carries key bytes (build_expire/build_acquire copy no algorithms); the
//! receive buffer is wiped anyway.

use std::collections::VecDeque;
use std::net::IpAddr;

use netlink_packet_core::{NLA_TYPE_MASK, NLMSG_ERROR, NetlinkBuffer, NlasIterator};
use netlink_packet_xfrm::{
    Mark, UserAcquire, UserExpire, UserTemplate, XFRM_MSG_ACQUIRE, XFRM_MSG_EXPIRE,
    XFRM_USER_ACQUIRE_LEN, XFRM_USER_EXPIRE_LEN, XFRM_USER_TEMPLATE_LEN, XFRMA_MARK, XFRMA_TMPL,
    XFRMNLGRP_ACQUIRE, XFRMNLGRP_EXPIRE,
};
use netlink_sys::Socket;
use tokio::io::unix::AsyncFd;
use zeroize::Zeroize;

use super::selector::address_of;
use super::socket::{open_raw, recv_datagram, register};
use super::state::{SaCounters, SaId};
use super::{Ownership, TrafficSelector, XfrmError, XfrmMark};
use crate::netns::Netns;

const OP: &str = "read XFRM events";

/// One kernel event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XfrmEvent {
    /// A soft limit was reached: the SA still works but should be replaced.
    SoftExpire(ExpiredSa),
    /// A hard limit was reached: the kernel deleted the SA.
    HardExpire(ExpiredSa),
    /// Traffic matched a policy that has no SA.
    Acquire(AcquireRequest),
    /// Events were lost (socket overrun): re-read all SAs and policies.
    ResyncNeeded,
}

/// The SA an EXPIRE is about, with its counters at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredSa {
    pub id: SaId,
    pub counters: SaCounters,
}

/// What the kernel asks an SA for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRequest {
    /// Outer source and destination the SA must have.
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Reqids of the policy's templates.
    pub reqids: Vec<u32>,
    /// The triggering packet's selector.
    pub selector: Option<TrafficSelector>,
    /// The policy's kernel index.
    pub policy_index: u32,
    pub mark: Option<XfrmMark>,
}

/// A subscription to XFRM events in one namespace.
pub struct XfrmEvents {
    fd: AsyncFd<Socket>,
    rx: Box<[u8]>,
    pending: VecDeque<XfrmEvent>,
    filter: Option<Ownership>,
}

impl XfrmEvents {
    /// Subscribes to EXPIRE and ACQUIRE in `netns`. With `filter`, only
    /// events about objects it owns are returned ([`XfrmEvent::ResyncNeeded`]
    /// always is). Must be called inside a tokio runtime. Subscribe before
    /// the traffic you expect events for: the kernel only raises ACQUIRE
    /// while someone listens.
    pub async fn subscribe(netns: &Netns, filter: Option<Ownership>) -> Result<Self, XfrmError> {
        if let Some(o) = &filter {
            o.validate()?;
        }
        let socket = open_raw(netns, &[XFRMNLGRP_EXPIRE, XFRMNLGRP_ACQUIRE])?;
        // A larger buffer makes overruns rarer; the limit is rmem_max.
        let _ = socket.set_rx_buf_sz(1 << 20);
        Ok(Self {
            fd: register(socket, "register event socket")?,
            rx: vec![0u8; 64 * 1024].into_boxed_slice(),
            pending: VecDeque::new(),
            filter,
        })
    }

    /// The next event. Cancel-safe: dropping the future loses no event that
    /// was already received.
    pub async fn next(&mut self) -> Result<XfrmEvent, XfrmError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let n = match recv_datagram(&self.fd, OP, &mut self.rx).await {
                Ok(n) => n,
                Err(XfrmError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::ENOBUFS) =>
                {
                    return Ok(XfrmEvent::ResyncNeeded);
                }
                Err(e) => return Err(e),
            };
            let parsed = parse_datagram(&self.rx[..n]);
            self.rx[..n].zeroize();
            for event in parsed? {
                if self.wanted(&event) {
                    self.pending.push_back(event);
                }
            }
        }
    }

    fn wanted(&self, event: &XfrmEvent) -> bool {
        let Some(o) = &self.filter else { return true };
        match event {
            XfrmEvent::SoftExpire(e) | XfrmEvent::HardExpire(e) => {
                o.owns_sa(e.id.reqid(), e.id.spi(), e.id.mark())
            }
            XfrmEvent::Acquire(a) => o.owns_policy(&a.reqids, a.mark),
            XfrmEvent::ResyncNeeded => true,
        }
    }
}

/// Parses every event in one multicast datagram (bounded and checked).
pub(crate) fn parse_datagram(mut data: &[u8]) -> Result<Vec<XfrmEvent>, XfrmError> {
    let malformed = |detail: String| XfrmError::Malformed {
        operation: OP,
        detail,
    };
    let mut events = Vec::new();
    while !data.is_empty() {
        let msg = NetlinkBuffer::new_checked(data).map_err(|e| malformed(e.to_string()))?;
        let len = msg.length() as usize;
        let body = &data[16..len];
        match msg.message_type() {
            XFRM_MSG_EXPIRE => events.extend(parse_expire(body)?),
            XFRM_MSG_ACQUIRE => events.extend(parse_acquire(body)?),
            NLMSG_ERROR => return Err(malformed("error message on the event socket".into())),
            _ => {}
        }
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    Ok(events)
}

fn read_mark(value: &[u8]) -> Result<Option<XfrmMark>, XfrmError> {
    let m = Mark::parse(value).map_err(|e| XfrmError::Malformed {
        operation: OP,
        detail: e.to_string(),
    })?;
    Ok(Some(XfrmMark {
        value: m.value,
        mask: m.mask,
    })
    .filter(|m| m.value != 0 || m.mask != 0))
}

fn parse_expire(body: &[u8]) -> Result<Option<XfrmEvent>, XfrmError> {
    let malformed = |detail: String| XfrmError::Malformed {
        operation: OP,
        detail,
    };
    if body.len() < XFRM_USER_EXPIRE_LEN {
        return Err(malformed(format!("EXPIRE of {} bytes", body.len())));
    }
    let ue =
        UserExpire::parse(&body[..XFRM_USER_EXPIRE_LEN]).map_err(|e| malformed(e.to_string()))?;
    let mut mark = None;
    for nla in NlasIterator::new(&body[XFRM_USER_EXPIRE_LEN..]) {
        let nla = nla.map_err(|e| malformed(e.to_string()))?;
        if nla.kind() & NLA_TYPE_MASK == XFRMA_MARK {
            mark = read_mark(nla.value())?;
        }
    }
    let s = &ue.state;
    let (Some(src), Some(dst)) = (
        address_of(s.family, &s.saddr),
        address_of(s.family, &s.id.daddr),
    ) else {
        return Ok(None);
    };
    let expired = ExpiredSa {
        id: SaId::new(src, dst, s.id.spi, s.reqid, mark),
        counters: SaCounters {
            bytes: s.lifetime_cur.bytes,
            packets: s.lifetime_cur.packets,
            add_time: s.lifetime_cur.add_time,
            use_time: s.lifetime_cur.use_time,
            replay_dropped: s.stats.replay,
            integrity_failed: s.stats.integrity_failed,
        },
    };
    Ok(Some(if ue.hard != 0 {
        XfrmEvent::HardExpire(expired)
    } else {
        XfrmEvent::SoftExpire(expired)
    }))
}

fn parse_acquire(body: &[u8]) -> Result<Option<XfrmEvent>, XfrmError> {
    let malformed = |detail: String| XfrmError::Malformed {
        operation: OP,
        detail,
    };
    if body.len() < XFRM_USER_ACQUIRE_LEN {
        return Err(malformed(format!("ACQUIRE of {} bytes", body.len())));
    }
    let ua =
        UserAcquire::parse(&body[..XFRM_USER_ACQUIRE_LEN]).map_err(|e| malformed(e.to_string()))?;
    let mut mark = None;
    let mut reqids = Vec::new();
    let mut template_family = None;
    for nla in NlasIterator::new(&body[XFRM_USER_ACQUIRE_LEN..]) {
        let nla = nla.map_err(|e| malformed(e.to_string()))?;
        match nla.kind() & NLA_TYPE_MASK {
            XFRMA_MARK => mark = read_mark(nla.value())?,
            XFRMA_TMPL => {
                for chunk in nla.value().chunks_exact(XFRM_USER_TEMPLATE_LEN) {
                    let t = UserTemplate::parse(chunk).map_err(|e| malformed(e.to_string()))?;
                    reqids.push(t.reqid);
                    template_family.get_or_insert(t.family);
                }
            }
            _ => {}
        }
    }
    // The SA's (outer) family is the template's; templates may leave it 0,
    // meaning the policy's family.
    let family = template_family
        .filter(|&f| f != 0)
        .unwrap_or(ua.policy.selector.family);
    let (Some(src), Some(dst)) = (
        address_of(family, &ua.saddr),
        address_of(family, &ua.id.daddr),
    ) else {
        return Ok(None);
    };
    Ok(Some(XfrmEvent::Acquire(AcquireRequest {
        src,
        dst,
        reqids,
        selector: TrafficSelector::from_kernel(&ua.selector),
        policy_index: ua.policy.index,
        mark,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_xfrm::{AF_INET, Address, Id, UserSaInfo};

    fn frame(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut v = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&[0; 10]);
        v.extend_from_slice(body);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    fn expire_body(hard: u8) -> Vec<u8> {
        let ue = UserExpire {
            state: UserSaInfo {
                id: Id {
                    daddr: Address::from_ip(&"192.0.2.2".parse().unwrap()),
                    spi: 0x5144_0001,
                    proto: 50,
                },
                saddr: Address::from_ip(&"192.0.2.1".parse().unwrap()),
                reqid: 0x5144_0007,
                family: AF_INET,
                ..UserSaInfo::default()
            },
            hard,
        };
        let mut b = vec![0u8; ue.buffer_len()];
        ue.emit(&mut b);
        b
    }

    #[test]
    fn soft_and_hard_expire_are_told_apart() {
        let mut d = frame(XFRM_MSG_EXPIRE, &expire_body(0));
        d.extend(frame(XFRM_MSG_EXPIRE, &expire_body(1)));
        let ev = parse_datagram(&d).unwrap();
        assert_eq!(ev.len(), 2);
        let XfrmEvent::SoftExpire(s) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(s.id.spi(), 0x5144_0001);
        assert_eq!(s.id.reqid(), 0x5144_0007);
        assert!(matches!(ev[1], XfrmEvent::HardExpire(_)));
    }

    #[test]
    fn short_bodies_are_errors_not_panics() {
        let body = expire_body(0);
        for cut in 0..body.len() {
            let r = parse_datagram(&frame(XFRM_MSG_EXPIRE, &body[..cut]));
            assert!(r.is_err(), "cut {cut} accepted");
        }
        for cut in 0..XFRM_USER_ACQUIRE_LEN {
            assert!(parse_datagram(&frame(XFRM_MSG_ACQUIRE, &vec![0; cut])).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(data: Vec<u8>) {
            let _ = parse_datagram(&data);
        }

        #[test]
        fn arbitrary_bodies_never_panic(body: Vec<u8>, acquire: bool) {
            let kind = if acquire { XFRM_MSG_ACQUIRE } else { XFRM_MSG_EXPIRE };
            let _ = parse_datagram(&frame(kind, &body));
        }
    }
}
