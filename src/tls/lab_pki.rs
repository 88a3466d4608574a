//! Throw-away certificate authorities for the lab: tests, the demo and the
//! benches make one per run, issue KME server and SAE client certificates
//! from it and write them as PEM files (private keys 0600).
//!
//! Nothing here is for production: a real deployment uses the QKD vendor's
//! or the site's PKI. Every certificate's organisation says
//! "qkd-ipsec lab PKI" so that one never passes for anything else.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;

use super::TlsFiles;
use crate::secret::SecretBytes;
use crate::secret::file::{SecretFileError, write_secret_file};

const ORGANISATION: &str = "qkd-ipsec lab PKI (not for production)";

#[derive(Debug, Error)]
pub enum LabPkiError {
    #[error("cannot make a lab certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    KeyFile(#[from] SecretFileError),
}

/// A lab CA that signs server and client certificates into a directory.
pub struct LabCa {
    dir: PathBuf,
    ca_file: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for LabCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabCa")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl LabCa {
    /// A new CA named `name`; writes `<dir>/<name>-ca.pem` (the CA private
    /// key stays in memory and is dropped with this value).
    pub fn create(dir: &Path, name: &str) -> Result<Self, LabPkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, ORGANISATION);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_file = dir.join(format!("{name}-ca.pem"));
        write_public(&ca_file, issuer.pem().as_bytes())?;
        Ok(Self {
            dir: dir.to_owned(),
            ca_file,
            issuer,
        })
    }

    /// The CA certificate's PEM file.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A server certificate for `hosts` (DNS names or IP literals), CN
    /// `name`; writes `<dir>/<name>.pem` and `<dir>/<name>.key` (0600).
    pub fn server(&self, name: &str, hosts: &[&str]) -> Result<TlsFiles, LabPkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for h in hosts {
            params.subject_alt_names.push(match h.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*h).try_into()?),
            });
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(name, params)
    }

    /// A client certificate whose CN is `identity` (an SAE ID); writes
    /// `<dir>/<identity>.pem` and `<dir>/<identity>.key` (0600).
    pub fn client(&self, identity: &str) -> Result<TlsFiles, LabPkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(identity, params)
    }

    fn issue(&self, name: &str, mut params: CertificateParams) -> Result<TlsFiles, LabPkiError> {
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, ORGANISATION);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = TlsFiles {
            ca: self.ca_file.clone(),
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        };
        write_public(&files.cert, cert.pem().as_bytes())?;
        write_secret_file(
            &files.key,
            &SecretBytes::from_vec(key.serialize_pem().into_bytes()),
        )?;
        Ok(files)
    }
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), LabPkiError> {
    std::fs::write(path, bytes).map_err(|source| LabPkiError::Write {
        path: path.to_owned(),
        source,
    })
}
