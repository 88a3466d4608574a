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

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use qkd_ipsec::etsi014::api::KeyItem;
use qkd_ipsec::etsi014::client::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, KmeClient, KmeClientConfig,
};
use qkd_ipsec::tls::{TlsFiles, certificate_identity, load_certs};
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    /// The KME's base URL (`https://host:port`).
    #[arg(long)]
    url: String,
    /// CA bundle the KME's certificate must chain to.
    #[arg(long)]
    ca: PathBuf,
    /// This SAE's client certificate (its CN is the SAE ID).
    #[arg(long)]
    cert: PathBuf,
    /// This SAE's private key (0600).
    #[arg(long)]
    key: PathBuf,
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
    // The SAE ID is the certificate's CN: the KME reads it from there too.
    let sae_id = certificate_identity(&load_certs(&args.cert)?[0])?;
    let client = KmeClient::new(&KmeClientConfig {
        url: args.url.clone(),
        sae_id,
        tls: TlsFiles {
            ca: args.ca,
            cert: args.cert,
            key: args.key,
        },
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
    })
    .with_context(|| format!("KME client for {}", args.url))?;
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
