//! The responder's side of an exchange: accept the initiator's keys,
//! reserve and install the new inbound SA, install the new outbound SA
//! toward the initiator's (already installed) inbound SA, delete the older
//! outbound SAs, answer Ack (retransmitting until Done). Also the
//! responder's only trigger: a `Request` sent when its own kernel reports a
//! soft expiry, hard expiry or ACQUIRE, or after a restart.
//!
//! Idempotence: the latest Start is remembered with its outcome, so a
//! duplicate gets the same answer and never a second `take_at` (which the
//! pool would refuse, turning a finished exchange into a failed one).

use std::time::Instant;

use super::engine::{PendingOp, RekeyEngine, RekeyEnv, Retransmit};
use super::events::{
    AbandonReason, Alarm, KernelFailure, KernelOutcome, KernelRequest, OpId, RekeyNotice, Trigger,
};
use super::keying::{self, KeyingError, KeyingMode, SaKeyPair, TakeError, WrapContext};
use super::messages::{KeyMaterial, MessageBody, NackReason, RekeyMessage, RequestReason};
use super::{ExchangeId, SaDirection, Spi};

/// The exchange the responder is running.
pub(super) struct Incoming {
    pub id: ExchangeId,
    /// Dropped (zeroised) once both SAs are installed.
    keys: Option<SaKeyPair>,
    pool_bytes: u64,
    peer_spi: Spi,
    my_spi: Option<Spi>,
    pub step: InStep,
    retransmit: Retransmit,
    started_at: Instant,
    waiting_since: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum InStep {
    AllocSpi(OpId),
    InstallInbound(OpId),
    InstallOutbound { op: OpId, retried: bool },
    ClearOutboundSpi(OpId),
    RetireOld { new_seq: u64 },
    AwaitDone,
}

impl InStep {
    pub fn name(&self) -> &'static str {
        match self {
            InStep::AllocSpi(_) => "allocating inbound SPI",
            InStep::InstallInbound(_) => "installing inbound SA",
            InStep::InstallOutbound { .. } | InStep::ClearOutboundSpi(_) => {
                "installing outbound SA"
            }
            InStep::RetireOld { .. } => "deleting old outbound SA",
            InStep::AwaitDone => "waiting for peer",
        }
    }
}

/// The latest Start accepted, and how it ended.
pub(super) struct IncomingRecord {
    id: ExchangeId,
    start: MessageBody,
    outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    InProgress,
    Acked { responder_spi: Spi },
    Refused(NackReason),
}

fn request_reason(t: Trigger) -> RequestReason {
    match t {
        Trigger::SoftExpire => RequestReason::SoftExpire,
        Trigger::HardExpire => RequestReason::HardExpire,
        Trigger::Acquire => RequestReason::Acquire,
        Trigger::Start | Trigger::Interval | Trigger::PeerRequest => RequestReason::Restarted,
    }
}

impl RekeyEngine {
    pub(super) fn responder_deadline(&self) -> Option<Instant> {
        if !self.connected {
            return None;
        }
        let mut times = Vec::new();
        match &self.incoming {
            Some(x) if x.step == InStep::AwaitDone => {
                times.push(x.retransmit.next_at);
                if !self.alarms.contains(&Alarm::PeerUnresponsive) {
                    times.push(x.waiting_since.map(|t| t + self.cfg.peer_timeout));
                }
            }
            Some(_) => {}
            None if self.want.is_some() => times.push(self.request.next_at),
            None => {}
        }
        times.into_iter().flatten().min()
    }

    pub(super) fn responder_connected(&mut self) {
        if let Some(mut x) = self.incoming.take() {
            if x.step == InStep::AwaitDone {
                self.send_ack(&x);
                x.retransmit.arm(self.now, self.cfg.retransmit);
            }
            self.incoming = Some(x);
        }
        if self.want.is_some() {
            self.request.start_now(self.now);
        }
    }

    fn send_ack(&mut self, x: &Incoming) {
        let responder_spi = x.my_spi.expect("installed before Ack");
        self.send(MessageBody::Ack {
            id: x.id,
            responder_spi,
        });
    }

    pub(super) fn responder_poll(&mut self) {
        if let Some(mut x) = self.incoming.take() {
            match x.step {
                InStep::RetireOld { new_seq } if !self.sas.older_outbound_pending(new_seq) => {
                    self.send_ack(&x);
                    self.record_outcome(
                        x.id,
                        Outcome::Acked {
                            responder_spi: x.my_spi.expect("installed"),
                        },
                    );
                    x.step = InStep::AwaitDone;
                    x.retransmit.arm(self.now, self.cfg.retransmit);
                    x.waiting_since = Some(self.now);
                }
                InStep::AwaitDone if self.connected => {
                    if x.retransmit.due(self.now) {
                        self.send_ack(&x);
                        self.counters.retransmissions += 1;
                        x.retransmit.back_off(self.now, self.cfg.retransmit_max);
                    }
                    if x.waiting_since
                        .is_some_and(|t| t + self.cfg.peer_timeout <= self.now)
                    {
                        self.set_alarm(Alarm::PeerUnresponsive, true);
                    }
                }
                _ => {}
            }
            self.incoming = Some(x);
        } else if let Some((trigger, _)) = self.want
            && self.connected
            && self.request.due(self.now)
        {
            let about = self.sas.newest(SaDirection::Outbound).and_then(|r| r.id);
            self.send(MessageBody::Request {
                reason: request_reason(trigger),
                about,
            });
            if self
                .request
                .fired(self.now, self.cfg.retransmit, self.cfg.retransmit_max)
            {
                self.counters.retransmissions += 1;
            }
        }
    }

    pub(super) fn responder_message(
        &mut self,
        msg: RekeyMessage,
        peer_restarted: bool,
        env: &mut RekeyEnv<'_>,
    ) {
        if peer_restarted && let Some(x) = self.incoming.take() {
            // The initiator that ran this exchange is gone.
            self.abandon_incoming(x, AbandonReason::Superseded, false);
        }
        // Any message naming our new exchange as what the initiator sends on
        // confirms it as well as a Done would (Done may be lost); check it
        // before a newer Start supersedes the exchange.
        if let Some(out) = msg.sender_out {
            self.complete_incoming(out);
        }
        match msg.body {
            MessageBody::Start {
                id,
                initiator_spi,
                ref keys,
            } => self.on_start_msg(id, initiator_spi, keys, &msg.body, env),
            MessageBody::Done { id } => self.complete_incoming(id),
            MessageBody::Nack {
                id,
                reason,
                released,
            } => {
                if released
                    && reason != NackReason::Retry
                    && let Some(spi) = self.sas.find(SaDirection::Inbound, id).map(|r| r.spi)
                {
                    self.delete_now(SaDirection::Inbound, spi);
                }
                if let Some(x) = self.incoming.take() {
                    if x.id == id && x.step == InStep::AwaitDone {
                        self.abandon_incoming(x, AbandonReason::PeerKernelFailed, true);
                    } else {
                        self.incoming = Some(x);
                    }
                }
            }
            MessageBody::Request { .. } => {
                self.set_alarm(Alarm::ConfigMismatch, true);
                self.last_error =
                    Some("the peer also waits for rekeys; exactly one side must initiate".into());
            }
            MessageBody::Ack { .. } => self.reject("Ack sent to the responder".to_owned()),
        }
    }

    fn on_start_msg(
        &mut self,
        id: ExchangeId,
        initiator_spi: Spi,
        keys: &KeyMaterial,
        body: &MessageBody,
        env: &mut RekeyEnv<'_>,
    ) {
        if let Some(rec) = &self.last_incoming
            && rec.id.epoch == id.epoch
            && id.generation <= rec.id.generation
        {
            if id.generation < rec.id.generation {
                return self.reject(format!("stale Start {id}"));
            }
            if rec.start != *body {
                return self.reject(format!("Start {id} repeated with different content"));
            }
            match rec.outcome {
                Outcome::InProgress => {}
                Outcome::Acked { responder_spi } => {
                    self.send(MessageBody::Ack { id, responder_spi })
                }
                Outcome::Refused(reason) => {
                    let released = self.released(id);
                    self.send(MessageBody::Nack {
                        id,
                        reason,
                        released,
                    })
                }
            }
            return;
        }
        if let Some(x) = self.incoming.take() {
            // The initiator moved on (its Nack or Done was lost).
            self.abandon_incoming(x, AbandonReason::Superseded, false);
        }
        let ctx = WrapContext {
            tunnel: &self.cfg.tunnel,
            id,
            initiator_spi,
        };
        let pair = match keying::accept(self.cfg.keying, keys, &ctx, &mut *env.pool) {
            Ok(pair) => pair,
            Err(e) => return self.refuse_start(id, body, e),
        };
        self.set_alarm(Alarm::KeysRejected, false);
        self.set_alarm(Alarm::ConfigMismatch, false);
        // The initiator is rekeying: our request is answered.
        self.want = None;
        self.request.stop();
        let pool_bytes = taken_bytes(self.cfg.keying);
        self.counters.keys_taken_bytes += pool_bytes;
        self.last_incoming = Some(IncomingRecord {
            id,
            start: body.clone(),
            outcome: Outcome::InProgress,
        });
        let op = self.kernel(PendingOp::AllocSpi, KernelRequest::AllocSpi);
        self.incoming = Some(Incoming {
            id,
            keys: Some(pair),
            pool_bytes,
            peer_spi: initiator_spi,
            my_spi: None,
            step: InStep::AllocSpi(op),
            retransmit: Retransmit::default(),
            started_at: self.now,
            waiting_since: None,
        });
    }

    fn refuse_start(&mut self, id: ExchangeId, body: &MessageBody, e: KeyingError) {
        let reason = match &e {
            // The block has not arrived yet, or the store hiccupped: the
            // initiator retransmits and we try again; nothing was consumed.
            KeyingError::Take(TakeError::NotYetHeld | TakeError::Store(_)) => NackReason::Retry,
            KeyingError::ModeMismatch { .. } => {
                self.set_alarm(Alarm::ConfigMismatch, true);
                NackReason::ConfigMismatch
            }
            _ => {
                self.set_alarm(Alarm::KeysRejected, true);
                NackReason::KeysRefused
            }
        };
        if matches!(e, KeyingError::Unwrap) {
            // The wrap key was consumed before the tag failed.
            let wasted = u64::from(keying::WRAP_KEY_LEN);
            self.counters.keys_taken_bytes += wasted;
            self.counters.keys_wasted_bytes += wasted;
        }
        self.last_error = Some(format!("refused the keys of Start {id}: {e}"));
        if reason != NackReason::Retry {
            self.counters.rekeys_failed += 1;
            self.last_incoming = Some(IncomingRecord {
                id,
                start: body.clone(),
                outcome: Outcome::Refused(reason),
            });
        }
        let released = self.released(id);
        self.send(MessageBody::Nack {
            id,
            reason,
            released,
        });
    }

    /// True if we hold, and are adding, no outbound SA that could carry
    /// exchange `id` (SAs of unknown origin might).
    fn released(&self, id: ExchangeId) -> bool {
        self.sas.find(SaDirection::Outbound, id).is_none()
            && !self.sas.has_unknown(SaDirection::Outbound)
            && !self.adding(SaDirection::Outbound, id)
    }

    fn record_outcome(&mut self, id: ExchangeId, outcome: Outcome) {
        if let Some(rec) = self.last_incoming.as_mut().filter(|r| r.id == id) {
            rec.outcome = outcome;
        }
    }

    pub(super) fn responder_kernel(&mut self, op: OpId, outcome: KernelOutcome) -> bool {
        let Some(mut x) = self.incoming.take() else {
            return false;
        };
        let ok = outcome == KernelOutcome::Done;
        match (x.step, outcome) {
            (InStep::AllocSpi(o), KernelOutcome::SpiAllocated(spi)) if o == op => {
                x.my_spi = Some(spi);
                let key = x.keys.as_ref().expect("held").inbound(false).duplicate();
                x.step = InStep::InstallInbound(self.add_sa(SaDirection::Inbound, spi, key, x.id));
            }
            (InStep::AllocSpi(o), _) if o == op => {
                self.fail_incoming(x);
                return true;
            }
            (InStep::InstallInbound(o), _) if o == op => {
                if !ok {
                    self.delete_now(SaDirection::Inbound, x.my_spi.expect("allocated"));
                    self.fail_incoming(x);
                    return true;
                }
                x.step = self.install_outbound(&x, false);
            }
            (InStep::InstallOutbound { op: o, retried }, _) if o == op => {
                if ok {
                    x.keys = None;
                    let seq = self
                        .sas
                        .get(SaDirection::Outbound, x.peer_spi)
                        .expect("recorded on success")
                        .seq;
                    let at = self.now + self.cfg.settle;
                    self.sas.schedule_older(SaDirection::Outbound, seq, at);
                    x.step = InStep::RetireOld { new_seq: seq };
                } else if outcome == KernelOutcome::Failed(KernelFailure::Exists) && !retried {
                    // The initiator allocated this SPI fresh: whatever SA of
                    // ours holds it toward the initiator is dead.
                    let (dir, spi) = (SaDirection::Outbound, x.peer_spi);
                    x.step = InStep::ClearOutboundSpi(self.kernel(
                        PendingOp::DeleteSa { dir, spi },
                        KernelRequest::DeleteSa { dir, spi },
                    ));
                } else {
                    self.fail_incoming(x);
                    return true;
                }
            }
            (InStep::ClearOutboundSpi(o), _) if o == op => {
                x.step = self.install_outbound(&x, true);
            }
            _ => {
                self.incoming = Some(x);
                return false;
            }
        }
        self.incoming = Some(x);
        true
    }

    fn install_outbound(&mut self, x: &Incoming, retried: bool) -> InStep {
        let key = x.keys.as_ref().expect("held").outbound(false).duplicate();
        let op = self.add_sa(SaDirection::Outbound, x.peer_spi, key, x.id);
        InStep::InstallOutbound { op, retried }
    }

    /// A kernel step failed: tell the initiator, which retries with fresh
    /// keys. The new inbound SA (if any) is retired by later exchanges.
    fn fail_incoming(&mut self, x: Incoming) {
        let id = x.id;
        self.record_outcome(id, Outcome::Refused(NackReason::KernelFailed));
        self.abandon_incoming(x, AbandonReason::KernelFailed, false);
        let released = self.released(id);
        self.send(MessageBody::Nack {
            id,
            reason: NackReason::KernelFailed,
            released,
        });
    }

    /// Gives up an exchange. Keys not yet installed in both SAs are wasted;
    /// after the Ack they were used (`acked`), so nothing is counted.
    fn abandon_incoming(&mut self, x: Incoming, reason: AbandonReason, acked: bool) {
        let wasted = if acked || x.step == InStep::AwaitDone {
            0
        } else {
            x.pool_bytes
        };
        self.counters.rekeys_failed += 1;
        self.counters.keys_wasted_bytes += wasted;
        self.notice(RekeyNotice::Abandoned {
            id: x.id,
            reason,
            wasted_bytes: wasted,
        });
    }

    fn complete_incoming(&mut self, id: ExchangeId) {
        let Some(x) = self.incoming.take() else {
            return;
        };
        if x.id != id || x.step != InStep::AwaitDone {
            self.incoming = Some(x);
            return;
        }
        self.counters.rekeys_done += 1;
        self.set_alarm(Alarm::PeerUnresponsive, false);
        self.notice(RekeyNotice::Completed {
            id,
            trigger: None,
            latency: self.now.saturating_duration_since(x.started_at),
        });
        self.recheck_soft_expiry();
    }
}

fn taken_bytes(mode: KeyingMode) -> u64 {
    match mode {
        KeyingMode::Direct => keying::DIRECT_TAKE_LEN.into(),
        KeyingMode::Wrapped => keying::WRAP_KEY_LEN.into(),
    }
}
