//! SAs added and deleted per second: through the library (one netlink
//! socket, NEWSA/DELSA) versus `ip xfrm state add/delete` run as one process
//! per SA — the way shell-scripted keying works — measured in the same run,
//! in a scratch network namespace.
//!
//! Needs root and a kernel with ESP and rfc4106(gcm(aes)); run it with
//! `netns-tests/run --bench` (which boots a VM when the host lacks ESP).
//! Not a criterion bench: one pass over many SAs measures a rate directly,
//! and the `ip` side is far too slow for criterion's sampling.
//!
//! Arguments: `[library SAs] [ip SAs]` (defaults 2000 and 200).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qkd_ipsec::netns::Netns;
use qkd_ipsec::secret::SaKey;
use qkd_ipsec::testbed::Testbed;
use qkd_ipsec::xfrm::{Ownership, SaSpec, XfrmHandle};

const SRC: &str = "192.0.2.1";
const DST: &str = "192.0.2.2";
const REQID: u32 = 0x5144_0001;
const SPI_BASE: u32 = 0x5144_0100;

struct Rates {
    add: f64,
    delete: f64,
    both: f64,
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn library(netns: &Netns, n: usize) -> Rates {
    let handle = XfrmHandle::connect(netns, Ownership::default())
        .await
        .expect("XFRM handle");
    let key = SaKey::random().expect("random key");
    let mut spec = SaSpec::tunnel(
        SRC.parse().unwrap(),
        DST.parse().unwrap(),
        SPI_BASE,
        REQID,
        key,
    );
    let mut ids = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        spec.spi = SPI_BASE + i as u32;
        ids.push(handle.add_sa(&spec).await.expect("add SA"));
    }
    let add = t.elapsed();
    let t = Instant::now();
    for id in &ids {
        handle.delete_sa(id).await.expect("delete SA");
    }
    let delete = t.elapsed();
    Rates {
        add: rate(n, add),
        delete: rate(n, delete),
        both: rate(n, add + delete),
    }
}

fn ip(netns: &str, args: &[&str]) {
    let status = Command::new("ip")
        .args(["-n", netns, "xfrm", "state"])
        .args(args)
        .stdin(Stdio::null())
        .status()
        .expect("run ip");
    assert!(status.success(), "ip xfrm state {} failed", args[0]);
}

fn iproute2(netns: &str, n: usize) -> Rates {
    // A fixed throwaway key: iproute2 takes keys on the command line, which
    // is one reason not to key SAs this way in production.
    let key = format!("0x{}", "42".repeat(36));
    let spis: Vec<String> = (0..n)
        .map(|i| format!("{:#x}", SPI_BASE + i as u32))
        .collect();
    let reqid = REQID.to_string();
    let t = Instant::now();
    for spi in &spis {
        ip(
            netns,
            &[
                "add",
                "src",
                SRC,
                "dst",
                DST,
                "proto",
                "esp",
                "spi",
                spi,
                "reqid",
                &reqid,
                "mode",
                "tunnel",
                "aead",
                "rfc4106(gcm(aes))",
                &key,
                "128",
            ],
        );
    }
    let add = t.elapsed();
    let t = Instant::now();
    for spi in &spis {
        ip(
            netns,
            &["delete", "src", SRC, "dst", DST, "proto", "esp", "spi", spi],
        );
    }
    let delete = t.elapsed();
    Rates {
        add: rate(n, add),
        delete: rate(n, delete),
        both: rate(n, add + delete),
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let n_lib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let n_ip: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let name = Testbed::unique_prefix("bench");
    let netns = Netns::create_named(&name).expect("scratch namespace (needs root)");
    let lib = runtime.block_on(library(&netns, n_lib));
    let cli = iproute2(&name, n_ip);
    Netns::delete_named(&name).expect("delete scratch namespace");

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("xfrm SA add/delete rate, kernel {}", kernel.trim());
    println!(
        "library  ({n_lib:>5} SAs): add {:>9.0} SA/s  delete {:>9.0} SA/s  add+delete {:>9.0} SA/s",
        lib.add, lib.delete, lib.both
    );
    println!(
        "ip xfrm  ({n_ip:>5} SAs): add {:>9.1} SA/s  delete {:>9.1} SA/s  add+delete {:>9.1} SA/s",
        cli.add, cli.delete, cli.both
    );
    println!(
        "ratio library/ip: add {:.0}x  delete {:.0}x  add+delete {:.0}x",
        lib.add / cli.add,
        lib.delete / cli.delete,
        lib.both / cli.both
    );
}
