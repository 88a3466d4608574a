//! The one HTTP stack: a hyper 1 (HTTP/1.1) server runner for every HTTP
//! endpoint of the agent — the Prometheus scrape endpoint and the ETSI GS
//! QKD 014 KME — over plain TCP or over the one TLS stack ([`crate::tls`]).
//!
//! Owns the accept loop, the bounds every endpoint shares (connections at
//! once, time to send a request head, size of a head and of a body, time
//! to send a body) and the identity of a mutual-TLS client (its
//! certificate's CN, [`crate::tls::certificate_identity`]). Knows nothing
//! of routes or documents: each endpoint passes a service function.
//! Cancellation stops the accept loop and every connection; all tasks are
//! spawned on the caller's [`TaskTracker`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The body type every endpoint answers with: bodies are small and built
/// whole (a key container is at most [`crate::etsi014::api::MAX_BODY_BYTES`]).
pub type ResponseBody = Full<Bytes>;

/// Bounds one server applies to every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Time for the TLS handshake, and for each request head.
    pub head_timeout: Duration,
    /// Largest request head (request line and headers); hyper's minimum
    /// is 8 KiB. A larger head gets 431.
    pub max_head_bytes: usize,
    /// Largest request body [`read_body`] accepts.
    pub max_body_bytes: usize,
    /// Time for a whole request body.
    pub body_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            head_timeout: Duration::from_secs(5),
            max_head_bytes: 8 * 1024,
            max_body_bytes: 64 * 1024,
            body_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("cannot listen for {what} on {addr}: {source} (is the address in use, or not local?)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub remote: SocketAddr,
    /// The CN of the verified client certificate (TLS servers require
    /// one); `None` over plain TCP, or when the certificate has no CN.
    pub identity: Option<Arc<str>>,
}

/// Why a request body was not read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("request body larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
    #[error("request body could not be read")]
    Broken,
}

/// Reads a whole request body, bounded in size and time.
pub async fn read_body(body: Incoming, limits: &HttpLimits) -> Result<Bytes, BodyError> {
    let max = limits.max_body_bytes;
    let collect = Limited::new(body, max).collect();
    match tokio::time::timeout(limits.body_timeout, collect).await {
        Err(_) => Err(BodyError::Timeout(limits.body_timeout)),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(BodyError::TooLarge { max })
        }
        Ok(Err(_)) => Err(BodyError::Broken),
    }
}

/// A response with a body of `content_type`.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A bound listener, not yet served.
pub struct HttpServer {
    what: &'static str,
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
}

impl HttpServer {
    /// Binds `addr`; `what` names the endpoint in logs and errors. With
    /// `tls`, every connection must complete that handshake first.
    pub async fn bind(
        what: &'static str,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        limits: HttpLimits,
    ) -> Result<Self, HttpError> {
        let bind_err = |source| HttpError::Bind { what, addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            what,
            listener,
            local_addr,
            tls: tls.map(TlsAcceptor::from),
            limits,
        })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    /// Serves on tasks of `tracker` until `cancel` fires.
    pub fn spawn<S, F>(self, service: S, tracker: &TaskTracker, cancel: CancellationToken)
    where
        S: Fn(Request<Incoming>, Caller) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<ResponseBody>> + Send + 'static,
    {
        let t = tracker.clone();
        tracker.spawn(self.run(service, t, cancel));
    }

    /// The accept loop: at most `max_connections` at once (more are closed
    /// at accept, so a flood costs an accept, not a task).
    pub async fn run<S, F>(self, service: S, tracker: TaskTracker, cancel: CancellationToken)
    where
        S: Fn(Request<Incoming>, Caller) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<ResponseBody>> + Send + 'static,
    {
        tracing::info!(addr = %self.local_addr, tls = self.tls.is_some(), "{} listening", self.what);
        let limit = Arc::new(Semaphore::new(self.limits.max_connections));
        loop {
            let (stream, remote) = tokio::select! {
                () = cancel.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "{} accept failed", self.what);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::debug!(%remote, "{} busy; closing a connection", self.what);
                continue;
            };
            let conn = Connection {
                what: self.what,
                tls: self.tls.clone(),
                limits: self.limits,
                remote,
            };
            let (service, cancel) = (service.clone(), cancel.clone());
            tracker.spawn(async move {
                let _permit = permit;
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = conn.serve(stream, service) => {}
                }
            });
        }
    }
}

/// One accepted connection.
struct Connection {
    what: &'static str,
    tls: Option<TlsAcceptor>,
    limits: HttpLimits,
    remote: SocketAddr,
}

impl Connection {
    async fn serve<S, F>(self, stream: TcpStream, service: S)
    where
        S: Fn(Request<Incoming>, Caller) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<ResponseBody>> + Send + 'static,
    {
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = self.tls.clone() else {
            let caller = Caller {
                remote: self.remote,
                identity: None,
            };
            return self.http(TokioIo::new(stream), caller, service).await;
        };
        let tls = match tokio::time::timeout(self.limits.head_timeout, acceptor.accept(stream))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // A client without a (valid) certificate ends here.
                tracing::debug!(remote = %self.remote, error = %e, "{} TLS handshake failed", self.what);
                return;
            }
            Err(_) => {
                tracing::debug!(remote = %self.remote, "{} TLS handshake timed out", self.what);
                return;
            }
        };
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::tls::certificate_identity(c).ok())
            .map(Arc::from);
        let caller = Caller {
            remote: self.remote,
            identity,
        };
        self.http(TokioIo::new(tls), caller, service).await;
    }

    async fn http<I, S, F>(self, io: TokioIo<I>, caller: Caller, service: S)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: Fn(Request<Incoming>, Caller) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<ResponseBody>> + Send + 'static,
    {
        let svc = hyper::service::service_fn(move |req| {
            let fut = service(req, caller.clone());
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        });
        let r = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.head_timeout)
            .max_buf_size(self.limits.max_head_bytes.max(8192))
            // A client may half-close after sending its request and still
            // wait for the answer (RFC 9112 §9.6).
            .half_close(true)
            .title_case_headers(true)
            .serve_connection(io, svc)
            .await;
        if let Err(e) = r {
            tracing::debug!(remote = %self.remote, error = %e, "{} connection ended", self.what);
        }
    }
}
