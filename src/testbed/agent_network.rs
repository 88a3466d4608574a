//! One real agent per gateway of a [`Network`]: the fixture behind the
//! trusted-relay tests, shaped like [`super::AgentPair`].
//!
//! [`AgentNetwork::start`] builds the topology's namespaces, writes every
//! node's configuration ([`super::render_node_config`]) and secret files
//! into a private 0700 directory — a pool key per node and one bootstrap
//! secret per pair of gateways that run a peer channel (each QKD link, and
//! the two ends), the same bytes on both sides, all 0600 — and runs each
//! agent as its own process in its gateway's namespace (see
//! [`super::agent_process`]). Agents can be stopped, killed and started
//! again, and their status read from their status sockets.
//!
//! Dropping the network kills every process it started, removes its
//! directory and deletes the namespaces — also while a failing test
//! unwinds, in which case the tail of each agent's log is printed first.
//! This module owns only the processes, files and namespaces it created.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use super::Testbed;
use super::agent_process::{AgentProcess, release, write_private};
use super::fixture_error::{AgentNetworkError, check_bootstrap_bytes, random_secret};
use super::network::{Network, Node};
use super::network_config::{NetworkOptions, NodeFiles, render_node_config};
use super::pair_config::{KME_PORT, LAB_CA_NAME, pki_dir, sae_tls};
use crate::ops::BoardSnapshot;
use crate::secret::file::ensure_private_dir;
use crate::secret::write_secret_file;
use crate::tls::TlsFiles;
use crate::tls::lab_pki::LabCa;

/// The fixture. See the module docs.
pub struct AgentNetwork {
    opts: NetworkOptions,
    root: PathBuf,
    /// One per node, in [`super::Topology::nodes`] order, like `agents`.
    files: Vec<NodeFiles>,
    agents: Vec<AgentProcess>,
    /// Declared last: the namespaces go after the processes in them.
    net: Network,
}

impl AgentNetwork {
    /// Builds the namespaces, writes configs and secrets and starts every
    /// agent. Does not wait for them to connect: use
    /// [`AgentNetwork::wait_status`]. Must be called inside a tokio
    /// runtime.
    pub async fn start(opts: NetworkOptions) -> Result<Self, AgentNetworkError> {
        check_bootstrap_bytes(opts.bootstrap_bytes)?;
        let net = Network::create(&Testbed::unique_prefix(&opts.tag), opts.topology).await?;
        let root = std::env::temp_dir().join(&net.prefix);
        let files: Vec<NodeFiles> = net
            .gateways
            .iter()
            .map(|g| NodeFiles::under(&root, g.node))
            .collect();
        let agents = net
            .gateways
            .iter()
            .zip(&files)
            .map(|(g, f)| {
                AgentProcess::new(
                    g.node.gateway_name(),
                    &g.name,
                    &f.config,
                    &f.status_socket,
                    &f.log,
                )
            })
            .collect();
        let network = AgentNetwork {
            opts,
            root,
            files,
            agents,
            net,
        };
        // From here on, an early return drops `network`: processes, files
        // and namespaces go.
        network.write_files()?;
        // Receivers (later names) first, so that most first dials find a
        // listener; the rest are redialled with backoff.
        for &node in network.opts.topology.nodes().iter().rev() {
            network.start_agent(node)?;
        }
        Ok(network)
    }

    fn write_files(&self) -> Result<(), AgentNetworkError> {
        ensure_private_dir(&self.root)?;
        self.write_pki()?;
        for f in &self.files {
            ensure_private_dir(&f.dir)?;
            ensure_private_dir(&f.state_dir)?;
            write_secret_file(&f.pool_key, &random_secret(32)?)?;
        }
        for channel in self.opts.topology.channels() {
            let (tx, rx) = (channel.transmitter, channel.receiver);
            let secret = random_secret(self.opts.bootstrap_bytes)?;
            write_secret_file(&self.files(tx).bootstrap(rx), &secret)?;
            write_secret_file(&self.files(rx).bootstrap(tx), &secret)?;
        }
        for &node in self.opts.topology.nodes() {
            self.write_config(node)?;
        }
        Ok(())
    }

    /// With [`NetworkOptions::kme`]: the lab CA, each end's KME server
    /// certificate (its LAN address) and each end's SAE client certificate.
    fn write_pki(&self) -> Result<(), AgentNetworkError> {
        if !self.opts.kme {
            return Ok(());
        }
        let dir = pki_dir(&self.root);
        ensure_private_dir(&dir)?;
        let ca = LabCa::create(&dir, LAB_CA_NAME)?;
        let (first, last) = self.opts.topology.ends();
        for node in [first, last] {
            let lan = self.lan(node).to_string();
            let written = ca.server(&format!("kme-{}", node.gateway_name()), &[lan.as_str()])?;
            debug_assert_eq!(written, self.files(node).kme);
            ca.client(&node.sae_id())?;
        }
        Ok(())
    }

    /// The LAN address of an end gateway (where its site's host reaches it).
    ///
    /// # Panics
    /// If `node` is not an end of the topology.
    fn lan(&self, node: Node) -> std::net::IpAddr {
        self.net
            .gateway(node)
            .site
            .as_ref()
            .unwrap_or_else(|| panic!("{node} has no site"))
            .lan
    }

    /// An end's KME as its site's host reaches it:
    /// `https://<LAN address>:KME_PORT`.
    pub fn kme_url(&self, node: Node) -> String {
        format!("https://{}:{KME_PORT}", self.lan(node))
    }

    /// The client identity (certificate with CN `sae_id`, key, lab CA) of
    /// an SAE of the lab PKI (see [`NetworkOptions::kme`]).
    pub fn sae_tls(&self, sae_id: &str) -> TlsFiles {
        sae_tls(&self.root, sae_id)
    }

    fn write_config(&self, node: Node) -> Result<(), AgentNetworkError> {
        let f = self.files(node);
        let text = render_node_config(node, &self.opts, f);
        // The agent's own checks, so a bad rendering fails here with the
        // findings rather than as an agent that exits at start.
        if let Err(e) = crate::config::Config::parse(&text, &f.config) {
            return Err(AgentNetworkError::Config(format!("{node}: {e}")));
        }
        Ok(write_private(&f.config, text.as_bytes())?)
    }

    /// Changes the options and rewrites every config (secrets stay); the
    /// agents read them when next started. The topology cannot change.
    pub fn reconfigure(
        &mut self,
        change: impl FnOnce(&mut NetworkOptions),
    ) -> Result<(), AgentNetworkError> {
        let topology = self.opts.topology;
        change(&mut self.opts);
        self.opts.topology = topology;
        for &node in topology.nodes() {
            self.write_config(node)?;
        }
        Ok(())
    }

    /// The namespaces and addresses.
    pub fn network(&self) -> &Network {
        &self.net
    }

    pub fn options(&self) -> &NetworkOptions {
        &self.opts
    }

    /// Position of `node` in the per-node vectors.
    ///
    /// # Panics
    /// If `node` is not in the topology: a test asking for it is wrong.
    fn slot(&self, node: Node) -> usize {
        let topology = self.opts.topology;
        topology
            .nodes()
            .iter()
            .position(|&n| n == node)
            .unwrap_or_else(|| panic!("{node} is not a node of the {topology} topology"))
    }

    fn agent(&self, node: Node) -> &AgentProcess {
        &self.agents[self.slot(node)]
    }

    /// Where `node`'s config, secrets, state, socket and log are.
    pub fn files(&self, node: Node) -> &NodeFiles {
        &self.files[self.slot(node)]
    }

    /// The gateway namespace `node`'s agent runs in.
    pub fn netns_name(&self, node: Node) -> &str {
        &self.net.gateways[self.slot(node)].name
    }

    /// Every file the fixture wrote for the agents to read (configs, pool
    /// keys, bootstrap secrets) — not what the agents wrote themselves.
    pub fn written_files(&self) -> Vec<PathBuf> {
        let topology = self.opts.topology;
        topology
            .nodes()
            .iter()
            .flat_map(|&node| {
                let f = self.files(node);
                [f.config.clone(), f.pool_key.clone()].into_iter().chain(
                    topology
                        .channels_of(node)
                        .into_iter()
                        .map(|(peer, _)| f.bootstrap(peer)),
                )
            })
            .collect()
    }

    /// Starts `node`'s agent (again). Its output is appended to its log.
    pub fn start_agent(&self, node: Node) -> Result<(), AgentNetworkError> {
        let agent = self.agent(node);
        Ok(agent.start(&self.opts.binary, &self.opts.log_filter)?)
    }

    /// `kill -9` of `node`'s agent (no cleanup of any kind), reaped.
    pub fn kill_agent(&self, node: Node) -> Option<ExitStatus> {
        self.agent(node).kill()
    }

    /// SIGTERM to `node`'s agent and its exit status (killed after 30 s).
    pub fn stop_agent(&self, node: Node) -> Option<ExitStatus> {
        self.agent(node).stop()
    }

    /// Whether `node`'s agent process is alive.
    pub fn agent_running(&self, node: Node) -> bool {
        self.agent(node).running()
    }

    /// `node`'s agent PID while it runs.
    pub fn agent_pid(&self, node: Node) -> Option<u32> {
        self.agent(node).pid()
    }

    /// The current status of `node` (blocking, bounded by 5 s).
    pub fn status(&self, node: Node) -> Result<BoardSnapshot, AgentNetworkError> {
        Ok(self.agent(node).status()?)
    }

    /// Polls `node`'s status until `done` holds, and returns that snapshot.
    /// Fails at once if the agent exits, and after `limit` with the last
    /// answer (or error) in the message.
    pub async fn wait_status(
        &self,
        node: Node,
        limit: Duration,
        what: &str,
        done: impl FnMut(&BoardSnapshot) -> bool,
    ) -> Result<BoardSnapshot, AgentNetworkError> {
        Ok(self.agent(node).wait_status(limit, what, done).await?)
    }

    /// The last `lines` lines of `node`'s agent log.
    pub fn log_tail(&self, node: Node, lines: usize) -> String {
        self.agent(node).log_tail(lines)
    }

    /// The whole log of `node`'s agent (every run).
    pub fn log(&self, node: Node) -> String {
        self.agent(node).log()
    }

    /// Stops everything and deletes the namespaces, reporting what could
    /// not be deleted.
    pub fn teardown(mut self) -> Result<(), AgentNetworkError> {
        release(&self.agents, &self.root);
        // Deleted here so the errors can be returned; the drop that
        // follows finds nothing left to delete.
        self.net.delete_all().map_err(AgentNetworkError::from)
    }
}

impl Drop for AgentNetwork {
    fn drop(&mut self) {
        release(&self.agents, &self.root);
        // `net` drops after this and deletes the namespaces.
    }
}
