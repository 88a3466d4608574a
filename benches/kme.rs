//! The ETSI GS QKD 014 KME over mutual TLS on loopback: keys per second
//! and enc_keys latency (p50, p99) for 256-bit keys, 1 and 100 keys per
//! request, over 1 and 4 keep-alive connections. A plain binary that prints
//! its figures (`cargo bench --bench kme`).
//!
//! What it measures: TLS 1.3 (X25519MLKEM768, aws-lc-rs), hyper, routing,
//! JSON and base64 of the real server, with the in-memory key service
//! (`MemoryKeyService`: keys from the OS RNG, filed at once in the other
//! side's pending table). Not included: the pool's journal fsync and the
//! AppKeys round trip to the peer agent, which the agent adds per request
//! (one fsync per side and one peer-channel RTT). Client and server share
//! one 2-thread tokio runtime on the same machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use qkd_ipsec::kme::{KmeServer, KmeSettings, MemoryKeyService, NoLog, SaeDirectory};
use qkd_ipsec::tls::lab_pki::LabCa;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const WARMUP: Duration = Duration::from_millis(300);
const RUN: Duration = Duration::from_secs(2);

fn settings() -> KmeSettings {
    let mut directory = SaeDirectory::new();
    directory.add_local("sae-a", &["gw-b".to_owned()]).add_peer(
        "gw-b",
        "kme-b",
        &["sae-b".to_owned()],
    );
    KmeSettings {
        kme_id: "kme-a".into(),
        key_size: 256,
        max_key_per_request: 128,
        min_key_size: 64,
        max_key_size: 8192,
        max_pending_keys: 1 << 24,
        directory,
    }
}

/// One keep-alive connection issuing enc_keys until `until`; returns
/// (keys, latencies of requests started after `measure_from`).
async fn client(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    per_request: u32,
    measure_from: Instant,
    until: Instant,
) -> (u64, Vec<Duration>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = qkd_ipsec::tls::server_name("127.0.0.1").unwrap();
    let tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let uri = format!("/api/v1/keys/sae-b/enc_keys?number={per_request}&size=256");
    let (mut keys, mut lat) = (0u64, Vec::new());
    loop {
        let start = Instant::now();
        if start >= until {
            break;
        }
        let req = Request::get(&uri)
            .header("host", "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.len() > 50);
        if start >= measure_from {
            lat.push(start.elapsed());
            keys += u64::from(per_request);
        }
    }
    (keys, lat)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn scenario(
    dir: &std::path::Path,
    ca: &LabCa,
    per_request: u32,
    connections: usize,
) -> (f64, Duration, Duration, usize) {
    let server_files = ca.server("kme", &["127.0.0.1"]).unwrap();
    let svc = MemoryKeyService::solo(u64::MAX / 2);
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    let server = KmeServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        &server_files,
        settings(),
        svc,
        Arc::new(NoLog),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    server.spawn(&tracker, cancel.clone());
    let _ = dir;
    let config = qkd_ipsec::tls::client_config(&ca.client("sae-a").unwrap()).unwrap();
    let measure_from = Instant::now() + WARMUP;
    let until = measure_from + RUN;
    let mut handles = Vec::new();
    for _ in 0..connections {
        handles.push(tokio::spawn(client(
            config.clone(),
            addr,
            per_request,
            measure_from,
            until,
        )));
    }
    let (mut keys, mut lat) = (0u64, Vec::new());
    for h in handles {
        let (k, l) = h.await.unwrap();
        keys += k;
        lat.extend(l);
    }
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    lat.sort();
    let rate = keys as f64 / RUN.as_secs_f64();
    (
        rate,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.len(),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("qkd-kme-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = LabCa::create(&dir, "bench-ca").unwrap();
    println!("ETSI 014 KME, mutual TLS on loopback, 256-bit keys, enc_keys (GET), {RUN:?} per row");
    println!(
        "{:>13} {:>11} {:>12} {:>10} {:>10} {:>9}",
        "keys/request", "connections", "keys/s", "p50", "p99", "requests"
    );
    for per_request in [1u32, 100] {
        for connections in [1usize, 4] {
            let (rate, p50, p99, n) = rt.block_on(scenario(&dir, &ca, per_request, connections));
            println!(
                "{per_request:>13} {connections:>11} {rate:>12.0} {:>8.0}µs {:>8.0}µs {n:>9}",
                p50.as_secs_f64() * 1e6,
                p99.as_secs_f64() * 1e6
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
