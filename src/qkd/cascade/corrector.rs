//! Bob's side of Cascade: asks for parities and corrects the noisy key.
//!
//! Work is a queue of *checks*: "is this node, whose correct parity is known,
//! odd in my key?". An odd node is bisected down through children whose
//! parity is already known (sub-block reuse) until a node with an unknown
//! left child is reached; that child's parity is then asked. All such asks of
//! one moment go out in a single request. When a search ends on one bit, the
//! bit is flipped and, in every pass started so far, the smallest node with
//! known parity containing it is checked again — that is the cascade, with
//! O(passes × tree depth) bookkeeping per flipped bit. Before a request is
//! sent every ask is re-checked, so a node that a flip of the same round made
//! even costs no parity bit.
//!
//! Passes run one after the other (starting a pass while earlier ones still
//! search would spend parities on errors about to be found anyway).

use crate::secret::SecretWords;

use super::CascadeError;
use super::layout::PassLayout;
use super::messages::{BlockRange, NodeRef, ParityReply, ParityRequest};
use super::params::{CascadeConfig, PassKind, Schedule};
use super::tree::{NodeTable, node_interval, split};

/// What the corrector wants next.
#[derive(Debug)]
pub enum CorrectorStep {
    /// Send this request to the responder and feed back its reply.
    Send(ParityRequest),
    /// Reconciliation ended.
    Done(CascadeOutcome),
}

/// The result of one reconciliation. The key equals Alice's with high
/// probability, not certainty: verification decides.
pub struct CascadeOutcome {
    /// Bob's corrected key.
    pub key: SecretWords,
    /// Parity bits disclosed by the responder (= bits received), to be
    /// subtracted by privacy amplification.
    pub leaked_bits: u64,
    /// Bits flipped.
    pub corrected_bits: u64,
    /// Request/reply round trips, the top-level request included.
    pub rounds: u32,
    /// Per-pass figures, in pass order.
    pub passes: Vec<PassReport>,
}

/// The keys show as `<redacted>`, never their bytes.
impl std::fmt::Debug for CascadeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CascadeOutcome")
            .field("leaked_bits", &self.leaked_bits)
            .field("corrected_bits", &self.corrected_bits)
            .field("rounds", &self.rounds)
            .field("passes", &self.passes)
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

/// Figures for one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Top-level block size in bits (n for a pass of halves).
    pub block_size: usize,
    /// Number of top-level blocks.
    pub blocks: usize,
    /// Top-level parities asked (blocks minus those inferred).
    pub top_level_parities: u64,
    /// Sub-block parities asked about this pass's blocks.
    pub search_parities: u64,
    /// Bits flipped while this pass ran (cascaded corrections included).
    pub corrected_bits: u64,
    /// Round trips spent while this pass ran (round 0 not included).
    pub rounds: u32,
}

#[derive(Debug, Clone, Copy)]
struct Check {
    pass: usize,
    block: usize,
    node: u32,
}

/// Bob: holds the noisy key and drives the passes.
pub struct CascadeCorrector {
    key: SecretWords,
    seed: [u8; 32],
    schedule: Schedule,
    cap: u64,
    tables: Vec<NodeTable>,
    layouts: Vec<Option<PassLayout>>,
    /// Pass being run; passes `..=current` have layouts and take part in
    /// cascades.
    current: usize,
    /// Round of the request in flight.
    round: u32,
    /// Round-0 request (to read its reply) and nodes asked since.
    top_level: Vec<BlockRange>,
    /// Nodes whose left child's parity is in flight.
    waiting: Vec<Check>,
    /// Nodes whose left child is to be asked this round.
    asks: Vec<Check>,
    queue: Vec<Check>,
    leaked: u64,
    corrected: u64,
    /// Key indices flipped so far. With honest parities every flip fixes an
    /// error, so no bit flips twice; a second flip proves the replies
    /// inconsistent (and would let a lying responder loop us forever).
    flipped: Vec<u64>,
    reports: Vec<PassReport>,
    closed: bool,
}

impl CascadeCorrector {
    /// Starts reconciling `key`. Returns the first request: the top-level
    /// parities of every pass.
    pub fn new(
        key: SecretWords,
        qber_estimate: f64,
        shuffle_seed: [u8; 32],
        cfg: &CascadeConfig,
    ) -> Result<(Self, ParityRequest), CascadeError> {
        let schedule = Schedule::new(key.bits(), qber_estimate, cfg)?;
        let n = schedule.n;
        let mut layouts = Vec::with_capacity(schedule.passes.len());
        let mut top_level = Vec::new();
        let mut reports = Vec::new();
        for (i, plan) in schedule.passes.iter().enumerate() {
            // Masks of passes of halves are cheap and needed now (an empty
            // half is never asked about); permuted copies wait for their pass.
            let layout = (plan.kind == PassKind::Halves)
                .then(|| PassLayout::build(*plan, i, &shuffle_seed, &key));
            let count = match &layout {
                Some(l) => u32::from(l.members(0, 0, n) > 0 && l.members(1, 0, n) > 0),
                // Pass 1 asks every block; later passes infer the last one
                // from the total parity, which pass 1 determines.
                None if i == 0 => plan.blocks as u32,
                None => plan.blocks as u32 - 1,
            };
            if count > 0 {
                top_level.push(BlockRange {
                    pass: i as u8,
                    first: 0,
                    count,
                });
            }
            reports.push(PassReport {
                block_size: plan.block_size,
                blocks: plan.blocks,
                top_level_parities: u64::from(count),
                ..Default::default()
            });
            layouts.push(layout);
        }
        let tables = schedule
            .passes
            .iter()
            .map(|p| NodeTable::new(p.blocks, p.depth, p.kind != PassKind::Halves))
            .collect();
        let request = ParityRequest {
            round: 0,
            ranges: top_level.clone(),
            nodes: Vec::new(),
        };
        let corrector = Self {
            key,
            seed: shuffle_seed,
            cap: cfg.leak_cap(n),
            schedule,
            tables,
            layouts,
            current: 0,
            round: 0,
            top_level,
            waiting: Vec::new(),
            asks: Vec::new(),
            queue: Vec::new(),
            leaked: 0,
            corrected: 0,
            flipped: vec![0; n.div_ceil(64)],
            reports,
            closed: false,
        };
        Ok((corrector, request))
    }

    /// Parity bits received so far.
    pub fn leaked_bits(&self) -> u64 {
        self.leaked
    }

    /// Feeds the reply to the request in flight.
    pub fn handle(&mut self, reply: &ParityReply) -> Result<CorrectorStep, CascadeError> {
        if self.closed {
            return Err(CascadeError::Closed);
        }
        let step = self.absorb(reply).and_then(|()| self.run());
        if !matches!(step, Ok(CorrectorStep::Send(_))) {
            self.closed = true;
        }
        step
    }

    fn absorb(&mut self, reply: &ParityReply) -> Result<(), CascadeError> {
        if reply.round != self.round {
            return Err(CascadeError::UnexpectedRound {
                got: reply.round,
                want: self.round,
            });
        }
        let want = if self.round == 0 {
            self.top_level.iter().map(|r| r.count as usize).sum()
        } else {
            self.waiting.len()
        };
        if reply.parities.len() != want {
            return Err(CascadeError::ReplyLength {
                got: reply.parities.len(),
                want,
            });
        }
        self.leaked += want as u64;
        if self.leaked > self.cap {
            return Err(CascadeError::LeakBudget {
                leaked: self.leaked - want as u64,
                requested: want as u64,
                cap: self.cap,
            });
        }
        let bit = |i: usize| reply.parities.get(i).expect("length checked");
        if self.round == 0 {
            self.absorb_top_level(bit);
            self.start_pass(0);
        } else {
            for (i, c) in std::mem::take(&mut self.waiting).into_iter().enumerate() {
                let table = &mut self.tables[c.pass];
                let parent = table
                    .get(c.block, c.node)
                    .expect("asked only below known nodes");
                table.set_asked(c.block, 2 * c.node, false);
                table.set(c.block, 2 * c.node, bit(i));
                table.set(c.block, 2 * c.node + 1, parent ^ bit(i));
                self.queue.push(c);
            }
        }
        Ok(())
    }

    /// Records round 0's top-level parities and infers the rest from the
    /// total parity (the XOR of pass 1's blocks).
    fn absorb_top_level(&mut self, bit: impl Fn(usize) -> bool) {
        let mut i = 0;
        for r in &self.top_level {
            for b in 0..r.count as usize {
                self.tables[r.pass as usize].set(b, 1, bit(i));
                i += 1;
            }
        }
        let first = &self.schedule.passes[0];
        let total = (0..first.blocks).fold(false, |acc, b| {
            acc ^ self.tables[0].get(b, 1).expect("pass 1 fully asked")
        });
        let n = self.schedule.n;
        for (p, plan) in self.schedule.passes.iter().enumerate().skip(1) {
            let table = &mut self.tables[p];
            match &self.layouts[p] {
                Some(l) => {
                    let s = if l.members(0, 0, n) == 0 {
                        false
                    } else if l.members(1, 0, n) == 0 {
                        total
                    } else {
                        table.get(0, 1).expect("asked")
                    };
                    table.set(0, 1, s);
                    table.set(1, 1, total ^ s);
                }
                None => {
                    let last = plan.blocks - 1;
                    let others =
                        (0..last).fold(false, |acc, b| acc ^ table.get(b, 1).expect("asked"));
                    table.set(last, 1, total ^ others);
                }
            }
        }
    }

    /// Builds pass `p`'s layout (if not yet) and queues its odd blocks.
    fn start_pass(&mut self, p: usize) {
        self.current = p;
        let plan = self.schedule.passes[p];
        if self.layouts[p].is_none() {
            self.layouts[p] = Some(PassLayout::build(plan, p, &self.seed, &self.key));
        }
        let layout = self.layouts[p].as_ref().expect("built");
        for b in 0..plan.blocks {
            let (lo, hi) = plan.root(b, self.schedule.n);
            if layout.members(b, lo, hi) == 0 {
                continue;
            }
            let alice = self.tables[p].get(b, 1).expect("top level known");
            if layout.parity(&self.key, b, lo, hi) != alice {
                self.queue.push(Check {
                    pass: p,
                    block: b,
                    node: 1,
                });
            }
        }
    }

    /// Runs local work until a request is needed or all passes are done.
    fn run(&mut self) -> Result<CorrectorStep, CascadeError> {
        loop {
            while let Some(c) = self.queue.pop() {
                self.check(c)?;
            }
            let asks = std::mem::take(&mut self.asks);
            let mut nodes = Vec::with_capacity(asks.len());
            for c in asks {
                if self.is_odd(c) {
                    nodes.push(NodeRef {
                        pass: c.pass as u8,
                        block: c.block as u32,
                        node: 2 * c.node,
                    });
                    self.reports[c.pass].search_parities += 1;
                    self.waiting.push(c);
                } else {
                    self.tables[c.pass].set_asked(c.block, 2 * c.node, false);
                }
            }
            if !nodes.is_empty() {
                self.round += 1;
                self.reports[self.current].rounds += 1;
                return Ok(CorrectorStep::Send(ParityRequest {
                    round: self.round,
                    ranges: Vec::new(),
                    nodes,
                }));
            }
            if self.current + 1 < self.schedule.passes.len() {
                self.start_pass(self.current + 1);
                continue;
            }
            return Ok(CorrectorStep::Done(self.outcome()));
        }
    }

    fn outcome(&mut self) -> CascadeOutcome {
        let key = std::mem::replace(&mut self.key, SecretWords::zeroed(0));
        self.layouts.clear();
        CascadeOutcome {
            key,
            leaked_bits: self.leaked,
            corrected_bits: self.corrected,
            rounds: self.round + 1,
            passes: std::mem::take(&mut self.reports),
        }
    }

    fn span(&self, c: Check) -> (usize, usize) {
        let root = self.schedule.passes[c.pass].root(c.block, self.schedule.n);
        node_interval(root, c.node).expect("nodes are built by bisection")
    }

    /// Whether node `c` (of known parity) holds an odd number of errors.
    fn is_odd(&self, c: Check) -> bool {
        let (lo, hi) = self.span(c);
        let layout = self.layouts[c.pass].as_ref().expect("started pass");
        let alice = self.tables[c.pass]
            .get(c.block, c.node)
            .expect("known node");
        layout.parity(&self.key, c.block, lo, hi) != alice
    }

    /// Bisects node `c` if it is odd, as far as known parities allow; then
    /// either flips the erroneous bit or queues an ask.
    fn check(&mut self, c: Check) -> Result<(), CascadeError> {
        if !self.is_odd(c) {
            return Ok(());
        }
        match self.bisect(c) {
            Some(x) => self.flip(x),
            None => Ok(()),
        }
    }

    /// Descends from odd node `c` through known parities. Returns the key
    /// index of the error when a single member is reached; otherwise queues
    /// an ask for the first unknown left child and returns `None`.
    fn bisect(&mut self, mut c: Check) -> Option<usize> {
        let (mut lo, mut hi) = self.span(c);
        let layout = self.layouts[c.pass].as_ref().expect("started pass");
        let table = &mut self.tables[c.pass];
        // Invariant: c is known and odd, spanning lo..hi.
        loop {
            let mut alice = table.get(c.block, c.node).expect("known node");
            let members = layout.members(c.block, lo, hi);
            if members == 1 {
                let pos = layout.first_member(c.block, lo, hi).expect("one member");
                return Some(layout.key_index(pos));
            }
            let mid = split(lo, hi);
            let (left, right) = (2 * c.node, 2 * c.node + 1);
            let go_left = if layout.members(c.block, lo, mid) == 0 {
                false
            } else if layout.members(c.block, mid, hi) == 0 {
                true
            } else if let Some(l) = table.get(c.block, left) {
                let odd = layout.parity(&self.key, c.block, lo, mid) != l;
                alice = if odd { l } else { alice ^ l };
                odd
            } else {
                if !table.asked(c.block, left) {
                    table.set_asked(c.block, left, true);
                    self.asks.push(c);
                }
                return None;
            };
            // An empty sibling makes the child's parity the parent's.
            let child = if go_left { left } else { right };
            if table.get(c.block, child).is_none() {
                table.set(c.block, child, alice);
            }
            c.node = child;
            if go_left { hi = mid } else { lo = mid }
        }
    }

    /// Corrects key bit `x` and queues, in every started pass, the smallest
    /// node of known parity that contains it.
    fn flip(&mut self, x: usize) -> Result<(), CascadeError> {
        let seen = &mut self.flipped[x / 64];
        if *seen & (1 << (x % 64)) != 0 {
            return Err(CascadeError::InconsistentParities);
        }
        *seen |= 1 << (x % 64);
        self.key.flip(x);
        self.corrected += 1;
        self.reports[self.current].corrected_bits += 1;
        let n = self.schedule.n;
        for p in 0..=self.current {
            let layout = self.layouts[p].as_mut().expect("started pass");
            let (block, pos) = layout.follow_flip(x);
            let table = &self.tables[p];
            let (mut lo, mut hi) = layout.plan.root(block, n);
            let mut node = 1u32;
            while hi - lo >= 2 {
                let mid = split(lo, hi);
                let child = if pos < mid { 2 * node } else { 2 * node + 1 };
                if table.get(block, child).is_none() {
                    break;
                }
                node = child;
                if pos < mid { hi = mid } else { lo = mid }
            }
            self.queue.push(Check {
                pass: p,
                block,
                node,
            });
        }
        Ok(())
    }
}
