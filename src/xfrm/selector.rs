//! Traffic selectors: which packets an SA or policy applies to (prefixes,
//! protocol, ports), and their conversion to the kernel's `xfrm_selector`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use netlink_packet_xfrm::{AF_INET, AF_INET6, Address, Selector};

use super::XfrmError;

/// An address prefix, e.g. `10.1.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn new(addr: IpAddr, len: u8) -> Self {
        Self { addr, len }
    }

    /// A single address (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            len: max_len(&addr),
        }
    }

    fn validate(&self) -> Result<(), XfrmError> {
        if self.len > max_len(&self.addr) {
            return Err(XfrmError::InvalidSpec {
                what: "prefix",
                reason: format!("{self}: length exceeds {}", max_len(&self.addr)),
            });
        }
        Ok(())
    }
}

fn max_len(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = XfrmError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| XfrmError::InvalidSpec {
            what: "prefix",
            reason: format!("{s:?}: {reason}"),
        };
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let len = match len {
            Some(l) => l.parse().map_err(|_| bad("bad prefix length"))?,
            None => max_len(&addr),
        };
        let p = Prefix { addr, len };
        p.validate()?;
        Ok(p)
    }
}

/// Which packets an SA or policy covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    pub src: Prefix,
    pub dst: Prefix,
    /// IP protocol number, `None` for any.
    pub proto: Option<u8>,
    /// Exact source port (TCP/UDP/SCTP only), `None` for any.
    pub src_port: Option<u16>,
    /// Exact destination port (TCP/UDP/SCTP only), `None` for any.
    pub dst_port: Option<u16>,
}

impl TrafficSelector {
    /// All traffic from `src` to `dst`.
    pub fn between(src: Prefix, dst: Prefix) -> Self {
        Self {
            src,
            dst,
            proto: None,
            src_port: None,
            dst_port: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), XfrmError> {
        self.src.validate()?;
        self.dst.validate()?;
        if self.src.addr.is_ipv4() != self.dst.addr.is_ipv4() {
            return Err(XfrmError::InvalidSpec {
                what: "selector",
                reason: format!("{} and {} are of different families", self.src, self.dst),
            });
        }
        let has_ports = matches!(
            self.proto.map(i32::from),
            Some(libc::IPPROTO_TCP | libc::IPPROTO_UDP | libc::IPPROTO_SCTP)
        );
        if (self.src_port.is_some() || self.dst_port.is_some()) && !has_ports {
            return Err(XfrmError::InvalidSpec {
                what: "selector",
                reason: "ports need proto TCP, UDP or SCTP".into(),
            });
        }
        Ok(())
    }

    pub(crate) fn to_kernel(self) -> Selector {
        let port = |p: Option<u16>| p.map_or((0, 0), |p| (p, 0xffff));
        let (sport, sport_mask) = port(self.src_port);
        let (dport, dport_mask) = port(self.dst_port);
        Selector {
            daddr: Address::from_ip(&self.dst.addr),
            saddr: Address::from_ip(&self.src.addr),
            dport,
            dport_mask,
            sport,
            sport_mask,
            family: family_of(&self.src.addr),
            prefixlen_d: self.dst.len,
            prefixlen_s: self.src.len,
            proto: self.proto.unwrap_or(0),
            ifindex: 0,
            user: 0,
        }
    }

    /// Reads a kernel selector; `None` for families other than IPv4/IPv6.
    pub(crate) fn from_kernel(sel: &Selector) -> Option<Self> {
        let (src, dst) = (
            address_of(sel.family, &sel.saddr)?,
            address_of(sel.family, &sel.daddr)?,
        );
        let port = |p: u16, mask: u16| (mask != 0).then_some(p);
        Some(Self {
            src: Prefix::new(src, sel.prefixlen_s),
            dst: Prefix::new(dst, sel.prefixlen_d),
            proto: (sel.proto != 0).then_some(sel.proto),
            src_port: port(sel.sport, sel.sport_mask),
            dst_port: port(sel.dport, sel.dport_mask),
        })
    }
}

impl fmt::Display for TrafficSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.src, self.dst)?;
        if let Some(p) = self.proto {
            write!(f, " proto {p}")?;
        }
        if let Some(p) = self.src_port {
            write!(f, " sport {p}")?;
        }
        if let Some(p) = self.dst_port {
            write!(f, " dport {p}")?;
        }
        Ok(())
    }
}

pub(crate) fn family_of(addr: &IpAddr) -> u16 {
    if addr.is_ipv4() { AF_INET } else { AF_INET6 }
}

/// Reads an `xfrm_address_t` of the given family.
pub(crate) fn address_of(family: u16, addr: &Address) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(addr.to_ipv4())),
        AF_INET6 => Some(IpAddr::V6(addr.to_ipv6())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_validate() {
        let p: Prefix = "10.1.0.0/24".parse().unwrap();
        assert_eq!(p.len, 24);
        assert_eq!("192.0.2.1".parse::<Prefix>().unwrap().len, 32);
        assert_eq!("2001:db8::1".parse::<Prefix>().unwrap().len, 128);
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("nonsense/8".parse::<Prefix>().is_err());
    }

    #[test]
    fn selector_round_trips_through_kernel_form() {
        let s = TrafficSelector {
            src: "10.1.0.0/24".parse().unwrap(),
            dst: "10.2.0.0/24".parse().unwrap(),
            proto: Some(17),
            src_port: None,
            dst_port: Some(4500),
        };
        s.validate().unwrap();
        let k = s.to_kernel();
        assert_eq!(k.family, AF_INET);
        assert_eq!(k.dport_mask, 0xffff);
        assert_eq!(TrafficSelector::from_kernel(&k), Some(s));
    }

    #[test]
    fn mixed_families_and_portless_ports_are_rejected() {
        let mixed = TrafficSelector::between(
            "10.1.0.0/24".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
        );
        assert!(mixed.validate().is_err());
        let mut icmp_port = TrafficSelector::between(
            "10.1.0.0/24".parse().unwrap(),
            "10.2.0.0/24".parse().unwrap(),
        );
        icmp_port.proto = Some(1);
        icmp_port.dst_port = Some(1);
        assert!(icmp_port.validate().is_err());
    }
}
