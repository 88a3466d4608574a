//! The Prometheus scrape endpoint: `GET /metrics` (or `HEAD`) answers 200
//! with the exposition, any other path 404, any other method 405; requests
//! hyper cannot parse get 400, oversized heads 431. Runs on the agent's one
//! HTTP stack ([`crate::http`]) over plain TCP, with its bounds: request
//! heads of at most [`MAX_REQUEST_HEAD_BYTES`] within [`REQUEST_TIMEOUT`],
//! at most [`MAX_CONNECTIONS`] at once, no request bodies read. Owns no
//! figures: it renders the board on every scrape.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{ALLOW, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::board::StatusBoard;
use super::metrics;
use crate::http::{Caller, HttpError, HttpLimits, HttpServer, ResponseBody, respond};

/// Largest request head read (request line and headers); scrapers send
/// a few hundred bytes.
pub const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
pub const MAX_CONNECTIONS: usize = 16;
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

const LIMITS: HttpLimits = HttpLimits {
    max_connections: MAX_CONNECTIONS,
    head_timeout: REQUEST_TIMEOUT,
    max_head_bytes: MAX_REQUEST_HEAD_BYTES,
    max_body_bytes: 0,
    body_timeout: REQUEST_TIMEOUT,
};

#[derive(Debug, Error)]
pub enum MetricsServerError {
    #[error(transparent)]
    Bind(#[from] HttpError),
}

/// A bound metrics listener, not yet served.
pub struct MetricsServer {
    http: HttpServer,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsServerError> {
        let http = HttpServer::bind("metrics endpoint", addr, None, LIMITS).await?;
        Ok(Self { http })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// Serves on a task of `tracker` until `cancel` fires.
    pub fn spawn(self, board: StatusBoard, tracker: &TaskTracker, cancel: CancellationToken) {
        let t = tracker.clone();
        tracker.spawn(self.run(board, t, cancel));
    }

    pub async fn run(self, board: StatusBoard, tracker: TaskTracker, cancel: CancellationToken) {
        let service = move |req: Request<hyper::body::Incoming>, _: Caller| {
            let reply = answer(&board, req.method(), req.uri().path());
            async move { reply }
        };
        self.http.run(service, tracker, cancel).await;
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
}

fn route(method: &Method, path: &str) -> Route {
    if *method != Method::GET && *method != Method::HEAD {
        Route::MethodNotAllowed
    } else if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

/// The answer; hyper leaves the body out for HEAD.
fn answer(board: &StatusBoard, method: &Method, path: &str) -> Response<ResponseBody> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match route(method, path) {
        Route::Metrics => {
            let body = metrics::render_metrics(&board.snapshot());
            respond(StatusCode::OK, metrics::CONTENT_TYPE, Bytes::from(body))
        }
        Route::NotFound => respond(
            StatusCode::NOT_FOUND,
            TEXT,
            Bytes::from_static(b"not found; metrics are at /metrics\n"),
        ),
        Route::MethodNotAllowed => {
            let mut r = respond(
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                Bytes::from_static(b"only GET and HEAD\n"),
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
    }
}

#[cfg(test)]
#[path = "metrics_server_tests.rs"]
mod tests;
