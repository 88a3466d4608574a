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

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Testbed;
use super::agent_process::{
    AgentProcess, Process, lock, open_log, release, spawn_logged, tail_text, write_private,
};
use super::fixture_error::{AgentPairError, check_bootstrap_bytes, random_secret};
use super::pair_config::{self, AgentPairOptions, GatewayFiles, KME_PORT, Side};
use crate::config::Config;
use crate::ops::BoardSnapshot;
use crate::secret::file::ensure_private_dir;
use crate::secret::write_secret_file;
use crate::tls::TlsFiles;
use crate::tls::lab_pki::LabCa;

/// The fixture. See the module docs.
pub struct AgentPair {
    opts: AgentPairOptions,
    root: PathBuf,
    files: [GatewayFiles; 2],
    agents: [AgentProcess; 2],
    eve: Option<(Mutex<Process>, PathBuf, PathBuf)>,
    /// Declared last: the namespaces go after the processes in them.
    bed: Testbed,
}

impl AgentPair {
    /// Builds the testbed, writes configs and secrets, starts Eve (if
    /// asked) and both agents. Does not wait for them to connect: use
    /// [`AgentPair::wait_status`]. Must be called inside a tokio runtime.
    pub async fn start(opts: AgentPairOptions) -> Result<Self, AgentPairError> {
        check_bootstrap_bytes(opts.bootstrap_bytes)?;
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
        let agent = |side: Side| {
            let f: &GatewayFiles = &files[side.index()];
            let netns = match side {
                Side::A => &bed.gw_a.name,
                Side::B => &bed.gw_b.name,
            };
            AgentProcess::new(
                side.gateway_name(),
                netns,
                &f.config,
                &f.status_socket,
                &f.log,
            )
        };
        let agents = [agent(Side::A), agent(Side::B)];
        let mut pair = AgentPair {
            opts,
            root,
            files,
            agents,
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
            .flat_map(|f| {
                let seed = (self.opts.lab_seed_bytes > 0).then(|| f.lab_seed.clone());
                [f.config.clone(), f.pool_key.clone(), f.bootstrap.clone()]
                    .into_iter()
                    .chain(seed)
            })
            .collect()
    }

    fn write_files(&self) -> Result<(), AgentPairError> {
        ensure_private_dir(&self.root)?;
        self.write_pki()?;
        let bootstrap = random_secret(self.opts.bootstrap_bytes)?;
        let seed = (self.opts.lab_seed_bytes > 0)
            .then(|| random_secret(self.opts.lab_seed_bytes))
            .transpose()?;
        for side in Side::BOTH {
            let f = self.files(side);
            ensure_private_dir(&f.dir)?;
            ensure_private_dir(&f.state_dir)?;
            write_secret_file(&f.pool_key, &random_secret(32)?)?;
            write_secret_file(&f.bootstrap, &bootstrap)?;
            if let Some(seed) = &seed {
                write_secret_file(&f.lab_seed, seed)?;
            }
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
        ensure_private_dir(&dir)?;
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
        pair_config::sae_tls(&self.root, sae_id)
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
        Ok(write_private(&f.config, text.as_bytes())?)
    }

    /// Starts `side`'s agent (again). Its output is appended to its log.
    pub fn start_agent(&self, side: Side) -> Result<(), AgentPairError> {
        let agent = &self.agents[side.index()];
        Ok(agent.start(&self.opts.binary, &self.opts.log_filter)?)
    }

    /// `kill -9` of `side`'s agent (no cleanup of any kind), reaped.
    pub fn kill_agent(&self, side: Side) -> Option<ExitStatus> {
        self.agents[side.index()].kill()
    }

    /// SIGTERM to `side`'s agent and its exit status (killed after 30 s).
    pub fn stop_agent(&self, side: Side) -> Option<ExitStatus> {
        self.agents[side.index()].stop()
    }

    /// Whether `side`'s agent process is alive.
    pub fn agent_running(&self, side: Side) -> bool {
        self.agents[side.index()].running()
    }

    /// `side`'s agent PID while it runs.
    pub fn agent_pid(&self, side: Side) -> Option<u32> {
        self.agents[side.index()].pid()
    }

    /// The current status of `side` (blocking, bounded by 5 s).
    pub fn status(&self, side: Side) -> Result<BoardSnapshot, AgentPairError> {
        Ok(self.agents[side.index()].status()?)
    }

    /// Polls `side`'s status until `done` holds, and returns that snapshot.
    /// Fails at once if the agent exits, and after `limit` with the last
    /// answer (or error) in the message.
    pub async fn wait_status(
        &self,
        side: Side,
        limit: Duration,
        what: &str,
        done: impl FnMut(&BoardSnapshot) -> bool,
    ) -> Result<BoardSnapshot, AgentPairError> {
        let agent = &self.agents[side.index()];
        Ok(agent.wait_status(limit, what, done).await?)
    }

    /// The last `lines` lines of `side`'s agent log.
    pub fn log_tail(&self, side: Side, lines: usize) -> String {
        self.agents[side.index()].log_tail(lines)
    }

    /// The whole log of `side`'s agent (every run).
    pub fn log(&self, side: Side) -> String {
        self.agents[side.index()].log()
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
        self.eve = Some((Mutex::new(Process::started(child)), fraction_file, log_path));
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
        Ok(write_private(file, format!("{fraction}\n").as_bytes())?)
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
        self.stop_eve();
        release(&self.agents, &self.root);
        // Deleted here so the errors can be returned; the drop that
        // follows finds nothing left to delete.
        self.bed.delete_all().map_err(AgentPairError::from)
    }

    fn stop_eve(&self) {
        if let Some((eve, _, _)) = &self.eve {
            lock(eve).kill();
        }
    }
}

impl Drop for AgentPair {
    fn drop(&mut self) {
        if std::thread::panicking() && self.eve.is_some() {
            eprintln!("----- eve -----\n{}", tail_text(&self.eve_log(), 10));
        }
        self.stop_eve();
        release(&self.agents, &self.root);
        // `bed` drops after this and deletes the namespaces.
    }
}
