//! What the CLI tests share: a scratch directory and a way to run the
//! built `qkd-ipsec` as an operator would.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("qkd-ipsec-cli-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `qkd-ipsec COMMAND ARGS…`, without the systemd credentials directory.
pub fn qkd_ipsec(command: &str, args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qkd-ipsec"))
        .arg(command)
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .expect("run qkd-ipsec")
}
