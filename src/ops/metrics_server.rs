//! A minimal HTTP/1.1 responder for Prometheus scrapes: `GET /metrics` (or
//! `HEAD`) answers 200 with the exposition, any other path 404, any other
//! method 405, anything unparsable 400. One request per connection
//! (`Connection: close`), the request head bounded to
//! [`MAX_REQUEST_HEAD_BYTES`] and [`REQUEST_TIMEOUT`], at most
//! [`MAX_CONNECTIONS`] at once. Hand-written because a scrape endpoint needs
//! no more than this, and an HTTP stack would be the largest dependency of
//! the agent. Owns no figures: it renders the board on every scrape.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::board::StatusBoard;
use super::metrics;

/// Largest request head read (request line and headers); scrapers send
/// a few hundred bytes.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
pub const MAX_CONNECTIONS: usize = 16;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
const DRAIN_MAX_BYTES: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum MetricsServerError {
    #[error("cannot listen for metrics on {addr}: {source} (is the address in use, or not local?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound metrics listener, not yet served.
pub struct MetricsServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsServerError> {
        let bind_err = |source| MetricsServerError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves on a task of `tracker` until `cancel` fires.
    pub fn spawn(self, board: StatusBoard, tracker: &TaskTracker, cancel: CancellationToken) {
        let t = tracker.clone();
        tracker.spawn(self.run(board, t, cancel));
    }

    pub async fn run(self, board: StatusBoard, tracker: TaskTracker, cancel: CancellationToken) {
        tracing::info!(addr = %self.local_addr, "metrics endpoint listening");
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, remote) = tokio::select! {
                () = cancel.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::debug!(%remote, "metrics endpoint busy; closing a connection");
                continue;
            };
            let (board, cancel) = (board.clone(), cancel.clone());
            tracker.spawn(async move {
                let _permit = permit;
                tokio::select! {
                    () = cancel.cancelled() => {}
                    r = serve_connection(stream, &board) => if let Err(e) = r {
                        tracing::debug!(%remote, error = %e, "metrics request failed");
                    }
                }
            });
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

fn route(head: &[u8]) -> Route {
    let Ok(head) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        Route::Metrics { head_only }
    } else {
        Route::NotFound
    }
}

#[derive(Debug, Error)]
enum ConnectionError {
    #[error("request head larger than {MAX_REQUEST_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("timed out")]
    Timeout,
    #[error("connection closed before the request head ended")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

async fn serve_connection(
    mut stream: TcpStream,
    board: &StatusBoard,
) -> Result<(), ConnectionError> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| ConnectionError::Timeout)?;
    let reply = match &head {
        Ok(h) => match route(h) {
            Route::Metrics { head_only } => {
                let body = metrics::render_metrics(&board.snapshot());
                response("200 OK", metrics::CONTENT_TYPE, &body, head_only)
            }
            Route::NotFound => plain("404 Not Found", "not found; metrics are at /metrics\n"),
            Route::MethodNotAllowed => plain("405 Method Not Allowed", "only GET and HEAD\n"),
            Route::BadRequest => plain("400 Bad Request", "bad request\n"),
        },
        Err(ConnectionError::TooLarge) => plain(
            "431 Request Header Fields Too Large",
            "request head too large\n",
        ),
        Err(_) => String::new(),
    };
    if !reply.is_empty() {
        tokio::time::timeout(REPLY_TIMEOUT, async {
            stream.write_all(reply.as_bytes()).await?;
            stream.shutdown().await
        })
        .await
        .map_err(|_| ConnectionError::Timeout)??;
        drain(&mut stream).await;
    }
    head.map(|_| ())
}

/// Reads and drops what the client still sends, briefly: closing a TCP
/// socket with unread data sends a reset, which can destroy the reply
/// before the client reads it (the "lingering close" of RFC 9112 §9.6).
async fn drain(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let mut left = DRAIN_MAX_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Reads until the blank line ending the head; bodies are not expected.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, ConnectionError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST_HEAD_BYTES {
            return Err(ConnectionError::TooLarge);
        }
        let room = (MAX_REQUEST_HEAD_BYTES - buf.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(ConnectionError::Truncated);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// End of `\r\n\r\n` (or a bare `\n\n`, which RFC 9112 §2.2 lets a
/// server accept).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn plain(status: &str, body: &str) -> String {
    response(status, "text/plain; charset=utf-8", body, false)
}

fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> String {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        r.push_str("Allow: GET, HEAD\r\n");
    }
    r.push_str("\r\n");
    if !head_only {
        r.push_str(body);
    }
    r
}

#[cfg(test)]
#[path = "metrics_server_tests.rs"]
mod tests;
