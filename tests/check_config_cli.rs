//! Runs the built `qkd-ipsec check-config` as an operator would: bad files
//! must fail with exit status 1 and name the field, its line and the fix on
//! stderr; the deploy examples with their secrets must pass with status 0.

mod cli_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use cli_support::{Scratch, qkd_ipsec};
use qkd_ipsec::config::error_cases::ERROR_CASES;

fn check_config(args: &[&Path]) -> Output {
    qkd_ipsec("check-config", args)
}

fn secret(dir: &Path, name: &str, len: usize, mode: u32) {
    let p = dir.join(name);
    fs::write(&p, vec![0x5a; len]).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn every_bad_field_fails_with_its_path_line_and_message() {
    let dir = Scratch::new("bad");
    let creds = dir.0.join("creds");
    fs::create_dir(&creds).unwrap();
    secret(&creds, "pool-key", 32, 0o600);
    secret(&creds, "bootstrap-gw-b", 512, 0o600);
    for case in ERROR_CASES {
        let file = dir.0.join("gateway.toml");
        fs::write(&file, case.text()).unwrap();
        let out = check_config(&[Path::new("--credentials-dir"), &creds, &file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", case.name);
        assert!(
            out.stdout.is_empty(),
            "{}: nothing on stdout when invalid",
            case.name
        );
        // `file:line:col: path: message` on one line.
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!(": {}: ", case.path)) && l.contains(case.fragment))
            .unwrap_or_else(|| panic!("{}: no line for {} in\n{stderr}", case.name, case.path));
        let prefix = format!("error: {}:", file.display());
        assert!(line.starts_with(&prefix), "{}: {line}", case.name);
        let loc: Vec<&str> = line[prefix.len()..].splitn(3, ':').collect();
        assert!(
            loc[0].parse::<usize>().is_ok() && loc[1].parse::<usize>().is_ok(),
            "{line}"
        );
        assert!(
            stderr.trim_end().ends_with("nothing was started"),
            "{stderr}"
        );
    }
}

#[test]
fn an_unsafe_secret_fails_with_the_fix_and_the_deploy_pair_passes() {
    let dir = Scratch::new("deploy");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let (a, b) = (root.join("gateway-a.toml"), root.join("gateway-b.toml"));
    let (ca, cb) = (dir.0.join("a"), dir.0.join("b"));
    for d in [&ca, &cb] {
        fs::create_dir(d).unwrap();
        secret(d, "pool-key", 32, 0o600);
    }
    secret(&ca, "bootstrap-gw-b", 512, 0o644);
    secret(&cb, "bootstrap-gw-a", 512, 0o600);

    let out = check_config(&[Path::new("--credentials-dir"), &ca, &a]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("peer[0].bootstrap_secret")
            && stderr.contains("mode 0644")
            && stderr.contains("chmod 600"),
        "{stderr}"
    );

    fs::set_permissions(ca.join("bootstrap-gw-b"), fs::Permissions::from_mode(0o600)).unwrap();
    let out = check_config(&[
        Path::new("--credentials-dir"),
        &ca,
        Path::new("--peer-credentials-dir"),
        &cb,
        &a,
        &b,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("gateway-a.toml: valid"), "{stdout}");
    assert!(stdout.contains("pair: consistent with"), "{stdout}");
    // A simulated link is named for what it is.
    assert!(
        stdout.contains("SIMULATED link") && stdout.contains("not quantum-secure"),
        "{stdout}"
    );
    assert!(stdout.contains("peer[0].bootstrap_secret"), "{stdout}");
}
