//! A status board fed by a simulated 25 km QKD link (in process) and a
//! pretend tunnel (no kernel), served on a status socket and a metrics
//! endpoint — to try `qkd-ipsec status` and a Prometheus scrape without an
//! agent, and to show the wiring the agent uses. Stops after SECONDS or on
//! Ctrl-C.
//!
//! ```text
//! cargo run --example status_board -- SOCKET-PATH [METRICS-ADDR] [SECONDS] [--eve]
//! qkd-ipsec status --socket SOCKET-PATH
//! curl -s http://METRICS-ADDR/metrics
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use qkd_ipsec::keys::{BlockId, KeyPool, KeyUse, Role};
use qkd_ipsec::ops::{
    Liveness, MetricsServer, PeerRole, RekeyCause, SaUsage, StatusBoard, StatusServer,
    SystemdNotify, TunnelState, init_logging, spawn_notify_task,
};
use qkd_ipsec::qkd::link::{BlockConfig, InProcessLink, LinkRng};
use qkd_ipsec::qkd::optics::{LinkParams, NoiseRng};
use qkd_ipsec::secret::SecretBytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let eve = args.iter().any(|a| a == "--eve");
    let mut pos = args.iter().filter(|a| !a.starts_with("--"));
    let socket = PathBuf::from(
        pos.next()
            .map_or("/tmp/qkd-ipsec-example/status.sock", |s| s),
    );
    let metrics = pos.next().map_or("127.0.0.1:9477", |s| s).parse()?;
    let seconds: u64 = pos.next().map_or(Ok(60), |s| s.parse())?;

    let board = StatusBoard::new("gw-a");
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    StatusServer::bind(&socket)?.spawn(board.clone(), &tracker, cancel.clone());
    MetricsServer::bind(metrics)
        .await?
        .spawn(board.clone(), &tracker, cancel.clone());
    let notify = Arc::new(SystemdNotify::from_env()?);
    let liveness = Liveness::new();
    spawn_notify_task(
        notify.clone(),
        liveness.clone(),
        board.clone(),
        &tracker,
        cancel.clone(),
    );

    let peer = board.register_peer("gw-b", PeerRole::Transmitter);
    let tunnel = board.register_tunnel("site-b", "gw-b");
    let mut p = LinkParams::gys(25.0);
    p.source.intensities = [0.6, 0.2, 0.0];
    p.source.probabilities = [0.4, 0.4, 0.2];
    let mut link = InProcessLink::new(
        BlockConfig::new(p, 200_000),
        LinkRng::from_os()?,
        LinkRng::from_os()?,
        Some((if eve { 1.0 } else { 0.0 }, NoiseRng::from_seed(1))),
        &SecretBytes::random(256)?,
    )?;
    let mut pool = KeyPool::new(Role::Transmitter);
    pool.set_low_water(4096);
    notify.ready()?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let (mut generation, mut block_id) = (0u64, 0u64);
    loop {
        liveness.beat();
        // CPU-heavy: off the runtime threads, as the agent does.
        let (back, block) = tokio::task::spawn_blocking(move || {
            let b = link.run_block();
            (link, b)
        })
        .await?;
        link = back;
        let block = block?;
        peer.record_block(&block.alice);
        if let Some((key, _)) = block.keys {
            block_id += 1;
            pool.append(BlockId(block_id), key)?;
        }
        match pool.take(KeyUse::SaKey, 72) {
            Ok(_) => {
                generation += 1;
                let spi = 0xc000_0000 + 2 * generation as u32;
                let cause = if generation == 1 {
                    RekeyCause::Startup
                } else {
                    RekeyCause::Timer
                };
                tunnel.sa_installed(generation, spi, spi + 1, cause);
                peer.pool_refilled();
            }
            Err(e) => {
                peer.pool_exhausted();
                tunnel.rekey_failed(RekeyCause::Timer, e);
                let state = if generation == 0 {
                    TunnelState::DownFailedClosed
                } else {
                    TunnelState::WaitingForKeys
                };
                tunnel.set_state(state);
            }
        }
        peer.set_pool(&pool.status());
        let n = generation * 1000;
        tunnel.set_sa_usage(SaUsage {
            bytes_in: n * 1400,
            packets_in: n,
            bytes_out: n * 1300,
            packets_out: n,
        });
        tunnel.set_next_rekey(Some(SystemTime::now() + Duration::from_secs(5)));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}
