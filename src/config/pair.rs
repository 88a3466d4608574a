//! Cross-checks the two gateways' files of a pair: each names the other as
//! a peer with the opposite QKD role, both describe the same link, the
//! transmitter dials the receiver's port, every tunnel exists on both sides
//! mirrored, exactly one side initiates each, and (when both are readable)
//! the bootstrap secrets are the same bytes.
//!
//! A single file cannot show these mistakes; at run time they surface as
//! refused handshakes, a digest mismatch on the first sift message, or
//! tunnels that never come up. Findings name the file they are about.

use std::path::{Path, PathBuf};

use super::link::shared_fields;
use super::secrets::read_secret;
use super::{Config, Finding, Peer, Tunnel};

/// A finding about one of the two files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairFinding {
    pub file: PathBuf,
    pub finding: Finding,
}

impl PairFinding {
    pub fn render(&self) -> String {
        self.finding.render(&self.file)
    }
}

/// Where to find each side's credentials, for comparing bootstrap secrets.
#[derive(Debug, Clone, Copy, Default)]
pub struct PairCredentials<'a> {
    pub this: Option<&'a Path>,
    pub peer: Option<&'a Path>,
}

struct Report<'a> {
    a: &'a Config,
    b: &'a Config,
    out: Vec<PairFinding>,
}

impl Report<'_> {
    fn on(&mut self, in_b: bool, path: impl Into<String>, message: impl Into<String>) {
        let cfg = if in_b { self.b } else { self.a };
        let finding = cfg.locate(vec![Finding::new(path, message)]).remove(0);
        self.out.push(PairFinding {
            file: cfg.file.clone(),
            finding,
        });
    }
}

/// Cross-checks `a` (this gateway) with `b` (its peer's file).
pub fn check_pair(a: &Config, b: &Config, creds: PairCredentials<'_>) -> Vec<PairFinding> {
    let mut r = Report {
        a,
        b,
        out: Vec::new(),
    };
    let find = |c: &Config, name: &str| c.peers.iter().position(|p| p.name == name);
    let (Some(ia), Some(ib)) = (find(a, &b.gateway.name), find(b, &a.gateway.name)) else {
        if find(a, &b.gateway.name).is_none() {
            r.on(
                false,
                "peer",
                format!(
                    "no [[peer]] is named {:?}, the gateway name in {}",
                    b.gateway.name,
                    b.file.display()
                ),
            );
        }
        if find(b, &a.gateway.name).is_none() {
            r.on(
                true,
                "peer",
                format!(
                    "no [[peer]] is named {:?}, the gateway name in {}",
                    a.gateway.name,
                    a.file.display()
                ),
            );
        }
        return r.out;
    };
    let (pa, pb) = (&a.peers[ia], &b.peers[ib]);
    check_link(&mut r, ia, pa, ib, pb);
    check_etsi014(&mut r, ia, pa, pb);
    check_relay(&mut r, ia, pa, pb);
    check_network(&mut r);
    check_dialing(&mut r, ia, pa, pb);
    check_dialing_reverse(&mut r, ib, pb, pa);
    if a.gateway.ownership.spis != b.gateway.ownership.spis {
        r.on(false, "gateway.ownership.spis", format!(
            "differs from {}: each side's outbound SAs carry SPIs the other allocated; configure both alike",
            b.file.display()
        ));
    }
    check_tunnels(&mut r, &a.gateway.name, &b.gateway.name);
    check_bootstrap(&mut r, ia, pa, pb, creds);
    r.out
}

fn check_link(r: &mut Report<'_>, ia: usize, pa: &Peer, ib: usize, pb: &Peer) {
    if pa.role == pb.role {
        r.on(
            false,
            format!("peer[{ia}].role"),
            format!(
                "both gateways say {:?}; one must be the transmitter and the other the receiver \
             (see peer[{ib}].role in {})",
                pa.role,
                r.b.file.display()
            ),
        );
    }
    let mine = shared_fields(&pa.link, &pa.postprocessing);
    let theirs = shared_fields(&pb.link, &pb.postprocessing);
    for ((field, va), (_, vb)) in mine.iter().zip(&theirs) {
        if va != vb {
            r.on(false, format!("peer[{ia}].{field}"), format!(
                "{va} here but {vb} in {} (peer[{ib}].{field}); both gateways must describe the same link",
                r.b.file.display()
            ));
        }
    }
}

/// A relayed link's two ends relay keys of one size in one mode (the
/// destination refuses other sizes).
fn check_relay(r: &mut Report<'_>, ia: usize, pa: &Peer, pb: &Peer) {
    let (Some(a), Some(b)) = (&pa.relay, &pb.relay) else {
        return;
    };
    let other = r.b.file.display().to_string();
    if a.key_bytes != b.key_bytes {
        r.on(
            false,
            format!("peer[{ia}].relay.key_bytes"),
            format!(
                "{} here but {} in {other}; configure both ends alike",
                a.key_bytes, b.key_bytes
            ),
        );
    }
    if a.mode != b.mode {
        r.on(
            false,
            format!("peer[{ia}].relay.mode"),
            format!(
                "{} here but {} in {other}; configure both ends alike",
                a.mode.name(),
                b.mode.name()
            ),
        );
    }
}

/// `[network]` lists the same QKD links in every gateway's file.
fn check_network(r: &mut Report<'_>) {
    let (Some(a), Some(b)) = (&r.a.network, &r.b.network) else {
        return;
    };
    if a.links() != b.links() {
        let show = |n: &super::Network| {
            n.links()
                .iter()
                .map(|(x, y)| format!("{x}–{y}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let message = format!(
            "lists {} here but {} in {}; [network] must be the same on every gateway",
            show(a),
            show(b),
            r.b.file.display()
        );
        r.on(false, "network.links", message);
    }
}

/// Each side's `peer_sae_id` is the other's `sae_id`, and both ask for
/// keys of one size (the slave refuses any other).
fn check_etsi014(r: &mut Report<'_>, ia: usize, pa: &Peer, pb: &Peer) {
    let (Some(a), Some(b)) = (&pa.etsi014, &pb.etsi014) else {
        return;
    };
    let other = r.b.file.display().to_string();
    if a.peer_sae_id != b.sae_id {
        r.on(
            false,
            format!("peer[{ia}].etsi014.peer_sae_id"),
            format!(
                "{:?}, but {other} says its sae_id is {:?}",
                a.peer_sae_id, b.sae_id
            ),
        );
    }
    if a.sae_id != b.peer_sae_id {
        r.on(
            false,
            format!("peer[{ia}].etsi014.sae_id"),
            format!(
                "{:?}, but {other} names this gateway's SAE {:?}",
                a.sae_id, b.peer_sae_id
            ),
        );
    }
    if a.key_size_bits != b.key_size_bits {
        r.on(
            false,
            format!("peer[{ia}].etsi014.key_size"),
            format!(
                "{} here but {} in {other}; both gateways must ask for keys of one size",
                a.key_size_bits, b.key_size_bits
            ),
        );
    }
}

/// The transmitter's `address` must reach the receiver's `listen`.
fn check_dialing(r: &mut Report<'_>, ia: usize, pa: &Peer, pb: &Peer) {
    if !pa.dials() || pb.dials() {
        return;
    }
    let (Some(addr), Some(listen)) = (&pa.address, r.b.gateway.listen) else {
        return;
    };
    let port_differs = addr.port != listen.port();
    let ip_differs = addr
        .socket_addr()
        .is_some_and(|sa| !listen.ip().is_unspecified() && sa.ip() != listen.ip());
    if port_differs || ip_differs {
        r.on(
            false,
            format!("peer[{ia}].address"),
            format!(
                "{addr} does not reach the peer's listener {listen} (gateway.listen in {})",
                r.b.file.display()
            ),
        );
    }
}

fn check_dialing_reverse(r: &mut Report<'_>, ib: usize, pb: &Peer, pa: &Peer) {
    let mut swapped = Report {
        a: r.b,
        b: r.a,
        out: Vec::new(),
    };
    check_dialing(&mut swapped, ib, pb, pa);
    r.out.extend(swapped.out);
}

fn check_tunnels(r: &mut Report<'_>, a_name: &str, b_name: &str) {
    for (in_b, this, other, other_name) in [(false, r.a, r.b, b_name), (true, r.b, r.a, a_name)] {
        for (i, t) in this
            .tunnels
            .iter()
            .enumerate()
            .filter(|(_, t)| t.peer == other_name)
        {
            match other.tunnels.iter().position(|u| u.name == t.name) {
                None => r.on(
                    in_b,
                    format!("tunnel[{i}].name"),
                    format!(
                        "{} has no tunnel named {:?}; the tunnel must exist on both gateways",
                        other.file.display(),
                        t.name
                    ),
                ),
                // Compare each pair once, from a's side.
                Some(j) if !in_b => mirror(r, i, t, j, &other.tunnels[j]),
                Some(_) => {}
            }
        }
    }
}

/// `t` (in a) and `u` (in b) must be mirror images.
fn mirror(r: &mut Report<'_>, i: usize, t: &Tunnel, j: usize, u: &Tunnel) {
    let there = format!("tunnel[{j}] in {}", r.b.file.display());
    let sorted = |v: &[crate::xfrm::Prefix]| {
        let mut s: Vec<String> = v.iter().map(|p| p.to_string()).collect();
        s.sort();
        s
    };
    let keyed_from_each_other = t.peer == r.b.gateway.name && u.peer == r.a.gateway.name;
    let mut differ = |field: &str, why: String| r.on(false, format!("tunnel[{i}].{field}"), why);
    if !keyed_from_each_other {
        differ(
            "peer",
            format!("the two files do not key this tunnel from each other ({there})"),
        );
    }
    if sorted(&t.local_subnets) != sorted(&u.remote_subnets) {
        differ(
            "local_subnets",
            format!("must equal remote_subnets of {there}"),
        );
    }
    if sorted(&t.remote_subnets) != sorted(&u.local_subnets) {
        differ(
            "remote_subnets",
            format!("must equal local_subnets of {there}"),
        );
    }
    if t.local_endpoint != u.remote_endpoint {
        differ(
            "local_endpoint",
            format!(
                "{} must equal remote_endpoint {} of {there}",
                t.local_endpoint, u.remote_endpoint
            ),
        );
    }
    if t.remote_endpoint != u.local_endpoint {
        differ(
            "remote_endpoint",
            format!(
                "{} must equal local_endpoint {} of {there}",
                t.remote_endpoint, u.local_endpoint
            ),
        );
    }
    if t.mode != u.mode {
        differ(
            "mode",
            format!("{:?} here, {:?} in {there}", t.mode, u.mode),
        );
    }
    if t.keying != u.keying {
        differ(
            "keying",
            format!("{} here, {} in {there}", t.keying.name(), u.keying.name()),
        );
    }
    let esn = |x: &Tunnel| matches!(x.replay, crate::xfrm::ReplayProtection::Esn { .. });
    if esn(t) != esn(u) {
        differ(
            "esn",
            format!(
                "{} here, {} in {there}; both ends of an SA must agree on ESN",
                esn(t),
                esn(u)
            ),
        );
    }
    if t.initiator == u.initiator {
        differ(
            "initiator",
            format!(
                "{} on both sides ({there}); exactly one gateway must start the rekeys",
                t.initiator
            ),
        );
    }
}

fn check_bootstrap(
    r: &mut Report<'_>,
    ia: usize,
    pa: &Peer,
    pb: &Peer,
    creds: PairCredentials<'_>,
) {
    let (Ok((_, sa)), Ok((_, sb))) = (
        read_secret(&pa.bootstrap_secret, creds.this),
        read_secret(&pb.bootstrap_secret, creds.peer),
    ) else {
        // Unreadable secrets are reported by each file's own secret check.
        return;
    };
    if !sa.ct_eq(&sb) {
        r.on(false, format!("peer[{ia}].bootstrap_secret"), format!(
            "differs from the peer's ({}): both gateways need the same bytes; copy one file to the other",
            pb.bootstrap_secret.describe()
        ));
    }
}
