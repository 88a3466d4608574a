//! The ETSI GS QKD 014 client: an SAE's side of the REST interface, used to
//! take keys from a QKD device's KME (§5.1 status, §5.2 enc_keys, §5.3
//! dec_keys).
//!
//! Owns one HTTPS exchange per call: TCP, mutual TLS ([`crate::tls`]),
//! HTTP/1.1 (hyper), a bounded body, and the checks that make a KME's answer
//! usable: exactly the requested number of keys, each exactly the requested
//! size, no key_ID twice, and for dec_keys exactly the key_IDs asked for.
//! Must not hold pools or decide when to fetch; [`super::source`] does.
//!
//! Every answer is treated as hostile: `Content-Length` and the streamed
//! body are both bounded by [`MAX_BODY_BYTES`], the body is accumulated in
//! a buffer zeroised on drop (it holds base64 key material), and no error
//! carries body bytes — an error status shows the KME's `message` (§6.5),
//! trimmed to [`MAX_ERROR_MESSAGE`] printable characters, and nothing else.
//!
//! A connection serves one request and is closed: a key feeder asks a few
//! times a minute, so connection reuse would buy nothing and cost a pool.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::api::{
    ApiError, CheckedRequest, ErrorBody, KeyContainer, KeyIds, KeyItem, KeyRequest, MAX_BODY_BYTES,
    MAX_KEY_BITS, MAX_KEYS_PER_DOCUMENT, RequestLimits, Status, decode,
};
use crate::tls::{TlsError, TlsFiles, client_config, server_name};

/// Longest KME error message shown (in alarms, logs, errors).
pub const MAX_ERROR_MESSAGE: usize = 200;
/// Longest SAE ID accepted (it goes into a URL path).
pub const MAX_SAE_ID_LEN: usize = 128;

/// Default TCP connect plus TLS handshake limit (`[peer.etsi014]
/// connect_timeout`).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit from request sent to last body byte (`request_timeout`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a [`KmeClient`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmeClientConfig {
    /// Base URL of the KME, `https://host[:port][/prefix]`; requests go to
    /// `<url>/api/v1/keys/...`.
    pub url: String,
    /// CA bundle that the KME's certificate must chain to, and this SAE's
    /// client certificate and key (mutual TLS).
    pub tls: TlsFiles,
    /// This SAE's ID (the KME also knows it from the client certificate).
    pub sae_id: String,
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Request sent to last body byte read.
    pub request_timeout: Duration,
}

/// Which call failed, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KmeCall {
    Status,
    EncKeys,
    DecKeys,
}

impl KmeCall {
    pub fn name(self) -> &'static str {
        match self {
            KmeCall::Status => "status",
            KmeCall::EncKeys => "enc_keys",
            KmeCall::DecKeys => "dec_keys",
        }
    }
}

impl std::fmt::Display for KmeCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a call to the KME failed. No variant carries key bytes or body
/// bytes; [`KmeError::Status`] carries the KME's own (trimmed) message.
#[derive(Debug, Error)]
pub enum KmeError {
    #[error("KME URL {url:?} is unusable: {why}")]
    Url { url: String, why: String },
    #[error(
        "SAE ID {0:?} is unusable: 1..={MAX_SAE_ID_LEN} characters of A-Z a-z 0-9 . _ ~ - expected"
    )]
    BadSaeId(String),
    #[error("TLS configuration for the KME client: {0}")]
    TlsConfig(#[from] TlsError),
    #[error("cannot connect to the KME at {authority}: {why} (is it running and reachable?)")]
    Connect { authority: String, why: String },
    #[error(
        "TLS handshake with the KME at {authority} failed: {why} (check the CA bundle and the client certificate)"
    )]
    Tls { authority: String, why: String },
    #[error("the KME at {authority} did not complete {call} within {after:?}")]
    Timeout {
        authority: String,
        call: KmeCall,
        after: Duration,
    },
    #[error("HTTP exchange with the KME for {call} failed: {why}")]
    Http { call: KmeCall, why: String },
    #[error("the KME answered {code} to {call}: {message}")]
    Status {
        call: KmeCall,
        code: u16,
        message: String,
    },
    #[error("the KME's answer to {call} is malformed: {why}")]
    Malformed { call: KmeCall, why: String },
    #[error("the KME's answer to {call} is larger than the {MAX_BODY_BYTES}-byte limit")]
    TooLarge { call: KmeCall },
    #[error("{call}: key {key_id} has {got} bytes, {want} were requested")]
    ShortKey {
        call: KmeCall,
        key_id: Uuid,
        got: usize,
        want: usize,
    },
    #[error("{call}: the KME returned {got} keys, {want} were requested")]
    WrongCount {
        call: KmeCall,
        got: usize,
        want: usize,
    },
    #[error("{call}: the KME returned key_ID {key_id} twice")]
    DuplicateKeyId { call: KmeCall, key_id: Uuid },
    #[error("dec_keys: the KME returned key_ID {0}, which was not requested")]
    UnexpectedKeyId(Uuid),
    #[error("the KME cannot serve {want} bits per key: {why}")]
    Unserviceable { want: u32, why: String },
    #[error("{call}: {number} keys asked for; one request holds 1 to {MAX_KEYS_PER_DOCUMENT}")]
    TooManyKeys { call: KmeCall, number: u32 },
}

impl KmeError {
    /// The HTTP status of an error answer, if that is what this is.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            KmeError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The parts of the base URL a request needs.
#[derive(Clone, Debug)]
struct Base {
    host: String,
    port: u16,
    /// `host[:port]`, the Host header.
    authority: String,
    /// Path prefix without a trailing slash ("" for none).
    prefix: String,
}

/// Parses `https://host[:port][/prefix]`; anything but https is refused.
fn parse_base(url: &str) -> Result<Base, KmeError> {
    let bad = |why: &str| KmeError::Url {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| bad("not a URL; e.g. https://kme-a.example:8443"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some(_) => {
            return Err(bad(
                "only https is allowed: keys never cross a network in clear",
            ));
        }
        None => return Err(bad("no scheme; write https://host[:port]")),
    }
    let auth = uri.authority().ok_or_else(|| bad("no host"))?;
    if auth.as_str().contains('@') {
        return Err(bad("user information is not allowed in the URL"));
    }
    if uri.query().is_some() {
        return Err(bad("a query string is not allowed in the base URL"));
    }
    let host = auth.host().to_owned();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = auth.port_u16().unwrap_or(443);
    let prefix = uri.path().trim_end_matches('/').to_owned();
    Ok(Base {
        host,
        port,
        authority: auth.as_str().to_owned(),
        prefix,
    })
}

/// Checks a URL as [`KmeClient::new`] will (for config checks).
pub fn check_kme_url(url: &str) -> Result<(), String> {
    parse_base(url).map(|_| ()).map_err(|e| match e {
        KmeError::Url { why, .. } => why,
        other => other.to_string(),
    })
}

/// Checks an SAE ID: it goes into a URL path, so only unreserved URL
/// characters (RFC 3986 §2.3) are allowed.
pub fn check_sae_id(id: &str) -> Result<(), KmeError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_SAE_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
    if ok && id != "." && id != ".." {
        Ok(())
    } else {
        Err(KmeError::BadSaeId(
            id.chars().take(MAX_SAE_ID_LEN).collect(),
        ))
    }
}

/// How many keys of what size to ask for: `want` keys of `size_bits`,
/// capped by the KME's `max_key_per_request`; refused when the KME's size
/// limits exclude `size_bits` (the pool needs a fixed size per link).
pub fn plan_request(
    status: &Status,
    want: u32,
    size_bits: u32,
) -> Result<CheckedRequest, KmeError> {
    let unserviceable = |why: String| KmeError::Unserviceable {
        want: size_bits,
        why,
    };
    if status.max_key_per_request == 0 {
        return Err(unserviceable(
            "its status says max_key_per_request = 0".into(),
        ));
    }
    let limits = RequestLimits {
        default_size: status.key_size,
        max_per_request: status.max_key_per_request.min(MAX_KEYS_PER_DOCUMENT as u32),
        min_size: status.min_key_size,
        max_size: status.max_key_size.min(MAX_KEY_BITS),
    };
    let request = KeyRequest {
        number: Some(want.clamp(1, limits.max_per_request)),
        size: Some(size_bits),
        ..KeyRequest::default()
    };
    request.validate(&limits).map_err(|e| {
        unserviceable(format!(
            "{e} (status: key_size {}, min_key_size {}, max_key_size {}); set [peer.etsi014] \
             key_size inside the KME's limits",
            status.key_size, status.min_key_size, status.max_key_size
        ))
    })
}

/// A client of one KME, as one SAE.
pub struct KmeClient {
    base: Base,
    url: String,
    sae_id: String,
    connector: TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl std::fmt::Debug for KmeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmeClient")
            .field("url", &self.url)
            .field("sae_id", &self.sae_id)
            .finish_non_exhaustive()
    }
}

impl KmeClient {
    /// A client for an SAE whose ID is its certificate's subject CN (as the
    /// KME reads it), with the default timeouts: what a stand-alone SAE
    /// program needs.
    pub fn for_identity(url: &str, tls: TlsFiles) -> Result<Self, KmeError> {
        let cert = crate::tls::load_certs(&tls.cert).map_err(KmeError::TlsConfig)?;
        let sae_id = crate::tls::certificate_identity(&cert[0]).map_err(KmeError::TlsConfig)?;
        Self::new(&KmeClientConfig {
            url: url.to_owned(),
            tls,
            sae_id,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// Reads the TLS files and checks the URL and SAE ID; opens no
    /// connection.
    pub fn new(cfg: &KmeClientConfig) -> Result<Self, KmeError> {
        let base = parse_base(&cfg.url)?;
        check_sae_id(&cfg.sae_id)?;
        let server_name = server_name(&base.host)?;
        let connector = TlsConnector::from(client_config(&cfg.tls)?);
        Ok(Self {
            base,
            url: cfg.url.clone(),
            sae_id: cfg.sae_id.clone(),
            connector,
            server_name,
            connect_timeout: cfg.connect_timeout,
            request_timeout: cfg.request_timeout,
        })
    }

    /// The KME's base URL as configured.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// This SAE's ID.
    pub fn sae_id(&self) -> &str {
        &self.sae_id
    }

    /// §5.1: what the KME can deliver to this SAE (master) for `slave_sae`.
    pub async fn status(&self, slave_sae: &str) -> Result<Status, KmeError> {
        check_sae_id(slave_sae)?;
        let call = KmeCall::Status;
        let body = self
            .exchange(call, Method::GET, &format!("{slave_sae}/status"), None)
            .await?;
        decode::<Status>(&body).map_err(|e| malformed(call, e))
    }

    /// §5.2: `number` new keys of `size_bits` shared with `slave_sae`
    /// (POST, no extensions, no additional slaves). The answer must hold
    /// exactly `number` keys of exactly `size_bits / 8` bytes, no key_ID
    /// twice.
    pub async fn enc_keys(
        &self,
        slave_sae: &str,
        number: u32,
        size_bits: u32,
    ) -> Result<Vec<KeyItem>, KmeError> {
        check_sae_id(slave_sae)?;
        let call = KmeCall::EncKeys;
        check_size(size_bits)?;
        if number == 0 || number as usize > MAX_KEYS_PER_DOCUMENT {
            return Err(KmeError::TooManyKeys { call, number });
        }
        let request = KeyRequest {
            number: Some(number),
            size: Some(size_bits),
            ..KeyRequest::default()
        };
        let json = serde_json::to_vec(&request).expect("a key request serialises");
        let body = self
            .exchange(
                call,
                Method::POST,
                &format!("{slave_sae}/enc_keys"),
                Some(json),
            )
            .await?;
        let keys = decode::<KeyContainer>(&body)
            .map_err(|e| malformed(call, e))?
            .keys;
        check_keys(call, &keys, number as usize, size_bits)?;
        Ok(keys)
    }

    /// §5.3: the keys `ids` that `master_sae` obtained with enc_keys (POST).
    /// The answer must hold exactly those key_IDs, each once, each of
    /// `size_bits / 8` bytes; the keys come back in the order of `ids`.
    pub async fn dec_keys(
        &self,
        master_sae: &str,
        ids: &[Uuid],
        size_bits: u32,
    ) -> Result<Vec<KeyItem>, KmeError> {
        check_sae_id(master_sae)?;
        let call = KmeCall::DecKeys;
        check_size(size_bits)?;
        let request = KeyIds::new(ids.iter().copied());
        request
            .validate(MAX_KEYS_PER_DOCUMENT)
            .map_err(|e| KmeError::Http {
                call,
                why: format!("refusing to send the request: {e}"),
            })?;
        let json = serde_json::to_vec(&request).expect("key IDs serialise");
        let body = self
            .exchange(
                call,
                Method::POST,
                &format!("{master_sae}/dec_keys"),
                Some(json),
            )
            .await?;
        let mut keys = decode::<KeyContainer>(&body)
            .map_err(|e| malformed(call, e))?
            .keys;
        check_keys(call, &keys, ids.len(), size_bits)?;
        if let Some(k) = keys.iter().find(|k| !ids.contains(&k.key_id)) {
            return Err(KmeError::UnexpectedKeyId(k.key_id));
        }
        keys.sort_by_key(|k| ids.iter().position(|id| *id == k.key_id));
        Ok(keys)
    }

    /// One request on a fresh connection; returns the body of a 200.
    async fn exchange(
        &self,
        call: KmeCall,
        method: Method,
        tail: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, KmeError> {
        let path = format!("{}/api/v1/keys/{tail}", self.base.prefix);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.base.authority)
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| KmeError::Http {
                call,
                why: e.to_string(),
            })?;
        let tls = tokio::time::timeout(self.connect_timeout, self.connect())
            .await
            .map_err(|_| self.timeout(call, self.connect_timeout))??;
        tokio::time::timeout(self.request_timeout, send(call, tls, req))
            .await
            .map_err(|_| self.timeout(call, self.request_timeout))?
    }

    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, KmeError> {
        let authority = || self.base.authority.clone();
        let tcp = TcpStream::connect((self.base.host.as_str(), self.base.port))
            .await
            .map_err(|e| KmeError::Connect {
                authority: authority(),
                why: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| KmeError::Tls {
                authority: authority(),
                why: e.to_string(),
            })
    }

    fn timeout(&self, call: KmeCall, after: Duration) -> KmeError {
        KmeError::Timeout {
            authority: self.base.authority.clone(),
            call,
            after,
        }
    }
}

/// Sends `req` on `tls` and reads the whole bounded answer, driving the
/// connection in the same task (nothing is spawned).
async fn send(
    call: KmeCall,
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    req: Request<Full<Bytes>>,
) -> Result<Zeroizing<Vec<u8>>, KmeError> {
    let http = |e: hyper::Error| KmeError::Http {
        call,
        why: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(http)?;
    let exchange = async move {
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let declared = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            return Err(KmeError::TooLarge { call });
        }
        let body = read_bounded(call, resp.into_body()).await?;
        if status == StatusCode::OK {
            Ok(body)
        } else {
            Err(error_status(call, status, &body))
        }
    };
    let mut conn = std::pin::pin!(conn);
    let mut exchange = std::pin::pin!(exchange);
    let mut conn_done = false;
    loop {
        tokio::select! {
            biased;
            r = &mut exchange => return r,
            // The connection ending first is not an error by itself: the
            // answer may already be buffered; the exchange says.
            _ = &mut conn, if !conn_done => conn_done = true,
        }
    }
}

/// Reads a body frame by frame into a zeroised buffer, stopping at
/// [`MAX_BODY_BYTES`] whatever the headers said.
async fn read_bounded(
    call: KmeCall,
    mut body: hyper::body::Incoming,
) -> Result<Zeroizing<Vec<u8>>, KmeError> {
    let mut out = Zeroizing::new(Vec::new());
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| KmeError::Http {
            call,
            why: e.to_string(),
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_BODY_BYTES {
                return Err(KmeError::TooLarge { call });
            }
            if out.capacity() < out.len() + data.len() {
                // Grow by copying into a fresh zeroising buffer, so no
                // reallocation leaves key material behind unzeroised.
                let mut grown = Zeroizing::new(Vec::with_capacity(
                    (out.len() + data.len()).max(out.capacity() * 2),
                ));
                grown.extend_from_slice(&out);
                out = grown;
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// An error answer: its status and the KME's §6.5 message, trimmed; the
/// body itself never leaves this function.
fn error_status(call: KmeCall, status: StatusCode, body: &[u8]) -> KmeError {
    let message = match decode::<ErrorBody>(body) {
        Ok(e) => printable(&e.message),
        Err(_) => "(no ETSI GS QKD 014 error body)".to_owned(),
    };
    let hint = match status.as_u16() {
        401 => {
            " (the KME refused this SAE: check sae_id, the client certificate and the KME's SAE mapping)"
        }
        503 => " (the KME cannot serve now: no key, or the QKD link is down)",
        _ => "",
    };
    KmeError::Status {
        call,
        code: status.as_u16(),
        message: format!("{message}{hint}"),
    }
}

fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_MESSAGE)
        .collect();
    if s.chars().filter(|c| !c.is_control()).count() > MAX_ERROR_MESSAGE {
        out.push('…');
    }
    out
}

fn malformed(call: KmeCall, e: ApiError) -> KmeError {
    match e {
        ApiError::TooLarge { .. } => KmeError::TooLarge { call },
        other => KmeError::Malformed {
            call,
            why: other.to_string(),
        },
    }
}

fn check_size(size_bits: u32) -> Result<(), KmeError> {
    if size_bits == 0 || !size_bits.is_multiple_of(8) || size_bits > MAX_KEY_BITS {
        return Err(KmeError::Unserviceable {
            want: size_bits,
            why: format!("key sizes are multiples of 8 bits up to {MAX_KEY_BITS}"),
        });
    }
    Ok(())
}

/// Count, size and uniqueness of a container's keys.
fn check_keys(
    call: KmeCall,
    keys: &[KeyItem],
    want: usize,
    size_bits: u32,
) -> Result<(), KmeError> {
    if keys.len() != want {
        return Err(KmeError::WrongCount {
            call,
            got: keys.len(),
            want,
        });
    }
    let bytes = (size_bits / 8) as usize;
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    for k in keys {
        if k.key.len() != bytes {
            return Err(KmeError::ShortKey {
                call,
                key_id: k.key_id,
                got: k.key.len(),
                want: bytes,
            });
        }
        if !seen.insert(k.key_id) {
            return Err(KmeError::DuplicateKeyId {
                call,
                key_id: k.key_id,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
