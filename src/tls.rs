//! The one TLS stack: rustls (aws-lc-rs provider) configurations for every
//! HTTPS endpoint and client of the agent — the ETSI GS QKD 014 KME server
//! for local applications, the ETSI 014 client that fetches keys from a QKD
//! device's KME — and the identities taken from client certificates.
//!
//! Owns: reading PEM certificate chains, CA bundles and private keys (the
//! key file must be 0600 and owned by the agent's user, like every secret
//! file), building mutual-TLS server and client configurations (TLS 1.2 and
//! 1.3 only, client certificates required and verified against the CA
//! bundle), and the SAE ID of a verified peer certificate. Must not speak
//! HTTP or know what the keys are for.
//!
//! Why aws-lc-rs (rustls's default provider): it offers the hybrid
//! X25519MLKEM768 key exchange, which rustls prefers when both sides have
//! it. A KME's TLS sessions carry key material; with a classical-only
//! exchange a recording of them today could be decrypted by a quantum
//! computer later, which would undo what QKD bought.
//!
//! [`lab_pki`] makes throw-away certificate authorities for tests, the demo
//! and benches; its files say what they are.

pub mod lab_pki;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use thiserror::Error;

use crate::secret::SecretFileError;
use crate::secret::file::open_private;

/// Largest PEM file read (certificate chains and CA bundles are a few kB;
/// a system CA bundle is ~200 kB).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// The three files of one mutual-TLS identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA bundle (PEM) that the other side's certificate must chain to.
    pub ca: PathBuf,
    /// This side's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// This side's private key (PEM, PKCS#8, PKCS#1 or SEC1); 0600.
    pub key: PathBuf,
}

/// Why a TLS configuration could not be built. Never carries key bytes.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {len} bytes, more than the {MAX_PEM_BYTES} allowed for a PEM file", path.display())]
    TooLarge { path: PathBuf, len: u64 },
    #[error("{}: no {what} found in the PEM file ({why})", path.display())]
    NoPem {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    #[error(transparent)]
    KeyFile(#[from] SecretFileError),
    #[error("{}: not a usable CA certificate: {why}", path.display())]
    BadCa { path: PathBuf, why: String },
    #[error("certificate {} and key {} do not form a usable identity: {why}", cert.display(), key.display())]
    BadIdentity {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
    #[error("the peer's certificate has no subject common name to take an SAE ID from")]
    NoCommonName,
    #[error("the peer's certificate cannot be parsed: {0}")]
    BadPeerCert(String),
    #[error(
        "{0:?} is not a valid TLS server name (use the host name or IP address in the KME's certificate)"
    )]
    ServerName(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_owned(),
            len,
        });
    }
    std::fs::read(path).map_err(read)
}

/// Reads every certificate of a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_bounded(path)?;
    let no_pem = |why: String| TlsError::NoPem {
        path: path.to_owned(),
        what: "certificate",
        why,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(no_pem("the file holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Reads a private key from a 0600 file owned by this user.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use std::io::Read;
    let (mut file, len) = open_private(path)?;
    if len > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_owned(),
            len,
        });
    }
    let mut pem = zeroize::Zeroizing::new(Vec::with_capacity(len as usize));
    file.read_to_end(&mut pem)
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    // The parse error text never holds key bytes, only the PEM section kind.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::NoPem {
        path: path.to_owned(),
        what: "private key",
        why: e.to_string(),
    })
}

fn root_store(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn bad_identity(files: &TlsFiles, why: impl ToString) -> TlsError {
    TlsError::BadIdentity {
        cert: files.cert.clone(),
        key: files.key.clone(),
        why: why.to_string(),
    }
}

/// A server that requires a client certificate chaining to `files.ca`
/// (there is no anonymous access), TLS 1.2+, HTTP/1.1.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(root_store(&files.ca)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::BadCa {
            path: files.ca.clone(),
            why: e.to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| bad_identity(files, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| bad_identity(files, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client that verifies the server against `files.ca` and presents
/// `files.cert` as its identity, TLS 1.2+, HTTP/1.1.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = root_store(&files.ca)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| bad_identity(files, e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&files.cert)?, load_key(&files.key)?)
        .map_err(|e| bad_identity(files, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS server name for a host (DNS name or IP address literal).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))
}

/// The identity a verified client certificate names: its subject common
/// name (ETSI GS QKD 014 leaves the mapping to the KME; the CN is what
/// deployed KMEs and SAEs use).
pub fn certificate_identity(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::BadPeerCert(e.to_string()))?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .ok_or(TlsError::NoCommonName)?;
    let cn = cn
        .as_str()
        .map_err(|e| TlsError::BadPeerCert(e.to_string()))?;
    if cn.is_empty() {
        return Err(TlsError::NoCommonName);
    }
    Ok(cn.to_owned())
}

#[cfg(test)]
mod tests;
