//! The local status socket and its client.
//!
//! Owns the Unix socket `qkd-ipsec status` talks to: one request line per
//! connection (`status`, `status json` or `metrics`), one reply, then close.
//! Requests are bounded in size ([`MAX_REQUEST_BYTES`]) and time, and at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once). The
//! socket is created 0600 without a window: it is bound, chmodded and only
//! then put into listening state, so nobody can connect before the mode is
//! right (a bound socket that does not listen refuses connections), and no
//! process-wide umask is touched. Its parent directory must not be writable
//! by others unless sticky, so the path cannot be swapped under us. A stale
//! socket file is removed only after a connect to it is refused; a live one
//! means another agent is serving, and binding fails. Must not expose more
//! than the board's snapshot (no key bytes exist there).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::board::StatusBoard;
use super::{metrics, render};

/// Where the agent listens unless the config says otherwise (systemd's
/// `RuntimeDirectory=qkd-ipsec` creates the directory).
pub const DEFAULT_STATUS_SOCKET: &str = "/run/qkd-ipsec/status.sock";
/// The longest request line accepted (the longest valid one is 12 bytes).
pub const MAX_REQUEST_BYTES: usize = 64;
/// Connections served at once; the socket is root-only, so this only guards
/// against a runaway script.
pub const MAX_CONNECTIONS: usize = 8;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest reply the client reads (a thousand tunnels render to ~1 MiB).
const MAX_REPLY_BYTES: u64 = 64 << 20;

/// What a client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFormat {
    Text,
    Json,
    /// The Prometheus exposition (handy where the metrics port is off).
    Metrics,
}

impl StatusFormat {
    pub fn request_line(self) -> &'static str {
        match self {
            StatusFormat::Text => "status\n",
            StatusFormat::Json => "status json\n",
            StatusFormat::Metrics => "metrics\n",
        }
    }

    fn parse(line: &str) -> Option<Self> {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            [] | ["status"] | ["status", "text"] => Some(StatusFormat::Text),
            ["status", "json"] => Some(StatusFormat::Json),
            ["metrics"] => Some(StatusFormat::Metrics),
            _ => None,
        }
    }
}

#[derive(Debug, Error)]
pub enum StatusServerError {
    #[error("status socket path {}: {reason}", path.display())]
    BadPath { path: PathBuf, reason: String },
    #[error(
        "an agent is already serving status at {}; stop it, or give this one another status socket path",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it (remove it or choose another path)", path.display())]
    NotASocket { path: PathBuf },
    #[error(
        "directory {} (mode {mode:04o}) is writable by other users and not sticky, so the status socket could be replaced; use a private directory such as /run/qkd-ipsec",
        dir.display()
    )]
    UnsafeParent { dir: PathBuf, mode: u32 },
    #[error(
        "directory {} is owned by uid {uid}, neither root nor this user; use a directory of your own such as /run/qkd-ipsec",
        dir.display()
    )]
    ForeignParent { dir: PathBuf, uid: u32 },
    #[error("status socket {}: cannot {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A bound, listening status socket, not yet served.
pub struct StatusServer {
    listener: UnixListener,
    path: PathBuf,
    /// (dev, ino) of the socket file we made: removed at stop only if the
    /// path still names it.
    identity: (u64, u64),
}

impl StatusServer {
    /// Creates the socket (mode 0600) at `path`, creating a missing parent
    /// directory with mode 0700. Must run inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<Self, StatusServerError> {
        let io = |op| {
            let path = path.to_path_buf();
            move |source| StatusServerError::Io { path, op, source }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => {
                return Err(StatusServerError::BadPath {
                    path: path.into(),
                    reason: "needs a parent directory".into(),
                });
            }
        };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("create its directory"))?;
        }
        check_parent(dir)?;
        remove_stale(path)?;
        let addr = UnixAddr::new(path).map_err(|e| StatusServerError::BadPath {
            path: path.into(),
            reason: format!("not a valid socket path ({e}; at most 107 bytes)"),
        })?;
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| io("create a socket")(e.into()))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(|e| io("bind")(e.into()))?;
        // Not listening yet: connects are refused until the mode is 0600.
        let fixed = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("set mode 0600"))
            .and_then(|()| std::fs::symlink_metadata(path).map_err(io("stat")));
        let meta = match fixed {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        let backlog = Backlog::new(16).expect("16 is a valid backlog");
        let listening = socket::listen(&fd, backlog)
            .map_err(|e| io("listen")(e.into()))
            .and_then(|()| {
                let std_listener = std::os::unix::net::UnixListener::from(fd);
                UnixListener::from_std(std_listener).map_err(io("register with tokio"))
            });
        let listener = match listening {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves on a task of `tracker` until `cancel` fires, then removes the
    /// socket file (as dropping an unserved server does).
    pub fn spawn(self, board: StatusBoard, tracker: &TaskTracker, cancel: CancellationToken) {
        let t = tracker.clone();
        tracker.spawn(self.run(board, t, cancel));
    }

    /// The accept loop (what [`StatusServer::spawn`] runs).
    pub async fn run(self, board: StatusBoard, tracker: TaskTracker, cancel: CancellationToken) {
        tracing::info!(path = %self.path.display(), "status socket listening");
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = tokio::select! {
                () = cancel.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "status socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::debug!("status socket busy; closing a connection");
                continue;
            };
            let (board, cancel) = (board.clone(), cancel.clone());
            tracker.spawn(async move {
                let _permit = permit;
                tokio::select! {
                    () = cancel.cancelled() => {}
                    r = serve_connection(stream, &board) => if let Err(e) = r {
                        tracing::debug!(error = %e, "status request failed");
                    }
                }
            });
        }
        // Dropping `self` removes the socket file.
    }
}

impl Drop for StatusServer {
    /// Removes the socket file if the path still names the one we made (a
    /// newer agent may have replaced it after we stopped listening).
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| (m.dev(), m.ino()) == self.identity);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn check_parent(dir: &Path) -> Result<(), StatusServerError> {
    let meta = std::fs::metadata(dir).map_err(|source| StatusServerError::Io {
        path: dir.into(),
        op: "stat its directory",
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(StatusServerError::UnsafeParent {
            dir: dir.into(),
            mode,
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(StatusServerError::ForeignParent {
            dir: dir.into(),
            uid: meta.uid(),
        });
    }
    Ok(())
}

/// Removes a socket file nobody listens on; refuses anything else.
fn remove_stale(path: &Path) -> Result<(), StatusServerError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StatusServerError::Io {
                path: path.into(),
                op: "stat",
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(StatusServerError::NotASocket { path: path.into() });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(StatusServerError::InUse { path: path.into() }),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale status socket");
            std::fs::remove_file(path).map_err(|source| StatusServerError::Io {
                path: path.into(),
                op: "remove the stale socket",
                source,
            })
        }
        Err(source) => Err(StatusServerError::Io {
            path: path.into(),
            op: "probe the existing socket",
            source,
        }),
    }
}

#[derive(Debug, Error)]
enum ConnectionError {
    #[error("peer uid {0} is neither root nor the agent's user")]
    Forbidden(u32),
    #[error("request longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
    #[error("request timed out")]
    Timeout,
    #[error("unknown request")]
    Unknown,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

async fn serve_connection(
    mut stream: UnixStream,
    board: &StatusBoard,
) -> Result<(), ConnectionError> {
    let result = async {
        // Defence in depth behind the 0600 mode (an operator may chmod it).
        let uid = stream.peer_cred()?.uid();
        if uid != 0 && uid != nix::unistd::geteuid().as_raw() {
            return Err(ConnectionError::Forbidden(uid));
        }
        let line = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream))
            .await
            .map_err(|_| ConnectionError::Timeout)??;
        StatusFormat::parse(&line).ok_or(ConnectionError::Unknown)
    }
    .await;
    let reply = match &result {
        Ok(format) => {
            let snap = board.snapshot();
            match format {
                StatusFormat::Text => render::render_text(&snap),
                StatusFormat::Json => {
                    let mut s = serde_json::to_string_pretty(&snap).expect("snapshot serialises");
                    s.push('\n');
                    s
                }
                StatusFormat::Metrics => metrics::render_metrics(&snap),
            }
        }
        Err(ConnectionError::Io(_)) => String::new(),
        Err(e) => format!("error: {e}; send `status`, `status json` or `metrics`\n"),
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
    result.map(|_| ())
}

/// Reads and drops what the client still sends, briefly: Linux resets the
/// peer of a Unix stream socket closed with unread data (`unix_release_sock`
/// sets ECONNRESET), which would hide the error reply from the client.
async fn drain(stream: &mut UnixStream) {
    let mut sink = [0u8; 1024];
    let mut left = 64 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Reads up to the first newline (or EOF), at most [`MAX_REQUEST_BYTES`].
async fn read_request(stream: &mut UnixStream) -> Result<String, ConnectionError> {
    let mut buf = [0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    while !buf[..len].contains(&b'\n') {
        if len == buf.len() {
            return Err(ConnectionError::TooLong);
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = buf[..len].split(|&b| b == b'\n').next().unwrap_or_default();
    Ok(String::from_utf8_lossy(line).into_owned())
}

/// Why `qkd-ipsec status` could not get an answer.
#[derive(Debug, Error)]
pub enum StatusQueryError {
    #[error("no agent is listening at {} (is `qkd-ipsec agent` running? is the socket path right?)", path.display())]
    NotRunning { path: PathBuf },
    #[error("permission denied on {}: the status socket is 0600, run this as root or as the agent's user", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("the agent at {} did not answer within {timeout:?}", path.display())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("the agent refused the request: {0}")]
    Refused(String),
    #[error("status socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Asks the agent at `path` (blocking; for the CLI).
pub fn query_status(
    path: &Path,
    format: StatusFormat,
    timeout: Duration,
) -> Result<String, StatusQueryError> {
    use std::io::ErrorKind;
    let classify = |source: std::io::Error| match source.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
            StatusQueryError::NotRunning { path: path.into() }
        }
        ErrorKind::PermissionDenied => StatusQueryError::PermissionDenied { path: path.into() },
        ErrorKind::WouldBlock | ErrorKind::TimedOut => StatusQueryError::Timeout {
            path: path.into(),
            timeout,
        },
        _ => StatusQueryError::Io {
            path: path.into(),
            source,
        },
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(classify)?;
    stream.set_read_timeout(Some(timeout)).map_err(classify)?;
    stream.set_write_timeout(Some(timeout)).map_err(classify)?;
    stream
        .write_all(format.request_line().as_bytes())
        .map_err(classify)?;
    let mut reply = String::new();
    stream
        .take(MAX_REPLY_BYTES)
        .read_to_string(&mut reply)
        .map_err(classify)?;
    if let Some(msg) = reply.strip_prefix("error: ") {
        return Err(StatusQueryError::Refused(msg.trim_end().to_string()));
    }
    Ok(reply)
}

#[cfg(test)]
#[path = "status_server_tests.rs"]
mod tests;
