//! Bob, the receiver: detects frames, sifts, corrects his key with Cascade,
//! checks Alice's key length against his own estimate, amplifies, and
//! accepts the key only after both tags verified and Alice confirmed.

use std::collections::VecDeque;

use rand::Rng;
use rand_chacha::ChaCha20Rng;

use crate::qkd::amplify::{ToeplitzSeed, bob_amplify};
use crate::qkd::auth::{AUTH_KEY_BYTES_PER_BLOCK, AuthTag, BlockAuthenticator, Role, Transcript};
use crate::qkd::cascade::{CascadeCorrector, CorrectorStep, ParityReply};
use crate::qkd::estimate::{Verdict, finite_key_length, test_basis_check};
use crate::qkd::optics::{Detections, Detector, PulseFrame};
use crate::qkd::sift::{SiftReply, SiftedKey, bob_sift, report};
use crate::qkd::verify::{VerifyConfig, VerifyRequest};
use crate::secret::SecretWords;

use super::alice::{abort_and_tell, aborted};
use super::messages::{LinkMessage, MessageKind};
use super::report::{AbortCause, BlockReport};
use super::{
    AuthKeys, BlockConfig, FinalKey, LinkError, LinkOutput, LinkRng, OneShotAuthKeys,
    cascade_qber_estimate, verify_extra_leak,
};

/// Frames whose detections wait for Alice's sifting answer. Alice keeps one
/// frame in flight; a few more absorb reordering and let a stale frame age
/// out instead of growing without bound.
const MAX_PENDING_FRAMES: usize = 4;

/// The receiver side of one link.
pub struct BobLink {
    cfg: BlockConfig,
    verify: VerifyConfig,
    digest: u64,
    detector: Detector,
    rng: ChaCha20Rng,
    /// Detections per frame with the exact bytes of the report Bob sent.
    frames: VecDeque<(Detections, Vec<u8>)>,
    /// The highest block ID seen: older ones are over.
    last_block: Option<u64>,
    block: Option<Block>,
}

struct Block {
    id: u64,
    report: BlockReport,
    transcript: Transcript,
    parts: Vec<SiftedKey>,
    stage: Stage,
}

enum Stage {
    Quantum,
    Reconcile(Box<CascadeCorrector>),
    AwaitAmplify { key: SecretWords },
    AwaitTagA { key: SecretWords },
    AwaitConfirm { key: SecretWords },
}

impl BobLink {
    pub fn new(cfg: BlockConfig, rng: LinkRng) -> Result<Self, LinkError> {
        cfg.validate()?;
        let verify = VerifyConfig::new(cfg.estimate.eps_cor)
            .map_err(|_| LinkError::Config("eps_cor outside the verifier's range"))?;
        Ok(Self {
            digest: cfg.agreement_digest(),
            detector: Detector::new(&cfg.link, rng.choices, rng.noise)?,
            cfg,
            verify,
            rng: rng.protocol,
            frames: VecDeque::new(),
            last_block: None,
            block: None,
        })
    }

    pub fn config(&self) -> &BlockConfig {
        &self.cfg
    }

    /// The block in progress, if any.
    pub fn current_block(&self) -> Option<u64> {
        self.block.as_ref().map(|b| b.id)
    }

    /// Measures a frame from the fibre and reports what clicked. A frame
    /// covering more slots than the link's `max_frame_slots` is refused
    /// unmeasured: the fibre is unauthenticated, and the frame decoder's
    /// own bound (2^30 slots) is far above what any configured Alice sends.
    pub fn handle_fibre(&mut self, frame: &PulseFrame) -> Result<Vec<LinkOutput>, LinkError> {
        if frame.slot_count() > self.cfg.max_frame_slots {
            return Err(LinkError::FrameTooLarge {
                slots: frame.slot_count(),
                max: self.cfg.max_frame_slots,
            });
        }
        let det = self.detector.detect(frame);
        let msg = LinkMessage::Detections(report(&det)).encode();
        if self.frames.len() == MAX_PENDING_FRAMES {
            self.frames.pop_front();
        }
        self.frames.push_back((det, msg.clone()));
        Ok(vec![LinkOutput::Send(msg)])
    }

    /// Handles one message from Alice.
    pub fn handle(
        &mut self,
        bytes: &[u8],
        keys: &mut dyn AuthKeys,
    ) -> Result<Vec<LinkOutput>, LinkError> {
        let msg = LinkMessage::decode(bytes, self.cfg.cascade.max_key_bits as u64)?;
        let Some(id) = msg.block() else {
            return Err(LinkError::Unexpected(msg.kind()));
        };
        if self.last_block.is_some_and(|last| id < last) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        if self.last_block != Some(id) {
            // Alice moved on: a new block starts with its first sift.
            if let Some(old) = self.block.take() {
                out.push(aborted(old.report, AbortCause::Superseded, false));
            }
            self.last_block = Some(id);
            if !matches!(msg, LinkMessage::Sift { .. }) {
                return Ok(out);
            }
            self.block = Some(Block {
                id,
                report: BlockReport {
                    block_id: id,
                    ..Default::default()
                },
                transcript: Transcript::new(),
                parts: Vec::new(),
                stage: Stage::Quantum,
            });
        }
        // Alice takes her tag key before she sends TagA, so whatever state
        // this side is in — the block aborted at Amplify, or out of step —
        // it consumes the same bytes, unused: otherwise the two sides'
        // authentication keys would part ways (issue 9, finding 10).
        if let LinkMessage::TagA { auth_ref, .. } = &msg {
            let awaiting = self
                .block
                .as_ref()
                .is_some_and(|b| matches!(b.stage, Stage::AwaitTagA { .. }));
            if !awaiting {
                // Dropped at once. Should the bytes not be there, there is
                // nothing to keep in step: the block is over either way.
                let _ = keys.take_at(auth_ref, AUTH_KEY_BYTES_PER_BLOCK);
                if self.block.is_some() {
                    out.extend(self.abort(AbortCause::Protocol, MessageKind::TagA));
                }
                return Ok(out);
            }
        }
        if self.block.is_none() {
            return Ok(out);
        }
        match msg {
            LinkMessage::Sift {
                digest,
                last,
                reply,
                ..
            } => out.extend(self.on_sift(digest, last, reply, bytes)?),
            LinkMessage::ParityReply { reply, .. } => {
                self.record(bytes)?;
                out.extend(self.on_parity_reply(reply)?);
            }
            LinkMessage::Amplify {
                secret_bits, seed, ..
            } => {
                self.record(bytes)?;
                out.extend(self.on_amplify(secret_bits, seed));
            }
            LinkMessage::TagA { auth_ref, tag, .. } => {
                out.extend(self.on_tag_a(&auth_ref, tag, keys)?)
            }
            LinkMessage::Confirm { .. } => out.extend(self.on_confirm()),
            LinkMessage::Abort { cause, .. } => {
                let b = self.block.take().expect("checked above");
                out.push(aborted(b.report, cause, true));
            }
            other => out.extend(self.abort(AbortCause::Protocol, other.kind())),
        }
        Ok(out)
    }

    fn record(&mut self, received: &[u8]) -> Result<(), LinkError> {
        let block = self.block.as_mut().expect("called with a block");
        block.transcript.record_received(Role::Bob, received)?;
        Ok(())
    }

    fn on_sift(
        &mut self,
        digest: u64,
        last: bool,
        reply: SiftReply,
        bytes: &[u8],
    ) -> Result<Vec<LinkOutput>, LinkError> {
        if digest != self.digest {
            return Ok(self.abort(AbortCause::ConfigMismatch, MessageKind::Sift));
        }
        let block = self.block.as_mut().expect("checked by handle");
        let pos = self
            .frames
            .iter()
            .position(|(d, _)| d.first_slot() == reply.first_slot());
        let (Some(pos), Stage::Quantum) = (pos, &block.stage) else {
            return Ok(self.abort(AbortCause::Protocol, MessageKind::Sift));
        };
        let (det, sent) = self.frames.remove(pos).expect("found above");
        // The transcript sees what the wire saw: Bob's report, then the reply.
        block.transcript.record_sent(Role::Bob, &sent)?;
        block.transcript.record_received(Role::Bob, bytes)?;
        let sifted = match bob_sift(&det, &reply) {
            Ok(s) => s,
            Err(_) => return Ok(self.abort(AbortCause::Protocol, MessageKind::Sift)),
        };
        block.report.frames += 1;
        block.report.slots += det.end_slot() - det.first_slot();
        block.report.stats += sifted.stats;
        block.parts.push(sifted);
        if !last {
            return Ok(Vec::new());
        }
        let key = SiftedKey::concat(std::mem::take(&mut block.parts)).key;
        let counts = block.report.stats.block_counts(0, 0);
        if test_basis_check(&self.cfg.estimate, &counts).is_err() {
            let b = self.block.take().expect("present");
            return Ok(vec![aborted(b.report, AbortCause::TestQber, false)]);
        }
        let qber = cascade_qber_estimate(&block.report, self.cfg.estimate.max_qber_test);
        block.report.cascade_qber_estimate = qber;
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let (corrector, request) = match CascadeCorrector::new(key, qber, seed, &self.cfg.cascade) {
            Ok(x) => x,
            Err(_) => return Ok(self.abort(AbortCause::Reconciliation, MessageKind::Sift)),
        };
        let msg = LinkMessage::CascadeStart {
            block: block.id,
            seed,
            request,
        }
        .encode();
        block.transcript.record_sent(Role::Bob, &msg)?;
        block.stage = Stage::Reconcile(Box::new(corrector));
        Ok(vec![LinkOutput::Send(msg)])
    }

    fn on_parity_reply(&mut self, reply: ParityReply) -> Result<Vec<LinkOutput>, LinkError> {
        let block = self.block.as_mut().expect("checked by handle");
        let Stage::Reconcile(corrector) = &mut block.stage else {
            return Ok(self.abort(AbortCause::Protocol, MessageKind::ParityReply));
        };
        let step = match corrector.handle(&reply) {
            Ok(s) => s,
            Err(_) => return Ok(self.abort(AbortCause::Reconciliation, MessageKind::ParityReply)),
        };
        let msg = match step {
            CorrectorStep::Send(request) => LinkMessage::Parities {
                block: block.id,
                request,
            },
            CorrectorStep::Done(outcome) => {
                let verify = VerifyRequest::new(&self.verify, &outcome.key, &mut self.rng)
                    .map_err(|_| LinkError::Config("key too long to verify"))?;
                block.report.key_errors = Some(outcome.corrected_bits);
                block.report.cascade_leaked_bits = outcome.leaked_bits;
                block.report.cascade_rounds = outcome.rounds;
                block.report.verify_bits = self.verify.leak_bits();
                block.stage = Stage::AwaitAmplify { key: outcome.key };
                LinkMessage::Reconciled {
                    block: block.id,
                    key_errors: outcome.corrected_bits,
                    leaked_bits: outcome.leaked_bits,
                    verify,
                }
            }
        }
        .encode();
        block.transcript.record_sent(Role::Bob, &msg)?;
        Ok(vec![LinkOutput::Send(msg)])
    }

    fn on_amplify(&mut self, secret_bits: u64, seed: ToeplitzSeed) -> Vec<LinkOutput> {
        let block = self.block.as_mut().expect("checked by handle");
        if !matches!(block.stage, Stage::AwaitAmplify { .. }) {
            return self.abort(AbortCause::Protocol, MessageKind::Amplify);
        }
        let Stage::AwaitAmplify { key } = std::mem::replace(&mut block.stage, Stage::Quantum)
        else {
            unreachable!("matched above")
        };
        let extra = verify_extra_leak(&self.verify, self.cfg.estimate.eps_cor);
        let counts = block.report.stats.block_counts(
            block.report.key_errors.unwrap_or(0),
            block.report.cascade_leaked_bits + extra,
        );
        let Ok(estimate) = finite_key_length(&self.cfg.estimate, &counts) else {
            return self.abort(AbortCause::Protocol, MessageKind::Amplify);
        };
        // Alice's length must not exceed Bob's own bound. One bit of slack
        // absorbs last-ulp differences between the two machines' libm in
        // ln/exp/log2; more than that is a real disagreement.
        let accept =
            matches!(estimate.verdict, Verdict::Accept) && secret_bits <= estimate.secret_bits + 1;
        block.report.estimate = Some(estimate);
        block.report.fill_asymptotic(
            self.cfg.link.source.intensities,
            self.cfg.link.source.probabilities,
        );
        if !accept {
            return self.abort(AbortCause::EstimateMismatch, MessageKind::Amplify);
        }
        if seed.input_bits() != key.bits() {
            return self.abort(AbortCause::Protocol, MessageKind::Amplify);
        }
        let Ok(final_key) = bob_amplify(&key, secret_bits as usize, &seed) else {
            return self.abort(AbortCause::Protocol, MessageKind::Amplify);
        };
        block.report.final_bits = secret_bits;
        block.stage = Stage::AwaitTagA { key: final_key };
        Vec::new()
    }

    fn on_tag_a(
        &mut self,
        auth_ref: &[u8],
        tag: AuthTag,
        keys: &mut dyn AuthKeys,
    ) -> Result<Vec<LinkOutput>, LinkError> {
        let block = self.block.as_mut().expect("checked by handle");
        if !matches!(block.stage, Stage::AwaitTagA { .. }) {
            return Ok(self.abort(AbortCause::Protocol, MessageKind::TagA));
        }
        let auth_key = match keys.take_at(auth_ref, AUTH_KEY_BYTES_PER_BLOCK) {
            Ok(k) => k,
            Err(_) => return Ok(self.abort(AbortCause::AuthKeys, MessageKind::TagA)),
        };
        let auth = BlockAuthenticator::take(Role::Bob, &mut OneShotAuthKeys::new(auth_key))?;
        block.report.auth_key_bits = auth.key_bits_consumed();
        let (own, check) = auth.finish(&block.transcript);
        if check.verify(&tag).is_err() {
            return Ok(self.abort(AbortCause::AuthFailed, MessageKind::TagA));
        }
        let Stage::AwaitTagA { key } = std::mem::replace(&mut block.stage, Stage::Quantum) else {
            unreachable!("matched above")
        };
        block.stage = Stage::AwaitConfirm { key };
        let msg = LinkMessage::TagB {
            block: block.id,
            tag: own,
        };
        Ok(vec![LinkOutput::Send(msg.encode())])
    }

    fn on_confirm(&mut self) -> Vec<LinkOutput> {
        let block = self.block.as_ref().expect("checked by handle");
        if !matches!(block.stage, Stage::AwaitConfirm { .. }) {
            return self.abort(AbortCause::Protocol, MessageKind::Confirm);
        }
        let b = self.block.take().expect("present");
        let Stage::AwaitConfirm { key } = b.stage else {
            unreachable!("matched above")
        };
        vec![LinkOutput::Key(FinalKey {
            block_id: b.id,
            key,
            report: b.report,
        })]
    }

    fn abort(&mut self, cause: AbortCause, _at: MessageKind) -> Vec<LinkOutput> {
        self.block
            .take()
            .map_or_else(Vec::new, |b| abort_and_tell(b.id, b.report, cause))
    }
}
