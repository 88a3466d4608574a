//! The client against a small KME stand-in: hyper over mutual TLS on
//! loopback with certificates from a lab CA, answering what each test
//! tells it to (good documents and hostile ones).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::secret::file::TestDir;
use crate::tls::lab_pki::LabCa;
use crate::tls::server_config;

/// What the stand-in answers.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: Vec<u8>,
    /// Stream the body without a Content-Length.
    chunked: bool,
}

impl Reply {
    fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            body: body.into(),
            chunked: false,
        }
    }
    fn status(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            body: body.into(),
            chunked: false,
        }
    }
}

type Handler = Arc<dyn Fn(&str, &str, &[u8]) -> Reply + Send + Sync>;
/// Method, path and body of each request the stand-in received.
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A recognisable key byte: its base64 ("QUFB…") must never show in an
/// error.
const KEY_BYTE: u8 = 0x41;
const KEY_B64_PREFIX: &str = "QUFBQUFB";

struct Kme {
    addr: SocketAddr,
    client: KmeClientConfig,
    /// Paths and bodies the stand-in received.
    seen: Received,
    _dir: TestDir,
}

async fn kme(handler: impl Fn(&str, &str, &[u8]) -> Reply + Send + Sync + 'static) -> Kme {
    let dir = TestDir::new("kme-client");
    let ca = LabCa::create(dir.path(), "kme-ca").unwrap();
    let server = ca.server("kme-a", &["127.0.0.1"]).unwrap();
    let client = ca.client("sae-a").unwrap();
    let acceptor = TlsAcceptor::from(server_config(&server).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler: Handler = Arc::new(handler);
    let seen: Received = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let handler = Arc::clone(&handler);
            let seen = Arc::clone(&seen2);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = Arc::clone(&handler);
                    let seen = Arc::clone(&seen);
                    async move {
                        let method = req.method().to_string();
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock()
                            .unwrap()
                            .push((method.clone(), path.clone(), body.to_vec()));
                        let reply = handler(&method, &path, &body);
                        Ok::<_, Infallible>(respond(reply))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let client = KmeClientConfig {
        url: format!("https://127.0.0.1:{}", addr.port()),
        tls: client,
        sae_id: "sae-a".into(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
    };
    Kme {
        addr,
        client,
        seen,
        _dir: dir,
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn respond(reply: Reply) -> Response<Body> {
    let body: Body = if reply.chunked {
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = reply
            .body
            .chunks(64 * 1024)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        StreamBody::new(futures::stream::iter(chunks)).boxed()
    } else {
        http_body_util::Full::new(Bytes::from(reply.body)).boxed()
    };
    Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap())
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

fn status_json() -> String {
    serde_json::json!({
        "source_KME_ID": "kme-a", "target_KME_ID": "kme-b",
        "master_SAE_ID": "sae-a", "slave_SAE_ID": "sae-b",
        "key_size": 256, "stored_key_count": 25000, "max_key_count": 100000,
        "max_key_per_request": 128, "max_key_size": 1024, "min_key_size": 64,
        "max_SAE_ID_count": 0
    })
    .to_string()
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x1000 + n)
}

/// A container of keys with the given IDs and byte lengths.
fn container(keys: &[(Uuid, usize)]) -> String {
    let keys: Vec<_> = keys
        .iter()
        .map(|(id, len)| serde_json::json!({"key_ID": id, "key": B64.encode(vec![KEY_BYTE; *len])}))
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

fn assert_no_key_bytes(e: &KmeError) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(KEY_B64_PREFIX), "key material in {text}");
    assert!(!text.contains("AAAAAAAA"), "key material in {text}");
}

async fn enc_error(reply: Reply) -> KmeError {
    let k = kme(move |_, _, _| reply.clone()).await;
    let c = KmeClient::new(&k.client).unwrap();
    let e = c.enc_keys("sae-b", 2, 256).await.unwrap_err();
    assert_no_key_bytes(&e);
    e
}

#[tokio::test]
async fn status_enc_and_dec_keys_over_mutual_tls() {
    let k = kme(|method, path, body| match (method, path) {
        ("GET", "/api/v1/keys/sae-b/status") => Reply::ok(status_json()),
        ("POST", "/api/v1/keys/sae-b/enc_keys") => {
            let r: KeyRequest = serde_json::from_slice(body).unwrap();
            assert_eq!((r.number, r.size), (Some(3), Some(256)));
            Reply::ok(container(&[(id(1), 32), (id(2), 32), (id(3), 32)]))
        }
        // Answered out of order: the client gives them back in the
        // order asked.
        ("POST", "/api/v1/keys/sae-a/dec_keys") => {
            Reply::ok(container(&[(id(2), 32), (id(1), 32)]))
        }
        _ => Reply::status(404, "{}"),
    })
    .await;
    let c = KmeClient::new(&k.client).unwrap();
    let s = c.status("sae-b").await.unwrap();
    assert_eq!(s.max_key_per_request, 128);
    let keys = c.enc_keys("sae-b", 3, 256).await.unwrap();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k.key.expose() == [KEY_BYTE; 32]));
    let back = c.dec_keys("sae-a", &[id(1), id(2)], 256).await.unwrap();
    assert_eq!(
        back.iter().map(|k| k.key_id).collect::<Vec<_>>(),
        [id(1), id(2)]
    );
    let seen = k.seen.lock().unwrap();
    let dec: KeyIds = serde_json::from_slice(&seen[2].2).unwrap();
    assert_eq!(dec.validate(8).unwrap(), [id(1), id(2)]);
    assert!(format!("{keys:?}").contains("redacted"));
    assert!(!format!("{keys:?}").contains(KEY_B64_PREFIX));
    let _ = k.addr;
}

#[tokio::test]
async fn error_statuses_carry_the_kmes_message_only() {
    let body = ErrorBody::new("SAE sae-a is not authorised")
        .with_detail("secret", "QUFBQUFBQUFBQUFB")
        .to_json();
    let e = enc_error(Reply::status(401, body)).await;
    assert_eq!(e.http_status(), Some(401));
    let text = e.to_string();
    assert!(
        text.contains("401") && text.contains("not authorised"),
        "{text}"
    );
    assert!(!text.contains("QUFB"), "details must not be shown: {text}");

    let e = enc_error(Reply::status(
        503,
        ErrorBody::new("keys exhausted").to_json(),
    ))
    .await;
    assert!(matches!(e, KmeError::Status { code: 503, .. }), "{e}");
    assert!(e.to_string().contains("keys exhausted"));

    // Not an ETSI error body (here: a key container): nothing of it shows.
    let e = enc_error(Reply::status(500, container(&[(id(1), 32)]))).await;
    assert!(matches!(e, KmeError::Status { code: 500, .. }), "{e}");

    let long = "x\u{7}".repeat(1000);
    let e = enc_error(Reply::status(400, ErrorBody::new(long).to_json())).await;
    let text = e.to_string();
    assert!(text.len() < MAX_ERROR_MESSAGE * 2 + 200, "{}", text.len());
    assert!(!text.contains('\u{7}'));
}

trait ToJson {
    fn to_json(&self) -> String;
}

impl ToJson for ErrorBody {
    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap()
    }
}

#[tokio::test]
async fn malformed_answers_are_refused_without_their_bytes() {
    // A syntax error right after a key.
    let broken = format!(
        r#"{{"keys":[{{"key_ID":"{}","key":"{}" ]}}"#,
        id(1),
        B64.encode([KEY_BYTE; 32])
    );
    let e = enc_error(Reply::ok(broken)).await;
    assert!(matches!(e, KmeError::Malformed { .. }), "{e}");
    // Not base64.
    let e = enc_error(Reply::ok(format!(
        r#"{{"keys":[{{"key_ID":"{}","key":"QUFB!!"}}]}}"#,
        id(1)
    )))
    .await;
    assert!(matches!(e, KmeError::Malformed { .. }), "{e}");
    // A key_ID that is not a UUID.
    let e = enc_error(Reply::ok(r#"{"keys":[{"key_ID":"k1","key":"QUFB"}]}"#)).await;
    assert!(matches!(e, KmeError::Malformed { .. }), "{e}");
    let e = enc_error(Reply::ok("")).await;
    assert!(matches!(e, KmeError::Malformed { .. }), "{e}");
}

#[tokio::test]
async fn oversized_answers_are_cut_off() {
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    let e = enc_error(Reply::ok(big.clone())).await;
    assert!(matches!(e, KmeError::TooLarge { .. }), "declared: {e}");
    let e = enc_error(Reply {
        status: 200,
        body: big,
        chunked: true,
    })
    .await;
    assert!(matches!(e, KmeError::TooLarge { .. }), "streamed: {e}");
}

#[tokio::test]
async fn key_count_size_and_uniqueness_are_checked() {
    let e = enc_error(Reply::ok(container(&[(id(1), 32), (id(2), 31)]))).await;
    assert!(
        matches!(
            e,
            KmeError::ShortKey {
                got: 31,
                want: 32,
                ..
            }
        ),
        "{e}"
    );
    let e = enc_error(Reply::ok(container(&[(id(1), 32), (id(2), 33)]))).await;
    assert!(matches!(e, KmeError::ShortKey { got: 33, .. }), "{e}");
    let e = enc_error(Reply::ok(container(&[(id(1), 32)]))).await;
    assert!(
        matches!(
            e,
            KmeError::WrongCount {
                got: 1,
                want: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = enc_error(Reply::ok(container(&[
        (id(1), 32),
        (id(2), 32),
        (id(3), 32),
    ])))
    .await;
    assert!(matches!(e, KmeError::WrongCount { got: 3, .. }), "{e}");
    let e = enc_error(Reply::ok(container(&[(id(1), 32), (id(1), 32)]))).await;
    assert!(matches!(e, KmeError::DuplicateKeyId { .. }), "{e}");
}

#[tokio::test]
async fn dec_keys_must_return_exactly_the_ids_asked_for() {
    let k = kme(|_, _, _| Reply::ok(container(&[(id(1), 32), (id(9), 32)]))).await;
    let c = KmeClient::new(&k.client).unwrap();
    let e = c.dec_keys("sae-a", &[id(1), id(2)], 256).await.unwrap_err();
    assert!(
        matches!(e, KmeError::UnexpectedKeyId(u) if u == id(9)),
        "{e}"
    );
    let e = c.dec_keys("sae-a", &[id(1), id(1)], 256).await.unwrap_err();
    assert!(matches!(e, KmeError::Http { .. }), "{e}");
}

#[tokio::test]
async fn connect_tls_and_timeout_failures_are_told_apart() {
    // Nothing listens.
    let k = kme(|_, _, _| Reply::ok("")).await;
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let mut cfg = k.client.clone();
    cfg.url = format!("https://127.0.0.1:{port}");
    let e = KmeClient::new(&cfg)
        .unwrap()
        .status("sae-b")
        .await
        .unwrap_err();
    assert!(matches!(e, KmeError::Connect { .. }), "{e}");

    // A KME certificate from another CA.
    let dir = TestDir::new("kme-rogue");
    let rogue = LabCa::create(dir.path(), "rogue").unwrap();
    let mut cfg = k.client.clone();
    cfg.tls.ca = rogue.ca_file().to_owned();
    let e = KmeClient::new(&cfg)
        .unwrap()
        .status("sae-b")
        .await
        .unwrap_err();
    assert!(matches!(e, KmeError::Tls { .. }), "{e}");

    // A server that accepts and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = k.client.clone();
    cfg.url = format!("https://127.0.0.1:{}", silent.local_addr().unwrap().port());
    cfg.connect_timeout = Duration::from_millis(300);
    let held = tokio::spawn(async move {
        let conn = silent.accept().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(conn);
    });
    let e = KmeClient::new(&cfg)
        .unwrap()
        .status("sae-b")
        .await
        .unwrap_err();
    assert!(matches!(e, KmeError::Timeout { .. }), "{e}");
    held.abort();
}

#[test]
fn urls_and_sae_ids_are_checked() {
    assert!(check_kme_url("https://kme-a.example:8443").is_ok());
    assert!(check_kme_url("https://[2001:db8::1]/prefix/").is_ok());
    assert!(
        check_kme_url("http://kme-a.example")
            .unwrap_err()
            .contains("https")
    );
    assert!(check_kme_url("kme-a.example").is_err());
    assert!(check_kme_url("https://user@kme-a.example").is_err());
    assert!(check_kme_url("https://kme-a.example/?a=b").is_err());
    let b = parse_base("https://kme-a.example/qkd/").unwrap();
    assert_eq!((b.port, b.prefix.as_str()), (443, "/qkd"));
    assert!(check_sae_id("sae-A_1.x~").is_ok());
    for bad in ["", "a/b", "..", "a b", "é", &"x".repeat(MAX_SAE_ID_LEN + 1)] {
        assert!(check_sae_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn requests_respect_the_kmes_status() {
    let status: Status = serde_json::from_str(&status_json()).unwrap();
    let r = plan_request(&status, 8, 256).unwrap();
    assert_eq!((r.number, r.size_bits), (8, 256));
    let r = plan_request(&status, 500, 256).unwrap();
    assert_eq!(r.number, 128, "capped by max_key_per_request");
    assert!(
        plan_request(&status, 8, 2048).is_err(),
        "above max_key_size"
    );
    assert!(plan_request(&status, 8, 32).is_err(), "below min_key_size");
    let mut none = status.clone();
    none.max_key_per_request = 0;
    assert!(plan_request(&none, 8, 256).is_err());
}
