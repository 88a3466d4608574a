//! The HTTPS endpoints of ETSI GS QKD 014 V1.1.1 §5 on the agent's one HTTP
//! stack, mutual TLS only:
//!
//! | method | path | answer |
//! |--------|------|--------|
//! | GET | `/api/v1/keys/{slave_SAE_ID}/status` | §6.1 Status |
//! | GET (`number`, `size`) or POST (§6.2 Key request) | `/api/v1/keys/{slave_SAE_ID}/enc_keys` | §6.3 Key container |
//! | GET (`key_ID`) or POST (§6.4 Key IDs) | `/api/v1/keys/{master_SAE_ID}/dec_keys` | §6.3 Key container |
//!
//! Errors carry a §6.5 Error body: 400 for a request that cannot be served
//! as written (malformed, out of bounds, an unsupported mandatory
//! extension, multicast, a key_ID that is unknown or already delivered —
//! the spec's "Bad request format"), 401 for a caller whose certificate
//! names no configured SAE, who may not get keys shared with the SAE in
//! the path, or who asks for key_IDs held for another SAE pair (no
//! details: it learns nothing about keys or SAEs), 503 when keys cannot be had now (pool
//! short, peer KME down or slow or full). A client without a certificate
//! from the configured CA never gets past the TLS handshake.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{ALLOW, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::directory::KmeSettings;
use super::service::{DecRequest, DeliveryLog, EncRequest, KeyService, ServiceError};
use crate::etsi014::api::{
    ApiError, ErrorBody, KeyContainer, KeyIds, KeyRequest, MAX_BODY_BYTES, Status, decode,
};
use crate::http::{
    BodyError, Caller, HttpError, HttpLimits, HttpServer, ResponseBody, read_body, respond,
};
use crate::tls::{TlsError, TlsFiles};

/// The KME's HTTP bounds: a Key IDs document of 1,024 IDs is ~55 kB.
pub const KME_LIMITS: HttpLimits = HttpLimits {
    max_connections: 64,
    head_timeout: std::time::Duration::from_secs(5),
    max_head_bytes: 8 * 1024,
    max_body_bytes: if 128 * 1024 < MAX_BODY_BYTES {
        128 * 1024
    } else {
        MAX_BODY_BYTES
    },
    body_timeout: std::time::Duration::from_secs(10),
};

/// The label refusals of callers no `[[kme.sae]]` names are counted under
/// (their CNs are not used as labels: any certificate of the CA could
/// mint new ones).
const UNKNOWN_SAE: &str = "(unknown)";
const JSON: &str = "application/json";

#[derive(Debug, Error)]
pub enum KmeStartError {
    #[error("KME TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Http(#[from] HttpError),
}

struct State<S> {
    settings: KmeSettings,
    service: S,
    log: Arc<dyn DeliveryLog>,
    limits: HttpLimits,
}

/// A bound KME, not yet served.
pub struct KmeServer<S: KeyService> {
    http: HttpServer,
    state: Arc<State<S>>,
}

impl<S: KeyService> KmeServer<S> {
    /// Binds `addr` with mutual TLS from `tls` (client certificates are
    /// required and must chain to `tls.ca`).
    pub async fn bind(
        addr: std::net::SocketAddr,
        tls: &TlsFiles,
        settings: KmeSettings,
        service: S,
        log: Arc<dyn DeliveryLog>,
    ) -> Result<Self, KmeStartError> {
        let config = crate::tls::server_config(tls)?;
        let http = HttpServer::bind("ETSI 014 KME", addr, Some(config), KME_LIMITS).await?;
        let state = Arc::new(State {
            settings,
            service,
            log,
            limits: KME_LIMITS,
        });
        Ok(Self { http, state })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.http.local_addr()
    }

    /// Serves on tasks of `tracker` until `cancel` fires.
    pub fn spawn(self, tracker: &TaskTracker, cancel: CancellationToken) {
        let state = self.state;
        let service = move |req: Request<Incoming>, caller: Caller| {
            let state = Arc::clone(&state);
            async move { handle(state, req, caller).await }
        };
        self.http.spawn(service, tracker, cancel);
    }
}

/// An error answer.
struct Refusal {
    status: StatusCode,
    body: ErrorBody,
}

impl Refusal {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody::new(message),
        }
    }

    fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            body: ErrorBody::new("unauthorized"),
        }
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: ErrorBody::new(message),
        }
    }

    fn into_response(self) -> Response<ResponseBody> {
        let status = self.status;
        let mut r = json(status, &self.body);
        if status == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, POST"));
        }
        r
    }
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        let mut body = ErrorBody::new(e.to_string());
        if let ApiError::UnsupportedExtension(name) = &e {
            body = ErrorBody::new("unsupported mandatory extension")
                .with_detail("extension_mandatory", name.clone());
        }
        Self {
            status: StatusCode::BAD_REQUEST,
            body,
        }
    }
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Self {
        Self::bad(e.to_string())
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    match serde_json::to_vec(value) {
        Ok(v) => respond(status, JSON, Bytes::from(v)),
        Err(_) => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            Bytes::from_static(br#"{"message":"internal error"}"#),
        ),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Status,
    EncKeys,
    DecKeys,
}

/// `/api/v1/keys/{SAE_ID}/{endpoint}`.
fn parse_path(path: &str) -> Option<(&str, Endpoint)> {
    let (sae, endpoint) = path.strip_prefix("/api/v1/keys/")?.split_once('/')?;
    if sae.is_empty() {
        return None;
    }
    let endpoint = match endpoint {
        "status" => Endpoint::Status,
        "enc_keys" => Endpoint::EncKeys,
        "dec_keys" => Endpoint::DecKeys,
        _ => return None,
    };
    Some((sae, endpoint))
}

async fn handle<S: KeyService>(
    st: Arc<State<S>>,
    req: Request<Incoming>,
    caller: Caller,
) -> Response<ResponseBody> {
    let who = caller
        .identity
        .as_deref()
        .filter(|id| st.settings.directory.is_local(id));
    let Some(who) = who else {
        tracing::info!(remote = %caller.remote, "KME request from a certificate no [[kme.sae]] names refused");
        st.log.refused(UNKNOWN_SAE);
        return Refusal::unauthorized().into_response();
    };
    match serve(&st, req, who).await {
        Ok(r) => r,
        Err(refusal) => {
            tracing::debug!(sae = %who, status = %refusal.status, message = %refusal.body.message, "KME request refused");
            st.log.refused(who);
            refusal.into_response()
        }
    }
}

async fn serve<S: KeyService>(
    st: &State<S>,
    req: Request<Incoming>,
    who: &str,
) -> Result<Response<ResponseBody>, Refusal> {
    let path = req.uri().path().to_owned();
    let Some((other, endpoint)) = parse_path(&path) else {
        return Err(Refusal {
            status: StatusCode::NOT_FOUND,
            body: ErrorBody::new("not found; the API is under /api/v1/keys/{SAE_ID}/"),
        });
    };
    let method = req.method().clone();
    let allowed = method == Method::GET || (method == Method::POST && endpoint != Endpoint::Status);
    if !allowed {
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            body: ErrorBody::new("method not allowed"),
        });
    }
    let peer = st
        .settings
        .directory
        .peer_between(who, other)
        .ok_or_else(Refusal::unauthorized)?
        .to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let body = if method == Method::POST {
        Some(read_body(req.into_body(), &st.limits).await?)
    } else {
        if !query.is_empty() && endpoint == Endpoint::Status {
            return Err(Refusal::bad("status takes no query parameters"));
        }
        None
    };
    match endpoint {
        Endpoint::Status => Ok(status(st, who, other, &peer)),
        Endpoint::EncKeys => {
            let request = match body {
                Some(b) => decode::<KeyRequest>(&b)?,
                None => enc_query(&query)?,
            };
            enc_keys(st, who, other, peer, &request).await
        }
        Endpoint::DecKeys => {
            let ids = match body {
                Some(b) => decode::<KeyIds>(&b)?,
                None => dec_query(&query)?,
            };
            dec_keys(st, who, other, peer, &ids).await
        }
    }
}

fn status<S: KeyService>(
    st: &State<S>,
    who: &str,
    other: &str,
    peer: &str,
) -> Response<ResponseBody> {
    let s = &st.settings;
    let supply = st.service.supply(peer);
    let per_key = u64::from(s.key_size / 8).max(1);
    let doc = Status {
        source_kme_id: s.kme_id.clone(),
        target_kme_id: s.directory.kme_id_of(peer).unwrap_or(peer).to_owned(),
        master_sae_id: who.to_owned(),
        slave_sae_id: other.to_owned(),
        key_size: s.key_size,
        stored_key_count: supply.stored_bytes / per_key,
        max_key_count: supply.max_bytes / per_key,
        max_key_per_request: s.max_key_per_request,
        max_key_size: s.max_key_size,
        min_key_size: s.min_key_size,
        max_sae_id_count: 0,
        status_extension: None,
    };
    json(StatusCode::OK, &doc)
}

async fn enc_keys<S: KeyService>(
    st: &State<S>,
    who: &str,
    other: &str,
    peer: String,
    request: &KeyRequest,
) -> Result<Response<ResponseBody>, Refusal> {
    let checked = request.validate(&st.settings.limits())?;
    let req = EncRequest {
        peer,
        master: who.to_owned(),
        slave: other.to_owned(),
        number: checked.number,
        size_bits: checked.size_bits,
    };
    let keys = st
        .service
        .enc_keys(req)
        .await
        .map_err(|e| service_refusal(e, checked.size_bits))?;
    st.log.enc_keys(who, keys.len() as u64);
    Ok(json(
        StatusCode::OK,
        &KeyContainer {
            keys,
            key_container_extension: None,
        },
    ))
}

async fn dec_keys<S: KeyService>(
    st: &State<S>,
    who: &str,
    other: &str,
    peer: String,
    ids: &KeyIds,
) -> Result<Response<ResponseBody>, Refusal> {
    let key_ids = ids.validate(st.settings.max_key_per_request as usize)?;
    let req = DecRequest {
        peer,
        master: other.to_owned(),
        slave: who.to_owned(),
        key_ids,
    };
    let keys = st
        .service
        .dec_keys(req)
        .await
        .map_err(|e| service_refusal(e, st.settings.key_size))?;
    st.log.dec_keys(who, keys.len() as u64);
    Ok(json(
        StatusCode::OK,
        &KeyContainer {
            keys,
            key_container_extension: None,
        },
    ))
}

fn service_refusal(e: ServiceError, size_bits: u32) -> Refusal {
    match e {
        ServiceError::UnknownKeyIds => Refusal::bad(e.to_string()),
        ServiceError::NotYourKeys => Refusal::unauthorized(),
        ServiceError::NotEnoughKey { available_bytes } => {
            let keys = available_bytes / u64::from(size_bits / 8).max(1);
            let mut r = Refusal::unavailable("not enough key material");
            r.body = r.body.with_detail("stored_key_count", keys);
            r
        }
        ServiceError::Internal(why) => {
            tracing::warn!(error = %why, "KME key service failed");
            Refusal::unavailable("internal error; see the KME's log")
        }
        other => Refusal::unavailable(other.to_string()),
    }
}

/// `a=1&b=2`: every name at most once, only `allowed` names.
fn query_pairs<'q>(query: &'q str, allowed: &[&str]) -> Result<Vec<(&'q str, &'q str)>, Refusal> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        if !allowed.contains(&k) {
            return Err(Refusal::bad(format!(
                "unknown query parameter {k:?}; expected {}",
                allowed.join(", ")
            )));
        }
        if out.iter().any(|(q, _)| *q == k) {
            return Err(Refusal::bad(format!("query parameter {k:?} given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn enc_query(query: &str) -> Result<KeyRequest, Refusal> {
    let mut request = KeyRequest::default();
    for (k, v) in query_pairs(query, &["number", "size"])? {
        let n: u32 = v
            .parse()
            .map_err(|_| Refusal::bad(format!("{k} must be a whole number, got {v:?}")))?;
        match k {
            "number" => request.number = Some(n),
            _ => request.size = Some(n),
        }
    }
    Ok(request)
}

fn dec_query(query: &str) -> Result<KeyIds, Refusal> {
    let pairs = query_pairs(query, &["key_ID"])?;
    let Some((_, v)) = pairs.first() else {
        return Err(Refusal::bad("key_ID is required"));
    };
    let id =
        uuid::Uuid::parse_str(v).map_err(|_| Refusal::bad("key_ID must be a UUID (RFC 4122)"))?;
    Ok(KeyIds::new([id]))
}

#[cfg(test)]
pub(super) mod unit {
    use super::*;

    #[test]
    fn paths_and_queries() {
        assert_eq!(
            parse_path("/api/v1/keys/sae-b/status"),
            Some(("sae-b", Endpoint::Status))
        );
        assert_eq!(
            parse_path("/api/v1/keys/sae-b/enc_keys"),
            Some(("sae-b", Endpoint::EncKeys))
        );
        assert_eq!(
            parse_path("/api/v1/keys/sae-b/dec_keys"),
            Some(("sae-b", Endpoint::DecKeys))
        );
        assert_eq!(parse_path("/api/v1/keys//status"), None);
        assert_eq!(parse_path("/api/v1/keys/sae-b/status/x"), None);
        assert_eq!(parse_path("/api/v2/keys/sae-b/status"), None);
        let r = enc_query("number=3&size=512").ok().unwrap();
        assert_eq!((r.number, r.size), (Some(3), Some(512)));
        assert!(enc_query("number=3&number=4").is_err());
        assert!(enc_query("number=-1").is_err());
        assert!(enc_query("colour=red").is_err());
        assert!(dec_query("").is_err());
        assert!(dec_query("key_ID=not-a-uuid").is_err());
        let id = uuid::Uuid::new_v4();
        assert_eq!(
            dec_query(&format!("key_ID={id}")).ok().unwrap().key_ids[0].key_id,
            id
        );
    }
}
