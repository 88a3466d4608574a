//! Alice, the transmitter: drives the block — emits frames, sifts, answers
//! Cascade, verifies, decides the final length, amplifies, authenticates
//! first and confirms last.

use rand_chacha::ChaCha20Rng;

use crate::qkd::amplify::{ToeplitzSeed, toeplitz_hash};
use crate::qkd::analytic::expected_clicks;
use crate::qkd::auth::{AUTH_KEY_BITS_PER_BLOCK, AUTH_KEY_BYTES_PER_BLOCK, BlockAuthenticator};
use crate::qkd::auth::{PeerTagCheck, Role, Transcript};
use crate::qkd::cascade::CascadeResponder;
use crate::qkd::estimate::{Verdict, finite_key_length, test_basis_check};
use crate::qkd::optics::frame::MAX_FRAME_RECORDS;
use crate::qkd::optics::{EmissionLog, Intensity, Source};
use crate::qkd::sift::{SiftedKey, alice_sift};
use crate::qkd::verify::VerifyConfig;
use crate::secret::SecretWords;

use super::messages::{LinkMessage, MessageKind};
use super::report::{AbortCause, BlockReport};
use super::{
    AuthKeys, BlockConfig, FinalKey, LinkError, LinkOutput, LinkRng, OneShotAuthKeys,
    cascade_qber_estimate, verify_extra_leak,
};

/// The transmitter side of one link.
pub struct AliceLink {
    cfg: BlockConfig,
    verify: VerifyConfig,
    digest: u64,
    source: Source,
    rng: ChaCha20Rng,
    next_block: u64,
    /// Expected sifted key bits per slot, from the analytic model of the
    /// configured link; refined by each frame's yield.
    yield_per_slot: f64,
    block: Option<Block>,
}

struct Block {
    id: u64,
    report: BlockReport,
    transcript: Transcript,
    /// Alice's log of the frame on the fibre, until Bob's detections come.
    pending: Option<EmissionLog>,
    parts: Vec<SiftedKey>,
    stage: Stage,
}

enum Stage {
    Quantum,
    Reconcile {
        /// Alice's sifted key until Cascade starts; then inside `responder`.
        key: Option<SecretWords>,
        responder: Option<CascadeResponder>,
        qber: f64,
    },
    AwaitTagB {
        key: SecretWords,
        check: PeerTagCheck,
    },
}

impl AliceLink {
    /// Blocks are numbered from `first_block` (the agent passes one past the
    /// highest block its pool ever held, so IDs are never reused).
    pub fn new(cfg: BlockConfig, rng: LinkRng, first_block: u64) -> Result<Self, LinkError> {
        cfg.validate()?;
        let verify = VerifyConfig::new(cfg.estimate.eps_cor)
            .map_err(|_| LinkError::Config("eps_cor outside the verifier's range"))?;
        let source = Source::new(&cfg.link, rng.choices, rng.noise)?;
        let p_z2 = cfg.link.source.p_z * cfg.link.source.p_z;
        let yield_per_slot = Intensity::ALL
            .iter()
            .map(|&k| {
                cfg.link.source.probabilities[k.index()] * expected_clicks(&cfg.link, k, 0.0).gain
            })
            .sum::<f64>()
            * p_z2;
        Ok(Self {
            digest: cfg.agreement_digest(),
            cfg,
            verify,
            source,
            rng: rng.protocol,
            next_block: first_block,
            yield_per_slot: yield_per_slot.max(1e-12),
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

    /// Starts the next block (abandoning one in progress) and puts its first
    /// frame on the fibre.
    pub fn start_block(&mut self) -> Result<Vec<LinkOutput>, LinkError> {
        let mut out = Vec::new();
        if let Some(old) = self.block.take() {
            out.push(aborted(old.report, AbortCause::Superseded, false));
        }
        let id = self.next_block;
        self.next_block += 1;
        self.block = Some(Block {
            id,
            report: BlockReport {
                block_id: id,
                ..Default::default()
            },
            transcript: Transcript::new(),
            pending: None,
            parts: Vec::new(),
            stage: Stage::Quantum,
        });
        out.push(self.next_frame()?);
        Ok(out)
    }

    fn next_frame(&mut self) -> Result<LinkOutput, LinkError> {
        let block = self.block.as_mut().expect("called with a block");
        let have: u64 = block.parts.iter().map(|p| p.key.bits() as u64).sum();
        let want = (self.cfg.target_sifted_bits as u64)
            .saturating_sub(have)
            .max(1);
        // 5 % more than the expected yield so most blocks need one frame,
        // but no more slots than give half the records a frame may carry
        // (short fibres put a photon in most slots).
        let record_cap = (MAX_FRAME_RECORDS / 2) as f64 / self.source.nonvacuum_probability();
        let slots = (want as f64 * 1.05 / self.yield_per_slot)
            .min(record_cap)
            .clamp(1024.0, self.cfg.max_frame_slots as f64) as u32;
        let (frame, log) = self.source.emit(slots)?;
        block.pending = Some(log);
        block.report.frames += 1;
        block.report.slots += slots as u64;
        Ok(LinkOutput::Fibre(frame))
    }

    /// Handles one message from Bob.
    pub fn handle(
        &mut self,
        bytes: &[u8],
        keys: &mut dyn AuthKeys,
    ) -> Result<Vec<LinkOutput>, LinkError> {
        let msg = LinkMessage::decode(bytes, self.cfg.cascade.max_key_bits as u64)?;
        let Some(block) = self.block.as_mut() else {
            return Ok(Vec::new());
        };
        if msg.block().is_some_and(|b| b != block.id) {
            // A message of an older block: that block is already over here.
            return Ok(Vec::new());
        }
        if msg.in_transcript() {
            block.transcript.record_received(Role::Alice, bytes)?;
        }
        match msg {
            LinkMessage::Detections(report) => self.on_detections(report, bytes),
            LinkMessage::CascadeStart { seed, request, .. } => self.on_cascade_start(seed, request),
            LinkMessage::Parities { request, .. } => self.on_parities(request),
            LinkMessage::Reconciled {
                key_errors,
                leaked_bits,
                verify,
                ..
            } => self.on_reconciled(key_errors, leaked_bits, verify, keys),
            LinkMessage::TagB { tag, .. } => self.on_tag_b(tag),
            LinkMessage::Abort { cause, .. } => {
                let b = self.block.take().expect("checked above");
                Ok(vec![aborted(b.report, cause, true)])
            }
            other => Ok(self.abort(AbortCause::Protocol, other.kind())),
        }
    }

    fn on_detections(
        &mut self,
        report: crate::qkd::sift::DetectionReport,
        _bytes: &[u8],
    ) -> Result<Vec<LinkOutput>, LinkError> {
        let block = self.block.as_mut().expect("checked by handle");
        let matches = block
            .pending
            .as_ref()
            .is_some_and(|log| log.first_slot() == report.first_slot());
        if !matches || !matches!(block.stage, Stage::Quantum) {
            return Ok(self.abort(AbortCause::Protocol, MessageKind::Detections));
        }
        let log = block.pending.take().expect("checked above");
        let frame_slots = log.slot_count() as f64;
        let pulses = self.source.resolve(log, report.slots())?;
        let (reply, sifted) = match alice_sift(&report, &pulses) {
            Ok(x) => x,
            Err(_) => return Ok(self.abort(AbortCause::Protocol, MessageKind::Detections)),
        };
        // Refine the frame-size estimate with what this frame yielded.
        if sifted.key.bits() > 0 {
            self.yield_per_slot = sifted.key.bits() as f64 / frame_slots;
        }
        block.report.stats += sifted.stats;
        block.parts.push(sifted);
        let have: usize = block.parts.iter().map(|p| p.key.bits()).sum();
        let last = have >= self.cfg.target_sifted_bits;
        let msg = LinkMessage::Sift {
            block: block.id,
            digest: self.digest,
            last,
            reply,
        }
        .encode();
        block.transcript.record_sent(Role::Alice, &msg)?;
        let mut out = vec![LinkOutput::Send(msg)];
        if !last {
            out.push(self.next_frame()?);
            return Ok(out);
        }
        let parts = std::mem::take(&mut block.parts);
        let key = SiftedKey::concat(parts).key;
        let counts = block.report.stats.block_counts(0, 0);
        if test_basis_check(&self.cfg.estimate, &counts).is_err() {
            // Bob reaches the same verdict from the same counts.
            let b = self.block.take().expect("present");
            out.push(aborted(b.report, AbortCause::TestQber, false));
            return Ok(out);
        }
        let qber = cascade_qber_estimate(&block.report, self.cfg.estimate.max_qber_test);
        block.report.cascade_qber_estimate = qber;
        block.stage = Stage::Reconcile {
            key: Some(key),
            responder: None,
            qber,
        };
        Ok(out)
    }

    fn on_cascade_start(
        &mut self,
        seed: [u8; 32],
        request: crate::qkd::cascade::ParityRequest,
    ) -> Result<Vec<LinkOutput>, LinkError> {
        let block = self.block.as_mut().expect("checked by handle");
        let Stage::Reconcile {
            key,
            responder,
            qber,
            ..
        } = &mut block.stage
        else {
            return Ok(self.abort(AbortCause::Protocol, MessageKind::CascadeStart));
        };
        let Some(k) = key.take() else {
            return Ok(self.abort(AbortCause::Protocol, MessageKind::CascadeStart));
        };
        match CascadeResponder::new(k, *qber, seed, &self.cfg.cascade) {
            Ok(r) => *responder = Some(r),
            Err(_) => return Ok(self.abort(AbortCause::Reconciliation, MessageKind::CascadeStart)),
        }
        self.on_parities(request)
    }

    fn on_parities(
        &mut self,
        request: crate::qkd::cascade::ParityRequest,
    ) -> Result<Vec<LinkOutput>, LinkError> {
        let block = self.block.as_mut().expect("checked by handle");
        let Stage::Reconcile {
            responder: Some(responder),
            ..
        } = &mut block.stage
        else {
            return Ok(self.abort(AbortCause::Protocol, MessageKind::Parities));
        };
        let reply = match responder.handle(&request) {
            Ok(r) => r,
            Err(_) => return Ok(self.abort(AbortCause::Reconciliation, MessageKind::Parities)),
        };
        block.report.cascade_rounds += 1;
        let msg = LinkMessage::ParityReply {
            block: block.id,
            reply,
        }
        .encode();
        block.transcript.record_sent(Role::Alice, &msg)?;
        Ok(vec![LinkOutput::Send(msg)])
    }

    fn on_reconciled(
        &mut self,
        key_errors: u64,
        leaked_bits: u64,
        verify: crate::qkd::verify::VerifyRequest,
        keys: &mut dyn AuthKeys,
    ) -> Result<Vec<LinkOutput>, LinkError> {
        let block = self.block.as_mut().expect("checked by handle");
        let Stage::Reconcile {
            responder: Some(_), ..
        } = &block.stage
        else {
            return Ok(self.abort(AbortCause::Protocol, MessageKind::Reconciled));
        };
        let Stage::Reconcile {
            responder: Some(responder),
            ..
        } = std::mem::replace(&mut block.stage, Stage::Quantum)
        else {
            unreachable!("matched above")
        };
        if responder.leaked_bits() != leaked_bits {
            return Ok(self.abort(AbortCause::Protocol, MessageKind::Reconciled));
        }
        block.report.key_errors = Some(key_errors);
        block.report.cascade_leaked_bits = leaked_bits;
        block.report.verify_bits = self.verify.leak_bits();
        let key = responder.into_key();
        match verify.check(&self.verify, &key) {
            Ok(reply) if reply.keys_match => {}
            Ok(_) => return Ok(self.abort(AbortCause::VerifyMismatch, MessageKind::Reconciled)),
            Err(_) => return Ok(self.abort(AbortCause::Protocol, MessageKind::Reconciled)),
        }
        let extra = verify_extra_leak(&self.verify, self.cfg.estimate.eps_cor);
        let counts = block
            .report
            .stats
            .block_counts(key_errors, leaked_bits + extra);
        let estimate = match finite_key_length(&self.cfg.estimate, &counts) {
            Ok(e) => e,
            Err(_) => return Ok(self.abort(AbortCause::Protocol, MessageKind::Reconciled)),
        };
        let verdict = estimate.verdict;
        let secret_bits = estimate.secret_bits;
        block.report.estimate = Some(estimate);
        block.report.fill_asymptotic(
            self.cfg.link.source.intensities,
            self.cfg.link.source.probabilities,
        );
        if let Verdict::Abort(reason) = verdict {
            return Ok(self.abort(AbortCause::from_estimate(reason), MessageKind::Reconciled));
        }
        if secret_bits < 2 * AUTH_KEY_BITS_PER_BLOCK {
            return Ok(self.abort(AbortCause::TooShortForAuth, MessageKind::Reconciled));
        }
        let seed = ToeplitzSeed::random(key.bits(), secret_bits as usize, &mut self.rng)
            .map_err(|_| LinkError::Config("key too long for privacy amplification"))?;
        let final_key = toeplitz_hash(&seed, &key)
            .map_err(|_| LinkError::Config("privacy amplification failed"))?;
        let amplify = LinkMessage::Amplify {
            block: block.id,
            secret_bits,
            seed,
        }
        .encode();
        block.transcript.record_sent(Role::Alice, &amplify)?;
        let (auth_ref, auth_key) = match keys.take(AUTH_KEY_BYTES_PER_BLOCK) {
            Ok(k) => k,
            Err(_) => return Ok(self.abort(AbortCause::AuthKeys, MessageKind::Reconciled)),
        };
        let auth = BlockAuthenticator::take(Role::Alice, &mut OneShotAuthKeys::new(auth_key))?;
        block.report.auth_key_bits = auth.key_bits_consumed();
        let (tag, check) = auth.finish(&block.transcript);
        let tag_msg = LinkMessage::TagA {
            block: block.id,
            auth_ref,
            tag,
        }
        .encode();
        block.report.final_bits = secret_bits;
        block.stage = Stage::AwaitTagB {
            key: final_key,
            check,
        };
        Ok(vec![LinkOutput::Send(amplify), LinkOutput::Send(tag_msg)])
    }

    fn on_tag_b(&mut self, tag: crate::qkd::auth::AuthTag) -> Result<Vec<LinkOutput>, LinkError> {
        let block = self.block.as_ref().expect("checked by handle");
        if !matches!(block.stage, Stage::AwaitTagB { .. }) {
            return Ok(self.abort(AbortCause::Protocol, MessageKind::TagB));
        }
        let b = self.block.take().expect("present");
        let Stage::AwaitTagB { key, check } = b.stage else {
            unreachable!("matched above")
        };
        if check.verify(&tag).is_err() {
            let msg = LinkMessage::Abort {
                block: b.id,
                cause: AbortCause::AuthFailed,
            };
            let mut report = b.report;
            report.final_bits = 0;
            return Ok(vec![
                LinkOutput::Send(msg.encode()),
                aborted(report, AbortCause::AuthFailed, false),
            ]);
        }
        let confirm = LinkMessage::Confirm { block: b.id }.encode();
        Ok(vec![
            LinkOutput::Send(confirm),
            LinkOutput::Key(FinalKey {
                block_id: b.id,
                key,
                report: b.report,
            }),
        ])
    }

    /// Ends the current block with `cause` and tells Bob.
    fn abort(&mut self, cause: AbortCause, _at: MessageKind) -> Vec<LinkOutput> {
        self.block
            .take()
            .map_or_else(Vec::new, |b| abort_and_tell(b.id, b.report, cause))
    }
}

/// The outputs of a locally decided abort: tell the peer, report it.
pub(super) fn abort_and_tell(id: u64, report: BlockReport, cause: AbortCause) -> Vec<LinkOutput> {
    let msg = LinkMessage::Abort { block: id, cause }.encode();
    vec![LinkOutput::Send(msg), aborted(report, cause, false)]
}

pub(super) fn aborted(mut report: BlockReport, cause: AbortCause, by_peer: bool) -> LinkOutput {
    report.final_bits = 0;
    report.aborted = Some(cause);
    report.aborted_by_peer = by_peer;
    LinkOutput::Aborted(report)
}
