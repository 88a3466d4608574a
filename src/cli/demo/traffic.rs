//! What the demo does to the traffic, whatever the topology: an nftables
//! filter on each gateway's WAN that counts and drops packets between the
//! two sites that did not arrive inside ESP ([`WanFilter`]), and a ping
//! from the first site's host to the last's ([`PingProcess`]). Owns only
//! the `qkddemo` nftables table and the ping process it starts.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};

use super::view::PingCounts;
use crate::xfrm::Prefix;

/// The filter's rules for the two sites: packets between them arriving on
/// the WAN without having been decapsulated from ESP are counted and
/// dropped. ESP itself and the peer channels carry the gateways'
/// addresses, not the sites'.
fn wan_rules(sites: [Prefix; 2]) -> String {
    format!(
        r#"
table inet qkddemo {{
  counter clear_sites {{}}
  chain wan_in {{
    type filter hook prerouting priority raw; policy accept;
    iifname "{wan}" meta ipsec exists accept
    iifname "{wan}" ip saddr {{ {}, {} }} counter name "clear_sites" drop
  }}
}}
"#,
        sites[0],
        sites[1],
        wan = crate::testbed::WAN_IF,
    )
}

/// The WAN filters installed on a set of gateway namespaces.
pub struct WanFilter {
    namespaces: Vec<String>,
}

impl WanFilter {
    /// Installs the filter in every namespace of `namespaces`.
    pub fn install(namespaces: Vec<String>, sites: [Prefix; 2]) -> anyhow::Result<Self> {
        let rules = wan_rules(sites);
        for ns in &namespaces {
            let mut child = Command::new("ip")
                .args(["netns", "exec", ns, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("cannot run nft (install nftables)")?;
            child
                .stdin
                .take()
                .context("nft stdin")?
                .write_all(rules.as_bytes())
                .context("writing the nftables rules")?;
            let out = child.wait_with_output().context("nft")?;
            if !out.status.success() {
                bail!(
                    "nft -f in {ns} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(Self { namespaces })
    }

    /// Packets each gateway's filter dropped, in installation order.
    pub fn clear_counts(&self) -> anyhow::Result<Vec<u64>> {
        self.namespaces.iter().map(|ns| clear_count(ns)).collect()
    }
}

fn clear_count(ns: &str) -> anyhow::Result<u64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(["nft", "list", "counter", "inet", "qkddemo", "clear_sites"])
        .output()
        .context("nft list counter")?;
    packets_in(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("no packet count in `nft list counter` in {ns}"))
}

/// The packet count in the output of `nft list counter`.
fn packets_in(text: &str) -> Option<u64> {
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
}

/// `ping -n -O -i 0.2` from a host namespace, its output counted by a
/// reader thread; killed on drop.
pub struct PingProcess {
    child: Child,
    counts: Arc<Mutex<PingCounts>>,
}

impl PingProcess {
    pub fn start(host_netns: &str, to: IpAddr) -> anyhow::Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", host_netns, "ping", "-n", "-O", "-i", "0.2"])
            .arg(to.to_string())
            // Not in the terminal's process group: Ctrl-C reaches only the
            // demo, which then stops everything in order.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run ping (install iputils-ping)")?;
        let stdout = child.stdout.take().context("ping stdout")?;
        let counts = Arc::new(Mutex::new(PingCounts::default()));
        let c = counts.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                c.lock().unwrap_or_else(|p| p.into_inner()).observe(&line);
            }
        });
        Ok(Self { child, counts })
    }

    pub fn counts(&self) -> PingCounts {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for PingProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn the_rules_name_both_sites_and_the_wan() {
        let site = |c| Prefix::new(IpAddr::V4(Ipv4Addr::new(10, c, 0, 0)), 24);
        let rules = wan_rules([site(1), site(3)]);
        assert!(rules.contains(r#"iifname "wan" meta ipsec exists accept"#));
        assert!(rules.contains("ip saddr { 10.1.0.0/24, 10.3.0.0/24 }"));
    }

    #[test]
    fn the_packet_count_is_read() {
        let out =
            "table inet qkddemo {\n\tcounter clear_sites {\n\t\tpackets 7 bytes 588\n\t}\n}\n";
        assert_eq!(packets_in(out), Some(7));
        assert_eq!(packets_in("Error: No such file"), None);
    }
}
