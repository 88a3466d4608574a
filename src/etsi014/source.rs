//! The ETSI 014 key source's decisions, without I/O: when the master asks
//! its KME for keys, what it offers the peer, when bytes may enter the pool
//! on each side, and how failures back off. The agent's task
//! (`agent::etsi014_task`) does the HTTPS calls, the control messages and
//! the pool appends that these state machines ask for.
//!
//! The protocol (master = the link's QKD transmitter, see
//! [`crate::config::Etsi014`]):
//!
//! 1. master: pool below `pool_target_bytes` → `status` + `enc_keys`
//!    (`batch` keys) at its KME; records the key_IDs as seen; offers them
//!    with the pool block ID it will use ([`KeyOffer`], control kind 6);
//! 2. slave: checks the offer (key size, count, block ID, no key_ID seen
//!    before), `dec_keys` at its own KME with the master's SAE ID, checks
//!    the keys, records the key_IDs, appends the block, acknowledges
//!    ([`KeyOfferAck`], control kind 7; a refusal says `accepted = false`);
//! 3. master: appends the same block only on an accepting ack.
//!
//! So neither side ever uses bytes the other lacks: the master's block
//! exists only after the slave's. A lost ack (the session dropped) leaves
//! the block on the slave only; the pool agreement of the next session drops
//! it, and block IDs only increase, so it is never reused. Each block is the
//! offer's keys concatenated in the offer's order.

use std::time::Duration;

use thiserror::Error;
use tokio::time::Instant;
use uuid::Uuid;

use super::api::{KeyItem, MAX_KEYS_PER_DOCUMENT, decode_key_ids, encode_key_ids};
use super::client::KmeError;
use super::seen::{RecordError, SeenKeyIds};
use crate::keys::BlockId;
use crate::keys::pool::MAX_BLOCK_BYTES;
use crate::qkd::wire::{WireError, WireReader, WireWriter};
use crate::secret::SecretBytes;

/// First retry delay after a failure; it doubles up to `retry_max`.
pub const RETRY_MIN: Duration = Duration::from_secs(1);

/// The settings both sides' state machines use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceConfig {
    pub key_size_bits: u32,
    pub batch: u32,
    pub pool_target_bytes: u64,
    pub retry_max: Duration,
    /// How long the master waits for the slave's ack (the slave's KME
    /// calls and retries must fit).
    pub ack_timeout: Duration,
}

/// The master's offer: "I hold these keys; block `block` will be them".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyOffer {
    pub block: BlockId,
    pub size_bits: u32,
    pub key_ids: Vec<Uuid>,
}

impl KeyOffer {
    /// On the control stream (kind 6): block ID, key size, key_IDs.
    pub fn encode(&self, w: &mut WireWriter) {
        w.u64(self.block.0).u32(self.size_bits);
        encode_key_ids(w, &self.key_ids);
    }

    pub fn decode(r: &mut WireReader<'_>) -> Result<Self, WireError> {
        let block = BlockId(r.u64("offer block")?);
        let size_bits = r.u32("offer key size")?;
        let key_ids = decode_key_ids(r, "offer key_IDs", MAX_KEYS_PER_DOCUMENT)?;
        Ok(Self {
            block,
            size_bits,
            key_ids,
        })
    }
}

/// The slave's answer to a [`KeyOffer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyOfferAck {
    pub block: BlockId,
    /// The slave appended the block; `false`: it refused the offer (its
    /// KME failed, a key_ID was seen before, the offer was bad).
    pub accepted: bool,
}

impl KeyOfferAck {
    /// On the control stream (kind 7): block ID, accepted flag.
    pub fn encode(&self, w: &mut WireWriter) {
        w.u64(self.block.0).u8(u8::from(self.accepted));
    }

    pub fn decode(r: &mut WireReader<'_>) -> Result<Self, WireError> {
        let block = BlockId(r.u64("ack block")?);
        let accepted = match r.u8("ack flag")? {
            0 => false,
            1 => true,
            _ => return Err(WireError::Invalid("ack flag")),
        };
        Ok(Self { block, accepted })
    }
}

/// Why the source made no key this time. Never carries key bytes.
#[derive(Debug, Error)]
pub enum SourceError {
    #[error(transparent)]
    Kme(#[from] KmeError),
    #[error(
        "key_ID {0} was used before on this link: refused (a replayed offer, or a KME repeating itself)"
    )]
    Replayed(Uuid),
    #[error("cannot record used key_IDs: {0}")]
    Record(String),
    #[error("the peer did not acknowledge block {block} within {after:?}; its keys are discarded")]
    AckTimeout { block: BlockId, after: Duration },
    #[error(
        "the peer refused block {block} (its KME failed or it found the offer bad; see its status)"
    )]
    PeerRefused { block: BlockId },
    #[error("offer refused: {0}")]
    BadOffer(String),
    #[error("an acknowledgement for block {0} that was not offered")]
    UnexpectedAck(BlockId),
    /// A relayed key could not be sent or did not arrive
    /// ([`crate::relay`]; the same offer protocol carries relayed keys).
    #[error("relay: {0}")]
    Relay(String),
    /// No fault: the source must wait for key before it can make more
    /// (a relay's first hop has too little QKD key for a pad yet). Retried
    /// with the back-off, without an alarm.
    #[error("waiting for key: {0}")]
    Waiting(String),
}

impl From<RecordError> for SourceError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Seen(id) => SourceError::Replayed(id),
            RecordError::Store(e) => SourceError::Record(e.to_string()),
        }
    }
}

/// Exponential back-off: [`RETRY_MIN`], doubling, at most `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    max: Duration,
    failures: u32,
    until: Option<Instant>,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Self {
            max: max.max(RETRY_MIN),
            failures: 0,
            until: None,
        }
    }

    /// Records a failure; returns the delay before the next attempt.
    pub fn fail(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let shift = (self.failures - 1).min(30);
        let delay = RETRY_MIN.saturating_mul(1 << shift).min(self.max);
        self.until = Some(now + delay);
        delay
    }

    pub fn succeed(&mut self) {
        self.failures = 0;
        self.until = None;
    }

    /// Until when attempts wait, if they do.
    pub fn waiting_until(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|u| *u > now)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// What the master's task should do next.
#[derive(Debug, PartialEq, Eq)]
pub enum MasterAction {
    /// Nothing until this instant, an ack, a pool change or a new session.
    Wait(Option<Instant>),
    /// Ask the KME for `number` keys (status, then enc_keys).
    Fetch { number: u32 },
    /// The pending offer's ack is overdue; the offer is dropped and the
    /// back-off started (report [`SourceError::AckTimeout`]).
    AckOverdue { block: BlockId, after: Duration },
}

struct Pending {
    offer: KeyOffer,
    block: SecretBytes,
    deadline: Instant,
}

/// The master side of one link.
pub struct Master {
    cfg: SourceConfig,
    backoff: Backoff,
    fetching: bool,
    pending: Option<Pending>,
    /// The next block ID may not be below this: an offered ID is never
    /// offered again, even if its ack never came.
    floor: BlockId,
}

impl Master {
    pub fn new(cfg: SourceConfig) -> Self {
        Self {
            backoff: Backoff::new(cfg.retry_max),
            cfg,
            fetching: false,
            pending: None,
            floor: BlockId(0),
        }
    }

    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The offer awaiting its ack.
    pub fn pending(&self) -> Option<&KeyOffer> {
        self.pending.as_ref().map(|p| &p.offer)
    }

    /// Decides the next step. `ready`: the pool is agreed for the current
    /// session; `pool_bytes`: what the pool holds unconsumed.
    pub fn poll(&mut self, now: Instant, ready: bool, pool_bytes: u64) -> MasterAction {
        if let Some(p) = &self.pending {
            if now < p.deadline {
                return MasterAction::Wait(Some(p.deadline));
            }
            let block = p.offer.block;
            self.pending = None;
            self.backoff.fail(now);
            return MasterAction::AckOverdue {
                block,
                after: self.cfg.ack_timeout,
            };
        }
        if !ready || self.fetching || pool_bytes >= self.cfg.pool_target_bytes {
            return MasterAction::Wait(None);
        }
        if let Some(until) = self.backoff.waiting_until(now) {
            return MasterAction::Wait(Some(until));
        }
        self.fetching = true;
        MasterAction::Fetch {
            number: self.cfg.batch,
        }
    }

    /// The KME's answer to a [`MasterAction::Fetch`]. On success the key_IDs
    /// are recorded as seen and the offer to send is returned; the block
    /// waits for the ack. `next_block` is the pool's next block ID.
    pub fn fetched(
        &mut self,
        now: Instant,
        result: Result<Vec<KeyItem>, SourceError>,
        next_block: BlockId,
        seen: &mut SeenKeyIds,
    ) -> Result<KeyOffer, SourceError> {
        self.fetching = false;
        let outcome = self.make_offer(now, result, next_block, seen);
        if outcome.is_err() {
            self.backoff.fail(now);
        }
        outcome
    }

    fn make_offer(
        &mut self,
        now: Instant,
        result: Result<Vec<KeyItem>, SourceError>,
        next_block: BlockId,
        seen: &mut SeenKeyIds,
    ) -> Result<KeyOffer, SourceError> {
        let keys = result?;
        let ids: Vec<Uuid> = keys.iter().map(|k| k.key_id).collect();
        check_count(ids.len(), self.cfg.key_size_bits)?;
        let block_bytes = concat(&keys, self.cfg.key_size_bits)?;
        seen.record(&ids)?;
        let block = next_block.max(self.floor);
        self.floor = BlockId(block.0 + 1);
        let offer = KeyOffer {
            block,
            size_bits: self.cfg.key_size_bits,
            key_ids: ids,
        };
        self.pending = Some(Pending {
            offer: offer.clone(),
            block: block_bytes,
            deadline: now + self.cfg.ack_timeout,
        });
        Ok(offer)
    }

    /// The slave's ack. An accepting ack of the pending offer returns the
    /// block to append (the same bytes the slave appended).
    pub fn acked(
        &mut self,
        now: Instant,
        ack: KeyOfferAck,
    ) -> Result<(BlockId, SecretBytes), SourceError> {
        match self.pending.take() {
            Some(p) if p.offer.block == ack.block => {
                if ack.accepted {
                    self.backoff.succeed();
                    Ok((p.offer.block, p.block))
                } else {
                    self.backoff.fail(now);
                    Err(SourceError::PeerRefused { block: ack.block })
                }
            }
            other => {
                self.pending = other;
                Err(SourceError::UnexpectedAck(ack.block))
            }
        }
    }

    /// The pending offer's keys will never arrive (a relay refused them):
    /// dropped, and the back-off started. `false` if `key_ids` are not the
    /// pending offer's.
    pub fn refused(&mut self, now: Instant, key_id: &Uuid) -> bool {
        if !self
            .pending
            .as_ref()
            .is_some_and(|p| p.offer.key_ids.contains(key_id))
        {
            return false;
        }
        self.pending = None;
        self.backoff.fail(now);
        true
    }

    /// The session ended or the pool is no longer agreed: a pending offer
    /// can no longer be acknowledged on it; its keys are dropped.
    pub fn abandon(&mut self) -> Option<BlockId> {
        self.pending.take().map(|p| p.offer.block)
    }
}

/// The slave side of one link: checks offers and turns dec_keys answers
/// into pool blocks.
pub struct Slave {
    cfg: SourceConfig,
}

impl Slave {
    pub fn new(cfg: SourceConfig) -> Self {
        Self { cfg }
    }

    /// Checks an offer before asking the KME: the configured key size, a
    /// count that fits one block, a block ID the pool can take, and no
    /// key_ID seen before.
    pub fn check_offer(
        &self,
        offer: &KeyOffer,
        next_block: BlockId,
        seen: &SeenKeyIds,
    ) -> Result<(), SourceError> {
        if offer.size_bits != self.cfg.key_size_bits {
            return Err(SourceError::BadOffer(format!(
                "keys of {} bits, but [peer.etsi014] key_size here is {}; configure both \
                 gateways alike",
                offer.size_bits, self.cfg.key_size_bits
            )));
        }
        check_count(offer.key_ids.len(), offer.size_bits)?;
        if offer.block < next_block {
            return Err(SourceError::BadOffer(format!(
                "block {} is not above the pool's last block ({} is the next allowed)",
                offer.block, next_block
            )));
        }
        if let Some(id) = seen.first_seen(&offer.key_ids) {
            return Err(SourceError::Replayed(id));
        }
        Ok(())
    }

    /// dec_keys' answer for `offer` (already checked by the client for
    /// count, size and IDs): records the key_IDs and returns the block.
    pub fn accept(
        &self,
        offer: &KeyOffer,
        keys: Vec<KeyItem>,
        seen: &mut SeenKeyIds,
    ) -> Result<SecretBytes, SourceError> {
        let ids: Vec<Uuid> = keys.iter().map(|k| k.key_id).collect();
        if ids != offer.key_ids {
            return Err(SourceError::BadOffer(
                "dec_keys returned other key_IDs than offered".into(),
            ));
        }
        let block = concat(&keys, offer.size_bits)?;
        seen.record(&ids)?;
        Ok(block)
    }
}

/// Most keys of `size_bits` one offer (one pool block) may name.
pub fn max_keys_per_offer(size_bits: u32) -> usize {
    let per_block = MAX_BLOCK_BYTES as usize / (size_bits as usize / 8).max(1);
    per_block.min(MAX_KEYS_PER_DOCUMENT)
}

fn check_count(n: usize, size_bits: u32) -> Result<(), SourceError> {
    let max = max_keys_per_offer(size_bits);
    if n == 0 || n > max || size_bits == 0 || !size_bits.is_multiple_of(8) {
        return Err(SourceError::BadOffer(format!(
            "{n} keys of {size_bits} bits: 1..={max} keys of a whole number of bytes expected"
        )));
    }
    Ok(())
}

/// The keys' bytes in order, each checked to be `size_bits / 8` long.
fn concat(keys: &[KeyItem], size_bits: u32) -> Result<SecretBytes, SourceError> {
    let each = size_bits as usize / 8;
    if let Some(k) = keys.iter().find(|k| k.key.len() != each) {
        return Err(SourceError::BadOffer(format!(
            "key {} has {} bytes, {each} expected",
            k.key_id,
            k.key.len()
        )));
    }
    let mut block = SecretBytes::zeroed(each * keys.len());
    for (i, k) in keys.iter().enumerate() {
        block.expose_mut()[i * each..(i + 1) * each].copy_from_slice(k.key.expose());
    }
    Ok(block)
}

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
