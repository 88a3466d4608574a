//! One tunnel's task: drives its [`RekeyEngine`] with the kernel, the peer
//! channel, one timer and the pool, as the table in [`crate::rekey`] says.
//!
//! Owns the mapping of engine actions onto [`XfrmHandle`] calls and control
//! frames, and of engine state onto the status board. Must not decide
//! anything about rekeying (the engine does) and never touches policies:
//! they are installed once by the supervisor, so a tunnel whose SAs are gone
//! drops its traffic (fail closed).
//!
//! Every call into the engine runs on a blocking thread, because a pool take
//! writes and fsyncs the pool's journal before it returns a key (a crash may
//! waste key but never reuse it). Kernel requests run in the order the
//! engine emitted them, each answered before the next action.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Tunnel;
use crate::keys::{BlockId, KeyRef, KeyUse, PersistedPool};
use crate::ops::{PeerReporter, RekeyCause, SaUsage, TunnelReporter, TunnelState};
use crate::peer::{PeerHandle, Stream};
use crate::rekey::{
    AbandonReason, Alarm, EngineState, KernelFailure, KernelOutcome, KernelRequest, KeySource,
    OwnedSa, RekeyAction, RekeyEngine, RekeyEnv, RekeyInput, RekeyNotice, SaDirection, Spi,
    TakeError, Trigger, TunnelStatus,
};
use crate::secret::SecretBytes;
use crate::xfrm::{SaId, XfrmError, XfrmHandle};

use super::AgentError;
use super::control::{ControlMessage, TunnelInbound};
use super::qkd_task::lock;

/// How often the kernel's byte and packet counters of the current SAs are
/// copied to the status board.
const USAGE_REFRESH: Duration = Duration::from_secs(5);
/// Kernel requests remembered for the `xfrm_ms` figure of the "rekey
/// done" log line: more than one exchange makes (about eight).
const KERNEL_TIMES_KEPT: usize = 32;

/// Kernel events and pool news for one tunnel, from the supervisor's
/// dispatchers.
#[derive(Debug)]
pub enum TunnelEvent {
    /// An expiry, an ACQUIRE or a pool refill, as the engine takes it.
    Input(RekeyInput),
    /// XFRM events were lost: compare the engine's SAs with the kernel's.
    Resync,
}

/// The direction of one of a tunnel's SAs, from its destination.
pub fn direction_of(tunnel: &Tunnel, dst: IpAddr) -> SaDirection {
    if dst == tunnel.local_endpoint {
        SaDirection::Inbound
    } else {
        SaDirection::Outbound
    }
}

/// The pool as the rekey engine sees it, less a reserve for the QKD link:
/// every block's transcript tags consume one-time key from the pool
/// ([`crate::qkd::auth::AUTH_KEY_BYTES_PER_BLOCK`]), so if SA keys drained
/// it the link could never produce key again. Takes that would leave less
/// than the reserve are refused as exhausted; accepting the peer's
/// references is never refused (the peer has already taken them).
pub struct ReservedPool<'a> {
    pub pool: &'a mut PersistedPool,
    pub reserve: u64,
}

impl KeySource for ReservedPool<'_> {
    fn take(&mut self, key_use: KeyUse, len: u32) -> Result<(KeyRef, SecretBytes), TakeError> {
        let own = self.pool.pool().available_for(self.pool.pool().role());
        if own < u64::from(len) + self.reserve {
            return Err(TakeError::Exhausted {
                available: own.saturating_sub(self.reserve),
            });
        }
        // Block 0 is the bootstrap secret's tail (see the supervisor):
        // pre-shared bytes, there to authenticate the first QKD blocks, never
        // to key an SA. The pool takes oldest block first, so a take would
        // start with what is left of it. Once a QKD block is in the pool,
        // the link's tags need block 0 no more: retire its rest of this
        // side's region (a take of exactly that much, dropped at once), so
        // that SA keys come from QKD blocks only; before that, wait.
        let left = bootstrap_left(self.pool);
        if left > 0 {
            let qkd_blocks = self
                .pool
                .pool()
                .high_water()
                .is_some_and(|h| h > BlockId(0));
            if !qkd_blocks {
                return Err(TakeError::Exhausted { available: 0 });
            }
            // The retired bytes are dropped (zeroised) unused; a long
            // secret goes in several takes (the recursion below).
            let chunk = left.min(u64::from(crate::keys::pool::MAX_TAKE_BYTES)) as u32;
            if let Err(e) = self.pool.take(KeyUse::Auth, chunk) {
                tracing::warn!(error = %e, "cannot retire the rest of the bootstrap block");
                return Err(TakeError::Exhausted { available: 0 });
            }
            tracing::info!(
                bytes = chunk,
                "bootstrap block retired: SA keys come from QKD blocks only"
            );
            return self.take(key_use, len);
        }
        KeySource::take(self.pool, key_use, len)
    }

    fn take_at(&mut self, key_ref: &KeyRef, key_use: KeyUse) -> Result<SecretBytes, TakeError> {
        KeySource::take_at(self.pool, key_ref, key_use)
    }
}

/// Unconsumed bytes of block 0 in this side's region.
fn bootstrap_left(pool: &PersistedPool) -> u64 {
    let p = pool.pool();
    p.available_in_block(BlockId(0), Some(p.role()))
}

pub struct TunnelTask {
    pub tunnel: Tunnel,
    pub engine: Box<RekeyEngine>,
    /// This tunnel's SAs found in the kernel at start.
    pub owned: Vec<OwnedSa>,
    pub xfrm: Arc<XfrmHandle>,
    pub pool: Arc<Mutex<PersistedPool>>,
    /// Pool bytes of this side's region that SA keys must leave alone.
    pub reserve: u64,
    pub peer: PeerHandle,
    /// `Some(session)` while the pool is agreed for that session.
    pub ready: watch::Receiver<Option<u64>>,
    pub inbound: mpsc::Receiver<TunnelInbound>,
    pub events: mpsc::Receiver<TunnelEvent>,
    pub reporter: TunnelReporter,
    pub peer_reporter: PeerReporter,
    pub cancel: CancellationToken,
}

/// What the task keeps between inputs besides the engine.
struct Driver {
    wake: Option<Instant>,
    rng: Option<ChaCha20Rng>,
    engine: Option<Box<RekeyEngine>>,
    /// What most recently could have started an exchange (for the board).
    cause: RekeyCause,
    shown: Option<TunnelState>,
    /// Both directions have had an SA at some point (before that the
    /// tunnel is starting, not failed).
    ever_up: bool,
    /// Start and duration of the latest kernel requests, so a completed
    /// rekey can say how much of its latency was spent waiting for XFRM.
    kernel_times: VecDeque<(std::time::Instant, Duration)>,
}

impl Driver {
    fn record_kernel_time(&mut self, started: std::time::Instant) {
        if self.kernel_times.len() == KERNEL_TIMES_KEPT {
            self.kernel_times.pop_front();
        }
        self.kernel_times.push_back((started, started.elapsed()));
    }

    /// Time spent in kernel requests that started in the last `window`.
    fn kernel_time_within(&self, window: Duration) -> Duration {
        let Some(since) = std::time::Instant::now().checked_sub(window) else {
            return Duration::ZERO;
        };
        self.kernel_times
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, took)| *took)
            .sum()
    }
}

/// The parts of a tunnel task its steps borrow.
struct Ctx {
    tunnel: Tunnel,
    xfrm: Arc<XfrmHandle>,
    pool: Arc<Mutex<PersistedPool>>,
    reserve: u64,
    peer: PeerHandle,
    reporter: TunnelReporter,
    peer_reporter: PeerReporter,
}

impl TunnelTask {
    pub async fn run(self) -> Result<(), AgentError> {
        let TunnelTask {
            tunnel,
            engine,
            owned,
            xfrm,
            pool,
            reserve,
            peer,
            mut ready,
            mut inbound,
            mut events,
            reporter,
            peer_reporter,
            cancel,
        } = self;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| AgentError::Task(format!("OS random generator: {e}")))?;
        let mut d = Driver {
            wake: None,
            rng: Some(ChaCha20Rng::from_seed(seed)),
            engine: Some(engine),
            cause: RekeyCause::Startup,
            shown: None,
            ever_up: false,
            kernel_times: VecDeque::with_capacity(KERNEL_TIMES_KEPT),
        };
        let cx = Ctx {
            tunnel,
            xfrm,
            pool,
            reserve,
            peer,
            reporter,
            peer_reporter,
        };
        cx.feed(&mut d, RekeyInput::Start { owned }).await?;
        let mut session = *ready.borrow_and_update();
        if session.is_some() {
            cx.feed(&mut d, RekeyInput::PeerConnected).await?;
        }
        let mut usage = tokio::time::interval(USAGE_REFRESH);
        usage.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = d.wake;
            let timer = async move {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = ready.changed() => {
                    if changed.is_err() { break; }
                    let now = *ready.borrow_and_update();
                    if now != session {
                        if session.is_some() {
                            cx.feed(&mut d, RekeyInput::PeerDisconnected).await?;
                        }
                        session = now;
                        if session.is_some() {
                            cx.feed(&mut d, RekeyInput::PeerConnected).await?;
                        }
                    }
                }
                Some(m) = inbound.recv() => {
                    // Messages of an older session, or from before the pools
                    // agreed, could name key the agreement discarded.
                    if Some(m.session) == session {
                        d.cause = RekeyCause::Peer;
                        cx.feed(&mut d, RekeyInput::PeerMessage(m.payload)).await?;
                    }
                }
                Some(e) = events.recv() => {
                    let input = match e {
                        TunnelEvent::Input(input) => input,
                        TunnelEvent::Resync => {
                            for input in cx.resync(&d).await {
                                cx.feed(&mut d, input).await?;
                            }
                            continue;
                        }
                    };
                    match &input {
                        RekeyInput::SoftExpire { .. } => d.cause = RekeyCause::SoftExpire,
                        RekeyInput::Acquire => d.cause = RekeyCause::Acquire,
                        RekeyInput::HardExpire { dir, spi } => {
                            tracing::warn!(tunnel = %cx.tunnel.name, ?dir, spi = format_args!("{spi:#010x}"),
                                "SA reached its hard lifetime; the kernel deleted it");
                        }
                        _ => {}
                    }
                    cx.feed(&mut d, input).await?;
                }
                () = timer => {
                    d.wake = None;
                    d.cause = RekeyCause::Timer;
                    cx.feed(&mut d, RekeyInput::Tick).await?;
                }
                _ = usage.tick() => cx.refresh_usage(&d).await,
            }
        }
        cx.reporter.set_state(TunnelState::Stopped);
        Ok(())
    }
}

impl Ctx {
    /// Runs one input and everything it causes, in order.
    async fn feed(&self, d: &mut Driver, input: RekeyInput) -> Result<(), AgentError> {
        let mut queue: VecDeque<RekeyAction> = self.step(d, input).await?.into();
        while let Some(action) = queue.pop_front() {
            match action {
                RekeyAction::Kernel { op, request } => {
                    let started = std::time::Instant::now();
                    let outcome = self.kernel(request).await;
                    d.record_kernel_time(started);
                    let more = self.step(d, RekeyInput::Kernel { op, outcome }).await?;
                    queue.extend(more);
                }
                RekeyAction::Send(payload) => self.send(payload).await,
                RekeyAction::WakeAt(t) => d.wake = Some(Instant::from_std(t)),
                RekeyAction::Alarm { alarm, raised } => self.alarm(d, alarm, raised),
                RekeyAction::Notice(n) => self.notice(d, n),
            }
        }
        self.show(d);
        Ok(())
    }

    /// One call into the engine, on a blocking thread (pool takes fsync).
    async fn step(
        &self,
        d: &mut Driver,
        input: RekeyInput,
    ) -> Result<Vec<RekeyAction>, AgentError> {
        let mut engine = d.engine.take().expect("engine present between steps");
        let mut rng = d.rng.take().expect("rng present between steps");
        let pool = Arc::clone(&self.pool);
        let reserve = self.reserve;
        let (engine, rng, actions) = tokio::task::spawn_blocking(move || {
            let actions = {
                let mut guard = lock(&pool);
                let mut source = ReservedPool {
                    pool: &mut guard,
                    reserve,
                };
                let mut env = RekeyEnv {
                    pool: &mut source,
                    rng: &mut rng,
                };
                engine.handle(std::time::Instant::now(), input, &mut env)
            };
            (engine, rng, actions)
        })
        .await
        .map_err(|e| AgentError::Task(format!("rekey engine panicked: {e}")))?;
        d.engine = Some(engine);
        d.rng = Some(rng);
        Ok(actions)
    }

    /// Names one of this tunnel's SAs for the XFRM layer.
    fn sa_id(&self, dir: SaDirection, spi: Spi) -> SaId {
        let t = match dir {
            SaDirection::Inbound => self.tunnel.inbound_sa(),
            SaDirection::Outbound => self.tunnel.outbound_sa(),
        };
        SaId::new(t.src, t.dst, spi, t.reqid, t.mark)
    }

    async fn kernel(&self, request: KernelRequest) -> KernelOutcome {
        let t = &self.tunnel;
        let (what, result) = match request {
            KernelRequest::AllocSpi => {
                let s = t.inbound_sa();
                let r = self
                    .xfrm
                    .allocate_spi(s.src, s.dst, s.reqid, s.mode, s.mark)
                    .await;
                ("allocate SPI", r.map(KernelOutcome::SpiAllocated))
            }
            KernelRequest::AddSa {
                dir: SaDirection::Inbound,
                spi,
                key,
                ..
            } => {
                let spec = t.inbound_sa().with_key(spi, key);
                let r = self.xfrm.complete_allocated_sa(&spec).await;
                ("add inbound SA", r.map(|_| KernelOutcome::Done))
            }
            KernelRequest::AddSa {
                dir: SaDirection::Outbound,
                spi,
                key,
                ..
            } => {
                let spec = t.outbound_sa().with_key(spi, key);
                let r = self.xfrm.add_sa(&spec).await;
                ("add outbound SA", r.map(|_| KernelOutcome::Done))
            }
            KernelRequest::DeleteSa { dir, spi } => {
                let r = self.xfrm.delete_sa(&self.sa_id(dir, spi)).await;
                ("delete SA", r.map(|()| KernelOutcome::Done))
            }
        };
        result.unwrap_or_else(|e| {
            let failure = classify(&e);
            if failure != KernelFailure::NotFound {
                tracing::warn!(tunnel = %t.name, error = %e, "{what} failed");
            }
            KernelOutcome::Failed(failure)
        })
    }

    async fn send(&self, payload: Vec<u8>) {
        let msg = ControlMessage::Rekey {
            tunnel: self.tunnel.name.clone(),
            payload,
        };
        if let Err(e) = self
            .peer
            .send(Stream::Control, Bytes::from(msg.encode()))
            .await
        {
            // The engine retransmits; the session watch tells it when the
            // peer is back.
            tracing::debug!(tunnel = %self.tunnel.name, error = %e, "rekey message not sent");
        }
    }

    fn alarm(&self, d: &Driver, alarm: Alarm, raised: bool) {
        let tunnel = &self.tunnel.name;
        match (alarm, raised) {
            (Alarm::PoolExhausted, true) => {
                tracing::warn!(%tunnel, "rekey due but the key pool is exhausted; current SAs stay until their hard lifetime, then traffic is dropped");
                self.peer_reporter.pool_exhausted();
            }
            (Alarm::PoolExhausted, false) => {
                tracing::info!(%tunnel, "key pool refilled; rekeying resumes");
                self.peer_reporter.pool_refilled();
            }
            // Shown through the tunnel state (see `show`).
            (Alarm::TrafficBlocked, true) => {
                tracing::warn!(%tunnel, "a direction of the tunnel has no SA: its traffic is dropped (fail closed)");
            }
            (Alarm::TrafficBlocked, false) => {}
            (other, true) => {
                let what = match other {
                    Alarm::PeerUnresponsive => "the peer does not answer rekey messages",
                    Alarm::KeysRejected => "keys were rejected (pools disagree or keys tampered)",
                    Alarm::ConfigMismatch => {
                        "the peer's tunnel settings contradict ours (initiator or keying)"
                    }
                    _ => "rekey alarm",
                };
                tracing::error!(%tunnel, alarm = ?other, "{what}");
                self.reporter.rekey_failed(d.cause, what);
            }
            (other, false) => tracing::info!(%tunnel, alarm = ?other, "alarm cleared"),
        }
    }

    fn notice(&self, d: &Driver, notice: RekeyNotice) {
        let tunnel = &self.tunnel.name;
        match notice {
            RekeyNotice::Completed {
                id,
                trigger,
                latency,
            } => {
                let status = self.status(d);
                let cause = trigger.map_or(RekeyCause::Peer, cause_of);
                // This side's time awaiting XFRM requests inside the
                // latency window: kernel work, the netlink round trip and
                // any wait for the socket other tunnels share.
                let xfrm = d.kernel_time_within(latency);
                tracing::info!(%tunnel, exchange = %id, ?cause,
                    spi_in = format_args!("{:#010x}", status.inbound_spi.unwrap_or(0)),
                    spi_out = format_args!("{:#010x}", status.outbound_spi.unwrap_or(0)),
                    latency_ms = latency.as_secs_f64() * 1e3,
                    xfrm_ms = xfrm.as_secs_f64() * 1e3,
                    "rekey done: new SAs in both directions, old outbound SA removed");
                self.reporter.sa_installed(
                    id.generation,
                    status.inbound_spi.unwrap_or(0),
                    status.outbound_spi.unwrap_or(0),
                    cause,
                );
                self.reporter.set_last_rekey_latency(latency);
            }
            RekeyNotice::Abandoned {
                id,
                reason,
                wasted_bytes,
            } => {
                tracing::warn!(%tunnel, exchange = %id, ?reason, wasted_bytes,
                    "rekey abandoned; its keys were dropped unused and it is retried with fresh keys");
                self.reporter.add_wasted_key_bytes(wasted_bytes);
                if reason != AbandonReason::Superseded {
                    self.reporter
                        .rekey_failed(d.cause, format!("abandoned: {reason:?}"));
                }
            }
            RekeyNotice::PeerRestarted => {
                tracing::info!(%tunnel, "the peer's rekey engine restarted")
            }
            RekeyNotice::MessageRejected { reason } => {
                tracing::warn!(%tunnel, %reason, "rekey message from the peer dropped")
            }
        }
    }

    fn status(&self, d: &Driver) -> TunnelStatus {
        d.engine
            .as_ref()
            .expect("engine present between steps")
            .status(std::time::Instant::now())
    }

    /// Copies the engine's state to the board when it changed.
    fn show(&self, d: &mut Driver) {
        let st = self.status(d);
        let both = st.inbound_spi.is_some() && st.outbound_spi.is_some();
        d.ever_up |= both;
        let state = match st.state {
            EngineState::NotStarted => TunnelState::Starting,
            _ if !both && !d.ever_up => TunnelState::Starting,
            _ if !both => TunnelState::DownFailedClosed,
            EngineState::Rekeying { .. } => TunnelState::Rekeying,
            EngineState::WaitingForKeys => TunnelState::WaitingForKeys,
            _ => TunnelState::Up,
        };
        if d.shown != Some(state) {
            d.shown = Some(state);
            self.reporter.set_state(state);
        }
        self.reporter.set_next_rekey(
            st.next_rekey_ms
                .map(|ms| SystemTime::now() + Duration::from_millis(ms)),
        );
    }

    /// After lost XFRM events: SAs the engine holds but the kernel no longer
    /// has are reported as hard-expired.
    async fn resync(&self, d: &Driver) -> Vec<RekeyInput> {
        let listed = match self.xfrm.list_owned_sas().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(tunnel = %self.tunnel.name, error = %e, "cannot list SAs to resynchronise");
                return Vec::new();
            }
        };
        let status = self.status(d);
        status
            .sas
            .iter()
            .filter(|s| {
                !listed.iter().any(|i| {
                    i.id.reqid() == self.tunnel.reqid
                        && i.id.spi() == s.spi
                        && direction_of(&self.tunnel, i.id.dst()) == s.dir
                })
            })
            .map(|s| RekeyInput::HardExpire {
                dir: s.dir,
                spi: s.spi,
            })
            .collect()
    }

    /// Copies the current SAs' kernel counters to the board.
    async fn refresh_usage(&self, d: &Driver) {
        let st = self.status(d);
        let mut usage = SaUsage::default();
        for (dir, spi) in [
            (SaDirection::Inbound, st.inbound_spi),
            (SaDirection::Outbound, st.outbound_spi),
        ] {
            let Some(spi) = spi else { continue };
            let Ok(info) = self.xfrm.get_sa(&self.sa_id(dir, spi)).await else {
                continue;
            };
            let c = info.counters;
            match dir {
                SaDirection::Inbound => (usage.bytes_in, usage.packets_in) = (c.bytes, c.packets),
                SaDirection::Outbound => {
                    (usage.bytes_out, usage.packets_out) = (c.bytes, c.packets)
                }
            }
        }
        self.reporter.set_sa_usage(usage);
    }
}

fn cause_of(t: Trigger) -> RekeyCause {
    match t {
        Trigger::Start => RekeyCause::Startup,
        Trigger::Interval => RekeyCause::Timer,
        Trigger::SoftExpire | Trigger::HardExpire => RekeyCause::SoftExpire,
        Trigger::Acquire => RekeyCause::Acquire,
        Trigger::PeerRequest => RekeyCause::Peer,
    }
}

/// The engine's view of a kernel error (see the table in [`crate::rekey`]).
fn classify(e: &XfrmError) -> KernelFailure {
    use nix::errno::Errno;
    match e {
        XfrmError::SpiInUse { .. } => KernelFailure::Exists,
        e => match e.errno() {
            Some(Errno::EEXIST) => KernelFailure::Exists,
            Some(Errno::ENOENT | Errno::ESRCH) => KernelFailure::NotFound,
            Some(errno) => KernelFailure::Other {
                errno: errno as i32,
            },
            None => KernelFailure::Other { errno: 0 },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{BlockId, PoolKey, Role};
    use crate::secret::Secret;
    use crate::secret::file::TestDir;

    fn pool(role: Role, block: &SecretBytes) -> (TestDir, PersistedPool) {
        let dir = TestDir::new("reserve");
        let key = PoolKey::from_secret(Secret::<32>::from_slice(&[3; 32]).unwrap());
        let mut p = PersistedPool::open(dir.path(), "peer", role, &key).unwrap();
        p.append(BlockId(1), block.duplicate()).unwrap();
        (dir, p)
    }

    #[test]
    fn reserve_refuses_takes_that_would_starve_the_link_but_never_acceptance() {
        let block = SecretBytes::random(400).unwrap();
        let (_d1, mut tx) = pool(Role::Transmitter, &block);
        let (_d2, mut rx) = pool(Role::Receiver, &block);
        // The transmitter's half is 200 bytes; with 100 reserved, one
        // 72-byte take fits and the second does not.
        let mut source = ReservedPool {
            pool: &mut tx,
            reserve: 100,
        };
        let (first, key) = source.take(KeyUse::SaKey, 72).unwrap();
        match source.take(KeyUse::SaKey, 72) {
            Err(TakeError::Exhausted { available }) => assert_eq!(available, 28),
            other => panic!("expected exhaustion, got {:?}", other.map(|(r, _)| r)),
        }
        // The peer must accept what was taken even if its own region is
        // below the reserve: the take already happened on the other side.
        let mut peer = ReservedPool {
            pool: &mut rx,
            reserve: 10_000,
        };
        let accepted = peer.take_at(&first, KeyUse::SaKey).unwrap();
        assert!(accepted.ct_eq(&key));
        // The reserve is still there for the link's own takes.
        assert_eq!(tx.pool().available_for(Role::Transmitter), 128);
    }

    #[test]
    fn kernel_errors_map_onto_the_engine_outcomes() {
        use nix::errno::Errno;
        let k = |errno| XfrmError::Kernel {
            operation: "test",
            errno,
            message: None,
        };
        assert_eq!(classify(&k(Errno::EEXIST)), KernelFailure::Exists);
        assert_eq!(classify(&k(Errno::ENOENT)), KernelFailure::NotFound);
        assert_eq!(classify(&k(Errno::ESRCH)), KernelFailure::NotFound);
        assert_eq!(
            classify(&k(Errno::ENOMEM)),
            KernelFailure::Other {
                errno: Errno::ENOMEM as i32
            }
        );
    }

    fn bootstrap_pool(dir: &TestDir, role: Role) -> PersistedPool {
        let key = PoolKey::from_secret(Secret::<32>::from_slice(&[7; 32]).unwrap());
        PersistedPool::open(dir.path(), "peer", role, &key).unwrap()
    }

    /// SA keys never come from block 0 (the bootstrap secret's tail): none
    /// before a QKD block exists, and afterwards only from QKD blocks,
    /// whichever side initiates.
    #[test]
    fn sa_keys_never_come_from_the_bootstrap_block() {
        for role in [Role::Transmitter, Role::Receiver] {
            let dir = TestDir::new("reserved");
            let mut p = bootstrap_pool(&dir, role);
            p.append(BlockId(0), SecretBytes::from_slice(&[0xb0; 480]))
                .unwrap();
            let mut source = ReservedPool {
                pool: &mut p,
                reserve: 0,
            };
            assert!(matches!(
                source.take(KeyUse::SaKey, 36),
                Err(TakeError::Exhausted { .. })
            ));
            p.append(BlockId(1), SecretBytes::from_slice(&[0x51; 1000]))
                .unwrap();
            let mut source = ReservedPool {
                pool: &mut p,
                reserve: 0,
            };
            for _ in 0..5 {
                let (key_ref, key) = source.take(KeyUse::SaKey, 36).unwrap();
                assert!(key_ref.segments().iter().all(|s| s.block == BlockId(1)));
                assert!(key.expose().iter().all(|&b| b == 0x51), "{role:?}");
            }
            assert_eq!(bootstrap_left(&p), 0);
        }
    }
}
