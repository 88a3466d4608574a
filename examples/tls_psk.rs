//! TLS 1.3 with a quantum key as external pre-shared key (RFC 8446 §2.2):
//! the "SSL + PSK" use of QKD keys. Each side is a secure application
//! entity (SAE) that fetches the session's key from its own gateway's KME
//! over ETSI GS QKD 014 (mutual TLS), then OpenSSL runs the TLS 1.3 PSK
//! handshake (`psk_dhe_ke` is not forced: with `-nocert` both sides use
//! the PSK alone) and the two exchange one line of data. A new key per
//! session.
//!
//! ```text
//! # host-b, behind gw-b (its KME at 10.2.0.1:8443):
//! cargo run --example tls_psk -- server --url https://10.2.0.1:8443 \
//!     --ca lab-ca.pem --cert sae-b.pem --key sae-b.key --master sae-a --sessions 2
//! # host-a, behind gw-a:
//! cargo run --example tls_psk -- client --url https://10.1.0.1:8443 \
//!     --ca lab-ca.pem --cert sae-a.pem --key sae-a.key --slave sae-b --server 10.2.0.2
//! ```
//!
//! The client calls `enc_keys` for one 256-bit key and sends only its
//! key_ID to the server over a plain TCP control connection (a key_ID is
//! not secret: without the SAE's certificate it fetches nothing); the
//! server calls `dec_keys` with that ID, starts `openssl s_server` with the
//! key and answers `READY`; the client runs `openssl s_client`, sends its
//! message and expects it back reversed (`s_server -rev`). `--wrong-key`
//! flips one bit of the client's key: the handshake must then fail, which
//! is what the netns test `tls_psk` checks.
//!
//! Lab caveat: OpenSSL's command-line tools take the PSK as an argument,
//! visible in the process table to local users. A real application hands
//! the key to its TLS library directly (OpenSSL's
//! `SSL_CTX_set_psk_find_session_callback`, for example).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use qkd_ipsec::etsi014::api::KeyItem;
use qkd_ipsec::etsi014::client::KmeClient;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use uuid::Uuid;
use zeroize::Zeroizing;

/// The one TLS 1.3 suite whose hash (SHA-256) every OpenSSL 3 build
/// accepts for a command-line PSK.
const SUITE: &str = "TLS_AES_128_GCM_SHA256";
/// Key bits per session (RFC 8446 wants a PSK of at least 128 bits).
const KEY_BITS: u32 = 256;
/// How long one session may take, handshake and data.
const SESSION_LIMIT: Duration = Duration::from_secs(30);
/// Longest control line accepted.
const MAX_LINE: usize = 128;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    role: Role,
}

#[path = "common/sae.rs"]
mod sae;
use sae::Kme;

#[derive(Subcommand)]
enum Role {
    /// Waits for clients: fetches each session's key with `dec_keys`.
    Server {
        #[command(flatten)]
        kme: Kme,
        /// The client's SAE ID (the key's master SAE).
        #[arg(long)]
        master: String,
        #[arg(long, default_value = "0.0.0.0:7000")]
        control: String,
        #[arg(long, default_value_t = 7001)]
        tls_port: u16,
        /// Sessions to serve before exiting.
        #[arg(long, default_value_t = 1)]
        sessions: u32,
    },
    /// One session: `enc_keys`, then the TLS handshake and one line.
    Client {
        #[command(flatten)]
        kme: Kme,
        /// The server's SAE ID (the key's slave SAE).
        #[arg(long)]
        slave: String,
        /// The server's address.
        #[arg(long)]
        server: String,
        #[arg(long, default_value_t = 7000)]
        control_port: u16,
        #[arg(long, default_value_t = 7001)]
        tls_port: u16,
        #[arg(long, default_value = "quantum keys over TLS 1.3")]
        message: String,
        /// Use the key with one bit flipped: the handshake must fail.
        #[arg(long)]
        wrong_key: bool,
    },
}

fn psk_hex(item: &KeyItem) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(item.key.len() * 2));
    for b in item.key.expose() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Reads one control line, bounded.
async fn read_line(r: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
    let mut line = String::new();
    let n = tokio::time::timeout(
        SESSION_LIMIT,
        AsyncReadExt::take(&mut *r, MAX_LINE as u64).read_line(&mut line),
    )
    .await
    .context("timed out waiting for the control line")??;
    if n == 0 || !line.ends_with('\n') {
        bail!("control connection closed or line too long");
    }
    Ok(line.trim_end().to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Args::parse().role {
        Role::Server {
            kme,
            master,
            control,
            tls_port,
            sessions,
        } => serve(&kme.client()?, &master, &control, tls_port, sessions).await,
        Role::Client {
            kme,
            slave,
            server,
            control_port,
            tls_port,
            message,
            wrong_key,
        } => {
            let kme = kme.client()?;
            session(
                &kme,
                &slave,
                &server,
                control_port,
                tls_port,
                &message,
                wrong_key,
            )
            .await
        }
    }
}

async fn serve(
    kme: &KmeClient,
    master: &str,
    control: &str,
    tls_port: u16,
    sessions: u32,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(control)
        .await
        .with_context(|| format!("listen on {control}"))?;
    println!("server: listening on {control}");
    for n in 1..=sessions {
        let (stream, from) = listener.accept().await?;
        let mut conn = BufReader::new(stream);
        match serve_one(kme, master, &mut conn, tls_port).await {
            Ok(id) => println!("server: session {n} from {from}: key {id} served"),
            Err(e) => {
                println!("server: session {n} from {from}: {e:#}");
                let _ = conn
                    .get_mut()
                    .write_all(format!("ERROR {e}\n").as_bytes())
                    .await;
            }
        }
    }
    Ok(())
}

async fn serve_one(
    kme: &KmeClient,
    master: &str,
    conn: &mut BufReader<TcpStream>,
    tls_port: u16,
) -> anyhow::Result<Uuid> {
    let line = read_line(conn).await?;
    let id: Uuid = line
        .strip_prefix("KEY ")
        .context("expected `KEY <key_ID>`")?
        .parse()
        .context("not a key_ID")?;
    let keys = kme.dec_keys(master, &[id], KEY_BITS).await?;
    let psk = psk_hex(&keys[0]);
    let port = tls_port.to_string();
    let id_text = id.to_string();
    let mut s_server = Command::new("openssl")
        .args(["s_server", "-accept", &port, "-nocert", "-tls1_3"])
        .args(["-ciphersuites", SUITE, "-psk_identity", &id_text])
        .args(["-psk", psk.as_str(), "-naccept", "1", "-rev"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start openssl s_server")?;
    drop(psk);
    // s_server prints ACCEPT once its socket listens.
    let mut out = BufReader::new(s_server.stdout.take().expect("piped")).lines();
    tokio::time::timeout(SESSION_LIMIT, async {
        while let Some(l) = out.next_line().await? {
            if l.contains("ACCEPT") {
                return Ok(());
            }
        }
        bail!("openssl s_server exited before listening")
    })
    .await
    .context("openssl s_server did not start listening")??;
    conn.get_mut().write_all(b"READY\n").await?;
    // Keep draining its output so it never blocks; it exits after one
    // connection, whether the handshake succeeded or not.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    let waited = tokio::time::timeout(SESSION_LIMIT, s_server.wait()).await;
    drain.abort();
    if waited.is_err() {
        let _ = s_server.kill().await;
        bail!("openssl s_server still running after {SESSION_LIMIT:?}");
    }
    Ok(id)
}

async fn session(
    kme: &KmeClient,
    slave: &str,
    server: &str,
    control_port: u16,
    tls_port: u16,
    message: &str,
    wrong_key: bool,
) -> anyhow::Result<()> {
    let mut keys = kme.enc_keys(slave, 1, KEY_BITS).await?;
    let mut key = keys.remove(0);
    if wrong_key {
        key.key.expose_mut()[0] ^= 1;
    }
    let stream = TcpStream::connect((server, control_port))
        .await
        .with_context(|| format!("connect to {server}:{control_port}"))?;
    let mut conn = BufReader::new(stream);
    conn.get_mut()
        .write_all(format!("KEY {}\n", key.key_id).as_bytes())
        .await?;
    let answer = read_line(&mut conn).await?;
    if answer != "READY" {
        bail!("server: {answer}");
    }
    let psk = psk_hex(&key);
    let connect = format!("{server}:{tls_port}");
    let id_text = key.key_id.to_string();
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-tls1_3", "-quiet"])
        .args(["-ciphersuites", SUITE, "-psk_identity", &id_text])
        .args(["-psk", psk.as_str()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start openssl s_client")?;
    drop(psk);
    let mut stdin = s_client.stdin.take().expect("piped");
    stdin.write_all(format!("{message}\n").as_bytes()).await?;
    let expected: String = message.chars().rev().collect();
    let mut out = BufReader::new(s_client.stdout.take().expect("piped")).lines();
    let reply = tokio::time::timeout(SESSION_LIMIT, async {
        while let Ok(Some(l)) = out.next_line().await {
            if l.trim_end() == expected {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    drop(stdin);
    let _ = s_client.kill().await;
    report(reply, &key, &expected, &mut s_client).await
}

async fn report(
    ok: bool,
    key: &KeyItem,
    expected: &str,
    s_client: &mut Child,
) -> anyhow::Result<()> {
    if ok {
        println!(
            "client: TLS 1.3 PSK session with key {}: reply {expected:?}",
            key.key_id
        );
        return Ok(());
    }
    let mut err = String::new();
    if let Some(e) = s_client.stderr.as_mut() {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            e.take(4096).read_to_string(&mut err),
        )
        .await;
    }
    let why = err
        .lines()
        .find(|l| l.contains("alert") || l.contains("error"))
        .unwrap_or("no reply");
    bail!("handshake with key {} failed: {why}", key.key_id)
}
