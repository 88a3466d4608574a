//! The engine of one tunnel: input dispatch, timers, SA bookkeeping, alarms
//! and everything both roles share. The role-specific exchange steps live
//! in [`super::initiator`] and [`super::responder`].
//!
//! Every call to [`RekeyEngine::handle`] runs the input, then `poll` (which
//! does whatever is due at `now`: deletions, retransmissions, the interval
//! rekey, starting a wanted exchange), then reports the next instant at
//! which something will be due. Deadlines are only reported when acting on
//! them is possible, so the agent's timer never spins.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand_core::Rng;

use super::events::{
    Alarm, KernelFailure, KernelOutcome, KernelRequest, OpId, OwnedSa, RekeyAction, RekeyInput,
    RekeyNotice, Trigger,
};
use super::initiator::Outgoing;
use super::keying::KeySource;
use super::messages::{MessageBody, RekeyMessage};
use super::responder::{Incoming, IncomingRecord};
use super::sa_table::SaTable;
use super::status::RekeyCounters;
use super::{ExchangeId, RekeyConfig, RekeyError, RekeyRole, SaDirection, Spi};

/// Epochs of former peer instances remembered, to drop their late messages.
const RETIRED_EPOCHS: usize = 8;

/// What the engine borrows from the agent for one call.
pub struct RekeyEnv<'a> {
    /// The pool shared with this tunnel's peer.
    pub pool: &'a mut dyn KeySource,
    /// Jitter of the interval timer. Seeded from the OS in the agent, from a
    /// fixed seed in tests.
    pub rng: &'a mut dyn Rng,
}

/// A kernel request awaiting its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PendingOp {
    AllocSpi,
    AddSa {
        dir: SaDirection,
        spi: Spi,
        id: ExchangeId,
    },
    DeleteSa {
        dir: SaDirection,
        spi: Spi,
    },
}

/// Retransmission schedule of one unanswered message.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Retransmit {
    pub next_at: Option<Instant>,
    interval: Duration,
    sent: bool,
}

impl Retransmit {
    pub fn arm(&mut self, now: Instant, first: Duration) {
        self.interval = first;
        self.next_at = Some(now + first);
    }

    pub fn due(&self, now: Instant) -> bool {
        self.next_at.is_some_and(|t| t <= now)
    }

    /// After a retransmission: double the interval up to `max`.
    pub fn back_off(&mut self, now: Instant, max: Duration) {
        self.interval = (self.interval * 2).min(max);
        self.next_at = Some(now + self.interval);
    }

    pub fn stop(&mut self) {
        self.next_at = None;
    }

    /// Schedules a first transmission now.
    pub fn start_now(&mut self, now: Instant) {
        self.sent = false;
        self.next_at = Some(now);
    }

    /// Call after sending a due message: schedules the next transmission
    /// (`first`, then doubling up to `max`) and says whether this one was a
    /// retransmission.
    pub fn fired(&mut self, now: Instant, first: Duration, max: Duration) -> bool {
        let again = self.sent;
        self.interval = if again {
            (self.interval * 2).min(max)
        } else {
            first
        };
        self.sent = true;
        self.next_at = Some(now + self.interval);
        again
    }
}

/// The rekey engine of one tunnel (see the module docs of [`super`]).
pub struct RekeyEngine {
    pub(super) cfg: RekeyConfig,
    /// This instance's random epoch (names the exchanges it initiates).
    pub(super) epoch: u64,
    pub(super) now: Instant,
    pub(super) started: bool,
    pub(super) connected: bool,
    pub(super) peer_epoch: Option<u64>,
    retired_peer_epochs: VecDeque<u64>,
    pub(super) sas: SaTable,
    pub(super) ops: BTreeMap<OpId, PendingOp>,
    next_op: u64,
    /// A rekey is wanted (initiator) or must be requested (responder).
    pub(super) want: Option<(Trigger, Instant)>,
    pub(super) retry_at: Option<Instant>,
    fail_streak: u32,
    /// The last attempt found the pool too short.
    pub(super) starved: bool,
    pub(super) next_rekey_at: Option<Instant>,
    pub(super) next_gen: u64,
    pub(super) last_completed: Option<ExchangeId>,
    pub(super) outgoing: Option<Outgoing>,
    pub(super) incoming: Option<Incoming>,
    pub(super) last_incoming: Option<IncomingRecord>,
    pub(super) request: Retransmit,
    pub(super) counters: RekeyCounters,
    pub(super) alarms: BTreeSet<Alarm>,
    pub(super) last_error: Option<String>,
    announced_wake: Option<Instant>,
    out: Vec<RekeyAction>,
}

impl std::fmt::Debug for RekeyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RekeyEngine")
            .field("tunnel", &self.cfg.tunnel)
            .field("role", &self.cfg.role)
            .field("epoch", &format_args!("{:016x}", self.epoch))
            .field("sas", &self.sas.len())
            .finish_non_exhaustive()
    }
}

impl RekeyEngine {
    /// A new engine; feed [`RekeyInput::Start`] first. `rng` draws the
    /// epoch, which must differ across restarts: seed it from the OS.
    pub fn new(cfg: RekeyConfig, now: Instant, rng: &mut dyn Rng) -> Result<Self, RekeyError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            epoch: rng.next_u64(),
            now,
            started: false,
            connected: false,
            peer_epoch: None,
            retired_peer_epochs: VecDeque::new(),
            sas: SaTable::default(),
            ops: BTreeMap::new(),
            next_op: 1,
            want: None,
            retry_at: None,
            fail_streak: 0,
            starved: false,
            next_rekey_at: None,
            next_gen: 1,
            last_completed: None,
            outgoing: None,
            incoming: None,
            last_incoming: None,
            request: Retransmit::default(),
            counters: RekeyCounters::default(),
            alarms: BTreeSet::new(),
            last_error: None,
            announced_wake: None,
            out: Vec::new(),
        })
    }

    pub fn config(&self) -> &RekeyConfig {
        &self.cfg
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn counters(&self) -> &RekeyCounters {
        &self.counters
    }

    pub fn alarms(&self) -> impl Iterator<Item = Alarm> + '_ {
        self.alarms.iter().copied()
    }

    /// The next instant something is due, if any (also sent as
    /// [`RekeyAction::WakeAt`] whenever it changes).
    pub fn next_wake(&self) -> Option<Instant> {
        let role = match self.cfg.role {
            RekeyRole::Initiator => self.initiator_deadline(),
            RekeyRole::Responder => self.responder_deadline(),
        };
        [self.sas.next_deadline(), role].into_iter().flatten().min()
    }

    /// Runs one input at `now` and returns what to do, in order.
    pub fn handle(
        &mut self,
        now: Instant,
        input: RekeyInput,
        env: &mut RekeyEnv<'_>,
    ) -> Vec<RekeyAction> {
        self.now = self.now.max(now);
        match input {
            RekeyInput::Start { owned } => self.on_start(&owned),
            // The agent's timer has fired: whatever is next must be
            // announced again even if it is the same instant.
            RekeyInput::Tick => self.announced_wake = None,
            RekeyInput::SoftExpire { dir, spi } => self.on_soft_expire(dir, spi),
            RekeyInput::HardExpire { dir, spi } => self.on_hard_expire(dir, spi),
            RekeyInput::Acquire => self.trigger(Trigger::Acquire),
            RekeyInput::PeerConnected => self.on_connected(),
            RekeyInput::PeerDisconnected => self.connected = false,
            RekeyInput::PeerMessage(bytes) => self.on_message(&bytes, env),
            RekeyInput::Kernel { op, outcome } => self.on_kernel(op, outcome),
            RekeyInput::PoolRefilled => {
                if self.starved {
                    self.retry_at = None;
                }
            }
        }
        if self.started {
            self.poll(env);
            let blocked = self.sas.newest(SaDirection::Outbound).is_none()
                || self.sas.newest(SaDirection::Inbound).is_none();
            self.set_alarm(Alarm::TrafficBlocked, blocked);
        }
        let wake = self.next_wake();
        if let Some(at) = wake
            && wake != self.announced_wake
        {
            self.out.push(RekeyAction::WakeAt(at));
        }
        self.announced_wake = wake;
        std::mem::take(&mut self.out)
    }

    fn on_start(&mut self, owned: &[OwnedSa]) {
        if self.started {
            return;
        }
        self.started = true;
        for sa in owned {
            self.sas.restore_found(sa.dir, sa.spi);
        }
        // Whatever was found is of unknown age and origin: replace it now.
        self.trigger(Trigger::Start);
    }

    fn on_connected(&mut self) {
        self.connected = true;
        match self.cfg.role {
            RekeyRole::Initiator => self.initiator_connected(),
            RekeyRole::Responder => self.responder_connected(),
        }
    }

    /// Something asks for a rekey.
    pub(super) fn trigger(&mut self, trigger: Trigger) {
        if !self.started || self.want.is_some() {
            return;
        }
        match self.cfg.role {
            RekeyRole::Initiator if self.outgoing.is_none() => {
                self.want = Some((trigger, self.now));
            }
            RekeyRole::Responder if self.incoming.is_none() => {
                self.want = Some((trigger, self.now));
                self.request.start_now(self.now);
            }
            // An exchange is under way: it replaces the SAs anyway, and its
            // end re-checks them for soft expiry.
            _ => {}
        }
    }

    fn on_soft_expire(&mut self, dir: SaDirection, spi: Spi) {
        let newest = self.sas.newest(dir).map(|r| r.spi);
        let Some(rec) = self.sas.get_mut(dir, spi) else {
            return;
        };
        rec.soft_expired = true;
        if newest == Some(spi) {
            self.trigger(Trigger::SoftExpire);
        }
    }

    fn on_hard_expire(&mut self, dir: SaDirection, spi: Spi) {
        let newest = self.sas.newest(dir).map(|r| r.spi);
        if self.sas.remove(dir, spi).is_some() && newest == Some(spi) {
            self.trigger(Trigger::HardExpire);
        }
    }

    /// After a finished exchange: rekey again at once if the new SAs are
    /// already soft-expired (tiny lifetimes).
    pub(super) fn recheck_soft_expiry(&mut self) {
        let dying = [SaDirection::Inbound, SaDirection::Outbound]
            .into_iter()
            .any(|d| self.sas.newest(d).is_some_and(|r| r.soft_expired));
        if dying {
            self.trigger(Trigger::SoftExpire);
        }
    }

    fn on_kernel(&mut self, op: OpId, outcome: KernelOutcome) {
        let Some(pending) = self.ops.remove(&op) else {
            return;
        };
        if let KernelOutcome::Failed(f) = outcome {
            let gone = matches!(
                (pending, f),
                (PendingOp::DeleteSa { .. }, KernelFailure::NotFound)
            );
            if !gone {
                self.counters.kernel_errors += 1;
                self.last_error = Some(format!("kernel request {pending:?} failed: {f:?}"));
            }
        }
        match (pending, outcome) {
            (PendingOp::AddSa { dir, spi, id }, KernelOutcome::Done) => {
                self.sas.insert(dir, spi, Some(id), Some(self.now));
            }
            (
                PendingOp::DeleteSa { dir, spi },
                KernelOutcome::Done | KernelOutcome::Failed(KernelFailure::NotFound),
            ) => {
                self.sas.remove(dir, spi);
            }
            (PendingOp::DeleteSa { dir, spi }, _) => {
                let retry = self.now + self.cfg.retry;
                self.sas.deletion_failed(dir, spi, retry);
            }
            _ => {}
        }
        let used = match self.cfg.role {
            RekeyRole::Initiator => self.initiator_kernel(op, outcome),
            RekeyRole::Responder => self.responder_kernel(op, outcome),
        };
        if let (false, PendingOp::AllocSpi, KernelOutcome::SpiAllocated(spi)) =
            (used, pending, outcome)
        {
            // The exchange that asked is gone: free its larval SA.
            self.delete_now(SaDirection::Inbound, spi);
        }
    }

    fn on_message(&mut self, bytes: &[u8], env: &mut RekeyEnv<'_>) {
        if !self.started {
            // Not ready: the peer retransmits.
            return;
        }
        let msg = match RekeyMessage::decode(bytes) {
            Ok(m) => m,
            Err(e) => return self.reject(format!("undecodable rekey message: {e}")),
        };
        if self.retired_peer_epochs.contains(&msg.sender_epoch) {
            return self.reject(format!(
                "{} from a previous instance of the peer",
                msg.body.name()
            ));
        }
        let restarted = match self.peer_epoch.replace(msg.sender_epoch) {
            Some(old) if old != msg.sender_epoch => {
                if self.retired_peer_epochs.len() == RETIRED_EPOCHS {
                    self.retired_peer_epochs.pop_front();
                }
                self.retired_peer_epochs.push_back(old);
                self.notice(RekeyNotice::PeerRestarted);
                true
            }
            _ => false,
        };
        if let Some(out) = msg.sender_out {
            self.peer_sends_on(out);
        }
        match self.cfg.role {
            RekeyRole::Initiator => self.initiator_message(msg, restarted),
            RekeyRole::Responder => self.responder_message(msg, restarted, env),
        }
    }

    /// The peer's oldest outbound SA is of exchange `id`: every inbound SA
    /// older than ours of `id` carries nothing new once in-flight packets
    /// have arrived, so it goes after the grace period.
    fn peer_sends_on(&mut self, id: ExchangeId) {
        if let Some(seq) = self.sas.find(SaDirection::Inbound, id).map(|r| r.seq) {
            let at = self.now + self.cfg.grace;
            self.sas.schedule_older(SaDirection::Inbound, seq, at);
        }
    }

    fn poll(&mut self, env: &mut RekeyEnv<'_>) {
        for (dir, spi) in self.sas.due(self.now) {
            let op = self.kernel(
                PendingOp::DeleteSa { dir, spi },
                KernelRequest::DeleteSa { dir, spi },
            );
            self.sas.mark_in_flight(dir, spi, op);
        }
        match self.cfg.role {
            RekeyRole::Initiator => self.initiator_poll(env),
            RekeyRole::Responder => self.responder_poll(),
        }
    }

    /// Emits a kernel request and remembers what it was for.
    pub(super) fn kernel(&mut self, pending: PendingOp, request: KernelRequest) -> OpId {
        let op = OpId(self.next_op);
        self.next_op += 1;
        self.ops.insert(op, pending);
        self.out.push(RekeyAction::Kernel { op, request });
        op
    }

    /// Deletes an SA (or larval SA) now. An untracked one is recorded
    /// first, so a failed deletion is retried like any other.
    pub(super) fn delete_now(&mut self, dir: SaDirection, spi: Spi) {
        if self.sas.get(dir, spi).is_none() {
            self.sas.insert(dir, spi, None, None);
        }
        self.sas.schedule_one(dir, spi, self.now);
    }

    /// Whether an AddSa for (dir, id) is with the kernel.
    pub(super) fn adding(&self, dir: SaDirection, id: ExchangeId) -> bool {
        self.ops
            .values()
            .any(|p| matches!(p, PendingOp::AddSa { dir: d, id: i, .. } if *d == dir && *i == id))
    }

    /// Sends a message with the current header; dropped while the peer is
    /// away (whatever needs an answer is resent on reconnection).
    pub(super) fn send(&mut self, body: MessageBody) {
        if !self.connected {
            return;
        }
        let msg = RekeyMessage {
            sender_epoch: self.epoch,
            sender_out: self.sas.oldest_outbound_id(),
            body,
        };
        self.out.push(RekeyAction::Send(msg.encode()));
    }

    pub(super) fn notice(&mut self, notice: RekeyNotice) {
        self.out.push(RekeyAction::Notice(notice));
    }

    pub(super) fn reject(&mut self, reason: String) {
        self.counters.messages_rejected += 1;
        self.notice(RekeyNotice::MessageRejected { reason });
    }

    pub(super) fn set_alarm(&mut self, alarm: Alarm, raised: bool) {
        let changed = if raised {
            self.alarms.insert(alarm)
        } else {
            self.alarms.remove(&alarm)
        };
        if changed {
            self.out.push(RekeyAction::Alarm { alarm, raised });
        }
    }

    /// Records a failed attempt and returns when to try again: `retry`
    /// doubling per consecutive failure up to `retry_max`.
    pub(super) fn back_off(&mut self) -> Instant {
        self.fail_streak = self.fail_streak.saturating_add(1);
        let factor = 1u32 << (self.fail_streak - 1).min(16);
        let delay = self
            .cfg
            .retry
            .saturating_mul(factor)
            .min(self.cfg.retry_max);
        let at = self.now + delay;
        self.retry_at = Some(at);
        at
    }

    pub(super) fn reset_back_off(&mut self) {
        self.fail_streak = 0;
        self.retry_at = None;
    }

    /// The interval less a uniform random part of the jitter.
    pub(super) fn jittered_interval(&mut self, env: &mut RekeyEnv<'_>) -> Duration {
        let jitter = u64::try_from(self.cfg.jitter.as_nanos()).unwrap_or(u64::MAX);
        // Lemire's multiply-shift: uniform enough for timer spread.
        let cut = ((u128::from(env.rng.next_u64()) * u128::from(jitter)) >> 64) as u64;
        self.cfg.interval - Duration::from_nanos(cut)
    }
}
