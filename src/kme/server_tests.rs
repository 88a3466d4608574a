//! The KME over real mutual TLS on loopback (lab PKI), with an in-memory
//! key service pair standing in for the two gateways' pools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::tls::TlsFiles;
use crate::tls::lab_pki::LabCa;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "qkd-kme-{tag}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Counts what the server reports.
#[derive(Default)]
struct Tally(Mutex<Vec<(String, &'static str, u64)>>);

impl Tally {
    fn total(&self, sae: &str, what: &str) -> u64 {
        let v = self.0.lock().unwrap();
        v.iter()
            .filter(|(s, w, _)| s == sae && *w == what)
            .map(|t| t.2)
            .sum()
    }
}

impl DeliveryLog for Tally {
    fn enc_keys(&self, sae: &str, keys: u64) {
        self.0.lock().unwrap().push((sae.into(), "enc", keys));
    }
    fn dec_keys(&self, sae: &str, keys: u64) {
        self.0.lock().unwrap().push((sae.into(), "dec", keys));
    }
    fn refused(&self, sae: &str) {
        self.0.lock().unwrap().push((sae.into(), "refused", 1));
    }
}

fn settings(kme: &str, local: &str, peer: &str, peer_kme: &str, remote: &str) -> KmeSettings {
    let mut directory = SaeDirectory::new();
    directory
        .add_local(local, &[peer.to_owned()])
        // Configured, but not for this peer: gets 401 on every pair.
        .add_local("sae-c", &[])
        .add_peer(peer, peer_kme, &[remote.to_owned()]);
    KmeSettings {
        kme_id: kme.into(),
        key_size: 256,
        max_key_per_request: 8,
        min_key_size: 64,
        max_key_size: 1024,
        max_pending_keys: 16,
        directory,
    }
}

/// Two KMEs (gw-a with SAE A, gw-b with SAE B) and the clients' files.
struct Rig {
    a: SocketAddr,
    b: SocketAddr,
    sae_a: TlsFiles,
    sae_b: TlsFiles,
    sae_c: TlsFiles,
    stranger: TlsFiles,
    tally_a: Arc<Tally>,
    tally_b: Arc<Tally>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    _dir: PathBuf,
}

impl Rig {
    async fn start(budget: u64) -> Self {
        let dir = tempdir("rig");
        let ca = LabCa::create(&dir, "kme-ca").unwrap();
        let server = ca.server("kme", &["127.0.0.1"]).unwrap();
        let (svc_a, svc_b) = MemoryKeyService::pair(budget, 16);
        let (tally_a, tally_b) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
        let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
        let any = "127.0.0.1:0".parse().unwrap();
        let a = KmeServer::bind(
            any,
            &server,
            settings("kme-a", "sae-a", "gw-b", "kme-b", "sae-b"),
            svc_a,
            tally_a.clone(),
        )
        .await
        .unwrap();
        let b = KmeServer::bind(
            any,
            &server,
            settings("kme-b", "sae-b", "gw-a", "kme-a", "sae-a"),
            svc_b,
            tally_b.clone(),
        )
        .await
        .unwrap();
        let (addr_a, addr_b) = (a.local_addr(), b.local_addr());
        a.spawn(&tracker, cancel.clone());
        b.spawn(&tracker, cancel.clone());
        Self {
            a: addr_a,
            b: addr_b,
            sae_a: ca.client("sae-a").unwrap(),
            sae_b: ca.client("sae-b").unwrap(),
            sae_c: ca.client("sae-c").unwrap(),
            stranger: ca.client("sae-x").unwrap(),
            tally_a,
            tally_b,
            cancel,
            tracker,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), self.tracker.wait())
            .await
            .expect("servers stop");
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// One request over a fresh mutual-TLS connection (a hyper client).
async fn call_with(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Value), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = crate::tls::server_name("127.0.0.1").unwrap();
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let ct = resp.headers().get("content-type").cloned();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    assert_eq!(
        ct.as_ref().map(|v| v.to_str().unwrap()),
        Some("application/json")
    );
    let value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    Ok((status, value))
}

async fn call(
    files: &TlsFiles,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let config = crate::tls::client_config(files).unwrap();
    let body = body.map(|b| serde_json::to_vec(&b).unwrap());
    call_with(config, addr, method, path, body).await.unwrap()
}

fn key_ids(container: &Value) -> Vec<String> {
    container["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_ID"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn status_matches_the_spec_example() {
    let rig = Rig::start(32 * 100).await;
    let (st, v) = call(
        &rig.sae_a,
        rig.a,
        Method::GET,
        "/api/v1/keys/sae-b/status",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    // §6.1's example, with this KME's values.
    assert_eq!(
        v,
        json!({
            "source_KME_ID": "kme-a",
            "target_KME_ID": "kme-b",
            "master_SAE_ID": "sae-a",
            "slave_SAE_ID": "sae-b",
            "key_size": 256,
            "stored_key_count": 100,
            "max_key_count": 100,
            "max_key_per_request": 8,
            "max_key_size": 1024,
            "min_key_size": 64,
            "max_SAE_ID_count": 0
        })
    );
    rig.stop().await;
}

#[tokio::test]
async fn enc_then_dec_gives_both_sides_the_same_keys_once() {
    let rig = Rig::start(4096).await;
    // POST form (§6.2).
    let (st, enc) = call(
        &rig.sae_a,
        rig.a,
        Method::POST,
        "/api/v1/keys/sae-b/enc_keys",
        Some(json!({"number": 2, "size": 512})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{enc}");
    let ids = key_ids(&enc);
    assert_eq!(ids.len(), 2);
    for k in enc["keys"].as_array().unwrap() {
        let b64 = k["key"].as_str().unwrap();
        assert_eq!(b64.len(), 88, "512 bits in base64");
        assert_eq!(k.as_object().unwrap().len(), 2, "only key_ID and key: {k}");
    }
    // GET form (number and size as query parameters).
    let (st, enc1) = call(
        &rig.sae_a,
        rig.a,
        Method::GET,
        "/api/v1/keys/sae-b/enc_keys?number=1",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        enc1["keys"][0]["key"].as_str().unwrap().len(),
        44,
        "default 256 bits"
    );

    // SAE B fetches by POST (§6.4) and by GET (key_ID).
    let body = json!({"key_IDs": [{"key_ID": ids[0]}, {"key_ID": ids[1]}]});
    let (st, dec) = call(
        &rig.sae_b,
        rig.b,
        Method::POST,
        "/api/v1/keys/sae-a/dec_keys",
        Some(body.clone()),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{dec}");
    assert_eq!(dec["keys"], enc["keys"], "same IDs, same bytes, same order");
    let id1 = key_ids(&enc1).remove(0);
    let (st, dec1) = call(
        &rig.sae_b,
        rig.b,
        Method::GET,
        &format!("/api/v1/keys/sae-a/dec_keys?key_ID={id1}"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(dec1["keys"], enc1["keys"]);

    // Delivered once: a second fetch is refused (400, §7 "Bad request
    // format": the key_IDs name no key this KME holds for the pair).
    let (st, again) = call(
        &rig.sae_b,
        rig.b,
        Method::POST,
        "/api/v1/keys/sae-a/dec_keys",
        Some(body),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .contains("already delivered"),
        "{again}"
    );
    assert!(
        !again
            .to_string()
            .contains(enc["keys"][0]["key"].as_str().unwrap())
    );

    assert_eq!(rig.tally_a.total("sae-a", "enc"), 3);
    assert_eq!(rig.tally_b.total("sae-b", "dec"), 3);
    assert_eq!(rig.tally_b.total("sae-b", "refused"), 1);
    rig.stop().await;
}

#[tokio::test]
async fn bad_requests_get_400_with_an_error_body() {
    let rig = Rig::start(4096).await;
    let enc = "/api/v1/keys/sae-b/enc_keys";
    let cases: Vec<(Method, &str, Option<Vec<u8>>, &str)> = vec![
        (
            Method::GET,
            "/api/v1/keys/sae-b/enc_keys?size=100",
            None,
            "size",
        ),
        (
            Method::GET,
            "/api/v1/keys/sae-b/enc_keys?size=2048",
            None,
            "size",
        ),
        (
            Method::GET,
            "/api/v1/keys/sae-b/enc_keys?size=32",
            None,
            "size",
        ),
        (
            Method::GET,
            "/api/v1/keys/sae-b/enc_keys?number=9",
            None,
            "number",
        ),
        (
            Method::GET,
            "/api/v1/keys/sae-b/enc_keys?number=0",
            None,
            "number",
        ),
        (
            Method::GET,
            "/api/v1/keys/sae-b/enc_keys?bogus=1",
            None,
            "bogus",
        ),
        (
            Method::POST,
            enc,
            Some(b"{\"number\": ".to_vec()),
            "malformed JSON",
        ),
        (
            Method::POST,
            enc,
            Some(b"[1,2,3]".to_vec()),
            "malformed JSON",
        ),
        (
            Method::POST,
            enc,
            Some(br#"{"number":"x"}"#.to_vec()),
            "malformed JSON",
        ),
        (
            Method::POST,
            enc,
            Some(br#"{"additional_slave_SAE_IDs":["sae-z"]}"#.to_vec()),
            "multicast",
        ),
        (
            Method::POST,
            enc,
            Some(vec![b' '; KME_LIMITS.max_body_bytes + 1]),
            "larger than",
        ),
        (Method::GET, "/api/v1/keys/sae-a/dec_keys", None, "key_ID"),
        (
            Method::GET,
            "/api/v1/keys/sae-a/dec_keys?key_ID=42",
            None,
            "UUID",
        ),
        (
            Method::POST,
            "/api/v1/keys/sae-a/dec_keys",
            Some(br#"{"key_IDs":[]}"#.to_vec()),
            "key_IDs",
        ),
    ];
    for (method, path, body, expect) in cases {
        let (addr, files) = if path.contains("dec_keys") {
            (rig.b, &rig.sae_b)
        } else {
            (rig.a, &rig.sae_a)
        };
        let cfg = crate::tls::client_config(files).unwrap();
        let (st, v) = call_with(cfg, addr, method.clone(), path, body)
            .await
            .unwrap();
        assert_eq!(st, StatusCode::BAD_REQUEST, "{method} {path}: {v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(expect), "{method} {path}: {msg}");
    }
    // An unknown mandatory extension (§6.2): 400 naming it.
    let (st, v) = call(
        &rig.sae_a,
        rig.a,
        Method::POST,
        enc,
        Some(json!({"number": 1, "extension_mandatory": [{"abc_route_type": "direct"}]})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(
        v,
        json!({"message": "unsupported mandatory extension", "details": [{"extension_mandatory": "abc_route_type"}]})
    );
    // Optional extensions are ignored.
    let (st, _) = call(
        &rig.sae_a,
        rig.a,
        Method::POST,
        enc,
        Some(json!({"extension_optional": [{"x": 1}]})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    // Unknown paths and methods.
    let (st, _) = call(
        &rig.sae_a,
        rig.a,
        Method::GET,
        "/api/v1/keys/sae-b/nothing",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(
        &rig.sae_a,
        rig.a,
        Method::POST,
        "/api/v1/keys/sae-b/status",
        Some(json!({})),
    )
    .await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    rig.stop().await;
}

#[tokio::test]
async fn callers_who_may_not_get_keys_get_401_and_learn_nothing() {
    let rig = Rig::start(4096).await;
    let (_, enc) = call(
        &rig.sae_a,
        rig.a,
        Method::GET,
        "/api/v1/keys/sae-b/enc_keys",
        None,
    )
    .await;
    let id = key_ids(&enc).remove(0);
    let dec_path = format!("/api/v1/keys/sae-a/dec_keys?key_ID={id}");
    let unauthorized = json!({"message": "unauthorized"});
    for (files, addr, path) in [
        // A certificate of the CA that no [[kme.sae]] names.
        (&rig.stranger, rig.a, "/api/v1/keys/sae-b/status".to_owned()),
        (&rig.stranger, rig.b, dec_path.clone()),
        // A configured SAE not allowed this peer.
        (&rig.sae_c, rig.a, "/api/v1/keys/sae-b/enc_keys".to_owned()),
        (&rig.sae_c, rig.b, dec_path.clone()),
        // SAE A's certificate at SAE B's KME, asking for SAE B's keys.
        (&rig.sae_a, rig.b, dec_path.clone()),
        // A slave SAE behind no peer.
        (
            &rig.sae_a,
            rig.a,
            "/api/v1/keys/sae-zzz/enc_keys".to_owned(),
        ),
    ] {
        let (st, v) = call(files, addr, Method::GET, &path, None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(v, unauthorized, "no details");
    }
    assert_eq!(rig.tally_a.total("(unknown)", "refused"), 1);
    assert_eq!(rig.tally_b.total("sae-c", "refused"), 1);
    // The key is still there for SAE B.
    let (st, _) = call(&rig.sae_b, rig.b, Method::GET, &dec_path, None).await;
    assert_eq!(st, StatusCode::OK);
    rig.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_fails_at_tls() {
    let rig = Rig::start(4096).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::tls::load_certs(&rig.sae_a.ca).unwrap() {
        roots.add(c).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let r = call_with(
        Arc::new(config),
        rig.a,
        Method::GET,
        "/api/v1/keys/sae-b/status",
        None,
    )
    .await;
    assert!(
        r.is_err(),
        "no HTTP answer without a client certificate: {r:?}"
    );
    // And a client of another CA.
    let dir = tempdir("rogue");
    let rogue = LabCa::create(&dir, "rogue-ca")
        .unwrap()
        .client("sae-a")
        .unwrap();
    let cfg = crate::tls::client_config(&TlsFiles {
        ca: rig.sae_a.ca.clone(),
        ..rogue
    })
    .unwrap();
    assert!(
        call_with(cfg, rig.a, Method::GET, "/api/v1/keys/sae-b/status", None)
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(dir);
    rig.stop().await;
}

#[tokio::test]
async fn an_empty_pool_gets_503() {
    let rig = Rig::start(64).await;
    let (st, v) = call(
        &rig.sae_a,
        rig.a,
        Method::GET,
        "/api/v1/keys/sae-b/enc_keys?number=3",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        v,
        json!({"message": "not enough key material", "details": [{"stored_key_count": 2}]})
    );
    let (st, _) = call(
        &rig.sae_a,
        rig.a,
        Method::GET,
        "/api/v1/keys/sae-b/enc_keys?number=2",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    rig.stop().await;
}

#[tokio::test]
async fn a_full_pending_table_at_the_slave_kme_gets_503() {
    let rig = Rig::start(1 << 20).await;
    for _ in 0..2 {
        let (st, _) = call(
            &rig.sae_a,
            rig.a,
            Method::GET,
            "/api/v1/keys/sae-b/enc_keys?number=8",
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK);
    }
    let (st, v) = call(
        &rig.sae_a,
        rig.a,
        Method::GET,
        "/api/v1/keys/sae-b/enc_keys",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("pending-key table is full"),
        "{v}"
    );
    rig.stop().await;
}
