//! Whether this kernel can carry ESP, and running the demo in a VM whose
//! kernel can — the recipe of `netns-tests/run` (DESIGN.md, "Test rig"):
//! virtme-ng boots the newest stock kernel in /boot over the host's own
//! read-only root, loads the modules the demo needs and runs the same
//! binary there with `--in-vm`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Modules the demo needs in the guest: the XFRM netlink API, ESP for
/// IPv4, veth links and nftables (the WAN filter).
const GUEST_MODULES: &str = "xfrm_user esp4 veth nf_tables";

/// Tries to install an ESP SA with `rfc4106(gcm(aes))` in a scratch
/// namespace that is deleted afterwards, so the host's SAD is never touched
/// (the probe of `netns-tests/run`). `Ok(false)` when the kernel refuses.
pub fn esp_available() -> anyhow::Result<bool> {
    let ns = format!("qkd-demo-probe-{}", std::process::id());
    let status = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .context("cannot run `ip` (install iproute2)")?;
    if !status.success() {
        bail!("`ip netns add {ns}` failed: cannot create a network namespace");
    }
    let key = format!("0x{}", "00".repeat(36));
    let probe = Command::new("ip")
        .args(["-n", &ns, "xfrm", "state", "add"])
        .args(["src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp"])
        .args([
            "spi",
            "0x1000",
            "mode",
            "tunnel",
            "aead",
            "rfc4106(gcm(aes))",
        ])
        .args([key.as_str(), "128"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    Ok(probe.context("cannot run `ip xfrm`")?.success())
}

/// The newest `/boot/vmlinuz-*` whose modules are installed.
fn guest_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_string();
            Path::new("/lib/modules")
                .join(&version)
                .is_dir()
                .then(|| (version_key(&version), e.path()))
        })
        .collect();
    kernels.sort();
    kernels.pop().map(|(_, p)| p)
}

/// Numeric parts of a kernel version, for sorting `6.1.0-9` before `6.1.0-56`.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Single-quotes `s` for the guest's shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Boots the VM and runs `binary demo --in-vm ARGS` in it, with its output
/// on this terminal. Returns the guest command's success.
pub fn run_in_vm(binary: &Path, demo_args: &[String]) -> anyhow::Result<bool> {
    let kernel = guest_kernel().context(
        "no kernel with modules in /boot and /lib/modules to boot the VM with; \
         install one (apt-get install linux-image-amd64) or run the demo on a kernel with ESP",
    )?;
    if !on_path("vng") {
        bail!(
            "virtme-ng (vng) is not installed: `pip install virtme-ng` (and apt-get install \
             qemu-system-x86 busybox-static), or run netns-tests/run once, which installs them"
        );
    }
    let mut command = format!(
        "modprobe -a {GUEST_MODULES} || echo 'modprobe failed' >&2; exec {} demo --in-vm",
        shell_quote(&binary.to_string_lossy())
    );
    for a in demo_args {
        command.push(' ');
        command.push_str(&shell_quote(a));
    }
    let mut vng = Command::new("vng");
    vng.arg("--run").arg(&kernel);
    // QEMU without KVM is 5-20x slower; use KVM when this user may.
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm {
        vng.arg("--disable-kvm");
    }
    vng.args(["--cpus", "2", "--memory", "2G", "--exec", &command]);
    println!(
        "This kernel ({}) cannot carry ESP, so the demo runs inside a VM: booting {} with \
         virtme-ng{} (about 20 s)...",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        kernel.display(),
        if kvm { "" } else { " under QEMU without KVM" }
    );
    let status = vng.status().context("cannot run vng (virtme-ng)")?;
    Ok(status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec![version_key("6.1.0-56-amd64"), version_key("6.1.0-9-amd64")];
        v.sort();
        assert_eq!(v[1], vec![6, 1, 0, 56]);
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
        assert_eq!(shell_quote("--duration"), "'--duration'");
    }
}
