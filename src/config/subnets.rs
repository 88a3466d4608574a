//! Subnet lists of `[[tunnel]]`: CIDR parsing with the host-bits check,
//! transport-mode defaults, and family pairing between the two sides.

use std::net::IpAddr;

use super::Findings;
use crate::xfrm::{Mode, Prefix, XfrmError};

/// Parses one subnet list; in transport mode it defaults to the
/// endpoint and may only name it.
pub(super) fn subnet_list(
    path: &str,
    written: Option<&[String]>,
    mode: Mode,
    endpoint: Option<IpAddr>,
    f: &mut Findings,
) -> Option<Vec<Prefix>> {
    let Some(written) = written.filter(|w| !w.is_empty()) else {
        if mode == Mode::Transport {
            return endpoint.map(|e| vec![Prefix::host(e)]);
        }
        f.error(
            path,
            "missing or empty; list the subnets in CIDR form, e.g. [\"10.1.0.0/24\"]",
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for (i, s) in written.iter().enumerate() {
        match parse_network(s) {
            Ok(p) => out.push(p),
            Err(why) => {
                ok = false;
                f.error(format!("{path}[{i}]"), why);
                continue;
            }
        }
        if mode == Mode::Transport && endpoint.is_some_and(|e| out.last() != Some(&Prefix::host(e)))
        {
            ok = false;
            f.error(
                format!("{path}[{i}]"),
                format!(
                    "{s:?}: transport mode protects only the gateways' own traffic; \
                     omit the subnets or use the endpoint address alone"
                ),
            );
        }
    }
    ok.then_some(out)
}

/// A subnet in CIDR form whose host bits are zero.
fn parse_network(s: &str) -> Result<Prefix, String> {
    let p: Prefix = s.parse().map_err(|e| match e {
        XfrmError::InvalidSpec { reason, .. } => {
            format!("{reason}; write a subnet like \"10.1.0.0/24\" or \"2001:db8:1::/64\"")
        }
        other => other.to_string(),
    })?;
    let network = mask(p.addr, p.len);
    if network != p.addr {
        return Err(format!(
            "{s:?} has host bits set; did you mean \"{network}/{}\"?",
            p.len
        ));
    }
    Ok(p)
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - len as u32).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// Every subnet needs a partner of its family on the other side: a
/// selector cannot mix IPv4 and IPv6.
pub(super) fn check_pairing(prefix: &str, local: &[Prefix], remote: &[Prefix], f: &mut Findings) {
    for (field, mine, theirs) in [
        ("local_subnets", local, remote),
        ("remote_subnets", remote, local),
    ] {
        for (i, p) in mine.iter().enumerate() {
            if !theirs.iter().any(|q| q.addr.is_ipv4() == p.addr.is_ipv4()) {
                f.error(
                    format!("{prefix}.{field}[{i}]"),
                    format!("{p} has no subnet of the same address family on the other side; add one or remove it"),
                );
            }
        }
    }
}
