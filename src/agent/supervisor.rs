//! Start-up, wiring and shutdown of the agent (see [`super`] for the task
//! layout).
//!
//! Start-up order, chosen so that nothing ever flows in clear text:
//! 1. XFRM handle and event subscription in the configured namespace;
//! 2. every tunnel's policies (an SA-less policy drops its traffic);
//! 3. pools (opened, bootstrap block 0 on first start), channel-key records,
//!    the peer listener and links;
//! 4. status board, status socket, metrics, per-peer and per-tunnel tasks,
//!    the ETSI 014 KME when configured;
//! 5. `READY=1` to systemd.
//!
//! Shutdown (cancel): tasks stop, then `gateway.on_stop` decides whether the
//! SAs and policies this agent owns stay (default: traffic stays encrypted
//! until the SAs' hard lifetime, then the policies drop it) or go.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::CHANNEL_BOOTSTRAP_BYTES;
use crate::config::{Config, MIN_BOOTSTRAP_SECRET_BYTES, OnStop, Peer, Tunnel};
use crate::etsi014::KmeClient;
use crate::etsi014::seen::SeenKeyIds;
use crate::keys::{BlockId, PersistedPool, PoolKey};
use crate::ops::{
    Liveness, MetricsServer, PeerReporter, PeerRole, StatusBoard, StatusServer, SystemdNotify,
    spawn_notify_task,
};
use crate::peer::{
    Backoff, ChannelKeyStore, Endpoint, FrameLimits, LinkConfig, ListenerConfig, PeerHandle,
    PeerLink, PeerListener,
};
use crate::qkd::auth::AUTH_KEY_BYTES_PER_BLOCK;
use crate::rekey::{OwnedSa, RekeyConfig, RekeyEngine, RekeyRole};
use crate::secret::SecretBytes;
use crate::secret::file::{ensure_private_dir, load_secret_file};
use crate::xfrm::{PolicySpec, XfrmError, XfrmEvents, XfrmHandle};

use super::AgentError;
use super::app_keys::{AppKeyDesk, BoardLog, PeerKeys, PoolKeyService};
use super::control::TunnelInbound;
use super::etsi014_task::Etsi014Task;
use super::kernel_events::{Route, dispatch};
use super::key_supply::{RelaySupply, Supply};
use super::peer_status::{PeerObserver, report_link};
use super::peer_task::PeerTask;
use super::qkd_task::{QkdTask, lock};
use super::relay_task::{HopLink, RelayRouter};
use super::tunnel_task::{TunnelEvent, TunnelTask, direction_of};

/// Pool bytes of the transmitter's region kept for the QKD link's
/// transcript tags: enough for this many blocks.
const AUTH_RESERVE_BLOCKS: u64 = 4;
/// The transmitter moves the peer channel to a fresh pool key this often.
const CHANNEL_KEY_INTERVAL: Duration = Duration::from_secs(3600);
/// How long tasks get to stop before shutdown goes on without them.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The supervisor proves it is alive to the watchdog this often.
const BEAT: Duration = Duration::from_secs(1);
/// How long relayed keys wait for their offers when no relayed peer
/// configures a wait (this gateway only relays).
const RELAY_HOLD_DEFAULT: Duration = Duration::from_secs(20);

/// One peer's pieces the tunnels need.
struct PeerParts {
    handle: PeerHandle,
    pool: Arc<Mutex<PersistedPool>>,
    ready: watch::Receiver<Option<u64>>,
    reporter: PeerReporter,
    /// Pool bytes SA and application keys must leave for the QKD link's
    /// authentication (none on an ETSI 014 link: no QKD protocol runs).
    reserve: u64,
}

/// Runs the agent for `config` until `cancel`, then stops as configured.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), AgentError> {
    for w in &config.warnings {
        tracing::warn!(field = %w.path, "{}", w.message);
    }
    let gw = &config.gateway;
    let netns = gw.xfrm_netns().map_err(|e| setup("XFRM namespace", e))?;
    let xfrm = Arc::new(XfrmHandle::connect(&netns, gw.ownership.clone()).await?);
    let events = XfrmEvents::subscribe(&netns, Some(gw.ownership.clone())).await?;
    for t in &config.tunnels {
        install_policies(&xfrm, t).await?;
    }
    tracing::info!(
        tunnels = config.tunnels.len(),
        "policies installed: tunnel traffic is dropped until its SAs exist"
    );

    let tasks = TaskTracker::new();
    let failure = Failure::default();
    let result = serve(&config, &xfrm, events, &tasks, &failure, cancel.clone()).await;
    // Whatever happened, stop every task before touching the kernel again.
    cancel.cancel();
    tasks.close();
    if tokio::time::timeout(STOP_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within {STOP_TIMEOUT:?}");
    }
    stop_kernel_state(&xfrm, gw.on_stop).await;
    result?;
    match failure.0.get() {
        Some(what) => Err(AgentError::Task(what.clone())),
        None => Ok(()),
    }
}

async fn serve(
    config: &Config,
    xfrm: &Arc<XfrmHandle>,
    events: XfrmEvents,
    tasks: &TaskTracker,
    failure: &Failure,
    cancel: CancellationToken,
) -> Result<(), AgentError> {
    let gw = &config.gateway;
    ensure_private_dir(&gw.state_dir).map_err(|e| setup("state directory", e))?;
    let pool_key_path = gw
        .pool_key
        .resolve_from_env()
        .map_err(|e| setup("gateway.pool_key", e))?;
    let pool_key = PoolKey::load(&pool_key_path)?;

    let board = StatusBoard::new(gw.name.clone());
    let listener = match gw.listen {
        Some(addr) if config.peers.iter().any(|p| !p.dials()) => {
            Some(PeerListener::bind(addr, ListenerConfig::default(), tasks, cancel.clone()).await?)
        }
        _ => None,
    };

    // Tunnel queues first: the peer tasks route control messages to them.
    let mut tunnel_inbound: HashMap<String, HashMap<String, mpsc::Sender<TunnelInbound>>> =
        HashMap::new();
    let mut tunnel_rx = HashMap::new();
    let mut event_tx: HashMap<String, Vec<mpsc::Sender<TunnelEvent>>> = HashMap::new();
    let mut routes = HashMap::new();
    for t in &config.tunnels {
        let (in_tx, in_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(64);
        tunnel_inbound
            .entry(t.peer.clone())
            .or_default()
            .insert(t.name.clone(), in_tx);
        event_tx
            .entry(t.peer.clone())
            .or_default()
            .push(ev_tx.clone());
        routes.insert(
            t.reqid,
            Route {
                tunnel: t.clone(),
                tx: ev_tx,
            },
        );
        tunnel_rx.insert(t.name.clone(), (in_rx, ev_rx));
    }

    let desk = config.kme.as_ref().map(|k| {
        Arc::new(AppKeyDesk::new(
            k.settings.directory.clone(),
            k.settings.max_pending_keys,
        ))
    });
    // Relayed keys wait here for their offers twice the longest wait.
    let hold = config
        .peers
        .iter()
        .filter_map(|p| p.relay.as_ref().map(|r| r.wait * 2))
        .max()
        .unwrap_or(RELAY_HOLD_DEFAULT);
    let relays = config.network.as_ref().is_some_and(|n| n.relay);
    let export = config
        .network
        .as_ref()
        .and_then(|n| n.lab_export_relay_shares.clone());
    let router = RelayRouter::new(&gw.name, relays, hold, board.clone(), export);
    let mut peers = HashMap::new();
    for p in &config.peers {
        let parts = start_peer(
            config,
            p,
            desk.clone(),
            &router,
            &pool_key,
            listener.as_ref(),
            &board,
            tunnel_inbound.remove(&p.name).unwrap_or_default(),
            event_tx.remove(&p.name).unwrap_or_default(),
            tasks,
            failure,
            &cancel,
        )
        .await?;
        peers.insert(p.name.clone(), parts);
    }
    router.set_links(
        config
            .peers
            .iter()
            .filter(|p| p.relay.is_none())
            .map(|p| {
                let parts = &peers[&p.name];
                let link = HopLink {
                    pool: Arc::clone(&parts.pool),
                    reserve: parts.reserve,
                    handle: parts.handle.clone(),
                    ready: parts.ready.clone(),
                };
                (p.name.clone(), link)
            })
            .collect(),
    );

    let owned = xfrm.list_owned_sas().await?;
    for t in &config.tunnels {
        let peer = &peers[&t.peer];
        let (inbound, events) = tunnel_rx.remove(&t.name).expect("queues made above");
        let owned: Vec<OwnedSa> = owned
            .iter()
            .filter(|i| i.id.reqid() == t.reqid)
            .map(|i| OwnedSa {
                dir: direction_of(t, i.id.dst()),
                spi: i.id.spi(),
            })
            .collect();
        if !owned.is_empty() {
            tracing::info!(tunnel = %t.name, sas = owned.len(), "found SAs of this tunnel from before; they are replaced");
        }
        let task = TunnelTask {
            tunnel: t.clone(),
            engine: Box::new(new_engine(t)?),
            owned,
            xfrm: Arc::clone(xfrm),
            pool: Arc::clone(&peer.pool),
            reserve: peer.reserve,
            peer: peer.handle.clone(),
            ready: peer.ready.clone(),
            inbound,
            events,
            reporter: board.register_tunnel(&t.name, &t.peer),
            peer_reporter: peer.reporter.clone(),
            cancel: cancel.clone(),
        };
        let name = t.name.clone();
        tasks.spawn(failure.watch(format!("tunnel {name}"), cancel.clone(), task.run()));
    }
    tasks.spawn(dispatch(events, routes, cancel.clone()));
    if let (Some(kme), Some(desk)) = (&config.kme, desk) {
        start_kme(kme, desk, &peers, &board, tasks, &cancel).await?;
    }

    StatusServer::bind(&gw.status_socket)
        .map_err(|e| setup("status socket", e))?
        .spawn(board.clone(), tasks, cancel.clone());
    if let Some(addr) = gw.metrics_listen {
        MetricsServer::bind(addr)
            .await
            .map_err(|e| setup("metrics listener", e))?
            .spawn(board.clone(), tasks, cancel.clone());
    }
    let notify = Arc::new(SystemdNotify::from_env().map_err(|e| setup("systemd notify", e))?);
    let liveness = Liveness::new();
    spawn_notify_task(
        Arc::clone(&notify),
        Arc::clone(&liveness),
        board.clone(),
        tasks,
        cancel.clone(),
    );
    if let Err(e) = notify.ready() {
        tracing::warn!(error = %e, "READY=1 notification failed");
    }
    tracing::info!(gateway = %gw.name, peers = config.peers.len(), tunnels = config.tunnels.len(),
        status_socket = %gw.status_socket.display(), "agent running");

    let mut beat = tokio::time::interval(BEAT);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = beat.tick() => liveness.beat(),
        }
    }
}

/// Opens one peer's pool and channel record and starts its link, its
/// session task and its key source: the QKD task of a simulated link, or
/// the ETSI 014 task of a `kind = "etsi014"` link (the KME client and the
/// used key_IDs' record are opened here, so a bad TLS file stops start-up).
#[allow(clippy::too_many_arguments)]
async fn start_peer(
    config: &Config,
    p: &Peer,
    app_keys: Option<Arc<AppKeyDesk>>,
    router: &Arc<RelayRouter>,
    pool_key: &PoolKey,
    listener: Option<&PeerListener>,
    board: &StatusBoard,
    tunnels: HashMap<String, mpsc::Sender<TunnelInbound>>,
    tunnel_events: Vec<mpsc::Sender<TunnelEvent>>,
    tasks: &TaskTracker,
    failure: &Failure,
    cancel: &CancellationToken,
) -> Result<PeerParts, AgentError> {
    let gw = &config.gateway;
    if p.is_simulated() {
        tracing::warn!(peer = %p.name, "the QKD link to this peer is SIMULATED: its keys are only as secret as the peer channel's classical keys (bootstrap secret, HMAC channel keys), not quantum-secure");
    }
    if let Some(path) = &p.lab_export_fibre_keys {
        tracing::warn!(peer = %p.name, path = %path.display(), "LAB ONLY: lab_export_fibre_keys is on: this agent writes the link's fibre keys to that file; whoever reads it can read every key of this link");
    }
    let field = format!("peer {}: bootstrap_secret", p.name);
    let path = p
        .bootstrap_secret
        .resolve_from_env()
        .map_err(|e| setup(&field, e))?;
    let bootstrap = load_secret_file(&path).map_err(|e| setup(&field, e))?;
    if bootstrap.len() < MIN_BOOTSTRAP_SECRET_BYTES {
        return Err(setup(
            &field,
            format!(
                "{} holds {} bytes; at least {MIN_BOOTSTRAP_SECRET_BYTES} are needed",
                path.display(),
                bootstrap.len()
            ),
        ));
    }
    let (channel_secret, first_block) = split_bootstrap(&bootstrap);

    let pool = open_pool(&gw.state_dir, p, pool_key, &bootstrap, first_block)?;
    let pool = Arc::new(Mutex::new(pool));
    let record = gw.state_dir.join(format!("{}.channel", p.name));
    let store = ChannelKeyStore::open(&record, channel_secret)?;

    let endpoint = if p.dials() {
        let address = p
            .address
            .as_ref()
            .ok_or_else(|| setup(&format!("peer {}: address", p.name), "missing"))?;
        Endpoint::Dial(resolve(address.to_string()).await?)
    } else {
        let l = listener.ok_or_else(|| {
            setup(
                "gateway.listen",
                format!("peer {} dials in, so this gateway must listen", p.name),
            )
        })?;
        Endpoint::Accept(l.clone())
    };
    let link_cfg = link_config(&gw.name, p);
    let channel_pool: Arc<dyn crate::peer::ChannelKeyPool> = pool.clone();
    let (handle, rx) = PeerLink::spawn(
        link_cfg,
        endpoint,
        store,
        channel_pool,
        tasks,
        cancel.clone(),
    )?;

    let reporter = board.register_peer(&p.name, peer_role(p.role));
    reporter.set_source(match p.kind {
        crate::config::LinkKind::Simulated => crate::ops::LinkSource::Simulated,
        crate::config::LinkKind::Etsi014 => crate::ops::LinkSource::Etsi014,
        crate::config::LinkKind::Relayed => crate::ops::LinkSource::Relayed,
    });
    if p.lab_seed_pool.is_some() {
        // Seeded at the pool's creation, this start or an earlier one.
        reporter.set_lab_seeded();
    }
    reporter.set_pool(&lock(&pool).status());
    let (ready_tx, ready_rx) = watch::channel(None);
    let offered = p.etsi014.is_some() || p.relay.is_some();
    let (source_tx, source_rx) = if offered {
        let (tx, rx) = mpsc::channel(16);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let peer_task = PeerTask {
        peer: p.name.clone(),
        role: p.role,
        handle: handle.clone(),
        control_rx: rx.control,
        pool: Arc::clone(&pool),
        ready: ready_tx,
        tunnels,
        key_source: source_tx,
        channel_key_interval: CHANNEL_KEY_INTERVAL,
        app_keys,
        relay: Arc::clone(router),
        cancel: cancel.clone(),
    };
    tasks.spawn(failure.watch(format!("peer {}", p.name), cancel.clone(), peer_task.run()));
    let observer = Arc::new(PeerObserver {
        reporter: reporter.clone(),
        pool: Arc::clone(&pool),
        tunnels: tunnel_events,
    });
    let field = format!("peer {}: key source", p.name);
    let supply = match (&p.etsi014, &p.relay) {
        (Some(settings), _) => {
            let client = KmeClient::new(&settings.client_config()).map_err(|e| setup(&field, e))?;
            Some(Supply::Kme {
                client,
                settings: settings.clone(),
            })
        }
        (None, Some(relay)) => Some(Supply::Relay(RelaySupply {
            peer: p.name.clone(),
            me: gw.name.clone(),
            settings: relay.clone(),
            router: Arc::clone(router),
            board: board.clone(),
        })),
        (None, None) => None,
    };
    match (supply, source_rx) {
        (Some(supply), Some(inbound)) => {
            // No QKD protocol on this link: a device ran it, or the keys
            // are relayed over other links.
            let seen = SeenKeyIds::open(&SeenKeyIds::file_for(&gw.state_dir, &p.name))
                .map_err(|e| setup(&field, e))?;
            let role = match (&supply, p.role) {
                (Supply::Kme { .. }, crate::keys::Role::Transmitter) => "master",
                (Supply::Kme { .. }, crate::keys::Role::Receiver) => "slave",
                (Supply::Relay(_), crate::keys::Role::Transmitter) => "source",
                (Supply::Relay(_), crate::keys::Role::Receiver) => "destination",
            };
            reporter.set_key_source(&supply.describe(), role);
            let refusals = match (&supply, p.role) {
                (Supply::Relay(_), crate::keys::Role::Transmitter) => {
                    Some(router.refusals_for(&p.name))
                }
                _ => None,
            };
            let kind = supply.kind();
            let task = Etsi014Task {
                peer: p.name.clone(),
                role: p.role,
                supply,
                seen,
                refusals,
                handle: handle.clone(),
                inbound,
                fibre_rx: rx.fibre,
                qkd_rx: rx.qkd,
                pool: Arc::clone(&pool),
                ready: ready_rx.clone(),
                reporter: reporter.clone(),
                observer,
                cancel: cancel.clone(),
            };
            tasks.spawn(failure.watch(
                format!("{kind} key source {}", p.name),
                cancel.clone(),
                task.run(),
            ));
        }
        _ => {
            let qkd = QkdTask {
                peer: p.name.clone(),
                role: p.role,
                cfg: p.block_config(),
                pulse_rate_hz: p.pulse_rate_hz(),
                handle: handle.clone(),
                fibre_rx: rx.fibre,
                qkd_rx: rx.qkd,
                pool: Arc::clone(&pool),
                ready: ready_rx.clone(),
                observer,
                cancel: cancel.clone(),
            };
            tasks.spawn(failure.watch(format!("QKD link {}", p.name), cancel.clone(), qkd.run()));
        }
    }
    tasks.spawn(report_link(
        handle.clone(),
        reporter.clone(),
        Arc::clone(&pool),
        cancel.clone(),
    ));
    let reserve = if offered {
        0
    } else {
        AUTH_RESERVE_BLOCKS * AUTH_KEY_BYTES_PER_BLOCK as u64
    };
    Ok(PeerParts {
        handle,
        pool,
        ready: ready_rx,
        reporter,
        reserve,
    })
}

/// Binds the KME and serves it from the peers' pools.
async fn start_kme(
    kme: &crate::config::Kme,
    desk: Arc<AppKeyDesk>,
    peers: &HashMap<String, PeerParts>,
    board: &StatusBoard,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<(), AgentError> {
    let peers = peers
        .iter()
        .map(|(name, p)| {
            let keys = PeerKeys {
                pool: Arc::clone(&p.pool),
                handle: p.handle.clone(),
                ready: p.ready.clone(),
                reserve: p.reserve,
            };
            (name.clone(), keys)
        })
        .collect();
    for sae in kme.settings.directory.local_saes() {
        board.register_sae(&sae);
    }
    let service = PoolKeyService { desk, peers };
    let log = Arc::new(BoardLog(board.clone()));
    crate::kme::KmeServer::bind(kme.listen, &kme.tls, kme.settings.clone(), service, log)
        .await
        .map_err(|e| setup("gateway.kme_listen", e))?
        .spawn(tasks, cancel.clone());
    Ok(())
}

/// The bootstrap secret's two uses: the first 32 bytes key the peer
/// channel until QKD key replaces them, the rest is pool block 0.
fn split_bootstrap(b: &SecretBytes) -> (SecretBytes, SecretBytes) {
    let raw = b.expose();
    (
        SecretBytes::from_slice(&raw[..CHANNEL_BOOTSTRAP_BYTES]),
        SecretBytes::from_slice(&raw[CHANNEL_BOOTSTRAP_BYTES..]),
    )
}

/// Opens the pool with `p`. A new pool gets block 0, the bootstrap
/// secret's tail, which authenticates the first QKD block (both sides do
/// the same, so the pools start equal) — once per secret: a secret that
/// started a pool here before is refused, since its one-time tag keys
/// would be used again ([`crate::keys::bootstrap`]). Then, LAB ONLY, the
/// seed.
fn open_pool(
    state_dir: &Path,
    p: &Peer,
    pool_key: &PoolKey,
    bootstrap: &SecretBytes,
    first_block: SecretBytes,
) -> Result<PersistedPool, AgentError> {
    let mut pool = PersistedPool::open(state_dir, &p.name, p.role, pool_key)?;
    if pool.pool().high_water().is_none() {
        crate::keys::bootstrap::claim(state_dir, &p.name, bootstrap)?;
        pool.append(BlockId(0), first_block)?;
        tracing::info!(peer = %p.name, "key pool created with the bootstrap block");
        if let Some(path) = &p.lab_seed_pool {
            seed_pool(&mut pool, &p.name, path)?;
        }
    }
    Ok(pool)
}

/// LAB ONLY: bytes per block of a seeded pool.
const LAB_SEED_BLOCK_BYTES: usize = 64 * 1024;

/// LAB ONLY (`[peer.link] lab_seed_pool`): fills a pool just created with
/// the seed file's bytes after block 0, in blocks numbered alike on both
/// gateways (whose files hold the same bytes), so the QKD link's blocks
/// follow them. Runs only when the pool is created, never into a pool that
/// exists. Those keys are as secret as the file: benches and labs only.
fn seed_pool(pool: &mut PersistedPool, peer: &str, path: &Path) -> Result<(), AgentError> {
    let field = format!("peer {peer}: link.lab_seed_pool");
    let seed = load_secret_file(path).map_err(|e| setup(&field, e))?;
    if seed.is_empty() {
        return Err(setup(&field, format!("{} is empty", path.display())));
    }
    for (i, chunk) in seed.expose().chunks(LAB_SEED_BLOCK_BYTES).enumerate() {
        pool.append(BlockId(1 + i as u64), SecretBytes::from_slice(chunk))?;
    }
    tracing::warn!(
        peer,
        path = %path.display(),
        bytes = seed.len(),
        "LAB ONLY: the new key pool was seeded from lab_seed_pool: those keys are as secret as that file, not QKD keys"
    );
    Ok(())
}

fn link_config(local: &str, p: &Peer) -> LinkConfig {
    let ch = &p.channel;
    let mut c = LinkConfig::new(local, &p.name, p.role);
    c.limits = FrameLimits {
        fibre: ch.max_fibre_frame_bytes,
        qkd: ch.max_qkd_frame_bytes,
        control: ch.max_control_frame_bytes,
    };
    c.handshake_timeout = ch.handshake_timeout.0;
    c.keepalive_interval = ch.keepalive_interval.0;
    c.idle_timeout = ch.idle_timeout.0;
    c.backoff = Backoff {
        initial: ch.backoff_min.0,
        max: ch.backoff_max.0,
    };
    c.lab_export_fibre_keys = p.lab_export_fibre_keys.clone();
    c
}

async fn resolve(address: String) -> Result<SocketAddr, AgentError> {
    let mut addrs = tokio::net::lookup_host(&address)
        .await
        .map_err(|e| setup(&format!("peer address {address}"), e))?;
    addrs
        .next()
        .ok_or_else(|| setup(&format!("peer address {address}"), "resolves to nothing"))
}

fn new_engine(t: &Tunnel) -> Result<RekeyEngine, AgentError> {
    let role = if t.initiator {
        RekeyRole::Initiator
    } else {
        RekeyRole::Responder
    };
    let keying = match t.keying {
        crate::config::Keying::Direct => crate::rekey::KeyingMode::Direct,
        crate::config::Keying::Wrapped => crate::rekey::KeyingMode::Wrapped,
    };
    let mut cfg = RekeyConfig::new(t.name.clone(), role, keying, t.rekey_interval);
    cfg.jitter = t.rekey_jitter.min(t.rekey_interval / 2);
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| setup("OS random generator", e))?;
    let mut rng = <rand_chacha::ChaCha20Rng as rand_core::SeedableRng>::from_seed(seed);
    RekeyEngine::new(cfg, std::time::Instant::now(), &mut rng)
        .map_err(|e| setup(&format!("tunnel {}", t.name), e))
}

/// Installs a tunnel's policies; one left by an earlier run of this agent
/// (`on_stop = "keep"`, or a crash) is kept as it is.
async fn install_policies(xfrm: &XfrmHandle, t: &Tunnel) -> Result<(), AgentError> {
    for spec in t.policies() {
        match xfrm.add_policy(&spec).await {
            Ok(_) => {}
            Err(XfrmError::PolicyExists { .. }) if owned_policy_exists(xfrm, &spec).await? => {
                tracing::debug!(tunnel = %t.name, "policy from an earlier run kept");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn owned_policy_exists(xfrm: &XfrmHandle, spec: &PolicySpec) -> Result<bool, AgentError> {
    let want = spec.id();
    Ok(xfrm.list_owned_policies().await?.iter().any(|p| {
        p.id.selector() == want.selector()
            && p.id.direction() == want.direction()
            && p.id.reqid() == want.reqid()
    }))
}

/// Applies `gateway.on_stop` to what this agent owns in the kernel.
async fn stop_kernel_state(xfrm: &XfrmHandle, on_stop: OnStop) {
    match on_stop {
        OnStop::Keep => {
            tracing::info!("{}", on_stop.consequence());
        }
        OnStop::RemoveSas => {
            let sas = match xfrm.list_owned_sas().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list SAs to remove them");
                    return;
                }
            };
            for sa in sas {
                if let Err(e) = xfrm.delete_sa(&sa.id).await {
                    tracing::error!(error = %e, spi = sa.id.spi(), "removing an SA failed");
                }
            }
            tracing::info!("{}", on_stop.consequence());
        }
        OnStop::RemoveAll => match xfrm.remove_owned().await {
            Ok(r) => tracing::info!(removed = ?r, "{}", on_stop.consequence()),
            Err(e) => tracing::error!(error = %e, "removing SAs and policies failed"),
        },
    }
}

/// The first task failure, which stops the whole agent: a half-running
/// agent would leave tunnels unmanaged, while a stopped one is restarted by
/// systemd and recovers from its persisted state.
#[derive(Clone, Default)]
struct Failure(Arc<OnceLock<String>>);

impl Failure {
    /// Runs a task; an error is recorded and cancels everything.
    fn watch<F>(
        &self,
        name: String,
        cancel: CancellationToken,
        f: F,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        F: std::future::Future<Output = Result<(), AgentError>> + Send + 'static,
    {
        let this = self.clone();
        async move {
            match f.await {
                Ok(()) => tracing::debug!(task = %name, "task stopped"),
                Err(e) => {
                    tracing::error!(task = %name, error = %e, "task failed; stopping the agent");
                    let _ = this.0.set(format!("{name}: {e}"));
                    cancel.cancel();
                }
            }
        }
    }
}

fn setup(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::Setup {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

fn peer_role(r: crate::keys::Role) -> PeerRole {
    match r {
        crate::keys::Role::Transmitter => PeerRole::Transmitter,
        crate::keys::Role::Receiver => PeerRole::Receiver,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::keys::{KeyUse, Role};
    use crate::secret::Secret;
    use crate::secret::file::TestDir;

    fn pool_in(dir: &TestDir) -> PersistedPool {
        let key = PoolKey::from_secret(Secret::<32>::from_slice(&[3; 32]).unwrap());
        let mut pool = PersistedPool::open(dir.path(), "gw-b", Role::Transmitter, &key).unwrap();
        pool.append(BlockId(0), SecretBytes::from_slice(&[1; 480]))
            .unwrap();
        pool
    }

    fn seed_file(dir: &TestDir, bytes: &[u8], mode: u32) -> std::path::PathBuf {
        let path = dir.path().join("seed");
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_seed_fills_the_new_pool_in_numbered_blocks_after_block_0() {
        let dir = TestDir::new("seed");
        let mut pool = pool_in(&dir);
        let seed: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        seed_pool(&mut pool, "gw-b", &seed_file(&dir, &seed, 0o600)).unwrap();
        // 64 KiB + 64 KiB + the rest; the QKD link's blocks come next.
        assert_eq!(pool.pool().block_count(), 4);
        assert_eq!(pool.pool().next_block_id(), BlockId(4));
        assert_eq!(pool.pool().available(), 480 + 150_000);
        // The seed's bytes are the pool's: past the transmitter's half of
        // block 0, its takes come from block 1.
        pool.take(KeyUse::SaKey, 240).unwrap();
        let (r, key) = pool.take(KeyUse::SaKey, 36).unwrap();
        let seg = r.segments()[0];
        assert_eq!(seg.block, BlockId(1));
        let at = seg.offset as usize;
        assert_eq!(key.expose(), &seed[at..at + 36]);
    }

    /// Issue 9, finding 1: removing a pool "to start over" with the same
    /// bootstrap secret rebuilt block 0 from it, so the first QKD blocks'
    /// one-time tag keys were used a second time.
    #[test]
    fn a_bootstrap_secret_starts_one_pool_only() {
        let dir = TestDir::new("bootstrap-once");
        let cfg = crate::config::Config::parse(
            include_str!("../../deploy/gateway-a.toml"),
            Path::new("/etc/qkd-ipsec/gateway.toml"),
        )
        .unwrap();
        let p = &cfg.peers[0];
        let key = PoolKey::from_secret(Secret::<32>::from_slice(&[3; 32]).unwrap());
        let secret = SecretBytes::from_slice(&[9; 512]);
        let open = |secret: &SecretBytes| {
            let (_, tail) = split_bootstrap(secret);
            open_pool(dir.path(), p, &key, secret, tail)
        };
        drop(open(&secret).unwrap());
        // A restart reopens the pool; nothing is claimed again.
        let pool = open(&secret).unwrap();
        assert_eq!(pool.pool().block_count(), 1);
        drop(pool);
        for f in ["gw-b.pool", "gw-b.journal"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        let e = open(&secret).unwrap_err().to_string();
        assert!(
            e.contains("already started a key pool") && e.contains("fresh"),
            "{e}"
        );
        // A fresh secret starts the new pool.
        let pool = open(&SecretBytes::from_slice(&[8; 512])).unwrap();
        assert_eq!(pool.pool().block_count(), 1);
    }

    #[test]
    fn an_empty_or_readable_seed_is_refused() {
        let dir = TestDir::new("seed-bad");
        let mut pool = pool_in(&dir);
        let e = seed_pool(&mut pool, "gw-b", &seed_file(&dir, &[], 0o600)).unwrap_err();
        assert!(
            e.to_string().contains("lab_seed_pool") && e.to_string().contains("empty"),
            "{e}"
        );
        let e = seed_pool(&mut pool, "gw-b", &seed_file(&dir, &[7; 64], 0o644)).unwrap_err();
        assert!(e.to_string().contains("lab_seed_pool"), "{e}");
        assert_eq!(pool.pool().block_count(), 1, "nothing was seeded");
    }
}
