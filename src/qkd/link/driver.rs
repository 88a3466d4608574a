//! The in-process driver: Alice, Bob and (optionally) an eavesdropper in one
//! process, joined by in-memory queues. Used by `qkd-ipsec simulate`, tests
//! and benches; the agent runs the same state machines over the network.

use std::collections::VecDeque;

use crate::qkd::auth::{AUTH_KEY_BYTES_PER_BLOCK, AuthKeySource, InMemoryAuthKeys};
use crate::qkd::optics::{InterceptResend, NoiseRng};
use crate::secret::SecretBytes;

use super::{
    AliceLink, AuthKeys, BlockConfig, BlockReport, BobLink, FinalKey, LinkError, LinkOutput,
    LinkRng,
};

/// [`AuthKeys`] over an in-memory store; the reference is the byte offset,
/// which Bob checks against his own so the two stores stay in lockstep.
pub struct InMemoryAuth(pub InMemoryAuthKeys);

impl AuthKeys for InMemoryAuth {
    fn take(&mut self, len: usize) -> Result<(Vec<u8>, SecretBytes), LinkError> {
        let offset = self.0.consumed_bytes();
        let key = self.0.take(len)?;
        Ok((offset.to_le_bytes().to_vec(), key))
    }

    fn take_at(&mut self, reference: &[u8], len: usize) -> Result<SecretBytes, LinkError> {
        let offset = u64::from_le_bytes(
            reference
                .try_into()
                .map_err(|_| LinkError::AuthKeys("reference is not an offset".into()))?,
        );
        if offset != self.0.consumed_bytes() {
            return Err(LinkError::AuthKeys(format!(
                "peer used offset {offset}, ours is {}",
                self.0.consumed_bytes()
            )));
        }
        Ok(self.0.take(len)?)
    }
}

/// One block as both sides saw it.
pub struct SimulatedBlock {
    pub alice: BlockReport,
    pub bob: BlockReport,
    /// Both sides' net keys (final key minus what went back into the
    /// authentication store), when the block produced key.
    pub keys: Option<(SecretBytes, SecretBytes)>,
    /// Pulses the eavesdropper intercepted.
    pub intercepted: u64,
}

/// Alice and Bob over in-memory queues.
pub struct InProcessLink {
    alice: AliceLink,
    bob: BobLink,
    pub(super) eve: Option<InterceptResend>,
    alice_auth: InMemoryAuth,
    bob_auth: InMemoryAuth,
}

impl InProcessLink {
    /// `bootstrap` is the pre-shared authentication secret (copied to both
    /// sides); `eve_fraction` > 0 puts an intercept–resend attacker on the
    /// fibre.
    pub fn new(
        cfg: BlockConfig,
        alice_rng: LinkRng,
        bob_rng: LinkRng,
        eve: Option<(f64, NoiseRng)>,
        bootstrap: &SecretBytes,
    ) -> Result<Self, LinkError> {
        let eve = match eve {
            Some((f, noise)) if f > 0.0 => Some(InterceptResend::new(f, noise)?),
            _ => None,
        };
        Ok(Self {
            alice: AliceLink::new(cfg.clone(), alice_rng, 0)?,
            bob: BobLink::new(cfg, bob_rng)?,
            eve,
            alice_auth: InMemoryAuth(InMemoryAuthKeys::from_bootstrap(bootstrap.duplicate())),
            bob_auth: InMemoryAuth(InMemoryAuthKeys::from_bootstrap(bootstrap.duplicate())),
        })
    }

    pub fn config(&self) -> &BlockConfig {
        self.alice.config()
    }

    /// Runs one block to its end on both sides.
    pub fn run_block(&mut self) -> Result<SimulatedBlock, LinkError> {
        self.run_block_tampered(|_, _| {})
    }

    /// Runs one block, passing every classical message through `tamper`
    /// (`true` for Alice → Bob) before delivery: an active attacker on the
    /// classical channel, for tests and demonstrations.
    pub fn run_block_tampered(
        &mut self,
        mut tamper: impl FnMut(bool, &mut Vec<u8>),
    ) -> Result<SimulatedBlock, LinkError> {
        let mut to_bob: VecDeque<LinkOutput> = self.alice.start_block()?.into();
        let mut to_alice: VecDeque<Vec<u8>> = VecDeque::new();
        let (mut alice_done, mut bob_done) = (None, None);
        let mut intercepted = 0u64;
        while alice_done.is_none() || bob_done.is_none() {
            if let Some(out) = to_bob.pop_front() {
                match out {
                    LinkOutput::Fibre(mut frame) => {
                        if let Some(eve) = self.eve.as_mut() {
                            intercepted += eve.intercept(&mut frame) as u64;
                        }
                        collect(self.bob.handle_fibre(&frame)?, &mut to_alice, &mut bob_done);
                    }
                    LinkOutput::Send(mut msg) => {
                        tamper(true, &mut msg);
                        let outs = self.bob.handle(&msg, &mut self.bob_auth)?;
                        collect(outs, &mut to_alice, &mut bob_done);
                    }
                    done => alice_done = Some(done),
                }
            } else if let Some(mut msg) = to_alice.pop_front() {
                tamper(false, &mut msg);
                for out in self.alice.handle(&msg, &mut self.alice_auth)? {
                    match out {
                        LinkOutput::Fibre(_) | LinkOutput::Send(_) => to_bob.push_back(out),
                        done => alice_done = Some(done),
                    }
                }
            } else {
                return Err(LinkError::Config(
                    "the block stalled with no message in flight",
                ));
            }
        }
        let (alice, bob) = (alice_done.expect("loop"), bob_done.expect("loop"));
        Ok(match (alice, bob) {
            (LinkOutput::Key(a), LinkOutput::Key(b)) => {
                let alice_net = self.replenish_and_split(a.key.bits(), &a, true);
                let bob_net = self.replenish_and_split(b.key.bits(), &b, false);
                SimulatedBlock {
                    alice: a.report,
                    bob: b.report,
                    keys: Some((alice_net, bob_net)),
                    intercepted,
                }
            }
            (a, b) => SimulatedBlock {
                alice: report_of(a),
                bob: report_of(b),
                keys: None,
                intercepted,
            },
        })
    }

    /// Puts the first bytes of a final key back into the authentication
    /// store (as much as the block's tags consumed, so the store never
    /// shrinks) and returns the rest as the net key.
    fn replenish_and_split(&mut self, bits: usize, k: &FinalKey, alice: bool) -> SecretBytes {
        let bytes = k.key.to_bytes(bits / 8);
        let r = AUTH_KEY_BYTES_PER_BLOCK.min(bytes.len());
        let store = if alice {
            &mut self.alice_auth
        } else {
            &mut self.bob_auth
        };
        store
            .0
            .replenish(SecretBytes::from_slice(&bytes.expose()[..r]));
        SecretBytes::from_slice(&bytes.expose()[r..])
    }
}

fn collect(outs: Vec<LinkOutput>, to_alice: &mut VecDeque<Vec<u8>>, done: &mut Option<LinkOutput>) {
    for out in outs {
        match out {
            LinkOutput::Send(m) => to_alice.push_back(m),
            LinkOutput::Fibre(_) => {}
            other => *done = Some(other),
        }
    }
}

fn report_of(out: LinkOutput) -> BlockReport {
    match out {
        LinkOutput::Key(k) => k.report,
        LinkOutput::Aborted(r) => r,
        _ => BlockReport::default(),
    }
}
