//! Lists — and with `--remove` removes — the SAs and policies qkd-ipsec owns
//! (default ownership rule) in a network namespace. Needs CAP_NET_ADMIN.
//!
//! ```text
//! cargo run --example xfrm_owned -- [NETNS-NAME] [--remove]
//! ```

use qkd_ipsec::netns::Netns;
use qkd_ipsec::xfrm::{Ownership, XfrmHandle};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let remove = args.iter().any(|a| a == "--remove");
    let netns = match args.iter().find(|a| !a.starts_with("--")) {
        Some(name) => Netns::named(name)?,
        None => Netns::current(),
    };
    let handle = XfrmHandle::connect(&netns, Ownership::default()).await?;
    println!("ownership: {}", handle.ownership());
    for sa in handle.list_owned_sas().await? {
        println!(
            "{}  {} packets, {} bytes",
            sa.id, sa.counters.packets, sa.counters.bytes
        );
    }
    for p in handle.list_owned_policies().await? {
        println!("{}", p.id);
    }
    if remove {
        let removed = handle.remove_owned().await?;
        println!("removed {} SAs, {} policies", removed.sas, removed.policies);
    }
    Ok(())
}
