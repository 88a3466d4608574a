//! One agent process run by a fixture ([`super::AgentPair`],
//! [`super::AgentNetwork`]): started as
//! `ip netns exec <namespace> qkd-ipsec agent <config>` with its output
//! appended to its log, stopped or killed by signal, and asked for its
//! status over its status socket.
//!
//! Also the process record, log and private-file helpers the fixtures
//! share. Owns only the process it started and the log it appends to; the
//! config, secrets and namespace belong to the fixture.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::ops::{BoardSnapshot, StatusFormat, StatusQueryError, query_status};
use crate::secret::SecretFileError;

/// How long a stopped agent may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How often [`AgentProcess::wait_status`] asks.
const POLL: Duration = Duration::from_millis(250);
/// Lines of an agent's log shown when something fails.
pub(super) const LOG_TAIL_LINES: usize = 40;

/// Errors of running one agent. Each names the gateway and what to look at.
#[derive(Debug, thiserror::Error)]
pub enum AgentProcessError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{gateway}'s agent is not running{}", exit_note(.status))]
    NotRunning {
        gateway: String,
        status: Option<ExitStatus>,
        log_tail: String,
    },
    #[error("{gateway}'s status: {source}")]
    Status {
        gateway: String,
        source: StatusQueryError,
    },
    #[error("{gateway}'s status is not a BoardSnapshot: {source}")]
    StatusJson {
        gateway: String,
        source: serde_json::Error,
    },
    #[error("{gateway}: timed out after {limit:?} waiting for {what}; last status: {last}")]
    Timeout {
        gateway: String,
        what: String,
        limit: Duration,
        last: String,
    },
}

fn exit_note(status: &Option<ExitStatus>) -> String {
    status.map_or(String::new(), |s| format!(" (exited: {s})"))
}

/// One process a fixture started (`ip netns exec … qkd-ipsec …`; `ip`
/// execs the program, so the child's PID is the program's).
pub(super) struct Process {
    child: Option<Child>,
    exited: Option<ExitStatus>,
}

impl Process {
    pub(super) fn idle() -> Self {
        Self {
            child: None,
            exited: None,
        }
    }

    pub(super) fn started(child: Child) -> Self {
        Self {
            child: Some(child),
            exited: None,
        }
    }

    fn running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.exited = Some(status);
                self.child = None;
                false
            }
            Err(_) => false,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` and waits up to `grace` for the exit; kills after it.
    pub(super) fn stop(&mut self, signal: Signal, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        let deadline = Instant::now() + grace;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    break child.wait().ok();
                }
            }
        };
        self.exited = status;
        status
    }

    /// SIGKILL, reaped (for teardown).
    pub(super) fn kill(&mut self) {
        self.stop(Signal::SIGKILL, STOP_GRACE);
    }
}

/// One gateway's agent: where it runs, which files it uses, its process.
pub(super) struct AgentProcess {
    gateway: String,
    netns: String,
    config: PathBuf,
    status_socket: PathBuf,
    log: PathBuf,
    process: Mutex<Process>,
}

impl AgentProcess {
    /// The agent of `gateway` (its name in the configs), run in the
    /// namespace `netns`; nothing is started yet.
    pub(super) fn new(
        gateway: &str,
        netns: &str,
        config: &Path,
        status_socket: &Path,
        log: &Path,
    ) -> Self {
        Self {
            gateway: gateway.to_string(),
            netns: netns.to_string(),
            config: config.to_path_buf(),
            status_socket: status_socket.to_path_buf(),
            log: log.to_path_buf(),
            process: Mutex::new(Process::idle()),
        }
    }

    /// Starts the agent (again), unless it runs. Its output is appended to
    /// its log.
    pub(super) fn start(&self, binary: &Path, log_filter: &str) -> Result<(), AgentProcessError> {
        let mut slot = lock(&self.process);
        if slot.running() {
            return Ok(());
        }
        let log = open_log(&self.log)?;
        writeln_log(
            &log,
            &format!("=== fixture: starting {}'s agent", self.gateway),
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(binary)
            .arg("agent")
            .arg(&self.config)
            .env("QKD_IPSEC_LOG", log_filter)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC");
        let child = spawn_logged(cmd, &log, &format!("{}'s agent", self.gateway))?;
        *slot = Process::started(child);
        Ok(())
    }

    /// `kill -9` (no cleanup of any kind), reaped.
    pub(super) fn kill(&self) -> Option<ExitStatus> {
        let status = lock(&self.process).stop(Signal::SIGKILL, STOP_GRACE);
        writeln_log_path(&self.log, "=== fixture: killed with SIGKILL");
        status
    }

    /// SIGTERM and the exit status (killed after 30 s).
    pub(super) fn stop(&self) -> Option<ExitStatus> {
        lock(&self.process).stop(Signal::SIGTERM, STOP_GRACE)
    }

    pub(super) fn running(&self) -> bool {
        lock(&self.process).running()
    }

    pub(super) fn pid(&self) -> Option<u32> {
        let mut p = lock(&self.process);
        if p.running() { p.pid() } else { None }
    }

    /// The current status (blocking, bounded by 5 s).
    pub(super) fn status(&self) -> Result<BoardSnapshot, AgentProcessError> {
        let json = query_status(
            &self.status_socket,
            StatusFormat::Json,
            Duration::from_secs(5),
        )
        .map_err(|source| AgentProcessError::Status {
            gateway: self.gateway.clone(),
            source,
        })?;
        serde_json::from_str(&json).map_err(|source| AgentProcessError::StatusJson {
            gateway: self.gateway.clone(),
            source,
        })
    }

    /// Polls the status until `done` holds, and returns that snapshot.
    /// Fails at once if the agent exits, and after `limit` with the last
    /// answer (or error) in the message.
    pub(super) async fn wait_status(
        &self,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&BoardSnapshot) -> bool,
    ) -> Result<BoardSnapshot, AgentProcessError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last: String;
        loop {
            if !self.running() {
                return Err(self.not_running());
            }
            match self.status() {
                Ok(snap) if done(&snap) => return Ok(snap),
                Ok(snap) => last = crate::ops::summary_line(&snap),
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AgentProcessError::Timeout {
                    gateway: self.gateway.clone(),
                    what: what.to_string(),
                    limit,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn not_running(&self) -> AgentProcessError {
        AgentProcessError::NotRunning {
            gateway: self.gateway.clone(),
            status: lock(&self.process).exited,
            log_tail: self.log_tail(LOG_TAIL_LINES),
        }
    }

    /// The last `lines` lines of the agent's log.
    pub(super) fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The whole log (every run).
    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, reaped, for teardown (nothing is written to the log).
    fn kill_quietly(&self) {
        lock(&self.process).kill();
    }

    /// For a fixture's drop while a test unwinds: the tail of the log.
    fn print_log_tail(&self) {
        eprintln!(
            "----- last {LOG_TAIL_LINES} lines of {}'s agent log -----\n{}",
            self.gateway,
            self.log_tail(LOG_TAIL_LINES)
        );
    }
}

/// What a fixture does with its agents when it goes (teardown or drop):
/// prints the tail of every log if a test is unwinding, kills every agent
/// and removes the fixture's private directory. Its namespaces are deleted
/// after this, by the fixture.
pub(super) fn release(agents: &[AgentProcess], root: &Path) {
    if std::thread::panicking() {
        for agent in agents {
            agent.print_log_tail();
        }
    }
    for agent in agents {
        agent.kill_quietly();
    }
    let _ = std::fs::remove_dir_all(root);
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves a usable process record.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A file only the owner may read, written atomically.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AgentProcessError> {
    crate::secret::file::write_private_atomic(path, &[bytes]).map_err(AgentProcessError::from)
}

pub(super) fn open_log(path: &Path) -> Result<File, AgentProcessError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| AgentProcessError::Io {
            what: "open log",
            path: path.to_path_buf(),
            source,
        })
}

fn writeln_log(mut log: &File, line: &str) {
    let _ = writeln!(log, "{line}");
}

fn writeln_log_path(path: &Path, line: &str) {
    if let Ok(f) = open_log(path) {
        writeln_log(&f, line);
    }
}

pub(super) fn spawn_logged(
    mut cmd: Command,
    log: &File,
    what: &str,
) -> Result<Child, AgentProcessError> {
    let clone = |f: &File| {
        f.try_clone().map_err(|source| AgentProcessError::Spawn {
            what: what.to_string(),
            source,
        })
    };
    // A process group of its own: a Ctrl-C at the terminal reaches only the
    // program that owns the fixture (the demo, a test), which then stops
    // the agents in order instead of racing them.
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(clone(log)?)
        .stderr(clone(log)?)
        .spawn()
        .map_err(|source| AgentProcessError::Spawn {
            what: what.to_string(),
            source,
        })
}

/// The last `lines` lines of a file (reads at most its last 64 KiB).
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    tail_text(&String::from_utf8_lossy(&buf), lines)
}

pub(super) fn tail_text(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_text("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_text("a", 5), "a");
        assert_eq!(tail_text("", 5), "");
    }
}
