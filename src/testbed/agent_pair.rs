//! Two real agents on a [`Testbed`]: the fixture behind `qkd-ipsec demo`
//! and the agent netns tests.
//!
//! [`AgentPair::start`] builds the four namespaces, writes both gateways'
//! configurations and secret files (pool keys, one shared bootstrap secret;
//! all 0600) into a private 0700 directory, optionally starts Eve between
//! the gateways, and runs each agent as its own process with
//! `ip netns exec <gateway namespace> qkd-ipsec agent <config>`, so that its
//! peer-channel socket and its XFRM objects both live in that namespace.
//! Agents can then be stopped (SIGTERM), killed (`kill -9`) and started
//! again, and their status read from their status sockets.
//!
//! Dropping the pair kills every process it started, removes its directory
//! and deletes the namespaces — also while a failing test unwinds, in which
//! case the tail of each agent's log is printed first. This module owns
//! only the processes, files and namespaces it created.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::pair_config::{self, AgentPairOptions, GatewayFiles, KME_PORT, Side};
use super::{TeardownError, Testbed, TestbedError};
use crate::config::{Config, MIN_BOOTSTRAP_SECRET_BYTES};
use crate::ops::{BoardSnapshot, StatusFormat, StatusQueryError, query_status};
use crate::secret::{SecretBytes, SecretFileError, write_secret_file};
use crate::tls::TlsFiles;
use crate::tls::lab_pki::{LabCa, LabPkiError};

/// How long a stopped agent may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How often [`AgentPair::wait_status`] asks.
const POLL: Duration = Duration::from_millis(250);
/// Lines of each agent's log shown when something fails.
const LOG_TAIL_LINES: usize = 40;

/// Errors of the fixture. Each says which gateway and what to look at.
#[derive(Debug, thiserror::Error)]
pub enum AgentPairError {
    #[error(transparent)]
    Testbed(Box<TestbedError>),
    #[error(transparent)]
    Teardown(Box<TeardownError>),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    #[error("cannot draw random secret bytes: {0}")]
    Random(String),
    #[error("the fixture wrote a config the agent would refuse: {0}")]
    Config(String),
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{side}'s agent is not running{}", exit_note(.status))]
    NotRunning {
        side: Side,
        status: Option<ExitStatus>,
        log_tail: String,
    },
    #[error("{side}'s status: {source}")]
    Status {
        side: Side,
        source: StatusQueryError,
    },
    #[error("{side}'s status is not a BoardSnapshot: {source}")]
    StatusJson {
        side: Side,
        source: serde_json::Error,
    },
    #[error("{side}: timed out after {limit:?} waiting for {what}; last status: {last}")]
    Timeout {
        side: Side,
        what: String,
        limit: Duration,
        last: String,
    },
    #[error("this pair has no Eve")]
    NoEve,
    #[error("lab PKI: {0}")]
    Pki(#[from] LabPkiError),
}

impl From<TestbedError> for AgentPairError {
    fn from(e: TestbedError) -> Self {
        Self::Testbed(Box::new(e))
    }
}

impl From<TeardownError> for AgentPairError {
    fn from(e: TeardownError) -> Self {
        Self::Teardown(Box::new(e))
    }
}

fn exit_note(status: &Option<ExitStatus>) -> String {
    status.map_or(String::new(), |s| format!(" (exited: {s})"))
}

/// One process the pair started (`ip netns exec … qkd-ipsec …`; `ip`
/// execs the program, so the child's PID is the program's).
struct Process {
    child: Option<Child>,
    exited: Option<ExitStatus>,
}

impl Process {
    fn idle() -> Self {
        Self {
            child: None,
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
    fn stop(&mut self, signal: Signal, grace: Duration) -> Option<ExitStatus> {
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
}

/// The fixture. See the module docs.
pub struct AgentPair {
    opts: AgentPairOptions,
    root: PathBuf,
    files: [GatewayFiles; 2],
    agents: [Mutex<Process>; 2],
    eve: Option<(Mutex<Process>, PathBuf, PathBuf)>,
    /// Declared last: the namespaces go after the processes in them.
    bed: Testbed,
}

impl AgentPair {
    /// Builds the testbed, writes configs and secrets, starts Eve (if
    /// asked) and both agents. Does not wait for them to connect: use
    /// [`AgentPair::wait_status`]. Must be called inside a tokio runtime.
    pub async fn start(opts: AgentPairOptions) -> Result<Self, AgentPairError> {
        if opts.bootstrap_bytes < MIN_BOOTSTRAP_SECRET_BYTES {
            return Err(AgentPairError::Config(format!(
                "bootstrap_bytes {} is below the minimum {MIN_BOOTSTRAP_SECRET_BYTES}",
                opts.bootstrap_bytes
            )));
        }
        if opts.bulk_tunnels > super::MAX_BULK_TUNNELS {
            return Err(AgentPairError::Config(format!(
                "bulk_tunnels {} is above the maximum {}",
                opts.bulk_tunnels,
                super::MAX_BULK_TUNNELS
            )));
        }
        let bed = Testbed::create(&Testbed::unique_prefix(&opts.tag)).await?;
        let root = std::env::temp_dir().join(&bed.prefix);
        let files = [
            GatewayFiles::under(&root, Side::A),
            GatewayFiles::under(&root, Side::B),
        ];
        let mut pair = AgentPair {
            opts,
            root,
            files,
            agents: [Mutex::new(Process::idle()), Mutex::new(Process::idle())],
            eve: None,
            bed,
        };
        // From here on, an early return drops `pair`: processes, files and
        // namespaces go.
        pair.write_files()?;
        if pair.opts.eve.is_some() {
            pair.start_eve().await?;
        }
        pair.start_agent(Side::B)?;
        pair.start_agent(Side::A)?;
        Ok(pair)
    }

    /// The namespaces and addresses.
    pub fn bed(&self) -> &Testbed {
        &self.bed
    }

    pub fn options(&self) -> &AgentPairOptions {
        &self.opts
    }

    /// Where `side`'s config, secrets, state, socket and log are.
    pub fn files(&self, side: Side) -> &GatewayFiles {
        &self.files[side.index()]
    }

    /// The gateway namespace `side`'s agent runs in.
    pub fn netns_name(&self, side: Side) -> &str {
        match side {
            Side::A => &self.bed.gw_a.name,
            Side::B => &self.bed.gw_b.name,
        }
    }

    /// Every file the fixture wrote for the agents to read (configs, pool
    /// keys, bootstrap secrets) — not what the agents wrote themselves.
    pub fn written_files(&self) -> Vec<PathBuf> {
        self.files
            .iter()
            .flat_map(|f| [f.config.clone(), f.pool_key.clone(), f.bootstrap.clone()])
            .collect()
    }

    fn write_files(&self) -> Result<(), AgentPairError> {
        let mkdir = |dir: &Path| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| AgentPairError::Io {
                    what: "create directory",
                    path: dir.to_path_buf(),
                    source,
                })
        };
        mkdir(&self.root)?;
        self.write_pki()?;
        let random =
            |len| SecretBytes::random(len).map_err(|e| AgentPairError::Random(e.to_string()));
        let bootstrap = random(self.opts.bootstrap_bytes)?;
        for side in Side::BOTH {
            let f = self.files(side);
            mkdir(&f.dir)?;
            mkdir(&f.state_dir)?;
            write_secret_file(&f.pool_key, &random(32)?)?;
            write_secret_file(&f.bootstrap, &bootstrap)?;
            self.write_config(side)?;
        }
        Ok(())
    }

    /// The lab CA, each KME's server certificate (its LAN address and any
    /// extra hosts) and every SAE's client certificate.
    fn write_pki(&self) -> Result<(), AgentPairError> {
        let Some(kme) = &self.opts.kme else {
            return Ok(());
        };
        let dir = pair_config::pki_dir(&self.root);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|source| AgentPairError::Io {
                what: "create directory",
                path: dir.clone(),
                source,
            })?;
        let ca = LabCa::create(&dir, pair_config::LAB_CA_NAME)?;
        for side in Side::BOTH {
            let gw = match side {
                Side::A => &self.bed.gw_a,
                Side::B => &self.bed.gw_b,
            };
            let hosts: Vec<String> = std::iter::once(gw.lan)
                .chain(kme.extra_hosts[side.index()].iter().copied())
                .map(|ip| ip.to_string())
                .collect();
            let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
            let written = ca.server(&format!("kme-{}", side.gateway_name()), &hosts)?;
            debug_assert_eq!(written, self.files(side).kme);
            for id in pair_config::saes_of(side, kme) {
                ca.client(&id)?;
            }
        }
        Ok(())
    }

    /// The client identity (certificate with CN `sae_id`, key, lab CA) of an
    /// SAE of this pair's lab PKI (see [`super::KmeOptions`]).
    pub fn sae_tls(&self, sae_id: &str) -> TlsFiles {
        let dir = pair_config::pki_dir(&self.root);
        TlsFiles {
            ca: pair_config::lab_ca_file(&self.root),
            cert: dir.join(format!("{sae_id}.pem")),
            key: dir.join(format!("{sae_id}.key")),
        }
    }

    /// `side`'s KME as its host reaches it: `https://<LAN address>:KME_PORT`.
    pub fn kme_url(&self, side: Side) -> String {
        let gw = match side {
            Side::A => &self.bed.gw_a,
            Side::B => &self.bed.gw_b,
        };
        format!("https://{}:{KME_PORT}", gw.lan)
    }

    /// Changes the options and rewrites both configs (secrets stay); the
    /// agents read them when next started. Eve's placement cannot change.
    pub fn reconfigure(
        &mut self,
        change: impl FnOnce(&mut AgentPairOptions),
    ) -> Result<(), AgentPairError> {
        let eve = self.opts.eve;
        change(&mut self.opts);
        self.opts.eve = eve;
        for side in Side::BOTH {
            self.write_config(side)?;
        }
        Ok(())
    }

    fn write_config(&self, side: Side) -> Result<(), AgentPairError> {
        let f = self.files(side);
        let text = pair_config::render_config(side, &self.opts, &self.bed, f);
        if let Err(e) = Config::parse(&text, &f.config) {
            return Err(AgentPairError::Config(e.to_string()));
        }
        write_private(&f.config, text.as_bytes())
    }

    /// Starts `side`'s agent (again). Its output is appended to its log.
    pub fn start_agent(&self, side: Side) -> Result<(), AgentPairError> {
        let mut slot = lock(&self.agents[side.index()]);
        if slot.running() {
            return Ok(());
        }
        let f = self.files(side);
        let log = open_log(&f.log)?;
        writeln_log(&log, &format!("=== fixture: starting {side}'s agent"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns_name(side)])
            .arg(&self.opts.binary)
            .arg("agent")
            .arg(&f.config)
            .env("QKD_IPSEC_LOG", &self.opts.log_filter)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC");
        let child = spawn_logged(cmd, &log, &format!("{side}'s agent"))?;
        slot.child = Some(child);
        slot.exited = None;
        Ok(())
    }

    /// `kill -9` of `side`'s agent (no cleanup of any kind), reaped.
    pub fn kill_agent(&self, side: Side) -> Option<ExitStatus> {
        let status = lock(&self.agents[side.index()]).stop(Signal::SIGKILL, STOP_GRACE);
        writeln_log_path(&self.files(side).log, "=== fixture: killed with SIGKILL");
        status
    }

    /// SIGTERM to `side`'s agent and its exit status (killed after 30 s).
    pub fn stop_agent(&self, side: Side) -> Option<ExitStatus> {
        lock(&self.agents[side.index()]).stop(Signal::SIGTERM, STOP_GRACE)
    }

    /// Whether `side`'s agent process is alive.
    pub fn agent_running(&self, side: Side) -> bool {
        lock(&self.agents[side.index()]).running()
    }

    /// `side`'s agent PID while it runs.
    pub fn agent_pid(&self, side: Side) -> Option<u32> {
        let mut p = lock(&self.agents[side.index()]);
        if p.running() { p.pid() } else { None }
    }

    /// The current status of `side` (blocking, bounded by 5 s).
    pub fn status(&self, side: Side) -> Result<BoardSnapshot, AgentPairError> {
        let json = query_status(
            &self.files(side).status_socket,
            StatusFormat::Json,
            Duration::from_secs(5),
        )
        .map_err(|source| AgentPairError::Status { side, source })?;
        serde_json::from_str(&json).map_err(|source| AgentPairError::StatusJson { side, source })
    }

    /// Polls `side`'s status until `done` holds, and returns that snapshot.
    /// Fails at once if the agent exits, and after `limit` with the last
    /// answer (or error) in the message.
    pub async fn wait_status(
        &self,
        side: Side,
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&BoardSnapshot) -> bool,
    ) -> Result<BoardSnapshot, AgentPairError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last: String;
        loop {
            if !self.agent_running(side) {
                return Err(self.not_running(side));
            }
            match self.status(side) {
                Ok(snap) if done(&snap) => return Ok(snap),
                Ok(snap) => last = crate::ops::summary_line(&snap),
                Err(e) => last = e.to_string(),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AgentPairError::Timeout {
                    side,
                    what: what.to_string(),
                    limit,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn not_running(&self, side: Side) -> AgentPairError {
        AgentPairError::NotRunning {
            side,
            status: lock(&self.agents[side.index()]).exited,
            log_tail: self.log_tail(side, LOG_TAIL_LINES),
        }
    }

    /// The last `lines` lines of `side`'s agent log.
    pub fn log_tail(&self, side: Side, lines: usize) -> String {
        tail(&self.files(side).log, lines)
    }

    /// The whole log of `side`'s agent (every run).
    pub fn log(&self, side: Side) -> String {
        std::fs::read_to_string(&self.files(side).log).unwrap_or_default()
    }

    async fn start_eve(&mut self) -> Result<(), AgentPairError> {
        let Some(eve) = self.opts.eve else {
            return Err(AgentPairError::NoEve);
        };
        let fraction_file = self.root.join("eve.fraction");
        let log_path = self.root.join("eve.log");
        write_private(&fraction_file, format!("{}\n", eve.fraction).as_bytes())?;
        let log = open_log(&log_path)?;
        let ns = self.netns_name(eve.side).to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(&self.opts.binary)
            .arg("eve")
            .arg("--listen")
            .arg(pair_config::eve_addr(&self.bed, &eve).to_string())
            .arg("--upstream")
            .arg(pair_config::receiver_addr(&self.bed).to_string())
            .arg("--fraction")
            .arg(eve.fraction.to_string())
            .arg("--fraction-file")
            .arg(&fraction_file)
            .arg("--report-interval")
            .arg("5")
            // The fibre is sealed: Eve attacks with gw-a's lab export.
            .arg("--fibre-keys")
            .arg(&self.files(Side::A).fibre_keys);
        if eve.record {
            cmd.arg("--record").arg(self.eve_recording());
        }
        let child = spawn_logged(cmd, &log, "eve")?;
        let process = Process {
            child: Some(child),
            exited: None,
        };
        self.eve = Some((Mutex::new(process), fraction_file, log_path));
        // Agents redial with backoff, but starting A before Eve listens
        // would only add a failed dial; wait (bounded) for her banner.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !self.eve_log().contains("listening on") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Changes the fraction of pulses Eve intercepts (she re-reads it
    /// every second).
    pub fn set_eve_fraction(&self, fraction: f64) -> Result<(), AgentPairError> {
        let (_, file, _) = self.eve.as_ref().ok_or(AgentPairError::NoEve)?;
        write_private(file, format!("{fraction}\n").as_bytes())
    }

    /// Where Eve writes her recording (with [`EveOptions::record`]).
    ///
    /// [`EveOptions::record`]: super::EveOptions::record
    pub fn eve_recording(&self) -> PathBuf {
        self.root.join("eve.frames")
    }

    /// What Eve printed so far.
    pub fn eve_log(&self) -> String {
        self.eve
            .as_ref()
            .and_then(|(_, _, log)| std::fs::read_to_string(log).ok())
            .unwrap_or_default()
    }

    /// Stops everything and deletes the namespaces, reporting what could
    /// not be deleted.
    pub fn teardown(mut self) -> Result<(), AgentPairError> {
        self.stop_processes();
        let _ = std::fs::remove_dir_all(&self.root);
        // Deleted here so the errors can be returned; the drop that
        // follows finds nothing left to delete.
        self.bed.delete_all().map_err(AgentPairError::from)
    }

    fn stop_processes(&mut self) {
        for slot in &self.agents {
            lock(slot).stop(Signal::SIGKILL, STOP_GRACE);
        }
        if let Some((eve, _, _)) = &self.eve {
            lock(eve).stop(Signal::SIGKILL, STOP_GRACE);
        }
    }
}

impl Drop for AgentPair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for side in Side::BOTH {
                eprintln!(
                    "----- last {LOG_TAIL_LINES} lines of {side}'s agent log -----\n{}",
                    self.log_tail(side, LOG_TAIL_LINES)
                );
            }
            if self.eve.is_some() {
                eprintln!("----- eve -----\n{}", tail_text(&self.eve_log(), 10));
            }
        }
        self.stop_processes();
        let _ = std::fs::remove_dir_all(&self.root);
        // `bed` drops after this and deletes the namespaces.
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves a usable process record.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AgentPairError> {
    crate::secret::file::write_private_atomic(path, &[bytes]).map_err(AgentPairError::from)
}

fn open_log(path: &Path) -> Result<File, AgentPairError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| AgentPairError::Io {
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

fn spawn_logged(mut cmd: Command, log: &File, what: &str) -> Result<Child, AgentPairError> {
    let clone = |f: &File| {
        f.try_clone().map_err(|source| AgentPairError::Spawn {
            what: what.to_string(),
            source,
        })
    };
    // A process group of its own: a Ctrl-C at the terminal reaches only the
    // program that owns the pair (the demo, a test), which then stops the
    // agents in order instead of racing them.
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(clone(log)?)
        .stderr(clone(log)?)
        .spawn()
        .map_err(|source| AgentPairError::Spawn {
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

fn tail_text(text: &str, lines: usize) -> String {
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
