//! systemd service notifications (`Type=notify`): `READY=1`, `STATUS=…`,
//! `WATCHDOG=1`, `STOPPING=1`, sent as datagrams to `$NOTIFY_SOCKET`
//! (sd_notify(3); a name starting with `@` is in the abstract namespace).
//!
//! Written here rather than taken from a crate because the protocol is one
//! `sendto` of `KEY=VALUE` lines, and the part that matters — pinging the
//! watchdog only while the agent is healthy — is ours anyway: the supervisor
//! calls [`Liveness::beat`] from its main loop, and the notify task sends
//! `WATCHDOG=1` only if the last beat is recent. A hung supervisor stops
//! beating, the pings stop, and systemd kills and restarts the agent.
//! Without `$NOTIFY_SOCKET` (not under systemd) everything here is a no-op.
//! Owns no agent state; the STATUS line is read from the board.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::board::StatusBoard;
use super::render::summary_line;

/// How often the STATUS line is refreshed (and the watchdog pinged, if its
/// own half-period is longer).
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// A blocked notification socket must not hang a runtime thread.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum NotifyError {
    #[error(
        "NOTIFY_SOCKET={0:?} is neither an absolute path nor an abstract socket name starting with '@'"
    )]
    BadSocket(OsString),
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds")]
    BadWatchdogUsec(String),
    #[error("cannot create a socket for systemd notifications: {0}")]
    Socket(#[source] std::io::Error),
    #[error("cannot send {what} to systemd at NOTIFY_SOCKET={socket:?}: {source}")]
    Send {
        what: String,
        socket: OsString,
        #[source]
        source: std::io::Error,
    },
}

/// The agent's line to systemd.
#[derive(Debug)]
pub struct SystemdNotify {
    target: Option<Target>,
    /// `WATCHDOG_USEC`, when the watchdog is meant for this process.
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    name: OsString,
}

impl SystemdNotify {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Result<Self, NotifyError> {
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var("WATCHDOG_USEC").ok(),
            std::env::var("WATCHDOG_PID").ok(),
            std::process::id(),
        )
    }

    /// [`from_env`](Self::from_env) with the values passed in (tests).
    pub fn from_vars(
        notify_socket: Option<OsString>,
        watchdog_usec: Option<String>,
        watchdog_pid: Option<String>,
        own_pid: u32,
    ) -> Result<Self, NotifyError> {
        let Some(name) = notify_socket.filter(|s| !s.is_empty()) else {
            return Ok(Self::disabled());
        };
        let bytes = name.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
            Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(&name)),
            _ => return Err(NotifyError::BadSocket(name)),
        }
        .map_err(|_| NotifyError::BadSocket(name.clone()))?;
        let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
        socket
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(NotifyError::Socket)?;
        // sd_watchdog_enabled(3): WATCHDOG_PID, when set, names the process
        // the watchdog is for; a child that inherited it must not ping.
        let for_us = watchdog_pid
            .as_deref()
            .is_none_or(|p| p.trim().parse::<u32>().ok() == Some(own_pid));
        let watchdog = match watchdog_usec.filter(|_| for_us) {
            None => None,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(us) if us > 0 => Some(Duration::from_micros(us)),
                _ => return Err(NotifyError::BadWatchdogUsec(v)),
            },
        };
        Ok(Self {
            target: Some(Target { socket, addr, name }),
            watchdog,
        })
    }

    /// Not under systemd: every send is a no-op.
    pub fn disabled() -> Self {
        Self {
            target: None,
            watchdog: None,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `WATCHDOG_USEC`, if systemd watches this process.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog
    }

    /// How often to ping: half the timeout, as sd_watchdog_enabled(3) advises.
    pub fn ping_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// How often the supervisor should call [`Liveness::beat`] so that a
    /// beat is always fresher than [`ping_interval`](Self::ping_interval).
    pub fn recommended_beat_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 4)
    }

    /// Sends raw `KEY=VALUE` lines.
    pub fn send(&self, state: &str) -> Result<(), NotifyError> {
        let Some(t) = &self.target else {
            return Ok(());
        };
        t.socket
            .send_to_addr(state.as_bytes(), &t.addr)
            .map(|_| ())
            .map_err(|source| NotifyError::Send {
                what: state.lines().next().unwrap_or_default().to_string(),
                socket: t.name.clone(),
                source,
            })
    }

    /// Start-up is complete: sockets bound, links started.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send("READY=1")
    }

    /// Graceful shutdown has begun.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send("STOPPING=1")
    }

    /// A one-line status for `systemctl status` (newlines become spaces).
    pub fn status(&self, line: &str) -> Result<(), NotifyError> {
        let line: String = line
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        self.send(&format!("STATUS={line}"))
    }

    pub fn watchdog_ping(&self) -> Result<(), NotifyError> {
        self.send("WATCHDOG=1")
    }
}

/// When the supervisor's main loop last proved it is alive.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    last_beat_ms: AtomicU64,
}

impl Liveness {
    /// Starts as if it had just beaten.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
        })
    }

    /// Called by the supervisor's main loop on every turn (or on a timer
    /// inside that loop).
    pub fn beat(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_beat_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn since_last_beat(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_beat_ms.load(Ordering::Relaxed)))
    }
}

/// Spawns the task that pings the watchdog while `liveness` is fresh,
/// keeps `STATUS=` in step with the board, and sends `STOPPING=1` when
/// `cancel` fires. Does nothing when not under systemd. `READY=1` is the
/// caller's to send ([`SystemdNotify::ready`]) once start-up is done.
pub fn spawn_notify_task(
    notify: Arc<SystemdNotify>,
    liveness: Arc<Liveness>,
    board: StatusBoard,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    if !notify.is_enabled() {
        return;
    }
    tracker.spawn(notify_loop(notify, liveness, board, cancel));
}

async fn notify_loop(
    notify: Arc<SystemdNotify>,
    liveness: Arc<Liveness>,
    board: StatusBoard,
    cancel: CancellationToken,
) {
    let tick = notify
        .ping_interval()
        .map_or(STATUS_INTERVAL, |p| p.min(STATUS_INTERVAL));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = String::new();
    let mut stalled = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = interval.tick() => {}
        }
        if let Some(max_age) = notify.ping_interval() {
            let age = liveness.since_last_beat();
            if age <= max_age {
                if let Err(e) = notify.watchdog_ping() {
                    tracing::warn!(error = %e, "watchdog ping failed");
                }
                if std::mem::take(&mut stalled) {
                    tracing::warn!("supervisor main loop is beating again; watchdog pings resumed");
                }
            } else if !std::mem::replace(&mut stalled, true) {
                tracing::error!(
                    silent_ms = age.as_millis() as u64,
                    "supervisor main loop stopped beating; withholding watchdog pings so that systemd restarts the agent"
                );
            }
        }
        let line = summary_line(&board.snapshot());
        if line != last_status {
            if let Err(e) = notify.status(&line) {
                tracing::debug!(error = %e, "STATUS update failed");
            }
            last_status = line;
        }
    }
    if let Err(e) = notify.stopping() {
        tracing::warn!(error = %e, "STOPPING=1 notification failed");
    }
}

#[cfg(test)]
#[path = "notify_tests.rs"]
mod tests;
