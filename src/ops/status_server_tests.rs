use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::ops::board::tests::{aborted_block, board_with_clock, good_block};
use crate::ops::snapshot::{BoardSnapshot, PeerRole, RekeyCause};
use crate::qkd::link::AbortCause;
use crate::secret::file::TestDir;

const T: Duration = Duration::from_secs(5);

fn sample_board() -> StatusBoard {
    let (board, _) = board_with_clock();
    let peer = board.register_peer("gw-b", PeerRole::Transmitter);
    peer.record_block(&good_block(0, 4096));
    peer.record_block(&aborted_block(1, AbortCause::TestQber, 50));
    board.register_tunnel("site-b", "gw-b").sa_installed(
        4,
        0xc0ff_ee01,
        0xc0ff_ee02,
        RekeyCause::Timer,
    );
    board
}

/// Runs the blocking client off the runtime threads.
async fn query(path: &Path, f: StatusFormat) -> Result<String, StatusQueryError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || query_status(&path, f, T))
        .await
        .unwrap()
}

struct Running {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Running {
    fn start(server: StatusServer, board: StatusBoard) -> Self {
        let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
        server.spawn(board, &tracker, cancel.clone());
        Self { tracker, cancel }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(T, self.tracker.wait())
            .await
            .expect("server stops");
    }
}

#[tokio::test]
async fn socket_is_0600_and_serves_text_json_and_metrics() {
    let dir = TestDir::new("status");
    let path = dir.path().join("status.sock");
    let server = StatusServer::bind(&path).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    let board = sample_board();
    let running = Running::start(server, board.clone());

    let text = query(&path, StatusFormat::Text).await.unwrap();
    assert!(text.contains("gateway gw-a"), "{text}");
    assert!(text.contains("SPI in 0xc0ffee01 out 0xc0ffee02"), "{text}");
    assert!(text.contains("generation 4"), "{text}");
    assert!(
        text.contains("ACTIVE  critical qber_above_threshold"),
        "{text}"
    );

    let json = query(&path, StatusFormat::Json).await.unwrap();
    let snap: BoardSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(snap.tunnels[0].spi_out, Some(0xc0ff_ee02));
    assert_eq!(snap.peers[0].qkd.blocks_ok, 1);
    // The JSON says plainly what a simulated link's keys are worth.
    assert_eq!(snap.peers[0].source, crate::ops::LinkSource::Simulated);
    assert!(json.contains("\"source\": \"simulated\""), "{json}");
    let caveat = snap.peers[0].caveat.as_deref().unwrap();
    assert!(caveat.contains("not quantum-secure"), "{caveat}");

    let metrics = query(&path, StatusFormat::Metrics).await.unwrap();
    assert!(metrics.contains("qkd_ipsec_tunnel_generation{tunnel=\"site-b\",peer=\"gw-b\"} 4"));

    running.stop().await;
    assert!(!path.exists(), "socket file removed at stop");
}

#[tokio::test]
async fn bad_requests_get_an_error_and_the_server_keeps_serving() {
    let dir = TestDir::new("status-bad");
    let path = dir.path().join("s.sock");
    let running = Running::start(StatusServer::bind(&path).unwrap(), sample_board());

    let mut s = UnixStream::connect(&path).await.unwrap();
    s.write_all(b"give me the keys\n").await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("error: unknown request"), "{reply}");

    // Oversized request: refused without reading it all.
    let mut s = UnixStream::connect(&path).await.unwrap();
    let _ = s.write_all(&[b'x'; 4 * MAX_REQUEST_BYTES]).await;
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply).await;
    assert!(reply.starts_with("error: request longer than"), "{reply}");

    // Invalid UTF-8 is an unknown request, not a crash.
    let mut s = UnixStream::connect(&path).await.unwrap();
    s.write_all(&[0xff, 0xfe, b'\n']).await.unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("error:"), "{reply}");

    let err = query(&path, StatusFormat::Text).await;
    assert!(err.is_ok(), "{err:?}");
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_times_out() {
    let dir = TestDir::new("status-slow");
    let path = dir.path().join("s.sock");
    let running = Running::start(StatusServer::bind(&path).unwrap(), sample_board());
    let mut s = UnixStream::connect(&path).await.unwrap();
    s.write_all(b"stat").await.unwrap(); // no newline, no EOF
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("error: request timed out"), "{reply}");
    running.stop().await;
}

#[tokio::test]
async fn stale_sockets_are_replaced_and_live_ones_refused() {
    let dir = TestDir::new("status-stale");
    let path = dir.path().join("s.sock");
    // A socket file whose owner is gone.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = StatusServer::bind(&path).expect("stale socket replaced");
    // Now someone listens: a second agent must not steal the path.
    match StatusServer::bind(&path) {
        Err(StatusServerError::InUse { .. }) => {}
        other => panic!(
            "expected InUse, got {:?}",
            other.map(|s| s.path().to_path_buf())
        ),
    }
    drop(server);
    assert!(
        !path.exists(),
        "an unserved server removes its socket when dropped"
    );
}

#[tokio::test]
async fn unsafe_paths_are_refused() {
    let dir = TestDir::new("status-paths");
    // Not a socket: never deleted.
    let file = dir.path().join("config.toml");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(matches!(
        StatusServer::bind(&file),
        Err(StatusServerError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    // A world-writable directory without the sticky bit.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = StatusServer::bind(&open.join("s.sock"))
        .err()
        .expect("refused");
    assert!(
        matches!(err, StatusServerError::UnsafeParent { mode: 0o777, .. }),
        "{err}"
    );
    // Sticky (like /tmp) is fine: others cannot replace our file.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let ok = StatusServer::bind(&open.join("s.sock"));
    assert!(ok.is_ok(), "{:?}", ok.err());
    // Too long for sun_path.
    let long = dir.path().join("x".repeat(120));
    assert!(matches!(
        StatusServer::bind(&long),
        Err(StatusServerError::BadPath { .. })
    ));
    // A missing parent is created private.
    let nested = dir.path().join("run/qkd-ipsec/s.sock");
    let server = StatusServer::bind(&nested).unwrap();
    let mode = std::fs::metadata(nested.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    drop(server);
}

#[tokio::test]
async fn client_errors_say_what_to_do() {
    let dir = TestDir::new("status-client");
    let missing = dir.path().join("none.sock");
    let e = query(&missing, StatusFormat::Text).await.unwrap_err();
    assert!(matches!(e, StatusQueryError::NotRunning { .. }), "{e}");
    assert!(e.to_string().contains("is `qkd-ipsec agent` running?"));
    // A socket file nobody listens on.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let e = query(&stale, StatusFormat::Text).await.unwrap_err();
    assert!(matches!(e, StatusQueryError::NotRunning { .. }), "{e}");
}

#[test]
fn request_lines_parse() {
    for f in [
        StatusFormat::Text,
        StatusFormat::Json,
        StatusFormat::Metrics,
    ] {
        assert_eq!(StatusFormat::parse(f.request_line().trim_end()), Some(f));
    }
    assert_eq!(StatusFormat::parse(""), Some(StatusFormat::Text));
    assert_eq!(
        StatusFormat::parse("  status   json "),
        Some(StatusFormat::Json)
    );
    assert_eq!(StatusFormat::parse("status xml"), None);
}
