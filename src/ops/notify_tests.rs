use std::os::unix::net::UnixDatagram;
use std::sync::atomic::AtomicU32;

use super::*;
use crate::ops::board::tests::board_with_clock;
use crate::ops::snapshot::PeerRole;
use crate::secret::file::TestDir;

/// A fake systemd: a datagram socket in a temp dir.
struct FakeSystemd {
    socket: UnixDatagram,
    _dir: TestDir,
    path: std::path::PathBuf,
}

impl FakeSystemd {
    fn new() -> Self {
        let dir = TestDir::new("notify");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        Self {
            socket,
            _dir: dir,
            path,
        }
    }

    fn notifier(&self, watchdog_usec: Option<&str>) -> SystemdNotify {
        SystemdNotify::from_vars(
            Some(self.path.clone().into_os_string()),
            watchdog_usec.map(str::to_string),
            None,
            std::process::id(),
        )
        .unwrap()
    }

    fn received(&self) -> Vec<String> {
        recv_all(&self.socket)
    }
}

fn recv_all(socket: &UnixDatagram) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        out.push(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    out
}

#[test]
fn environment_is_parsed_like_sd_notify() {
    let none = SystemdNotify::from_vars(None, Some("1000000".into()), None, 1).unwrap();
    assert!(!none.is_enabled());
    assert!(none.ready().is_ok(), "no-op without systemd");
    let empty = SystemdNotify::from_vars(Some("".into()), None, None, 1).unwrap();
    assert!(!empty.is_enabled());
    let bad = SystemdNotify::from_vars(Some("relative/path".into()), None, None, 1);
    assert!(matches!(bad, Err(NotifyError::BadSocket(_))));
    let sock = || Some(std::ffi::OsString::from("/run/systemd/notify"));
    let bad_usec = SystemdNotify::from_vars(sock(), Some("soon".into()), None, 1);
    assert!(matches!(bad_usec, Err(NotifyError::BadWatchdogUsec(_))));
    let zero = SystemdNotify::from_vars(sock(), Some("0".into()), None, 1);
    assert!(matches!(zero, Err(NotifyError::BadWatchdogUsec(_))));

    let ours =
        SystemdNotify::from_vars(sock(), Some("20000000".into()), Some("42".into()), 42).unwrap();
    assert_eq!(ours.watchdog_timeout(), Some(Duration::from_secs(20)));
    assert_eq!(ours.ping_interval(), Some(Duration::from_secs(10)));
    assert_eq!(
        ours.recommended_beat_interval(),
        Some(Duration::from_secs(5))
    );
    let unset_pid = SystemdNotify::from_vars(sock(), Some("20000000".into()), None, 42).unwrap();
    assert!(unset_pid.watchdog_timeout().is_some());
    let other =
        SystemdNotify::from_vars(sock(), Some("20000000".into()), Some("41".into()), 42).unwrap();
    assert!(other.is_enabled());
    assert_eq!(
        other.watchdog_timeout(),
        None,
        "the watchdog is for another process"
    );
}

#[test]
fn datagrams_reach_a_path_socket() {
    let systemd = FakeSystemd::new();
    let n = systemd.notifier(None);
    n.ready().unwrap();
    n.status("2/2 peers\nconnected").unwrap();
    n.watchdog_ping().unwrap();
    n.stopping().unwrap();
    assert_eq!(
        systemd.received(),
        [
            "READY=1",
            "STATUS=2/2 peers connected",
            "WATCHDOG=1",
            "STOPPING=1"
        ]
    );
}

#[test]
fn datagrams_reach_an_abstract_socket() {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "qkd-ipsec-test-notify-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    socket.set_nonblocking(true).unwrap();
    let n = SystemdNotify::from_vars(Some(format!("@{name}").into()), None, None, 1).unwrap();
    n.ready().unwrap();
    assert_eq!(recv_all(&socket), ["READY=1"]);
}

#[test]
fn a_vanished_systemd_is_an_error_naming_the_socket() {
    let systemd = FakeSystemd::new();
    let n = systemd.notifier(None);
    drop(systemd);
    let e = n.ready().unwrap_err();
    assert!(
        e.to_string().contains("READY=1") && e.to_string().contains("notify.sock"),
        "{e}"
    );
}

fn pings(msgs: &[String]) -> usize {
    msgs.iter().filter(|m| *m == "WATCHDOG=1").count()
}

async fn beat_for(liveness: &Liveness, d: Duration) {
    let step = Duration::from_millis(250);
    let mut left = d;
    while !left.is_zero() {
        liveness.beat();
        tokio::time::sleep(step).await;
        left = left.saturating_sub(step);
    }
}

#[tokio::test(start_paused = true)]
async fn watchdog_pings_only_while_the_main_loop_beats() {
    let systemd = FakeSystemd::new();
    // WATCHDOG_USEC = 2 s: ping every second, a beat older than 1 s is stale.
    let notify = Arc::new(systemd.notifier(Some("2000000")));
    let (board, _) = board_with_clock();
    board.register_peer("gw-b", PeerRole::Transmitter);
    let liveness = Liveness::new();
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    spawn_notify_task(
        notify,
        liveness.clone(),
        board.clone(),
        &tracker,
        cancel.clone(),
    );

    beat_for(&liveness, Duration::from_secs(5)).await;
    let healthy = systemd.received();
    assert!(pings(&healthy) >= 4, "{healthy:?}");
    assert_eq!(
        healthy
            .iter()
            .filter(|m| m.starts_with("STATUS="))
            .collect::<Vec<_>>(),
        ["STATUS=0/1 peers connected, 0/0 tunnels keyed, 0 active alarms"],
        "STATUS is sent once while it does not change"
    );

    // Hung: no beats for 5 s. At most the tick right after the last beat
    // may still ping; then nothing, so systemd's timer runs out.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let hung = systemd.received();
    assert!(pings(&hung) <= 1, "{hung:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pings(&systemd.received()), 0);

    // A STATUS change is forwarded.
    board.register_tunnel("site-b", "gw-b");
    beat_for(&liveness, Duration::from_secs(3)).await;
    let resumed = systemd.received();
    assert!(pings(&resumed) >= 2, "{resumed:?}");
    assert!(
        resumed.iter().any(|m| m.contains("0/1 tunnels keyed")),
        "{resumed:?}"
    );

    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    assert_eq!(
        systemd.received().last().map(String::as_str),
        Some("STOPPING=1")
    );
}

#[tokio::test]
async fn without_systemd_no_task_is_spawned() {
    let (board, _) = board_with_clock();
    let tracker = TaskTracker::new();
    spawn_notify_task(
        Arc::new(SystemdNotify::disabled()),
        Liveness::new(),
        board,
        &tracker,
        CancellationToken::new(),
    );
    assert!(tracker.is_empty());
}
