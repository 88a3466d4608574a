//! What every example SAE takes on its command line to reach its KME, and
//! the client made from it. Included by the examples with `#[path]`; cargo
//! does not build this folder as an example of its own.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use qkd_ipsec::etsi014::client::KmeClient;
use qkd_ipsec::tls::TlsFiles;

#[derive(Args)]
pub struct Kme {
    /// This SAE's KME (`https://host:port`).
    #[arg(long)]
    pub url: String,
    /// CA bundle the KME's certificate must chain to.
    #[arg(long)]
    pub ca: PathBuf,
    /// This SAE's client certificate (its CN is the SAE ID).
    #[arg(long)]
    pub cert: PathBuf,
    /// This SAE's private key (0600).
    #[arg(long)]
    pub key: PathBuf,
}

impl Kme {
    /// The client; the SAE ID is the certificate's CN, as the KME reads it.
    pub fn client(&self) -> anyhow::Result<KmeClient> {
        let tls = TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        };
        KmeClient::for_identity(&self.url, tls)
            .with_context(|| format!("KME client for {}", self.url))
    }
}
