//! Reconnect agreement: two peers that restarted or lost messages agree on
//! the key bytes both still hold, and drop the rest.
//!
//! The exchange, with the pool frozen (no takes, no appends) from sending
//! the summary until the digests have been compared:
//!
//! 1. each side sends [`KeyPool::summary`] (a [`PoolSummary`]);
//! 2. each side calls [`KeyPool::apply_agreement`] with the peer's summary:
//!    a block is kept only if both hold it with the same length, and a byte
//!    of it stays available only if it is available on both sides (consumed
//!    ranges are united); everything else is zeroised and dropped;
//! 3. each side sends the resulting [`HoldingsDigest`] (an
//!    [`AgreementCheck`]) and compares it with its own; equal digests mean
//!    equal holdings, a mismatch means a pool changed during the exchange and
//!    the exchange must be repeated (never use keys until they match).
//!
//! [`agree`] is symmetric, so both sides compute the same result from the two
//! summaries without a third message. Uniting consumed ranges is what makes
//! a lost persist or a rolled-back state file safe: bytes that either side
//! ever handed out stay consumed on both.
//!
//! What a summary reveals: block IDs, block lengths and consumed offsets,
//! which are public anyway (key references carry them in the clear). It never
//! contains key bytes, and the digest is SHA-256 over that public summary
//! only; checking the key bytes themselves is left to their first use, which
//! authenticates (a wrong key fails its MAC or its ESP ICV).
//!
//! This module touches no files and no sockets; messages are encoded with
//! [`crate::qkd::wire`] and bounded by the pool limits.

use sha2::{Digest, Sha256};

use super::pool::{Block, BlockId, KeyPool, MAX_BLOCK_BYTES, MAX_BLOCKS, MAX_TOTAL_INTERVALS};
use super::range_set::RangeSet;
use crate::qkd::wire::{WireError, WireReader, WireWriter};

const SUMMARY_VERSION: u8 = 1;
const DIGEST_DOMAIN: &[u8] = b"qkd-ipsec pool holdings v1\0";

/// One held block: its ID, length and consumed ranges (no key bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSummary {
    pub id: BlockId,
    pub len: u32,
    pub consumed: RangeSet,
}

/// What one side holds, in canonical form (blocks ascending by ID).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolSummary {
    pub high_water: Option<BlockId>,
    pub blocks: Vec<BlockSummary>,
}

/// SHA-256 of a canonical [`PoolSummary`]; equal digests, equal holdings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldingsDigest(pub [u8; 32]);

/// Step 3 of the exchange: "this is what I now hold".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgreementCheck {
    pub digest: HoldingsDigest,
}

/// What [`KeyPool::apply_agreement`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgreementOutcome {
    pub kept_blocks: usize,
    pub discarded_blocks: usize,
    /// Unconsumed bytes dropped with discarded blocks.
    pub discarded_bytes: u64,
    /// Bytes this side held as available that the peer had consumed.
    pub newly_consumed_bytes: u64,
    /// Digest of the holdings after the change, for the [`AgreementCheck`].
    pub digest: HoldingsDigest,
}

impl PoolSummary {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::new();
        w.u8(SUMMARY_VERSION);
        w.u64(self.high_water.map_or(0, |h| h.0 + 1));
        w.u32(self.blocks.len() as u32);
        for b in &self.blocks {
            w.u64(b.id.0).u32(b.len);
            w.u32(b.consumed.interval_count() as u32);
            for &(s, e) in b.consumed.ranges() {
                w.u32(s).u32(e);
            }
        }
        w.finish()
    }

    /// Decodes a peer's summary, refusing anything non-canonical or beyond
    /// the pool limits.
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = WireReader::new(buf);
        if r.u8("summary version")? != SUMMARY_VERSION {
            return Err(WireError::Invalid("summary version"));
        }
        let high_water = r.u64("summary high water")?.checked_sub(1).map(BlockId);
        let n = bounded(r.u32("summary block count")?, MAX_BLOCKS, "summary blocks")?;
        let mut blocks: Vec<BlockSummary> = Vec::with_capacity(n);
        let mut intervals = 0usize;
        for _ in 0..n {
            let id = BlockId(r.u64("summary block id")?);
            let len = r.u32("summary block length")?;
            let k = r.u32("summary range count")? as usize;
            intervals += k;
            bounded(intervals as u32, MAX_TOTAL_INTERVALS, "summary ranges")?;
            let mut ranges = Vec::with_capacity(k);
            for _ in 0..k {
                ranges.push((r.u32("summary range")?, r.u32("summary range")?));
            }
            let consumed = RangeSet::from_canonical(ranges)
                .ok_or(WireError::Invalid("summary ranges not canonical"))?;
            let ascending = blocks.last().is_none_or(|p| p.id < id);
            let within = high_water.is_some_and(|h| id <= h);
            let ranges_fit = consumed.ranges().last().is_none_or(|&(_, e)| e <= len);
            if !ascending || !within || len == 0 || len > MAX_BLOCK_BYTES || !ranges_fit {
                return Err(WireError::Invalid("summary block"));
            }
            if consumed.covered() == u64::from(len) {
                // A used-up block is not held; listing it is not canonical.
                return Err(WireError::Invalid("summary lists a used-up block"));
            }
            blocks.push(BlockSummary { id, len, consumed });
        }
        r.finish()?;
        Ok(Self { high_water, blocks })
    }

    pub fn digest(&self) -> HoldingsDigest {
        let mut h = Sha256::new();
        h.update(DIGEST_DOMAIN);
        h.update(self.encode());
        HoldingsDigest(h.finalize().into())
    }

    /// Bytes still available across all blocks.
    pub fn available(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| u64::from(b.len) - b.consumed.covered())
            .sum()
    }
}

fn bounded(n: u32, max: usize, what: &'static str) -> Result<usize, WireError> {
    if n as usize > max {
        Err(WireError::TooLong {
            what,
            len: n.into(),
            max: max as u64,
        })
    } else {
        Ok(n as usize)
    }
}

impl AgreementCheck {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::with_capacity(33);
        w.u8(SUMMARY_VERSION);
        w.bytes(&self.digest.0);
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = WireReader::new(buf);
        if r.u8("agreement check version")? != SUMMARY_VERSION {
            return Err(WireError::Invalid("agreement check version"));
        }
        let d = r.bytes("holdings digest", 32)?;
        let digest = HoldingsDigest(
            d.try_into()
                .map_err(|_| WireError::Invalid("holdings digest"))?,
        );
        r.finish()?;
        Ok(Self { digest })
    }
}

/// What both sides keep: blocks held by both with the same length, with the
/// union of their consumed ranges. Symmetric: `agree(a, b) == agree(b, a)`.
pub fn agree(a: &PoolSummary, b: &PoolSummary) -> PoolSummary {
    let high_water = a.high_water.max(b.high_water);
    let mut blocks = Vec::new();
    let mut intervals = 0usize;
    let mut j = 0;
    for x in &a.blocks {
        while j < b.blocks.len() && b.blocks[j].id < x.id {
            j += 1;
        }
        let Some(y) = b.blocks.get(j).filter(|y| y.id == x.id) else {
            continue;
        };
        if x.len != y.len {
            // The same ID with different lengths: one side is wrong; neither
            // can tell which bytes are shared, so neither keeps the block.
            continue;
        }
        let mut consumed = x.consumed.clone();
        consumed.union_with(&y.consumed);
        if consumed.covered() == u64::from(x.len) {
            continue;
        }
        // United ranges can fragment past the limit only in pathological
        // cases; dropping the later blocks keeps the result encodable and is
        // still the same on both sides.
        intervals += consumed.interval_count();
        if intervals > MAX_TOTAL_INTERVALS {
            break;
        }
        blocks.push(BlockSummary {
            id: x.id,
            len: x.len,
            consumed,
        });
    }
    PoolSummary { high_water, blocks }
}

impl KeyPool {
    /// What this side holds, for step 1 of the exchange.
    pub fn summary(&self) -> PoolSummary {
        PoolSummary {
            high_water: self.high_water,
            blocks: self
                .blocks
                .iter()
                .map(|(&id, b)| BlockSummary {
                    id,
                    len: b.len(),
                    consumed: b.consumed.clone(),
                })
                .collect(),
        }
    }

    /// Digest of the current holdings (what [`AgreementCheck`] carries).
    pub fn holdings_digest(&self) -> HoldingsDigest {
        self.summary().digest()
    }

    /// Step 2: keep only what the peer holds too; zeroise the rest.
    pub fn apply_agreement(&mut self, peer: &PoolSummary) -> AgreementOutcome {
        let agreed = agree(&self.summary(), peer);
        let mut keep = agreed.blocks.iter().peekable();
        let mut discarded_blocks = 0;
        let mut discarded_bytes = 0u64;
        let mut newly_consumed_bytes = 0u64;
        let mut kept = std::collections::BTreeMap::new();
        for (id, mut block) in std::mem::take(&mut self.blocks) {
            let available = u64::from(block.len()) - block.consumed.covered();
            let Some(target) = keep.next_if(|t| t.id == id) else {
                // Dropping the block zeroises its bytes (SecretBytes::drop).
                // Held by both with the same length, it left only because
                // the peer had used the rest: consumed, not discarded.
                let used_up_by_peer = peer
                    .blocks
                    .binary_search_by_key(&id, |b| b.id)
                    .is_ok_and(|i| peer.blocks[i].len == block.len());
                if used_up_by_peer {
                    newly_consumed_bytes += available;
                } else {
                    discarded_blocks += 1;
                    discarded_bytes += available;
                }
                continue;
            };
            newly_consumed_bytes += zeroise_newly_consumed(&mut block, &target.consumed);
            block.consumed = target.consumed.clone();
            kept.insert(id, block);
        }
        self.blocks = kept;
        self.high_water = agreed.high_water;
        self.counters.discarded_bytes += discarded_bytes;
        AgreementOutcome {
            kept_blocks: self.blocks.len(),
            discarded_blocks,
            discarded_bytes,
            newly_consumed_bytes,
            digest: agreed.digest(),
        }
    }
}

/// Zeroises the bytes of `target` not yet consumed in `block`; returns how many.
fn zeroise_newly_consumed(block: &mut Block, target: &RangeSet) -> u64 {
    use zeroize::Zeroize;
    let mut n = 0u64;
    for &(s, e) in target.ranges() {
        for (a, b) in block.consumed.gaps(s, e) {
            block.data.expose_mut()[a as usize..b as usize].zeroize();
            n += u64::from(b - a);
        }
    }
    n
}
