//! Alice's side of Cascade: answers parity requests about the reference key.
//!
//! Requests come from the network, so each is checked in full before any
//! parity is computed: the round number, the pass, block and node names
//! against the shared schedule, that no parity is asked twice (so each node
//! costs work once and the leak count cannot be inflated or dodged), and the
//! running total against the leak cap. Any failure ends the block: the
//! responder answers nothing more. The key is only read, never logged.

use crate::secret::SecretWords;

use super::CascadeError;
use super::layout::PassLayout;
use super::messages::{ParityBits, ParityReply, ParityRequest};
use super::params::{CascadeConfig, PassKind, Schedule};
use super::tree::{NodeTable, node_interval};

/// Alice: holds the reference key and discloses the parities Bob asks for.
pub struct CascadeResponder {
    key: SecretWords,
    seed: [u8; 32],
    schedule: Schedule,
    /// Built on the first request that needs them.
    layouts: Vec<Option<PassLayout>>,
    /// What has been disclosed, per pass.
    disclosed: Vec<NodeTable>,
    leaked: u64,
    cap: u64,
    next_round: u32,
    closed: bool,
}

impl CascadeResponder {
    /// `qber_estimate` and `shuffle_seed` are the public values agreed with
    /// the corrector (bit-identical: they fix the block sizes and shuffles);
    /// `cfg.variant` must match the corrector's.
    pub fn new(
        key: SecretWords,
        qber_estimate: f64,
        shuffle_seed: [u8; 32],
        cfg: &CascadeConfig,
    ) -> Result<Self, CascadeError> {
        let schedule = Schedule::new(key.bits(), qber_estimate, cfg)?;
        let disclosed = schedule
            .passes
            .iter()
            .map(|p| NodeTable::new(p.blocks, p.depth, p.kind != PassKind::Halves))
            .collect();
        Ok(Self {
            layouts: schedule.passes.iter().map(|_| None).collect(),
            cap: cfg.leak_cap(key.bits()),
            key,
            seed: shuffle_seed,
            schedule,
            disclosed,
            leaked: 0,
            next_round: 0,
            closed: false,
        })
    }

    /// Parity bits disclosed so far: exactly the bits in all replies sent.
    pub fn leaked_bits(&self) -> u64 {
        self.leaked
    }

    /// The leak cap for this block.
    pub fn leak_cap(&self) -> u64 {
        self.cap
    }

    /// Ends the session, returning the (unchanged) reference key.
    pub fn into_key(self) -> SecretWords {
        self.key
    }

    /// Decodes a request, answers it, encodes the reply.
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>, CascadeError> {
        let max_nodes = self.schedule.n + 2;
        let request =
            ParityRequest::decode(bytes, max_nodes).inspect_err(|_| self.closed = true)?;
        Ok(self.handle(&request)?.encode())
    }

    /// Answers one request, or fails the block (and every later request).
    pub fn handle(&mut self, req: &ParityRequest) -> Result<ParityReply, CascadeError> {
        if self.closed {
            return Err(CascadeError::Closed);
        }
        let answer = self.answer(req);
        if answer.is_err() {
            self.closed = true;
        }
        answer
    }

    fn answer(&mut self, req: &ParityRequest) -> Result<ParityReply, CascadeError> {
        if req.round != self.next_round {
            return Err(CascadeError::UnexpectedRound {
                got: req.round,
                want: self.next_round,
            });
        }
        let requested = req.parity_count();
        if self.leaked.saturating_add(requested) > self.cap {
            return Err(CascadeError::LeakBudget {
                leaked: self.leaked,
                requested,
                cap: self.cap,
            });
        }
        // Validate everything, recording each name as disclosed, before any
        // parity is computed. A failure closes the responder, so the marks
        // need no rollback.
        let mut spans = Vec::with_capacity(usize::try_from(requested).unwrap_or(0));
        for r in &req.ranges {
            let pass = self.pass_index(r.pass)?;
            let blocks = self.schedule.passes[pass].blocks as u64;
            if u64::from(r.first) + u64::from(r.count) > blocks {
                return Err(CascadeError::BadBlock {
                    pass: r.pass,
                    block: r.first.saturating_add(r.count),
                });
            }
            for block in r.first..r.first + r.count {
                spans.push(self.claim(pass, block, 1)?);
            }
        }
        for node in &req.nodes {
            let pass = self.pass_index(node.pass)?;
            if node.block as usize >= self.schedule.passes[pass].blocks {
                return Err(CascadeError::BadBlock {
                    pass: node.pass,
                    block: node.block,
                });
            }
            spans.push(self.claim(pass, node.block, node.node)?);
        }
        let mut parities = ParityBits::with_capacity(spans.len());
        for &(pass, block, lo, hi) in &spans {
            let layout = self.layouts[pass].as_ref().expect("built by claim");
            parities.push(layout.parity(&self.key, block, lo, hi));
        }
        self.leaked += requested;
        self.next_round += 1;
        Ok(ParityReply {
            round: req.round,
            parities,
        })
    }

    fn pass_index(&self, pass: u8) -> Result<usize, CascadeError> {
        let p = pass as usize;
        if p < self.schedule.passes.len() {
            Ok(p)
        } else {
            Err(CascadeError::BadPass { pass })
        }
    }

    /// Checks that node `id` of `block` exists, has members and was never
    /// disclosed; marks it disclosed and returns its span.
    fn claim(
        &mut self,
        pass: usize,
        block: u32,
        id: u32,
    ) -> Result<(usize, usize, usize, usize), CascadeError> {
        let plan = self.schedule.passes[pass];
        let b = block as usize;
        let bad = CascadeError::BadNode {
            pass: pass as u8,
            block,
            node: id,
        };
        if id == 0 || super::tree::node_depth(id) > plan.depth {
            return Err(bad);
        }
        let (lo, hi) = node_interval(plan.root(b, self.schedule.n), id).ok_or(bad.clone())?;
        if self.layouts[pass].is_none() {
            self.layouts[pass] = Some(PassLayout::build(plan, pass, &self.seed, &self.key));
        }
        let layout = self.layouts[pass].as_ref().expect("just built");
        if layout.members(b, lo, hi) == 0 {
            return Err(bad);
        }
        let table = &mut self.disclosed[pass];
        if table.get(b, id).is_some() {
            return Err(CascadeError::Duplicate {
                pass: pass as u8,
                block,
                node: id,
            });
        }
        // The value is irrelevant here; the table only marks disclosure.
        table.set(b, id, false);
        Ok((pass, b, lo, hi))
    }
}
