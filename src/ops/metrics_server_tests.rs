use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::ops::board::tests::{board_with_clock, good_block};
use crate::ops::metrics::tests::parse_exposition;
use crate::ops::snapshot::PeerRole;

const T: Duration = Duration::from_secs(5);

async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    // Half-close, as a client that sent everything would.
    let _ = s.shutdown().await;
    let mut reply = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut reply))
        .await
        .expect("reply in time")
        .ok();
    String::from_utf8(reply).unwrap()
}

fn split(reply: &str) -> (&str, &str) {
    reply.split_once("\r\n\r\n").expect("head and body")
}

#[tokio::test]
async fn serves_metrics_and_refuses_everything_else() {
    let (board, _) = board_with_clock();
    board
        .register_peer("gw-b", PeerRole::Receiver)
        .record_block(&good_block(0, 777));
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    server.spawn(board, &tracker, cancel.clone());

    let reply = exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
    )
    .await;
    let (head, body) = split(&reply);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    let samples = parse_exposition(body).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        samples
            .iter()
            .any(|s| s.name == "qkd_ipsec_key_bits_total" && s.value == 777.0)
    );

    // A query string is ignored (an HTTP/1.0 client gets a 1.0 answer);
    // HEAD sends no body.
    assert!(
        exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
            .await
            .starts_with("HTTP/1.0 200")
    );
    let head_reply = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert!(head_reply.starts_with("HTTP/1.1 200") && split(&head_reply).1.is_empty());

    assert!(
        exchange(addr, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404")
    );
    let r = exchange(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 405") && r.contains("Allow: GET, HEAD"),
        "{r}"
    );
    assert!(
        exchange(addr, b"garbage\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );
    let big = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(3 * MAX_REQUEST_HEAD_BYTES)
    );
    assert!(
        exchange(addr, big.as_bytes())
            .await
            .starts_with("HTTP/1.1 431")
    );
    // A client that closes early gets nothing and breaks nothing.
    assert_eq!(exchange(addr, b"GET /met").await, "");
    assert!(
        exchange(addr, b"GET /metrics HTTP/1.1\n\n")
            .await
            .starts_with("HTTP/1.1 200")
    );

    cancel.cancel();
    tracker.close();
    tokio::time::timeout(T, tracker.wait())
        .await
        .expect("server stops");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test(start_paused = true)]
async fn a_slow_client_is_dropped_after_the_timeout() {
    let (board, _) = board_with_clock();
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    server.spawn(board, &tracker, cancel.clone());
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let mut reply = Vec::new();
    let n = tokio::time::timeout(REQUEST_TIMEOUT * 2, s.read_to_end(&mut reply)).await;
    assert!(matches!(n, Ok(Ok(0))), "closed without a reply: {n:?}");
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

#[test]
fn routes() {
    assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
    assert_eq!(route(&Method::HEAD, "/metrics"), Route::Metrics);
    assert_eq!(route(&Method::GET, "/metricsx"), Route::NotFound);
    assert_eq!(route(&Method::DELETE, "/metrics"), Route::MethodNotAllowed);
}
