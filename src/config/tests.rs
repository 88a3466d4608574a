//! Tests of the whole configuration: one per class of mistake (from
//! [`super::error_cases`]), error collection, secrets, conversions, the
//! deploy examples and the pair cross-check.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error_cases::{ERROR_CASES, VALID_BASE};
use super::pair::{PairCredentials, check_pair};
use super::*;
use crate::keys::Role;
use crate::qkd::link::BlockConfig;
use crate::qkd::optics::LinkParams;
use crate::secret::file::TestDir;
use crate::xfrm::{Direction, Mode, ReplayProtection};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/qkd-ipsec/gateway.toml"))
}

fn findings(text: &str) -> Vec<Finding> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.findings().to_vec(),
    }
}

#[test]
fn the_base_of_the_error_cases_is_valid() {
    let c = parse(VALID_BASE).unwrap();
    assert_eq!(c.gateway.name, "gw-a");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn each_bad_field_gives_its_path_and_message() {
    let mut failures = Vec::new();
    for case in ERROR_CASES {
        let found = findings(&case.text());
        // The finding must be there, and say where in the file.
        let hit = found.iter().any(|f| {
            f.path == case.path && f.message.contains(case.fragment) && f.location.is_some()
        });
        if !hit {
            failures.push(format!(
                "{}: want {} ~ {:?}, got {found:#?}",
                case.name, case.path, case.fragment
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_lifetime_example_reads_exactly_as_documented() {
    let case = ERROR_CASES
        .iter()
        .find(|c| c.path.ends_with("hard_packets"))
        .unwrap();
    let f = &findings(&case.text())[0];
    assert_eq!(
        f.to_string(),
        "tunnel[0].lifetime.hard_packets: 5000000000 exceeds 2^32-1 (no ESN: the 32-bit sequence \
         number must not wrap); lower it or set esn = true"
    );
    let line = case
        .text()
        .lines()
        .position(|l| l.starts_with("hard_packets"))
        .unwrap()
        + 1;
    assert_eq!(f.location, Some((line, 16)));
    assert_eq!(
        f.render(Path::new("gw.toml")),
        format!("gw.toml:{line}:16: {f}")
    );
}

#[test]
fn all_problems_are_reported_in_one_run() {
    let text = VALID_BASE
        .replace("[gateway]", "[gateway]\nbogus = 1")
        .replace(
            "length_km = 25.0",
            "length_km = -3.0\nmisalignment = \"high\"",
        )
        .replace("role = \"transmitter\"\n", "")
        .replace(
            "hard_seconds = 1800",
            "hard_seconds = 1800\nhard_packets = 5000000000\nsoft_bytes = 0",
        );
    let paths: Vec<String> = findings(&text).into_iter().map(|f| f.path).collect();
    for want in [
        "gateway.bogus",
        "peer[0].link.misalignment",
        "peer[0].link.length_km",
        "peer[0].role",
        "tunnel[0].lifetime.hard_packets",
        "tunnel[0].lifetime.soft_bytes",
    ] {
        assert!(
            paths.iter().any(|p| p == want),
            "{want} missing from {paths:?}"
        );
    }
}

#[test]
fn a_field_with_a_type_error_is_not_reported_twice() {
    // The bad `role` is deleted to get past serde; the check for a missing
    // role must not then report it again.
    let f = findings(&VALID_BASE.replace("role = \"transmitter\"", "role = 5"));
    let on_role: Vec<_> = f.iter().filter(|f| f.path == "peer[0].role").collect();
    assert_eq!(on_role.len(), 1, "{f:#?}");
}

#[test]
fn missing_sections_and_required_fields_are_all_named() {
    let paths: Vec<String> = findings("").into_iter().map(|f| f.path).collect();
    assert_eq!(paths, ["gateway.name", "peer"]);
    let t = "[gateway]\nname = \"a\"\n[[peer]]\nname = \"b\"\nrole = \"receiver\"\nlisten = 1\n[[tunnel]]\n";
    let paths: Vec<String> = findings(t).into_iter().map(|f| f.path).collect();
    for want in [
        "peer[0].listen",
        "gateway.listen",
        "tunnel[0].name",
        "tunnel[0].peer",
        "tunnel[0].local_endpoint",
        "tunnel[0].remote_endpoint",
        "tunnel[0].local_subnets",
        "tunnel[0].remote_subnets",
    ] {
        assert!(
            paths.iter().any(|p| p == want),
            "{want} missing from {paths:?}"
        );
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    let c = parse(VALID_BASE).unwrap();
    let g = &c.gateway;
    assert_eq!(g.state_dir, Path::new("/var/lib/qkd-ipsec"));
    assert_eq!(g.status_socket, Path::new("/run/qkd-ipsec/status.sock"));
    assert_eq!(g.pool_key, SecretLocation::Credential("pool-key".into()));
    assert_eq!(g.on_stop, OnStop::Keep);
    assert_eq!(g.ownership, crate::xfrm::Ownership::default());
    let p = &c.peers[0];
    assert_eq!(p.role, Role::Transmitter);
    assert!(p.dials());
    assert_eq!(
        p.bootstrap_secret,
        SecretLocation::Credential("bootstrap-gw-b".into())
    );
    assert_eq!(p.channel, ChannelSection::default());
    assert_eq!(p.channel.backoff_min.get(), Duration::from_millis(250));
    let t = &c.tunnels[0];
    assert_eq!(t.mode, Mode::Tunnel);
    assert_eq!(t.keying, Keying::Direct);
    assert!(t.initiator, "the transmitter initiates by default");
    assert_eq!(t.rekey_interval, Duration::from_secs(600));
    assert_eq!(t.rekey_jitter, Duration::from_secs(60));
    assert_eq!(t.replay, ReplayProtection::Window(32));
    let l = t.lifetimes;
    assert_eq!((l.soft.seconds, l.hard.seconds), (Some(1200), Some(1800)));
    assert_eq!(l.hard.packets, Some(u32::MAX as u64));
    assert_eq!(l.soft.packets, Some(u32::MAX as u64 / 2));
    assert_eq!((l.soft.bytes, l.hard.bytes), (None, None));
}

#[test]
fn esn_lifts_the_packet_limit_and_the_receiver_does_not_initiate() {
    let text = VALID_BASE
        .replace(
            "name = \"gw-a\"",
            "name = \"gw-a\"\nlisten = \"0.0.0.0:9813\"",
        )
        .replace("role = \"transmitter\"", "role = \"receiver\"")
        .replace(
            "rekey_interval = \"10m\"",
            "rekey_interval = \"10m\"\nesn = true\nreplay_window = 1024",
        )
        .replace(
            "hard_seconds = 1800",
            "hard_seconds = 1800\nhard_packets = 5000000000",
        );
    let c = parse(&text).unwrap();
    let t = &c.tunnels[0];
    assert!(!t.initiator);
    assert_eq!(t.replay, ReplayProtection::Esn { window: 1024 });
    assert_eq!(t.lifetimes.hard.packets, Some(5_000_000_000));
    assert_eq!(t.outbound_sa().replay, t.replay);
    // No ESN and no packet limit would be refused; with ESN none is set.
    let c = parse(&text.replace("hard_packets = 5000000000", "")).unwrap();
    assert_eq!(c.tunnels[0].lifetimes.hard.packets, None);
}

#[test]
fn block_config_carries_every_link_and_postprocessing_field() {
    let text = VALID_BASE
        .replace("length_km = 25.0", "length_km = 40.0\ninsertion_loss_db = 1.5\nframe_slots = 4194304")
        .replace("cascade = \"option8\"", "cascade = \"option7\"\neps_sec = 1e-9\nmax_qber_test = 0.08\nblock_sifted_bits = 100000");
    let c = parse(&text).unwrap();
    let b: BlockConfig = c.peers[0].block_config();
    b.validate().unwrap();
    let mut want = LinkParams::gys(40.0);
    want.fibre.insertion_loss_db = 1.5;
    want.source.intensities = [0.6, 0.2, 0.0];
    want.source.probabilities = [0.4, 0.4, 0.2];
    assert_eq!(b.link, want);
    assert_eq!(b.max_frame_slots, 1 << 22);
    assert_eq!(b.target_sifted_bits, 100_000);
    assert_eq!(b.cascade.variant.name(), "option7");
    assert_eq!(b.estimate.eps_sec, 1e-9);
    assert_eq!(b.estimate.max_qber_test, 0.08);
    assert_eq!(b.estimate.intensities, want.source.intensities);
    assert_eq!(c.peers[0].pulse_rate_hz(), 1e9);
}

#[test]
fn tunnels_become_sa_templates_and_policies() {
    let text = VALID_BASE.replace(
        "local_subnets = [\"10.1.0.0/24\"]\nremote_subnets = [\"10.2.0.0/24\"]",
        "local_subnets = [\"10.1.0.0/24\", \"2001:db8:1::/64\"]\nremote_subnets = [\"10.2.0.0/24\", \"2001:db8:2::/64\"]",
    );
    let c = parse(&text).unwrap();
    let t = &c.tunnels[0];
    let out = t.outbound_sa();
    assert_eq!((out.src, out.dst), (t.local_endpoint, t.remote_endpoint));
    let inb = t.inbound_sa();
    assert_eq!((inb.src, inb.dst), (t.remote_endpoint, t.local_endpoint));
    assert_eq!(out.reqid, t.reqid);
    let spec = out.with_key(0x5144_0101, crate::secret::SaKey::zeroed());
    spec.validate().unwrap();
    assert_eq!(spec.lifetimes, t.lifetimes);
    // Two same-family pairs × (out, in, fwd); never a mixed-family pair.
    let p = t.policies();
    assert_eq!(p.len(), 6);
    for d in [Direction::Out, Direction::In, Direction::Fwd] {
        assert_eq!(p.iter().filter(|x| x.direction == d).count(), 2);
    }
    for x in &p {
        x.validate().unwrap();
        assert_eq!(x.template.reqid, t.reqid);
        let outward = x.direction == Direction::Out;
        assert_eq!(x.template.src == t.local_endpoint, outward);
        assert_eq!(t.local_subnets.contains(&x.selector.src), outward);
    }
}

#[test]
fn transport_mode_protects_the_endpoints_without_fwd() {
    let text = VALID_BASE.replace(
        "local_subnets = [\"10.1.0.0/24\"]\nremote_subnets = [\"10.2.0.0/24\"]\n",
        "mode = \"transport\"\n",
    );
    let c = parse(&text).unwrap();
    let t = &c.tunnels[0];
    assert_eq!(t.mode, Mode::Transport);
    assert_eq!(
        t.local_subnets,
        [crate::xfrm::Prefix::host(t.local_endpoint)]
    );
    let p = t.policies();
    assert_eq!(p.len(), 2);
    assert!(p.iter().all(|x| x.direction != Direction::Fwd));
}

#[test]
fn derived_reqids_are_stable_inside_the_range_and_collisions_are_refused() {
    let o = crate::xfrm::Ownership::default();
    let r = derived_reqid("site-a-site-b", &o);
    assert_eq!(r, derived_reqid("site-a-site-b", &o));
    assert!(o.reqids.contains(&r));
    assert_ne!(r, derived_reqid("site-a-site-c", &o));
    let narrow = crate::xfrm::Ownership {
        reqids: 100..=100,
        ..o
    };
    assert_eq!(derived_reqid("anything", &narrow), 100);
    // Two tunnels forced onto one reqid.
    let text = VALID_BASE
        .replace(
            "name = \"gw-a\"",
            "name = \"gw-a\"\n[gateway.ownership]\nreqids = [100, 100]",
        )
        .replace(
            "[tunnel.lifetime]",
            "[[tunnel]]\nname = \"c-d\"\npeer = \"gw-b\"\nlocal_subnets = [\"10.3.0.0/24\"]\n\
             remote_subnets = [\"10.4.0.0/24\"]\nlocal_endpoint = \"192.0.2.1\"\n\
             remote_endpoint = \"198.51.100.2\"\n[tunnel.lifetime]",
        );
    let f = findings(&text);
    assert!(
        f.iter()
            .any(|f| f.path == "tunnel[1].reqid" && f.message.contains("set reqid explicitly")),
        "{f:#?}"
    );
}

#[test]
fn two_tunnels_may_not_claim_the_same_traffic() {
    let second = "[[tunnel]]\nname = \"dup\"\npeer = \"gw-b\"\nlocal_subnets = [\"10.1.0.0/24\"]\n\
                  remote_subnets = [\"10.2.0.0/24\"]\nlocal_endpoint = \"192.0.2.1\"\n\
                  remote_endpoint = \"198.51.100.2\"\n";
    let f = findings(&format!("{VALID_BASE}\n{second}"));
    assert!(
        f.iter()
            .any(|f| f.path == "tunnel[1]" && f.message.contains("same traffic as tunnel[0]")),
        "{f:#?}"
    );
}

#[test]
fn risky_settings_warn_without_failing() {
    let text = VALID_BASE.replace(
        "name = \"gw-a\"",
        "name = \"gw-a\"\non_stop = \"remove-all\"\nmetrics_listen = \"0.0.0.0:9814\"",
    );
    let c = parse(&text).unwrap();
    let paths: Vec<&str> = c.warnings.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, ["gateway.metrics_listen", "gateway.on_stop"]);
    assert!(c.warnings[1].message.contains("CLEAR TEXT"));
    let far = VALID_BASE.replace("length_km = 25.0", "length_km = 250.0");
    let c = parse(&far).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.path == "peer[0].link" && w.message.contains("no key"))
    );
}

#[test]
fn relative_paths_are_anchored_at_the_config_directory() {
    let text = VALID_BASE
        .replace(
            "name = \"gw-a\"",
            "name = \"gw-a\"\npool_key = \"creds/pool-key\"\nstate_dir = \"state\"",
        )
        .replace(
            "role = \"transmitter\"",
            "role = \"transmitter\"\nbootstrap_secret = \"/abs/boot\"",
        );
    let c = Config::parse(&text, Path::new("/srv/qkd/gw.toml")).unwrap();
    assert_eq!(
        c.gateway.pool_key,
        SecretLocation::File("/srv/qkd/creds/pool-key".into())
    );
    assert_eq!(c.gateway.state_dir, Path::new("/srv/qkd/state"));
    assert_eq!(
        c.peers[0].bootstrap_secret,
        SecretLocation::File("/abs/boot".into())
    );
}

/// Writes a secret file with `len` random bytes and `mode`.
fn secret(dir: &Path, name: &str, len: usize, mode: u32) -> PathBuf {
    let p = dir.join(name);
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    fs::write(&p, bytes).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn secret_files_are_checked_for_mode_length_and_presence() {
    let dir = TestDir::new("config-secrets");
    let c = parse(VALID_BASE).unwrap();
    // Nothing there yet: both credentials are missing.
    let (ok, bad) = c.check_secrets(Some(dir.path()));
    assert!(ok.is_empty());
    let paths: Vec<&str> = bad.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["gateway.pool_key", "peer[0].bootstrap_secret"]);
    assert!(bad[1].message.contains("bootstrap-gw-b"), "{}", bad[1]);
    assert!(bad.iter().all(|f| f.location.is_some()));
    // Wrong length, readable by others, too short.
    secret(dir.path(), "pool-key", 31, 0o600);
    secret(dir.path(), "bootstrap-gw-b", 512, 0o644);
    let (_, bad) = c.check_secrets(Some(dir.path()));
    assert!(
        bad[0]
            .message
            .contains("31 bytes; the pool key must be exactly 32"),
        "{}",
        bad[0]
    );
    assert!(
        bad[1].message.contains("mode 0644") && bad[1].message.contains("chmod 600"),
        "{}",
        bad[1]
    );
    secret(
        dir.path(),
        "bootstrap-gw-b",
        MIN_BOOTSTRAP_SECRET_BYTES - 1,
        0o600,
    );
    let (_, bad) = c.check_secrets(Some(dir.path()));
    assert!(bad[1].message.contains("at least 160"), "{}", bad[1]);
    // All good.
    secret(dir.path(), "pool-key", 32, 0o600);
    secret(
        dir.path(),
        "bootstrap-gw-b",
        MIN_BOOTSTRAP_SECRET_BYTES,
        0o400,
    );
    let (ok, bad) = c.check_secrets(Some(dir.path()));
    assert!(bad.is_empty(), "{bad:#?}");
    assert_eq!(ok.len(), 2);
    // Credentials with no directory to look in.
    let (_, bad) = c.check_secrets(None);
    assert!(
        bad[0].message.contains("LoadCredential=pool-key:"),
        "{}",
        bad[0]
    );
}

const DEPLOY_A: &str = include_str!("../../deploy/gateway-a.toml");
const DEPLOY_B: &str = include_str!("../../deploy/gateway-b.toml");

/// Both deploy examples in a directory with their credentials.
fn deploy_pair(dir: &Path) -> (Config, Config, PathBuf, PathBuf) {
    let (ca, cb) = (dir.join("creds-a"), dir.join("creds-b"));
    for d in [&ca, &cb] {
        fs::create_dir(d).unwrap();
        secret(d, "pool-key", 32, 0o600);
    }
    secret(&ca, "bootstrap-gw-b", 512, 0o600);
    secret(&cb, "bootstrap-gw-a", 512, 0o600);
    let a = Config::parse(DEPLOY_A, &dir.join("gateway-a.toml")).unwrap();
    let b = Config::parse(DEPLOY_B, &dir.join("gateway-b.toml")).unwrap();
    (a, b, ca, cb)
}

#[test]
fn deploy_examples_are_valid_with_their_secrets_and_agree() {
    let dir = TestDir::new("config-deploy");
    let (a, b, ca, cb) = deploy_pair(dir.path());
    for (c, creds) in [(&a, &ca), (&b, &cb)] {
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let (ok, bad) = c.check_secrets(Some(creds));
        assert!(bad.is_empty(), "{bad:#?}");
        assert_eq!(ok.len(), 2);
    }
    let creds = PairCredentials {
        this: Some(&ca),
        peer: Some(&cb),
    };
    assert_eq!(check_pair(&a, &b, creds), vec![]);
    assert_eq!(
        check_pair(
            &b,
            &a,
            PairCredentials {
                this: Some(&cb),
                peer: Some(&ca)
            }
        ),
        vec![]
    );
    assert_eq!(
        a.peers[0].block_config().agreement_digest(),
        b.peers[0].block_config().agreement_digest()
    );
    assert!(a.tunnels[0].initiator && !b.tunnels[0].initiator);
}

#[test]
fn the_pair_check_finds_what_one_file_cannot() {
    let dir = TestDir::new("config-pair");
    let (a, _, ca, cb) = deploy_pair(dir.path());
    let bad_b = DEPLOY_B
        .replace(
            "role = \"receiver\"",
            "role = \"transmitter\"\naddress = \"192.0.2.1:9813\"",
        )
        .replace("length_km = 25.0", "length_km = 30.0")
        .replace("listen = \"0.0.0.0:9813\"", "listen = \"0.0.0.0:9999\"")
        .replace(
            "local_subnets = [\"10.2.0.0/24\"]",
            "local_subnets = [\"10.9.0.0/24\"]",
        );
    let b = Config::parse(&bad_b, &dir.path().join("gateway-b.toml")).unwrap();
    // A different bootstrap secret on b's side.
    secret(&cb, "bootstrap-gw-a", 512, 0o600);
    fs::write(cb.join("bootstrap-gw-a"), vec![1u8; 512]).unwrap();
    let found = check_pair(
        &a,
        &b,
        PairCredentials {
            this: Some(&ca),
            peer: Some(&cb),
        },
    );
    let got: Vec<String> = found.iter().map(|f| f.finding.path.clone()).collect();
    for want in [
        "peer[0].role",
        "peer[0].link.length_km",
        "tunnel[0].remote_subnets",
        "tunnel[0].initiator",
        "peer[0].bootstrap_secret",
    ] {
        assert!(
            got.iter().any(|g| g == want),
            "{want} missing from {found:#?}"
        );
    }
    assert!(
        found.iter().all(|f| f.file == a.file),
        "all about a's fields: {found:#?}"
    );
    // The listener mismatch shows when b is the receiver again.
    let b2 = Config::parse(
        &DEPLOY_B.replace("listen = \"0.0.0.0:9813\"", "listen = \"0.0.0.0:9999\""),
        &dir.path().join("gateway-b.toml"),
    )
    .unwrap();
    let found = check_pair(&a, &b2, PairCredentials::default());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].finding.path, "peer[0].address");
    assert!(
        found[0]
            .render()
            .contains("does not reach the peer's listener 0.0.0.0:9999")
    );
}

#[test]
fn the_systemd_unit_matches_the_config_defaults() {
    let unit = include_str!("../../deploy/qkd-ipsec.service");
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    assert!(has(&format!(
        "LoadCredential={}:{}/{}",
        crate::keys::POOL_KEY_CREDENTIAL,
        DEFAULT_CREDENTIALS_SOURCE,
        crate::keys::POOL_KEY_CREDENTIAL
    )));
    let state = Path::new(gateway::DEFAULT_STATE_DIR);
    assert!(has(&format!(
        "StateDirectory={}",
        state.file_name().unwrap().to_str().unwrap()
    )));
    let run = Path::new(gateway::DEFAULT_STATUS_SOCKET).parent().unwrap();
    assert!(has(&format!(
        "RuntimeDirectory={}",
        run.file_name().unwrap().to_str().unwrap()
    )));
    for line in [
        "Type=notify",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "RestrictAddressFamilies=AF_NETLINK AF_INET AF_INET6 AF_UNIX",
        "UMask=0077",
    ] {
        assert!(has(line), "{line}");
    }
    // Both deploy configs take their secrets from these credentials.
    for text in [DEPLOY_A, DEPLOY_B] {
        let c = parse(text).unwrap();
        assert_eq!(
            c.gateway.pool_key,
            SecretLocation::Credential(crate::keys::POOL_KEY_CREDENTIAL.into())
        );
        assert_eq!(c.gateway.state_dir, state);
        assert!(matches!(
            c.peers[0].bootstrap_secret,
            SecretLocation::Credential(_)
        ));
    }
}

#[test]
fn the_module_documentation_example_is_a_valid_file() {
    let doc = include_str!("mod.rs");
    let example: String = doc
        .lines()
        .skip_while(|l| *l != "//! ```toml")
        .skip(1)
        .take_while(|l| *l != "//! ```")
        .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
        .collect();
    assert!(example.contains("[[tunnel]]"), "{example}");
    let c = parse(&example).unwrap();
    assert_eq!((c.peers.len(), c.tunnels.len()), (1, 1));
}

#[test]
fn etsi014_deploy_examples_parse_and_agree() {
    let dir = TestDir::new("config-deploy-etsi014");
    let parse = |text: &str, name: &str| {
        Config::parse(text, &dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let a = parse(
        include_str!("../../deploy/etsi014/gateway-a.toml"),
        "gateway-a.toml",
    );
    let b = parse(
        include_str!("../../deploy/etsi014/gateway-b.toml"),
        "gateway-b.toml",
    );
    for c in [&a, &b] {
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(c.peers[0].etsi014.is_some() && c.kme.is_some());
    }
    assert_eq!(check_pair(&a, &b, PairCredentials::default()), vec![]);
    assert_eq!(check_pair(&b, &a, PairCredentials::default()), vec![]);
}

#[test]
fn relay_deploy_examples_parse_and_find_their_paths() {
    let dir = TestDir::new("config-deploy-relay");
    let parse = |text: &str, name: &str| {
        Config::parse(text, &dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let a = parse(include_str!("../../deploy/relay/gw-a.toml"), "gw-a.toml");
    let b = parse(include_str!("../../deploy/relay/gw-b.toml"), "gw-b.toml");
    let c = parse(include_str!("../../deploy/relay/gw-c.toml"), "gw-c.toml");
    for cfg in [&a, &b, &c] {
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        let links = |c: &Config| c.network.as_ref().unwrap().links().len();
        assert_eq!(
            cfg.network.as_ref().unwrap().links(),
            a.network.as_ref().unwrap().links(),
            "the same [network] links everywhere"
        );
        assert_eq!(links(cfg), 2);
    }
    let path = |cfg: &Config, peer: &str| {
        cfg.peer(peer)
            .unwrap()
            .relay
            .as_ref()
            .unwrap()
            .paths
            .clone()
    };
    assert_eq!(path(&a, "gw-c"), vec![vec!["gw-a", "gw-b", "gw-c"]]);
    assert_eq!(path(&c, "gw-a"), vec![vec!["gw-c", "gw-b", "gw-a"]]);
    assert!(b.network.as_ref().unwrap().relay && b.peers.iter().all(|p| p.relay.is_none()));
    for (x, y) in [(&a, &b), (&b, &c), (&a, &c), (&c, &a)] {
        assert_eq!(check_pair(x, y, PairCredentials::default()), vec![]);
    }
    // A gateway whose [network] differs is named.
    let other = parse(
        &include_str!("../../deploy/relay/gw-c.toml").replace(
            r#"links = [["gw-a", "gw-b"], ["gw-b", "gw-c"]]"#,
            r#"links = [["gw-a", "gw-b"], ["gw-b", "gw-c"], ["gw-a", "gw-d"]]"#,
        ),
        "gw-c2.toml",
    );
    let found = check_pair(&a, &other, PairCredentials::default());
    assert!(
        found
            .iter()
            .any(|f| f.finding.path == "network.links" && f.finding.message.contains("gw-a–gw-d")),
        "{found:?}"
    );
}
