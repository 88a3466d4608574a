//! The initiator's side of an exchange: take keys, reserve and install the
//! new inbound SA, send Start (retransmitting until answered), install the
//! new outbound SA on Ack, delete the older outbound SAs after the settle
//! pause, send Done. Also the interval timer and the backoff between failed
//! attempts. Owns no state of its own beyond [`Outgoing`]; the engine holds
//! everything else.

use std::time::Instant;

use super::engine::{PendingOp, RekeyEngine, RekeyEnv, Retransmit};
use super::events::{
    AbandonReason, Alarm, KernelFailure, KernelOutcome, KernelRequest, OpId, RekeyNotice, Trigger,
};
use super::keying::{DrawnKeys, KeyingError, TakeError, WrapContext};
use super::messages::{MessageBody, NackReason, RekeyMessage};
use super::{ExchangeId, SaDirection, Spi};

/// The exchange the initiator is running.
pub(super) struct Outgoing {
    pub id: ExchangeId,
    trigger: Trigger,
    triggered_at: Instant,
    keys: DrawnKeys,
    my_spi: Option<Spi>,
    peer_spi: Option<Spi>,
    /// The Start body, kept so retransmissions are identical.
    start: Option<MessageBody>,
    pub step: OutStep,
    retransmit: Retransmit,
    waiting_since: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OutStep {
    AllocSpi(OpId),
    InstallInbound(OpId),
    AwaitAck,
    InstallOutbound {
        op: OpId,
        retried: bool,
    },
    /// EEXIST on the outbound SPI: delete the dead SA holding it, then retry.
    ClearOutboundSpi(OpId),
    /// Waiting for the deletions of older outbound SAs.
    RetireOld {
        new_seq: u64,
    },
}

impl OutStep {
    pub fn name(&self) -> &'static str {
        match self {
            OutStep::AllocSpi(_) => "allocating inbound SPI",
            OutStep::InstallInbound(_) => "installing inbound SA",
            OutStep::AwaitAck => "waiting for peer",
            OutStep::InstallOutbound { .. } | OutStep::ClearOutboundSpi(_) => {
                "installing outbound SA"
            }
            OutStep::RetireOld { .. } => "deleting old outbound SA",
        }
    }
}

impl RekeyEngine {
    pub(super) fn initiator_deadline(&self) -> Option<Instant> {
        let mut times = vec![self.next_rekey_at];
        match &self.outgoing {
            Some(x) if x.step == OutStep::AwaitAck && self.connected => {
                times.push(x.retransmit.next_at);
                if !self.alarms.contains(&Alarm::PeerUnresponsive) {
                    times.push(x.waiting_since.map(|t| t + self.cfg.peer_timeout));
                }
            }
            Some(_) => {}
            None if self.want.is_some() && self.connected => times.push(self.retry_at),
            None => {}
        }
        times.into_iter().flatten().min()
    }

    pub(super) fn initiator_connected(&mut self) {
        if let Some(mut x) = self.outgoing.take() {
            if x.step == OutStep::AwaitAck {
                self.resend_start(&mut x);
            }
            self.outgoing = Some(x);
        }
    }

    fn resend_start(&mut self, x: &mut Outgoing) {
        if let Some(body) = x.start.clone() {
            self.send(body);
            x.retransmit.arm(self.now, self.cfg.retransmit);
        }
    }

    pub(super) fn initiator_poll(&mut self, env: &mut RekeyEnv<'_>) {
        if self.next_rekey_at.is_some_and(|t| t <= self.now) {
            self.next_rekey_at = None;
            self.trigger(Trigger::Interval);
        }
        if let Some(mut x) = self.outgoing.take() {
            if x.step == OutStep::AwaitAck && self.connected {
                if x.retransmit.due(self.now) {
                    if let Some(body) = x.start.clone() {
                        self.send(body);
                        self.counters.retransmissions += 1;
                    }
                    x.retransmit.back_off(self.now, self.cfg.retransmit_max);
                }
                if x.waiting_since
                    .is_some_and(|t| t + self.cfg.peer_timeout <= self.now)
                {
                    self.set_alarm(Alarm::PeerUnresponsive, true);
                }
            }
            match x.step {
                OutStep::RetireOld { new_seq } if !self.sas.older_outbound_pending(new_seq) => {
                    self.finish_outgoing(x, env);
                }
                _ => self.outgoing = Some(x),
            }
        }
        self.maybe_begin(env);
    }

    /// Starts the wanted exchange if nothing stands in the way.
    fn maybe_begin(&mut self, env: &mut RekeyEnv<'_>) {
        let Some((trigger, triggered_at)) = self.want else {
            return;
        };
        if self.outgoing.is_some() || !self.connected || self.retry_at.is_some_and(|t| t > self.now)
        {
            return;
        }
        let keys = match DrawnKeys::draw(self.cfg.keying, &mut *env.pool) {
            Ok(k) => k,
            Err(e) => {
                let exhausted = matches!(e, KeyingError::Take(TakeError::Exhausted { .. }));
                self.starved = exhausted;
                self.set_alarm(Alarm::PoolExhausted, exhausted);
                self.last_error = Some(format!("no keys for a rekey: {e}"));
                self.back_off();
                return;
            }
        };
        self.starved = false;
        self.set_alarm(Alarm::PoolExhausted, false);
        self.counters.keys_taken_bytes += keys.pool_bytes();
        let id = ExchangeId {
            epoch: self.epoch,
            generation: self.next_gen,
        };
        self.next_gen += 1;
        let op = self.kernel(PendingOp::AllocSpi, KernelRequest::AllocSpi);
        self.outgoing = Some(Outgoing {
            id,
            trigger,
            triggered_at,
            keys,
            my_spi: None,
            peer_spi: None,
            start: None,
            step: OutStep::AllocSpi(op),
            retransmit: Retransmit::default(),
            waiting_since: None,
        });
    }

    /// A kernel result; returns whether the exchange was waiting for it.
    pub(super) fn initiator_kernel(&mut self, op: OpId, outcome: KernelOutcome) -> bool {
        let Some(mut x) = self.outgoing.take() else {
            return false;
        };
        let ok = outcome == KernelOutcome::Done;
        match (x.step, outcome) {
            (OutStep::AllocSpi(o), KernelOutcome::SpiAllocated(spi)) if o == op => {
                x.my_spi = Some(spi);
                let key = x.keys.keys().inbound(true).duplicate();
                x.step = OutStep::InstallInbound(self.add_sa(SaDirection::Inbound, spi, key, x.id));
            }
            (OutStep::AllocSpi(o), _) if o == op => {
                self.abandon_outgoing(x, AbandonReason::KernelFailed);
                return true;
            }
            (OutStep::InstallInbound(o), _) if o == op => {
                let spi = x.my_spi.expect("allocated before install");
                if !ok {
                    self.delete_now(SaDirection::Inbound, spi);
                    self.abandon_outgoing(x, AbandonReason::KernelFailed);
                    return true;
                }
                let ctx = WrapContext {
                    tunnel: &self.cfg.tunnel,
                    id: x.id,
                    initiator_spi: spi,
                };
                let body = MessageBody::Start {
                    id: x.id,
                    initiator_spi: spi,
                    keys: x.keys.material(&ctx),
                };
                x.start = Some(body.clone());
                self.send(body);
                x.step = OutStep::AwaitAck;
                x.retransmit.arm(self.now, self.cfg.retransmit);
                x.waiting_since = Some(self.now);
            }
            (OutStep::InstallOutbound { op: o, retried }, _) if o == op => {
                let spi = x.peer_spi.expect("acked before install");
                if ok {
                    let seq = self
                        .sas
                        .get(SaDirection::Outbound, spi)
                        .expect("recorded on success")
                        .seq;
                    let at = self.now + self.cfg.settle;
                    self.sas.schedule_older(SaDirection::Outbound, seq, at);
                    x.step = OutStep::RetireOld { new_seq: seq };
                } else if outcome == KernelOutcome::Failed(KernelFailure::Exists) && !retried {
                    // The responder allocated this SPI fresh, so any SA of
                    // ours toward it under that SPI is dead: remove it.
                    x.step = OutStep::ClearOutboundSpi(self.kernel(
                        PendingOp::DeleteSa {
                            dir: SaDirection::Outbound,
                            spi,
                        },
                        KernelRequest::DeleteSa {
                            dir: SaDirection::Outbound,
                            spi,
                        },
                    ));
                } else {
                    self.send(MessageBody::Nack {
                        id: x.id,
                        reason: NackReason::KernelFailed,
                        released: true,
                    });
                    self.abandon_outgoing(x, AbandonReason::KernelFailed);
                    return true;
                }
            }
            (OutStep::ClearOutboundSpi(o), _) if o == op => {
                let spi = x.peer_spi.expect("acked before install");
                let key = x.keys.keys().outbound(true).duplicate();
                let op = self.add_sa(SaDirection::Outbound, spi, key, x.id);
                x.step = OutStep::InstallOutbound { op, retried: true };
            }
            _ => {
                self.outgoing = Some(x);
                return false;
            }
        }
        self.outgoing = Some(x);
        true
    }

    pub(super) fn add_sa(
        &mut self,
        dir: SaDirection,
        spi: Spi,
        key: crate::secret::SaKey,
        id: ExchangeId,
    ) -> OpId {
        self.kernel(
            PendingOp::AddSa { dir, spi, id },
            KernelRequest::AddSa { dir, spi, key, id },
        )
    }

    pub(super) fn initiator_message(&mut self, msg: RekeyMessage, peer_restarted: bool) {
        match msg.body {
            MessageBody::Ack { id, responder_spi } => self.on_ack(id, responder_spi),
            MessageBody::Nack {
                id,
                reason,
                released,
            } => self.on_nack(id, reason, released),
            MessageBody::Request { about, .. } => {
                if peer_restarted {
                    // The responder lost its state: a pending Start must
                    // reach the new instance now, not at the next backoff.
                    if let Some(mut x) = self.outgoing.take() {
                        if x.step == OutStep::AwaitAck {
                            self.resend_start(&mut x);
                        }
                        self.outgoing = Some(x);
                    }
                }
                let stale = matches!((about, self.last_completed),
                    (Some(a), Some(l)) if a.epoch == l.epoch && a.generation < l.generation);
                if !stale {
                    self.trigger(Trigger::PeerRequest);
                }
            }
            MessageBody::Start { id, .. } => {
                self.set_alarm(Alarm::ConfigMismatch, true);
                self.last_error =
                    Some("the peer also initiates rekeys; exactly one side must".to_owned());
                self.send(MessageBody::Nack {
                    id,
                    reason: NackReason::ConfigMismatch,
                    released: true,
                });
            }
            MessageBody::Done { .. } => self.reject("Done sent to the initiator".to_owned()),
        }
    }

    fn on_ack(&mut self, id: ExchangeId, responder_spi: Spi) {
        if let Some(mut x) = self.outgoing.take() {
            if x.id == id {
                if x.step == OutStep::AwaitAck {
                    self.set_alarm(Alarm::PeerUnresponsive, false);
                    x.peer_spi = Some(responder_spi);
                    x.retransmit.stop();
                    let key = x.keys.keys().outbound(true).duplicate();
                    let op = self.add_sa(SaDirection::Outbound, responder_spi, key, id);
                    x.step = OutStep::InstallOutbound { op, retried: false };
                }
                // Otherwise a duplicate while already installing.
                self.outgoing = Some(x);
                return;
            }
            self.outgoing = Some(x);
        }
        if self.last_completed == Some(id) {
            // Our Done was lost: repeat it.
            self.send(MessageBody::Done { id });
        } else if id.epoch == self.epoch && id.generation < self.next_gen {
            // An exchange we gave up; the responder must stop waiting.
            let released = self.sas.find(SaDirection::Outbound, id).is_none()
                && !self.adding(SaDirection::Outbound, id);
            self.send(MessageBody::Nack {
                id,
                reason: NackReason::KernelFailed,
                released,
            });
        } else {
            self.reject(format!("Ack for unknown exchange {id}"));
        }
    }

    fn on_nack(&mut self, id: ExchangeId, reason: NackReason, released: bool) {
        if released
            && reason != NackReason::Retry
            && let Some(spi) = self.sas.find(SaDirection::Inbound, id).map(|r| r.spi)
        {
            // The responder holds no outbound SA for `id`: nothing will
            // arrive on our inbound SA of that exchange.
            self.delete_now(SaDirection::Inbound, spi);
        }
        let Some(mut x) = self.outgoing.take() else {
            return;
        };
        if x.id != id || x.step != OutStep::AwaitAck {
            self.outgoing = Some(x);
            return;
        }
        let reason = match reason {
            NackReason::Retry => {
                // The responder lacks the key block for now: try again soon,
                // without counting this as an answer for the alarm.
                x.retransmit.arm(self.now, self.cfg.retransmit);
                self.outgoing = Some(x);
                return;
            }
            NackReason::KeysRefused => {
                self.set_alarm(Alarm::KeysRejected, true);
                AbandonReason::PeerRefusedKeys
            }
            NackReason::KernelFailed => AbandonReason::PeerKernelFailed,
            NackReason::ConfigMismatch => {
                self.set_alarm(Alarm::ConfigMismatch, true);
                AbandonReason::ConfigMismatch
            }
        };
        self.set_alarm(Alarm::PeerUnresponsive, false);
        self.abandon_outgoing(x, reason);
    }

    /// Gives the exchange up: its keys are dropped (zeroised) and counted
    /// as wasted, the wanted rekey is retried after a backoff. A new inbound
    /// SA stays until the peer shows it does not use it.
    fn abandon_outgoing(&mut self, x: Outgoing, reason: AbandonReason) {
        let wasted = x.keys.pool_bytes();
        self.counters.rekeys_failed += 1;
        self.counters.keys_wasted_bytes += wasted;
        self.last_error = Some(format!("rekey {} abandoned: {reason:?}", x.id));
        self.notice(RekeyNotice::Abandoned {
            id: x.id,
            reason,
            wasted_bytes: wasted,
        });
        self.back_off();
    }

    fn finish_outgoing(&mut self, x: Outgoing, env: &mut RekeyEnv<'_>) {
        self.send(MessageBody::Done { id: x.id });
        self.counters.rekeys_done += 1;
        self.notice(RekeyNotice::Completed {
            id: x.id,
            trigger: Some(x.trigger),
            latency: self.now.saturating_duration_since(x.triggered_at),
        });
        self.last_completed = Some(x.id);
        self.want = None;
        self.starved = false;
        self.reset_back_off();
        self.set_alarm(Alarm::KeysRejected, false);
        self.set_alarm(Alarm::PeerUnresponsive, false);
        self.set_alarm(Alarm::ConfigMismatch, false);
        let interval = self.jittered_interval(env);
        self.next_rekey_at = Some(self.now + interval);
        drop(x);
        self.recheck_soft_expiry();
    }
}
