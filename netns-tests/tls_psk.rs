//! The "SSL + PSK" scenario for real TLS: `examples/tls_psk.rs` as a
//! server on host-b and a client on host-a. Each session's client fetches a
//! fresh key from gw-a's KME (`enc_keys`), the server the same key from
//! gw-b's (`dec_keys`), and OpenSSL completes a TLS 1.3 PSK handshake
//! (no certificates) through the QKD-keyed IPsec tunnel and echoes a line.
//! Two sessions with two different keys succeed; a third whose client
//! flips one bit of its key fails the handshake.

use std::time::Duration;

use qkd_ipsec::testbed::{AgentPair, KmeOptions, Side};

use crate::kme_support::*;
use crate::support::*;

const SESSIONS: u32 = 3;

/// Runs one client session from host-a; returns (success, stdout+stderr).
async fn client(pair: &AgentPair, wrong_key: bool) -> (bool, String) {
    let server = pair.bed().host_b.addr.to_string();
    let mut after = vec!["--slave", Side::B.sae_id(), "--server", &server];
    if wrong_key {
        after.push("--wrong-key");
    }
    let mut c = sae_command(
        pair,
        Side::A,
        Side::A.sae_id(),
        "tls_psk",
        &["client"],
        &after,
    );
    let out = within(
        Duration::from_secs(90),
        "a tls_psk client session",
        c.output(),
    )
    .await
    .expect("run the tls_psk client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "tls_psk client (wrong key: {wrong_key}): {}",
        text.trim_end()
    );
    (out.status.success(), text)
}

/// The key_ID a client line names (`... with key <uuid>: ...`).
fn key_id(text: &str) -> Option<String> {
    let rest = text.split("key ").nth(1)?;
    Some(rest.split([':', ' ']).next()?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_13_psk_sessions_with_qkd_keys_and_a_wrong_key_fails() {
    let pair = start_kme_pair("tlspsk", KmeOptions::default()).await;
    let sessions = SESSIONS.to_string();
    let mut s = sae_command(
        &pair,
        Side::B,
        Side::B.sae_id(),
        "tls_psk",
        &["server"],
        &["--master", Side::A.sae_id(), "--sessions", &sessions],
    );
    let server = s.spawn().expect("start the tls_psk server");
    // Its control port listens within moments; the client retries nothing,
    // so give it a head start.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (ok1, t1) = client(&pair, false).await;
    let (ok2, t2) = client(&pair, false).await;
    assert!(
        ok1 && ok2,
        "a session with the right key failed:\n{t1}\n{t2}"
    );
    let (k1, k2) = (key_id(&t1), key_id(&t2));
    assert!(
        k1.is_some() && k1 != k2,
        "each session needs a key of its own: {k1:?} {k2:?}"
    );

    let (bad, t3) = client(&pair, true).await;
    assert!(!bad, "a handshake with a flipped key bit succeeded:\n{t3}");
    assert!(
        t3.contains("handshake"),
        "the failure must be the handshake's: {t3}"
    );

    let out = within(
        Duration::from_secs(60),
        "the tls_psk server to exit",
        server.wait_with_output(),
    )
    .await
    .expect("tls_psk server");
    let log = String::from_utf8_lossy(&out.stdout);
    println!(
        "tls_psk server:\n{log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the server failed");
    assert_eq!(
        log.matches("served").count(),
        SESSIONS as usize,
        "the server fetched a key for every session (the wrong one is the client's doing)"
    );
    pair.teardown().expect("teardown");
}
