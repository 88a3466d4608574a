//! The in-memory key pool of one peer: blocks, regions, lockstep takes.
//!
//! Owns the block map and the consumption bookkeeping; knows nothing of
//! files, the network or the agent. Every operation is all-or-nothing: an
//! error leaves the pool exactly as it was, so a refused `take_at` can never
//! half-consume a block.
//!
//! # Why the two peers never take the same bytes
//!
//! Both peers may start takes at the same time (each authenticating its own
//! frames, tunnels initiated from either side). Each block of length `L` is
//! therefore split once, by position, into two regions:
//!
//! * `[0, L/2)` — drawn from only by takes the QKD **transmitter** initiates;
//! * `[L/2, L)` — drawn from only by takes the QKD **receiver** initiates.
//!
//! [`KeyPool::take`] draws only from the caller's own region and
//! [`KeyPool::take_at`] accepts a reference only if every segment lies in the
//! *peer's* region. A byte can therefore be chosen by exactly one initiator,
//! whatever the message interleaving: two concurrent initiations touch
//! disjoint regions, and the responder's check turns any reference into the
//! wrong region (bug or hostile peer) into an error instead of a reuse.
//! Within one region only that initiator allocates, so its choices are
//! sequential and the responder sees them as a set of disjoint ranges that
//! may arrive in any order. The split is fixed by the block length alone, so
//! both peers compute it identically without talking. The cost: when one side
//! initiates much more than the other, the other's halves wait unused.
//!
//! Every failure is on the side of waste: bytes consumed on one side and not
//! the other are reconciled by [`super::agreement`], which keeps a byte only
//! if both sides still hold it.

use std::collections::BTreeMap;
use std::fmt;

use thiserror::Error;
use zeroize::Zeroize;

use super::range_set::RangeSet;
use crate::qkd::wire::{WireError, WireReader, WireWriter};
use crate::secret::SecretBytes;

/// Largest block accepted: 8 Mbit, eight times the largest QKD block
/// (~10^6 bits) the link stack produces.
pub const MAX_BLOCK_BYTES: u32 = 1 << 20;
/// Most blocks a pool holds; bounds memory and the reconnect summary.
pub const MAX_BLOCKS: usize = 16_384;
/// Most consumed intervals a pool tracks in total; bounds the summary.
/// Takes allocate lowest-first, so fragmentation stays near one interval per
/// block and region; only out-of-order `take_at`s add more, transiently.
pub const MAX_TOTAL_INTERVALS: usize = 65_536;
/// Largest single take (one ETSI GS QKD 014 key request of 8 kbit fits
/// many times over).
pub const MAX_TAKE_BYTES: u32 = 1 << 16;
/// Most segments one [`KeyRef`] may name.
pub const MAX_SEGMENTS: usize = 256;

/// A block's identity, agreed by both peers (the QKD block driver assigns it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockId(pub u64);

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The side's QKD role; it decides which half of each block this side's own
/// takes draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Transmitter,
    Receiver,
}

impl Role {
    pub fn peer(self) -> Role {
        match self {
            Role::Transmitter => Role::Receiver,
            Role::Receiver => Role::Transmitter,
        }
    }

    /// The half of a block of `len` bytes that `self`'s initiations draw from.
    pub fn region(self, len: u32) -> (u32, u32) {
        match self {
            Role::Transmitter => (0, len / 2),
            Role::Receiver => (len / 2, len),
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Role::Transmitter => 1,
            Role::Receiver => 2,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Role> {
        match c {
            1 => Some(Role::Transmitter),
            2 => Some(Role::Receiver),
            _ => None,
        }
    }
}

/// What key material is taken for; counted separately for status/metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyUse {
    /// Direct SA keys (AES key + salt).
    SaKey,
    /// One-time authentication keys of the QKD classical channel.
    Auth,
    /// Keys that wrap session keys (`wrapped` keying mode).
    Wrap,
    /// Keys delivered to local applications.
    Application,
    /// Keys authenticating the peer channel's frames.
    Channel,
    /// One-time pads and tag keys of relayed keys on this hop
    /// ([`crate::relay`]).
    Relay,
}

impl KeyUse {
    pub const ALL: [KeyUse; 6] = [
        KeyUse::SaKey,
        KeyUse::Auth,
        KeyUse::Wrap,
        KeyUse::Application,
        KeyUse::Channel,
        KeyUse::Relay,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable name, as status, metrics and the pool audit show it.
    pub fn name(self) -> &'static str {
        match self {
            KeyUse::SaKey => "sa_key",
            KeyUse::Auth => "auth",
            KeyUse::Wrap => "wrap",
            KeyUse::Application => "application",
            KeyUse::Channel => "channel",
            KeyUse::Relay => "relay",
        }
    }

    pub(crate) fn from_index(i: u8) -> Option<KeyUse> {
        Self::ALL.get(usize::from(i)).copied()
    }
}

/// Contiguous bytes of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub block: BlockId,
    pub offset: u32,
    pub len: u32,
}

impl Segment {
    fn end(&self) -> Option<u32> {
        self.offset.checked_add(self.len)
    }
}

/// Where a take's bytes came from: public positions, no key bytes. The
/// initiator sends it; the peer passes it to [`KeyPool::take_at`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRef {
    segments: Vec<Segment>,
}

impl KeyRef {
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Total bytes referenced.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|s| u64::from(s.len)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn encode(&self, w: &mut WireWriter) {
        w.u32(self.segments.len() as u32);
        for s in &self.segments {
            w.u64(s.block.0).u32(s.offset).u32(s.len);
        }
    }

    /// Decodes at most [`MAX_SEGMENTS`] segments; positions are checked
    /// against the pool by `take_at`, not here.
    pub fn decode(r: &mut WireReader<'_>) -> Result<Self, WireError> {
        let n = r.u32("key reference segment count")? as usize;
        if n > MAX_SEGMENTS {
            return Err(WireError::TooLong {
                what: "key reference segments",
                len: n as u64,
                max: MAX_SEGMENTS as u64,
            });
        }
        let mut segments = Vec::with_capacity(n);
        for _ in 0..n {
            segments.push(Segment {
                block: BlockId(r.u64("key reference block")?),
                offset: r.u32("key reference offset")?,
                len: r.u32("key reference length")?,
            });
        }
        Ok(Self { segments })
    }
}

/// Takes and bytes for one [`KeyUse`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UseCounter {
    /// Takes this side initiated ([`KeyPool::take`]).
    pub initiated_takes: u64,
    pub initiated_bytes: u64,
    /// Takes the peer initiated and this side accepted ([`KeyPool::take_at`]).
    pub accepted_takes: u64,
    pub accepted_bytes: u64,
}

/// Lifetime counters of a pool (persisted with it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounters {
    pub per_use: [UseCounter; KeyUse::ALL.len()],
    pub appended_blocks: u64,
    pub appended_bytes: u64,
    /// Bytes dropped by reconnect agreement (held here, not by the peer).
    pub discarded_bytes: u64,
}

impl PoolCounters {
    pub fn for_use(&self, u: KeyUse) -> &UseCounter {
        &self.per_use[u.index()]
    }
}

/// A snapshot for status and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStatus {
    pub role: Role,
    pub blocks: usize,
    /// Unconsumed bytes in total.
    pub available_bytes: u64,
    /// Unconsumed bytes this side's own takes may draw from.
    pub available_to_initiate: u64,
    /// Unconsumed bytes reserved for the peer's takes.
    pub available_to_accept: u64,
    pub low_water: u64,
    /// `available_to_initiate` is below `low_water`: ask for more key.
    pub below_low_water: bool,
    pub counters: PoolCounters,
}

/// Why a pool operation was refused. Carries positions only, never key bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PoolError {
    #[error(
        "block {id} is not above the highest block ID seen ({high_water}); block IDs must increase"
    )]
    BlockIdNotIncreasing { id: BlockId, high_water: BlockId },
    #[error("block {id} is empty")]
    EmptyBlock { id: BlockId },
    #[error("block {id} has {len} bytes, more than the limit of {MAX_BLOCK_BYTES}")]
    BlockTooLarge { id: BlockId, len: usize },
    #[error("the pool already holds {MAX_BLOCKS} blocks; consume key or stop the QKD link")]
    TooManyBlocks,
    #[error("a take of {len} bytes is outside 1..={MAX_TAKE_BYTES}")]
    BadTakeLength { len: u64 },
    #[error(
        "{wanted} bytes wanted for {key_use:?}, only {available} left in this side's region; wait for more QKD key"
    )]
    Exhausted {
        key_use: KeyUse,
        wanted: u32,
        available: u64,
    },
    #[error("key reference names {segments} segments, more than {MAX_SEGMENTS}")]
    TooManySegments { segments: usize },
    #[error(
        "key reference: block {block} is not held here (never received, discarded or fully used)"
    )]
    NotHeld { block: BlockId },
    #[error("key reference: block {block} bytes {offset}+{len} are out of bounds or empty")]
    OutOfBounds {
        block: BlockId,
        offset: u32,
        len: u32,
    },
    #[error("key reference: block {block} bytes {offset}+{len} are outside the initiator's region")]
    OutsideRegion {
        block: BlockId,
        offset: u32,
        len: u32,
    },
    #[error("key reference: block {block} bytes {offset}+{len} are already consumed")]
    AlreadyConsumed {
        block: BlockId,
        offset: u32,
        len: u32,
    },
    #[error(
        "the pool's consumed ranges are too fragmented (limit {MAX_TOTAL_INTERVALS} intervals)"
    )]
    TooFragmented,
}

/// One QKD output block and the positions already consumed from it.
/// Consumed bytes are zero in `data`.
pub(super) struct Block {
    pub(super) data: SecretBytes,
    pub(super) consumed: RangeSet,
}

impl Block {
    pub(super) fn len(&self) -> u32 {
        self.data.len() as u32
    }

    fn available_in(&self, (s, e): (u32, u32)) -> u64 {
        self.consumed
            .gaps(s, e)
            .iter()
            .map(|&(a, b)| u64::from(b - a))
            .sum()
    }

    pub(super) fn is_used_up(&self) -> bool {
        self.consumed.covered() == u64::from(self.len())
    }
}

/// The key pool shared with one peer.
pub struct KeyPool {
    pub(super) role: Role,
    pub(super) blocks: BTreeMap<BlockId, Block>,
    /// Highest block ID ever appended or agreed; appends must exceed it, so an
    /// ID is never reused for different bytes even after its block is gone.
    pub(super) high_water: Option<BlockId>,
    pub(super) counters: PoolCounters,
    pub(super) low_water: u64,
}

impl fmt::Debug for KeyPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPool")
            .field("role", &self.role)
            .field("blocks", &self.blocks.len())
            .field("available_bytes", &self.available())
            .field("high_water", &self.high_water)
            .finish_non_exhaustive()
    }
}

impl KeyPool {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            blocks: BTreeMap::new(),
            high_water: None,
            counters: PoolCounters::default(),
            low_water: 0,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The smallest ID the next appended block may carry.
    pub fn next_block_id(&self) -> BlockId {
        BlockId(self.high_water.map_or(0, |h| h.0 + 1))
    }

    pub fn high_water(&self) -> Option<BlockId> {
        self.high_water
    }

    /// Adds a QKD output block under the ID both peers agreed on.
    pub fn append(&mut self, id: BlockId, data: SecretBytes) -> Result<(), PoolError> {
        if let Some(h) = self.high_water.filter(|h| id <= *h) {
            return Err(PoolError::BlockIdNotIncreasing { id, high_water: h });
        }
        if data.is_empty() {
            return Err(PoolError::EmptyBlock { id });
        }
        if data.len() > MAX_BLOCK_BYTES as usize {
            return Err(PoolError::BlockTooLarge {
                id,
                len: data.len(),
            });
        }
        if self.blocks.len() >= MAX_BLOCKS {
            return Err(PoolError::TooManyBlocks);
        }
        self.counters.appended_blocks += 1;
        self.counters.appended_bytes += data.len() as u64;
        self.high_water = Some(id);
        self.blocks.insert(
            id,
            Block {
                data,
                consumed: RangeSet::new(),
            },
        );
        Ok(())
    }

    /// Takes `len` fresh bytes from this side's region (oldest block first)
    /// and returns where they came from, for the peer's [`Self::take_at`].
    pub fn take(&mut self, key_use: KeyUse, len: u32) -> Result<(KeyRef, SecretBytes), PoolError> {
        if len == 0 || len > MAX_TAKE_BYTES {
            return Err(PoolError::BadTakeLength { len: len.into() });
        }
        let mut segments = Vec::new();
        let mut need = len;
        'blocks: for (&id, block) in &self.blocks {
            for (s, e) in {
                let (rs, re) = self.role.region(block.len());
                block.consumed.gaps(rs, re)
            } {
                let n = (e - s).min(need);
                segments.push(Segment {
                    block: id,
                    offset: s,
                    len: n,
                });
                need -= n;
                if need == 0 {
                    break 'blocks;
                }
            }
        }
        if need > 0 {
            return Err(PoolError::Exhausted {
                key_use,
                wanted: len,
                available: self.available_for(self.role),
            });
        }
        let key_ref = KeyRef { segments };
        let key = self.consume(&key_ref, self.role)?;
        let c = &mut self.counters.per_use[key_use.index()];
        c.initiated_takes += 1;
        c.initiated_bytes += u64::from(len);
        Ok((key_ref, key))
    }

    /// Takes exactly the bytes the peer's take named. Refuses (changing
    /// nothing) anything not held, already consumed, or outside the peer's
    /// region.
    pub fn take_at(&mut self, key_ref: &KeyRef, key_use: KeyUse) -> Result<SecretBytes, PoolError> {
        let len = key_ref.len();
        if len == 0 || len > u64::from(MAX_TAKE_BYTES) {
            return Err(PoolError::BadTakeLength { len });
        }
        let key = self.consume(key_ref, self.role.peer())?;
        let c = &mut self.counters.per_use[key_use.index()];
        c.accepted_takes += 1;
        c.accepted_bytes += len;
        Ok(key)
    }

    /// Re-applies a take recorded in the journal (either side's), with the
    /// same checks, discarding the bytes.
    pub(super) fn replay_take(
        &mut self,
        key_ref: &KeyRef,
        key_use: KeyUse,
        initiated_here: bool,
    ) -> Result<(), PoolError> {
        if initiated_here {
            self.consume(key_ref, self.role)?;
            let c = &mut self.counters.per_use[key_use.index()];
            c.initiated_takes += 1;
            c.initiated_bytes += key_ref.len();
        } else {
            self.take_at(key_ref, key_use)?;
        }
        Ok(())
    }

    /// Validates every segment against `initiator`'s region, then copies the
    /// bytes out, zeroises them in the pool and drops used-up blocks.
    fn consume(&mut self, key_ref: &KeyRef, initiator: Role) -> Result<SecretBytes, PoolError> {
        self.validate(key_ref, initiator)?;
        let mut key = SecretBytes::zeroed(key_ref.len() as usize);
        let mut at = 0usize;
        for seg in &key_ref.segments {
            let block = self.blocks.get_mut(&seg.block).expect("validated");
            let (s, e) = (seg.offset as usize, (seg.offset + seg.len) as usize);
            key.expose_mut()[at..at + seg.len as usize].copy_from_slice(&block.data.expose()[s..e]);
            block.data.expose_mut()[s..e].zeroize();
            block.consumed.insert(seg.offset, seg.offset + seg.len);
            at += seg.len as usize;
        }
        self.blocks.retain(|_, b| !b.is_used_up());
        Ok(key)
    }

    fn validate(&self, key_ref: &KeyRef, initiator: Role) -> Result<(), PoolError> {
        if key_ref.segments.len() > MAX_SEGMENTS {
            return Err(PoolError::TooManySegments {
                segments: key_ref.segments.len(),
            });
        }
        // Segments of one reference must not overlap each other either:
        // check against a scratch copy of each touched block's set.
        let mut scratch: BTreeMap<BlockId, RangeSet> = BTreeMap::new();
        for seg in &key_ref.segments {
            let (block, offset, len) = (seg.block, seg.offset, seg.len);
            let b = self
                .blocks
                .get(&seg.block)
                .ok_or(PoolError::NotHeld { block })?;
            let end = seg
                .end()
                .filter(|&e| len > 0 && e <= b.len())
                .ok_or(PoolError::OutOfBounds { block, offset, len })?;
            let (rs, re) = initiator.region(b.len());
            if offset < rs || end > re {
                return Err(PoolError::OutsideRegion { block, offset, len });
            }
            let set = scratch.entry(block).or_insert_with(|| b.consumed.clone());
            if set.intersects(offset, end) {
                return Err(PoolError::AlreadyConsumed { block, offset, len });
            }
            set.insert(offset, end);
        }
        let before: usize = scratch
            .keys()
            .map(|id| self.blocks[id].consumed.interval_count())
            .sum();
        let after: usize = scratch.values().map(RangeSet::interval_count).sum();
        if self.interval_count() - before + after > MAX_TOTAL_INTERVALS {
            return Err(PoolError::TooFragmented);
        }
        Ok(())
    }

    pub(super) fn interval_count(&self) -> usize {
        self.blocks
            .values()
            .map(|b| b.consumed.interval_count())
            .sum()
    }

    /// Unconsumed bytes in total.
    pub fn available(&self) -> u64 {
        self.blocks
            .values()
            .map(|b| u64::from(b.len()) - b.consumed.covered())
            .sum()
    }

    /// Unconsumed bytes in the region `initiator`'s takes draw from.
    pub fn available_for(&self, initiator: Role) -> u64 {
        self.blocks
            .values()
            .map(|b| b.available_in(initiator.region(b.len())))
            .sum()
    }

    /// Unconsumed bytes of block `id` (0 if it is gone): all of them, or
    /// only the region `initiator`'s takes draw from.
    pub fn available_in_block(&self, id: BlockId, initiator: Option<Role>) -> u64 {
        self.blocks.get(&id).map_or(0, |b| {
            let len = b.len();
            b.available_in(initiator.map_or((0, len), |r| r.region(len)))
        })
    }

    /// Sets the level of this side's own region below which
    /// [`PoolStatus::below_low_water`] is raised.
    pub fn set_low_water(&mut self, bytes: u64) {
        self.low_water = bytes;
    }

    pub fn is_below_low_water(&self) -> bool {
        self.available_for(self.role) < self.low_water
    }

    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    pub fn counters(&self) -> &PoolCounters {
        &self.counters
    }

    pub fn status(&self) -> PoolStatus {
        let available_to_initiate = self.available_for(self.role);
        PoolStatus {
            role: self.role,
            blocks: self.blocks.len(),
            available_bytes: self.available(),
            available_to_initiate,
            available_to_accept: self.available_for(self.role.peer()),
            low_water: self.low_water,
            below_low_water: available_to_initiate < self.low_water,
            counters: self.counters,
        }
    }
}
