//! Config errors: for every known class of mistake
//! ([`qkd_ipsec::config::error_cases`], shared with `check-config`'s own
//! tests), `qkd-ipsec agent` refuses to start, exits non-zero and prints
//! the field's path and the message. As a control, the same base file
//! without the mistake starts and keeps running until SIGTERM — so the
//! refusals are the mistakes' doing. Agents run in a scratch namespace.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use qkd_ipsec::config::error_cases::{ERROR_CASES, VALID_BASE};
use qkd_ipsec::netns::Netns;
use qkd_ipsec::testbed::Testbed;

use crate::agent_support::*;
use crate::support::*;

/// Deletes the scratch namespace and directory, also on panic.
struct Scratch {
    ns: String,
    dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Netns::delete_named(&self.ns);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The case's text with this test's state directory and status socket
/// (the defaults are under read-only or shared paths).
fn with_paths(text: &str, dir: &Path) -> String {
    text.replacen(
        "[gateway]\n",
        &format!(
            "[gateway]\nstate_dir = \"{}\"\nstatus_socket = \"{}\"\n",
            dir.join("state").display(),
            dir.join("status.sock").display()
        ),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_each_bad_config_with_path_and_message() {
    let name = Testbed::unique_prefix("cfg");
    let scratch = Scratch {
        dir: std::env::temp_dir().join(&name),
        ns: name,
    };
    Netns::create_named(&scratch.ns).expect("scratch namespace");
    let dir = &scratch.dir;
    let creds = dir.join("creds");
    std::fs::create_dir_all(&creds).expect("scratch dir");
    std::fs::create_dir_all(dir.join("state")).expect("state dir");
    for (file, len) in [("pool-key", 32), ("bootstrap-gw-b", 512)] {
        let p = creds.join(file);
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&p, bytes).expect("secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let agent = |text: String| {
        let file = dir.join("gateway.toml");
        std::fs::write(&file, text).expect("write config");
        let mut c = in_netns(&scratch.ns, BIN, &["agent", &file.to_string_lossy()]);
        c.env("CREDENTIALS_DIRECTORY", &creds)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };

    // Control: the base file starts and runs.
    let mut control = agent(with_paths(VALID_BASE, dir))
        .spawn()
        .expect("spawn agent");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        control.try_wait().expect("agent status").is_none(),
        "the valid base config did not keep the agent running"
    );
    let pid = nix::unistd::Pid::from_raw(control.id().expect("pid") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let stopped = within(
        Duration::from_secs(30),
        "the control agent to stop",
        control.wait(),
    )
    .await
    .expect("wait");
    assert!(stopped.success(), "SIGTERM: agent exited with {stopped}");

    for case in ERROR_CASES {
        let out = within(
            Duration::from_secs(30),
            case.name,
            agent(with_paths(&case.text(), dir)).output(),
        )
        .await
        .expect("run agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: the agent started", case.name);
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!(": {}: ", case.path)))
            .unwrap_or_else(|| panic!("{}: no line names {}: {stderr}", case.name, case.path));
        assert!(
            line.contains(case.fragment),
            "{}: {line:?} lacks {:?}",
            case.name,
            case.fragment
        );
    }
    println!(
        "config: {} bad configs refused with path and message",
        ERROR_CASES.len()
    );
}
