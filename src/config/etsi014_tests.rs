//! `[peer.etsi014]`: a good section, every required field, the kind rules,
//! the secret-file check and the pair cross-check.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::config::error_cases::VALID_BASE;
use crate::config::pair::{PairCredentials, check_pair};
use crate::config::{Config, ConfigError, LinkKind};
use crate::secret::file::TestDir;
use crate::tls::lab_pki::LabCa;

const SECTION: &str = r#"[peer.etsi014]
kme_url = "https://kme-a.example:8443"
ca = "kme/ca.pem"
client_cert = "kme/sae-gw-a.pem"
client_key = "kme/sae-gw-a.key"
sae_id = "sae-gw-a"
peer_sae_id = "sae-gw-b"
"#;

/// VALID_BASE with an etsi014 link and `section` (edited by `edit`).
fn etsi014_text(section: &str) -> String {
    VALID_BASE
        .replace("kind = \"simulated\"", "kind = \"etsi014\"")
        .replace(
            "[peer.postprocessing]",
            &format!("{section}\n[peer.postprocessing]"),
        )
}

fn parse_in(text: &str, dir: &Path) -> Result<Config, ConfigError> {
    Config::parse(text, &dir.join("gateway.toml"))
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_in(text, Path::new("/etc/qkd-ipsec"))
}

fn paths(text: &str) -> Vec<(String, String)> {
    match parse(text) {
        Ok(_) => Vec::new(),
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
fn a_good_section_reads_with_defaults_and_anchored_paths() {
    let c = parse(&etsi014_text(SECTION)).unwrap();
    let p = &c.peers[0];
    assert_eq!(p.kind, LinkKind::Etsi014);
    assert!(!p.is_simulated());
    let e = p.etsi014.as_ref().unwrap();
    assert_eq!(e.kme_url, "https://kme-a.example:8443");
    assert_eq!(e.tls.ca, Path::new("/etc/qkd-ipsec/kme/ca.pem"));
    assert_eq!(e.tls.key, Path::new("/etc/qkd-ipsec/kme/sae-gw-a.key"));
    assert_eq!(
        (e.sae_id.as_str(), e.peer_sae_id.as_str()),
        ("sae-gw-a", "sae-gw-b")
    );
    assert_eq!(
        (e.key_size_bits, e.batch, e.pool_target_bytes),
        (256, 8, 16384)
    );
    assert_eq!(e.connect_timeout, Duration::from_secs(5));
    assert_eq!(e.request_timeout, Duration::from_secs(10));
    assert_eq!(e.retry_max, Duration::from_secs(60));
    let client = e.client_config();
    assert_eq!(client.sae_id, "sae-gw-a");
    // No forecast warning: a device's rate is not the simulated optics'.
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    let tuned = SECTION.to_string()
        + "key_size = 512\nbatch = 16\npool_target_bytes = 65536\n\
           connect_timeout = \"2s\"\nrequest_timeout = \"3s\"\nretry_max = \"5m\"\n";
    let c = parse(&etsi014_text(&tuned)).unwrap();
    let e = c.peers[0].etsi014.as_ref().unwrap();
    assert_eq!(
        (e.key_size_bits, e.batch, e.pool_target_bytes),
        (512, 16, 65536)
    );
    assert_eq!(e.retry_max, Duration::from_secs(300));
}

#[test]
fn the_kind_and_the_section_go_together() {
    let missing = VALID_BASE.replace("kind = \"simulated\"", "kind = \"etsi014\"");
    assert!(has(
        &paths(&missing),
        "peer[0].link.kind",
        "needs the [peer.etsi014] section"
    ));
    let simulated = etsi014_text(SECTION).replace("kind = \"etsi014\"", "kind = \"simulated\"");
    assert!(has(
        &paths(&simulated),
        "peer[0].etsi014",
        "a kind = \"simulated\" link takes no [peer.etsi014]"
    ));
    let export = etsi014_text(SECTION).replace(
        "kind = \"etsi014\"",
        "kind = \"etsi014\"\nlab_export_fibre_keys = \"/run/fibre.keys\"",
    );
    assert!(has(
        &paths(&export),
        "peer[0].link.lab_export_fibre_keys",
        "only a simulated link"
    ));
    let optics = etsi014_text(SECTION).replace("length_km = 25.0", "length_km = 30.0");
    assert!(has(
        &paths(&optics),
        "peer[0].link.length_km",
        "no effect with kind = \"etsi014\""
    ));
    let post = etsi014_text(SECTION).replace("cascade = \"option8\"", "cascade = \"original\"");
    assert!(has(
        &paths(&post),
        "peer[0].postprocessing.cascade",
        "no effect"
    ));
}

#[test]
fn every_field_is_checked_with_its_path() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "kme_url = \"https://kme-a.example:8443\"\n",
            "",
            "kme_url",
            "missing",
        ),
        (
            "https://kme-a.example:8443",
            "http://kme-a.example:8443",
            "kme_url",
            "only https",
        ),
        ("ca = \"kme/ca.pem\"\n", "", "ca", "missing"),
        (
            "client_cert = \"kme/sae-gw-a.pem\"\n",
            "",
            "client_cert",
            "missing",
        ),
        (
            "client_key = \"kme/sae-gw-a.key\"\n",
            "",
            "client_key",
            "missing",
        ),
        ("sae_id = \"sae-gw-a\"\n", "", "sae_id", "missing"),
        (
            "\"sae-gw-a\"\npeer",
            "\"sae/gw-a\"\npeer",
            "sae_id",
            "unusable",
        ),
        (
            "\"sae-gw-b\"",
            "\"sae-gw-a\"",
            "peer_sae_id",
            "equals sae_id",
        ),
        ("peer_sae_id = \"sae-gw-b\"\n", "", "peer_sae_id", "missing"),
    ];
    for (find, replace, field, fragment) in cases {
        assert!(SECTION.contains(find), "{find:?}");
        let text = etsi014_text(&SECTION.replacen(find, replace, 1));
        let found = paths(&text);
        assert!(
            has(&found, &format!("peer[0].etsi014.{field}"), fragment),
            "{field}: {found:#?}"
        );
    }
    let extra: &[(&str, &str, &str)] = &[
        ("key_size = 255", "key_size", "multiple of 8"),
        ("key_size = 32", "key_size", "multiple of 8"),
        ("key_size = 70000", "key_size", "multiple of 8"),
        ("batch = 0", "batch", "1..=1024"),
        (
            "batch = 1024\nkey_size = 65536",
            "batch",
            "more than a pool block",
        ),
        (
            "pool_target_bytes = 100",
            "pool_target_bytes",
            "at least one batch",
        ),
        ("connect_timeout = \"0s\"", "connect_timeout", "positive"),
        ("request_timeout = \"0s\"", "request_timeout", "positive"),
        ("retry_max = \"500ms\"", "retry_max", "at least"),
    ];
    for (line, field, fragment) in extra {
        let found = paths(&etsi014_text(&format!("{SECTION}{line}\n")));
        assert!(
            has(&found, &format!("peer[0].etsi014.{field}"), fragment),
            "{line}: {found:#?}"
        );
    }
    let found = paths(&etsi014_text(&format!("{SECTION}kme = \"x\"\n")));
    assert!(
        found.iter().any(|(_, m)| m.contains("unknown field")),
        "{found:#?}"
    );
    let found = paths(&etsi014_text(&format!("{SECTION}retry_max = 60\n")));
    assert!(
        found.iter().any(|(p, _)| p == "peer[0].etsi014.retry_max"),
        "{found:#?}"
    );
}

/// A config whose etsi014 files are a lab CA's, in `dir`, with the
/// credentials `check_secrets` also wants.
fn with_lab_files(dir: &Path, sae: &str, peer_sae: &str) -> Config {
    let kme = dir.join("kme");
    fs::create_dir_all(&kme).unwrap();
    let ca = LabCa::create(&kme, "ca").unwrap();
    let files = ca.client(sae).unwrap();
    fs::rename(ca.ca_file(), kme.join("ca.pem")).unwrap();
    fs::rename(&files.cert, kme.join("sae-gw-a.pem")).unwrap();
    fs::rename(&files.key, kme.join("sae-gw-a.key")).unwrap();
    let section = SECTION
        .replace("\"sae-gw-a\"", "@THIS@")
        .replace("\"sae-gw-b\"", "@PEER@")
        .replace("@THIS@", &format!("{sae:?}"))
        .replace("@PEER@", &format!("{peer_sae:?}"));
    let mut text = etsi014_text(&section);
    if sae == "sae-gw-b" {
        // The other gateway's file.
        text = text
            .replace("name = \"gw-a\"", "name = @A@")
            .replace("name = \"gw-b\"", "name = \"gw-a\"")
            .replace("name = @A@", "name = \"gw-b\"")
            .replace("peer = \"gw-b\"", "peer = \"gw-a\"");
    }
    parse_in(&text, dir).unwrap()
}

#[test]
fn check_secrets_checks_the_client_key() {
    let dir = TestDir::new("config-etsi014-secrets");
    let c = with_lab_files(dir.path(), "sae-gw-a", "sae-gw-b");
    let (ok, bad) = c.check_secrets(Some(dir.path()));
    assert!(
        ok.iter().any(|s| s.field == "peer[0].etsi014.client_key"),
        "{ok:?} {bad:?}"
    );
    assert!(!bad.iter().any(|f| f.path.contains("etsi014")), "{bad:#?}");

    let key = dir.path().join("kme/sae-gw-a.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let (_, bad) = c.check_secrets(Some(dir.path()));
    let hits: Vec<_> = bad.iter().filter(|f| f.path.contains("etsi014")).collect();
    assert_eq!(hits.len(), 1, "{bad:#?}");
    assert_eq!(hits[0].path, "peer[0].etsi014.client_key");

    // A certificate that does not match the key.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let other = LabCa::create(dir.path(), "other")
        .unwrap()
        .client("x")
        .unwrap();
    fs::copy(&other.cert, dir.path().join("kme/sae-gw-a.pem")).unwrap();
    let (_, bad) = c.check_secrets(Some(dir.path()));
    assert!(bad.iter().any(|f| f.path == "peer[0].etsi014"), "{bad:#?}");
}

#[test]
fn the_pair_check_matches_sae_ids_and_key_size() {
    let dir = TestDir::new("config-etsi014-pair");
    let (da, db) = (dir.path().join("a"), dir.path().join("b"));
    let a = with_lab_files(&da, "sae-gw-a", "sae-gw-b");
    // b's file is a's with the peer's name; it names the SAEs wrongly.
    let b = with_lab_files(&db, "sae-gw-b", "sae-gw-x");
    let found = check_pair(
        &a,
        &b,
        PairCredentials {
            this: None,
            peer: None,
        },
    );
    let got: Vec<&str> = found.iter().map(|f| f.finding.path.as_str()).collect();
    assert!(got.contains(&"peer[0].etsi014.sae_id"), "{got:?}");
    assert!(!got.contains(&"peer[0].etsi014.peer_sae_id"), "{got:?}");
}
