//! Runs the built `qkd-ipsec pool-audit` as an operator would, on a pool
//! written by the library: it reports the takes without changing the
//! files, prints JSON that both ends of a link can be compared with, and
//! fails with the peers' names for a peer the config lacks.

mod cli_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use cli_support::{Scratch, qkd_ipsec};
use qkd_ipsec::keys::audit::PoolAudit;
use qkd_ipsec::keys::{BlockId, KeyUse, PersistedPool, PoolKey, Role};
use qkd_ipsec::secret::SecretBytes;

fn pool_audit(args: &[&Path]) -> Output {
    qkd_ipsec("pool-audit", args)
}

/// gw-a's deploy config with its state directory moved to `state`.
fn config(dir: &Path, state: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let text = fs::read_to_string(root.join("gateway-a.toml"))
        .unwrap()
        .replace(
            "state_dir = \"/var/lib/qkd-ipsec\"",
            &format!("state_dir = \"{}\"", state.display()),
        );
    let file = dir.join("gateway.toml");
    fs::write(&file, text).unwrap();
    file
}

#[test]
fn the_audit_reports_takes_read_only_and_names_a_missing_peer() {
    let dir = Scratch::new("audit");
    let (creds, state) = (dir.0.join("creds"), dir.0.join("state"));
    fs::create_dir(&creds).unwrap();
    let key_file = creds.join("pool-key");
    fs::write(&key_file, [0x42; 32]).unwrap();
    fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
    let key = PoolKey::load(&key_file).unwrap();
    let taken = {
        let mut pool = PersistedPool::open(&state, "gw-b", Role::Transmitter, &key).unwrap();
        pool.append(BlockId(0), SecretBytes::from_vec(vec![7; 256]))
            .unwrap();
        pool.append(BlockId(1), SecretBytes::from_vec(vec![8; 256]))
            .unwrap();
        let (r, _) = pool.take(KeyUse::Relay, 100).unwrap();
        pool.take(KeyUse::SaKey, 72).unwrap();
        r
    };
    let file = config(&dir.0, &state);
    let files = |s: &Path| {
        let mut v: Vec<_> = fs::read_dir(s)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (p.clone(), fs::read(&p).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let before = files(&state);

    let out = pool_audit(&[Path::new("--credentials-dir"), &creds, &file]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pool with gw-b"), "{stdout}");
    assert!(
        stdout.contains("takes for relay: 1 (1 initiated here"),
        "{stdout}"
    );
    assert!(stdout.contains("takes for sa_key: 1"), "{stdout}");
    assert!(stdout.contains("no byte used twice"), "{stdout}");

    let out = pool_audit(&[
        Path::new("--credentials-dir"),
        &creds,
        Path::new("--json"),
        &file,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let audits: Vec<PoolAudit> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(audits.len(), 1);
    let relay: Vec<_> = audits[0].takes(KeyUse::Relay).collect();
    assert_eq!(relay.len(), 1);
    assert_eq!(relay[0].1.len(), taken.segments().len());
    assert_eq!(relay[0].1[0].offset, taken.segments()[0].offset);
    assert!(audits[0].findings.is_empty());
    assert_eq!(files(&state), before, "the audit changed the pool's files");

    let out = pool_audit(&[
        Path::new("--credentials-dir"),
        &creds,
        Path::new("--peer"),
        Path::new("gw-x"),
        &file,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no peer \"gw-x\"") && stderr.contains("gw-b"),
        "{stderr}"
    );

    // Without the pool key the audit says where it looked.
    let out = pool_audit(&[&file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gateway.pool_key"), "{stderr}");
}
