use super::*;

fn p(nodes: &[&str]) -> Vec<String> {
    nodes.iter().map(|s| s.to_string()).collect()
}

#[test]
fn chain_and_diamond_paths() {
    let chain = Network::from_links([("gw-a", "gw-b"), ("gw-b", "gw-c")]);
    assert_eq!(
        chain.shortest_path("gw-a", "gw-c"),
        Some(p(&["gw-a", "gw-b", "gw-c"]))
    );
    assert_eq!(
        chain.disjoint_paths("gw-a", "gw-c"),
        vec![p(&["gw-a", "gw-b", "gw-c"])]
    );
    assert_eq!(chain.shortest_path("gw-a", "gw-x"), None);

    let diamond = Network::from_links([
        ("gw-a", "gw-b"),
        ("gw-b", "gw-d"),
        ("gw-a", "gw-c"),
        ("gw-c", "gw-d"),
    ]);
    assert_eq!(
        diamond.disjoint_paths("gw-a", "gw-d"),
        vec![p(&["gw-a", "gw-b", "gw-d"]), p(&["gw-a", "gw-c", "gw-d"])]
    );
    // The tie is broken by names, the same on every gateway.
    assert_eq!(
        diamond.shortest_path("gw-d", "gw-a"),
        Some(p(&["gw-d", "gw-b", "gw-a"]))
    );
}

/// The trap for greedy "take a shortest path, remove its nodes, repeat":
/// the shortest path s–a–b–t blocks both others, but s–a–y–t and
/// s–x–b–t are disjoint. Max flow finds the two.
#[test]
fn disjoint_paths_are_maximal_not_greedy() {
    let net = Network::from_links([
        ("s", "a"),
        ("a", "b"),
        ("b", "t"),
        ("a", "y"),
        ("y", "t"),
        ("s", "x"),
        ("x", "b"),
    ]);
    let paths = net.disjoint_paths("s", "t");
    assert_eq!(paths.len(), 2, "{paths:?}");
    let inner: Vec<&String> = paths.iter().flat_map(|q| &q[1..q.len() - 1]).collect();
    let distinct: BTreeSet<&String> = inner.iter().copied().collect();
    assert_eq!(
        inner.len(),
        distinct.len(),
        "paths share a relay: {paths:?}"
    );
    for q in &paths {
        assert_eq!((q[0].as_str(), q[q.len() - 1].as_str()), ("s", "t"));
        for w in q.windows(2) {
            assert!(
                net.has_link(&w[0], &w[1]),
                "{q:?} uses a link that is not there"
            );
        }
    }
    // A cut vertex allows only one.
    let bowtie = Network::from_links([("s", "a"), ("s", "b"), ("a", "m"), ("b", "m"), ("m", "t")]);
    assert_eq!(bowtie.disjoint_paths("s", "t").len(), 1);
}

fn findings(section: &NetworkSection) -> (Option<Network>, Findings) {
    let mut f = Findings::default();
    (
        section.validate(std::path::Path::new("/etc/qkd-ipsec"), &mut f),
        f,
    )
}

#[test]
fn network_section_refuses_bad_links() {
    for links in [
        vec![p(&["gw-a"])],
        vec![p(&["gw-a", "gw-a"])],
        vec![p(&["gw-a", "bad name"])],
        vec![p(&["gw-a", "gw-b", "gw-c"])],
    ] {
        let (net, f) = findings(&NetworkSection {
            links: links.clone(),
            ..NetworkSection::default()
        });
        assert!(net.is_none() && !f.errors.is_empty(), "{links:?}");
        assert_eq!(f.errors[0].path, "network.links[0]");
    }
    let (net, f) = findings(&NetworkSection {
        links: vec![p(&["gw-a", "gw-b"]), p(&["gw-b", "gw-a"])],
        relay: true,
        lab_export_relay_shares: Some("shares".into()),
    });
    let net = net.unwrap();
    assert!(net.relay);
    assert_eq!(
        net.lab_export_relay_shares.as_deref(),
        Some(std::path::Path::new("/etc/qkd-ipsec/shares")),
        "anchored to the config file"
    );
    assert!(f.warnings.iter().any(|w| w.message.contains("LAB ONLY")));
    assert!(
        f.warnings
            .iter()
            .any(|w| w.message.contains("listed twice"))
    );
}

#[test]
fn relay_section_bounds() {
    let mut f = Findings::default();
    assert!(
        RelaySection::default()
            .validate("peer[1].relay", &mut f)
            .is_some()
    );
    assert!(f.errors.is_empty());
    for bad in [
        RelaySection {
            key_bytes: 16,
            ..RelaySection::default()
        },
        RelaySection {
            key_bytes: 5000,
            ..RelaySection::default()
        },
        RelaySection {
            pool_target_bytes: 100,
            ..RelaySection::default()
        },
        RelaySection {
            wait: HumanDuration::millis(10),
            ..RelaySection::default()
        },
        RelaySection {
            retry_max: HumanDuration::millis(10),
            ..RelaySection::default()
        },
    ] {
        let mut f = Findings::default();
        assert!(bad.validate("peer[1].relay", &mut f).is_none(), "{bad:?}");
        assert!(f.errors[0].path.starts_with("peer[1].relay."));
    }
}

/// gw-a of the chain gw-a – gw-b – gw-c: a QKD link to gw-b, a relayed
/// peer gw-c, and a tunnel keyed from it.
const CHAIN_A: &str = r#"[gateway]
name = "gw-a"

[network]
links = [["gw-a", "gw-b"], ["gw-b", "gw-c"]]

[[peer]]
name = "gw-b"
role = "transmitter"
address = "192.0.2.2:9813"

[peer.link]
kind = "simulated"

[[peer]]
name = "gw-c"
role = "transmitter"
address = "192.0.2.3:9813"

[peer.link]
kind = "relayed"

[peer.relay]
mode = "single"

[[tunnel]]
name = "a-c"
peer = "gw-c"
local_subnets = ["10.1.0.0/24"]
remote_subnets = ["10.3.0.0/24"]
local_endpoint = "192.0.2.1"
remote_endpoint = "192.0.2.3"
"#;

fn parse(text: &str) -> Result<super::super::Config, super::super::ConfigError> {
    super::super::Config::parse(text, std::path::Path::new("/etc/qkd-ipsec/gateway.toml"))
}

fn errors(text: &str) -> Vec<(String, String)> {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e
            .findings()
            .iter()
            .map(|f| (f.path.clone(), f.message.clone()))
            .collect(),
    }
}

fn has(found: &[(String, String)], path: &str, fragment: &str) -> bool {
    found.iter().any(|(p, m)| p == path && m.contains(fragment))
}

#[test]
fn a_relayed_peer_gets_its_path_from_the_network() {
    let c = parse(CHAIN_A).unwrap();
    let relayed = c.peer("gw-c").unwrap();
    assert_eq!(relayed.kind, super::super::LinkKind::Relayed);
    let r = relayed.relay.as_ref().unwrap();
    assert_eq!(r.paths, vec![p(&["gw-a", "gw-b", "gw-c"])]);
    assert_eq!((r.key_bytes, r.mode), (256, RelayMode::Single));
    assert!(c.network.as_ref().unwrap().has_link("gw-b", "gw-c"));
    assert!(c.peer("gw-b").unwrap().relay.is_none());
}

#[test]
fn check_config_names_what_is_missing() {
    // gw-c out of reach: the error names both sides' reach.
    let cut = CHAIN_A.replace(r#", ["gw-b", "gw-c"]"#, "");
    let e = errors(&cut);
    assert!(
        has(&e, "peer[1].link.kind", "gw-c cannot be reached")
            && has(&e, "peer[1].link.kind", "gw-a reaches gw-a, gw-b"),
        "{e:?}"
    );
    // A QKD link of this gateway missing from [network].
    let unlisted = CHAIN_A.replace(r#"["gw-a", "gw-b"], "#, "");
    assert!(has(&errors(&unlisted), "peer[0].name", "does not list it"));
    // A link in [network] this gateway has no peer for.
    let extra = CHAIN_A.replace(
        r#"["gw-b", "gw-c"]]"#,
        r#"["gw-b", "gw-c"], ["gw-a", "gw-x"]]"#,
    );
    assert!(has(
        &errors(&extra),
        "network.links",
        "no [[peer]] \"gw-x\""
    ));
    // Relaying to a direct neighbour.
    let direct = CHAIN_A.replace(
        r#"["gw-b", "gw-c"]]"#,
        r#"["gw-b", "gw-c"], ["gw-a", "gw-c"]]"#,
    );
    assert!(has(&errors(&direct), "peer[1].link.kind", "use it"));
    // No [network] at all.
    let none = CHAIN_A.replace(
        "[network]\nlinks = [[\"gw-a\", \"gw-b\"], [\"gw-b\", \"gw-c\"]]\n",
        "",
    );
    assert!(has(&errors(&none), "peer[1].link.kind", "needs [network]"));
    // Multipath over a chain: one path only.
    let multi = CHAIN_A.replace("mode = \"single\"", "mode = \"multipath\"");
    assert!(has(
        &errors(&multi),
        "peer[1].relay.mode",
        "two node-disjoint paths"
    ));
    // The kinds and sections go together.
    let no_section = CHAIN_A.replace("[peer.relay]\nmode = \"single\"\n", "");
    assert!(has(
        &errors(&no_section),
        "peer[1].link.kind",
        "needs the [peer.relay] section"
    ));
    let wrong = CHAIN_A.replace(
        "kind = \"simulated\"",
        "kind = \"simulated\"\n\n[peer.relay]",
    );
    assert!(has(
        &errors(&wrong),
        "peer[0].relay",
        "takes no [peer.relay]"
    ));
    let optics = CHAIN_A.replace("kind = \"relayed\"", "kind = \"relayed\"\nlength_km = 80.0");
    assert!(has(
        &errors(&optics),
        "peer[1].link.length_km",
        "no effect with kind = \"relayed\""
    ));
}

#[test]
fn multipath_over_a_diamond() {
    let diamond = CHAIN_A
        .replace(
            r#"links = [["gw-a", "gw-b"], ["gw-b", "gw-c"]]"#,
            r#"links = [["gw-a", "gw-b"], ["gw-b", "gw-d"], ["gw-a", "gw-c"], ["gw-c", "gw-d"]]"#,
        )
        .replace("name = \"gw-c\"", "name = \"gw-d\"")
        .replace("peer = \"gw-c\"", "peer = \"gw-d\"")
        .replace("mode = \"single\"", "mode = \"multipath\"")
        .replace(
            "[[peer]]\nname = \"gw-d\"",
            "[[peer]]\nname = \"gw-c\"\nrole = \"transmitter\"\naddress = \"192.0.2.3:9813\"\n\n[peer.link]\nkind = \"simulated\"\n\n[[peer]]\nname = \"gw-d\"",
        );
    let c = parse(&diamond).unwrap_or_else(|e| panic!("{e}"));
    let r = c.peer("gw-d").unwrap().relay.as_ref().unwrap();
    assert_eq!(
        r.paths,
        vec![p(&["gw-a", "gw-b", "gw-d"]), p(&["gw-a", "gw-c", "gw-d"])]
    );
}
