//! Information reconciliation by interactive Cascade, as two sans-IO state
//! machines.
//!
//! * [`CascadeResponder`] (Alice) holds the reference key and answers parity
//!   requests; it never reveals more than asked, never the same parity twice,
//!   and fails the block once the corrector asks for more than the configured
//!   fraction of the key ([`CascadeConfig::max_leak_fraction`]).
//! * [`CascadeCorrector`] (Bob) holds the noisy key, runs the passes of the
//!   chosen [`CascadeVariant`] and corrects his key in place.
//!
//! Every request batches all parities that are independent at that moment:
//! round 0 asks the top-level parities of every pass at once (they depend on
//! Alice's fixed key only), and each later round advances every open binary
//! search of the current pass and every cascaded re-search by one level. A
//! pass therefore costs about log2(block size) + cascade steps round trips,
//! and a pass that finds nothing to correct costs none.
//!
//! The leak is exact: each parity bit in a reply counts once, and no parity
//! is asked that the corrector can infer — the right half of a bisected node
//! (parent ⊕ left), the last top-level block of passes after the first
//! (total parity ⊕ the others), and any sub-block parity disclosed by an
//! earlier search ("sub-block reuse" of Demystifying's options 4, 7 and 8).
//! None of these weakens security: each is a function of parities already
//! disclosed.
//!
//! Both parties derive the same schedule from public values: the key length,
//! the QBER estimate (the same `f64` on both sides, e.g. the one the
//! estimation stage exchanged) and the variant. The shuffle seed is public
//! too; it only has to be fixed after the quantum exchange.
//!
//! Keys are [`SecretWords`]; nothing here logs, formats or puts key bits in
//! errors. Messages go through [`crate::qkd::wire`]. No I/O, no tokio.

mod corrector;
mod layout;
mod messages;
mod params;
mod responder;
mod shuffle;
mod tree;

#[cfg(test)]
mod tests;

use thiserror::Error;

use crate::qkd::wire::WireError;
use crate::secret::SecretWords;

pub use corrector::{CascadeCorrector, CascadeOutcome, CorrectorStep, PassReport};
pub use messages::{BlockRange, NodeRef, ParityBits, ParityReply, ParityRequest};
pub use params::{
    CascadeConfig, CascadeVariant, MAX_KEY_BITS, MIN_QBER_FOR_SCHEDULE, binary_entropy, efficiency,
};
pub use responder::CascadeResponder;

/// Why reconciliation of a block failed. Messages carry positions and counts,
/// never key or parity values.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CascadeError {
    #[error(
        "key of {bits} bits: Cascade needs 1..={max} bits (raise max_key_bits or split the key)"
    )]
    KeyLength { bits: usize, max: usize },
    #[error("QBER estimate {qber} outside 0..={max}; refusing to reconcile")]
    QberOutOfRange { qber: f64, max: f64 },
    #[error("malformed Cascade message: {0}")]
    Wire(#[from] WireError),
    #[error("message for round {got}, expected round {want}")]
    UnexpectedRound { got: u32, want: u32 },
    #[error("reply carries {got} parities, {want} were asked")]
    ReplyLength { got: usize, want: usize },
    #[error("pass {pass} does not exist in this schedule")]
    BadPass { pass: u8 },
    #[error("pass {pass} has no block {block}")]
    BadBlock { pass: u8, block: u32 },
    #[error("pass {pass} block {block} has no node {node} with members")]
    BadNode { pass: u8, block: u32, node: u32 },
    #[error("parity of pass {pass} block {block} node {node} was already disclosed")]
    Duplicate { pass: u8, block: u32, node: u32 },
    #[error(
        "leak budget exceeded: {leaked} bits disclosed, {requested} more asked, cap {cap}; block discarded"
    )]
    LeakBudget {
        leaked: u64,
        requested: u64,
        cap: u64,
    },
    #[error("key lengths differ: {alice} and {bob} bits")]
    LengthMismatch { alice: usize, bob: usize },
    #[error("the responder's parities contradict each other; block discarded")]
    InconsistentParities,
    #[error("this reconciliation already ended (finished or failed)")]
    Closed,
}

/// The result of [`reconcile_in_memory`].
pub struct InMemoryRun {
    /// Bob's outcome, with his corrected key.
    pub bob: CascadeOutcome,
    /// Alice's key, unchanged.
    pub alice_key: SecretWords,
    /// The leak as Alice counted it (equal to `bob.leaked_bits`).
    pub alice_leaked_bits: u64,
}

/// The keys show as `<redacted>`, never their bytes.
impl std::fmt::Debug for InMemoryRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryRun")
            .field("bob", &self.bob)
            .field("alice_leaked_bits", &self.alice_leaked_bits)
            .field("alice_key", &format_args!("<redacted>"))
            .finish()
    }
}

/// Runs both parties in this thread over an in-memory channel, every message
/// encoded and decoded as it would be on the network.
pub fn reconcile_in_memory(
    alice_key: SecretWords,
    bob_key: SecretWords,
    qber_estimate: f64,
    shuffle_seed: [u8; 32],
    cfg: &CascadeConfig,
) -> Result<InMemoryRun, CascadeError> {
    if alice_key.bits() != bob_key.bits() {
        return Err(CascadeError::LengthMismatch {
            alice: alice_key.bits(),
            bob: bob_key.bits(),
        });
    }
    let mut alice = CascadeResponder::new(alice_key, qber_estimate, shuffle_seed, cfg)?;
    let (mut bob, mut request) = CascadeCorrector::new(bob_key, qber_estimate, shuffle_seed, cfg)?;
    loop {
        let asked = request.parity_count();
        let reply_bytes = alice.handle_bytes(&request.encode())?;
        let reply = ParityReply::decode(&reply_bytes, asked)?;
        match bob.handle(&reply)? {
            CorrectorStep::Send(next) => request = next,
            CorrectorStep::Done(outcome) => {
                return Ok(InMemoryRun {
                    alice_leaked_bits: alice.leaked_bits(),
                    alice_key: alice.into_key(),
                    bob: outcome,
                });
            }
        }
    }
}
