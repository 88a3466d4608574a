//! A minimal secure application entity (SAE) of ETSI GS QKD 014: asks a KME
//! (a QKD device's, or a qkd-ipsec agent's `kme_listen`) for its status or
//! for keys over mutual TLS, and prints each key's ID with a fingerprint —
//! the first 8 bytes of SHA-256 over the key, enough to see that two SAEs
//! hold the same key — never the key itself.
//!
//! ```text
//! cargo run --example etsi014_sae -- --url https://10.1.0.1:8443 \
//!     --ca lab-ca.pem --cert sae-a.pem --key sae-a.key \
//!     enc sae-b --number 2 --size 256
//! cargo run --example etsi014_sae -- --url https://10.2.0.1:8443 ... dec sae-a KEY_ID...
//! cargo run --example etsi014_sae -- --url ... status sae-b
//! ```
//!
//! Output, one line per key: `key <key_ID> <fingerprint>`; `status` prints
//! the status document as JSON. Errors go to stderr (exit code 1) and name
//! the HTTP status when the KME answered.

use clap::{Parser, Subcommand};
use qkd_ipsec::etsi014::api::KeyItem;
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[path = "common/sae.rs"]
mod sae;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    kme: sae::Kme,
    #[command(subcommand)]
    call: Call,
}

#[derive(Subcommand)]
enum Call {
    /// `GET /api/v1/keys/{slave}/status`.
    Status { slave: String },
    /// `POST /api/v1/keys/{slave}/enc_keys`.
    Enc {
        slave: String,
        #[arg(long, default_value_t = 1)]
        number: u32,
        #[arg(long, default_value_t = 256)]
        size: u32,
    },
    /// `POST /api/v1/keys/{master}/dec_keys`.
    Dec {
        master: String,
        #[arg(required = true)]
        key_ids: Vec<Uuid>,
        #[arg(long, default_value_t = 256)]
        size: u32,
    },
}

/// The first 8 bytes of SHA-256 over the key, in hex.
fn fingerprint(item: &KeyItem) -> String {
    Sha256::digest(item.key.expose())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn print_keys(keys: &[KeyItem]) {
    for k in keys {
        println!("key {} {}", k.key_id, fingerprint(k));
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = args.kme.client()?;
    match args.call {
        Call::Status { slave } => {
            let status = client.status(&slave).await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        Call::Enc {
            slave,
            number,
            size,
        } => print_keys(&client.enc_keys(&slave, number, size).await?),
        Call::Dec {
            master,
            key_ids,
            size,
        } => print_keys(&client.dec_keys(&master, &key_ids, size).await?),
    }
    Ok(())
}
