//! Plaintext encoding of a pool and of journal operations, before
//! encryption at rest.
//!
//! These byte strings contain key bytes, so they are built directly inside a
//! [`SecretBytes`] (sized first, then filled) and never in a plain `Vec`.
//! Decoding reads from the decrypted secret in place with
//! [`crate::qkd::wire::WireReader`] and copies key bytes only into new
//! secrets. The input is authenticated before it gets here, but decoding is
//! still bounded and panic-free: a bug or an old format must give an error,
//! not a crash. No file access here; see [`super::store`].

use super::pool::{
    Block, BlockId, KeyPool, KeyRef, KeyUse, MAX_BLOCK_BYTES, MAX_BLOCKS, MAX_TOTAL_INTERVALS,
    PoolCounters, Role,
};
use super::range_set::RangeSet;
use crate::qkd::wire::{WireError, WireReader, WireWriter};
use crate::secret::SecretBytes;

/// Writes fields into a pre-sized secret buffer.
struct SecretWriter {
    buf: SecretBytes,
    at: usize,
}

impl SecretWriter {
    fn new(len: usize) -> Self {
        Self {
            buf: SecretBytes::zeroed(len),
            at: 0,
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        // Sizes are computed before writing; overrunning is a bug here.
        self.buf.expose_mut()[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }

    fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }

    fn finish(self) -> SecretBytes {
        assert_eq!(self.at, self.buf.len(), "encoded size was mis-computed");
        self.buf
    }
}

/// Counters per key use, then the three block counters.
const COUNTER_FIELDS: usize = KeyUse::ALL.len() * 4 + 3;
/// Key uses in a format-version-1 snapshot (before `relay`).
const V1_USES: usize = 5;

/// The whole pool: high water, counters, then each block's positions and
/// its still-available bytes (consumed bytes are not written at all).
pub(super) fn encode_pool(pool: &KeyPool) -> SecretBytes {
    let mut size = 8 + COUNTER_FIELDS * 8 + 4;
    for b in pool.blocks.values() {
        let avail = u64::from(b.len()) - b.consumed.covered();
        size += 8 + 4 + 4 + 8 * b.consumed.interval_count() + 4 + avail as usize;
    }
    let mut w = SecretWriter::new(size);
    w.u64(pool.high_water.map_or(0, |h| h.0 + 1));
    let c = &pool.counters;
    for u in &c.per_use {
        for v in [
            u.initiated_takes,
            u.initiated_bytes,
            u.accepted_takes,
            u.accepted_bytes,
        ] {
            w.u64(v);
        }
    }
    for v in [c.appended_blocks, c.appended_bytes, c.discarded_bytes] {
        w.u64(v);
    }
    w.u32(pool.blocks.len() as u32);
    for (id, b) in &pool.blocks {
        w.u64(id.0);
        w.u32(b.len());
        w.u32(b.consumed.interval_count() as u32);
        for &(s, e) in b.consumed.ranges() {
            w.u32(s);
            w.u32(e);
        }
        let gaps = b.consumed.gaps(0, b.len());
        let avail: u32 = gaps.iter().map(|(s, e)| e - s).sum();
        w.u32(avail);
        for (s, e) in gaps {
            w.put(&b.data.expose()[s as usize..e as usize]);
        }
    }
    w.finish()
}

/// Decodes [`encode_pool`]'s output; `version` is the file's format
/// version (version 1 counted five key uses).
pub(super) fn decode_pool(buf: &[u8], role: Role, version: u16) -> Result<KeyPool, WireError> {
    let mut r = WireReader::new(buf);
    let mut pool = KeyPool::new(role);
    pool.high_water = r.u64("high water")?.checked_sub(1).map(BlockId);
    let uses = if version == 1 {
        V1_USES
    } else {
        KeyUse::ALL.len()
    };
    let mut fields = [0u64; COUNTER_FIELDS];
    let (per_use, blocks) = fields.split_at_mut(4 * KeyUse::ALL.len());
    for f in per_use[..4 * uses].iter_mut().chain(blocks) {
        *f = r.u64("counter")?;
    }
    pool.counters = counters_from(&fields);
    let n = r.u32("block count")? as usize;
    if n > MAX_BLOCKS {
        return Err(WireError::Invalid("block count"));
    }
    let mut intervals = 0usize;
    for _ in 0..n {
        let id = BlockId(r.u64("block id")?);
        let len = r.u32("block length")?;
        let k = r.u32("range count")? as usize;
        intervals += k;
        if intervals > MAX_TOTAL_INTERVALS {
            return Err(WireError::Invalid("range count"));
        }
        let mut ranges = Vec::with_capacity(k);
        for _ in 0..k {
            ranges.push((r.u32("range")?, r.u32("range")?));
        }
        let consumed = RangeSet::from_canonical(ranges).ok_or(WireError::Invalid("ranges"))?;
        let in_order = pool.blocks.keys().next_back().is_none_or(|p| *p < id);
        let fits = consumed.ranges().last().is_none_or(|&(_, e)| e <= len);
        if !in_order
            || pool.high_water.is_none_or(|h| id > h)
            || len == 0
            || len > MAX_BLOCK_BYTES
            || !fits
        {
            return Err(WireError::Invalid("block"));
        }
        let avail = r.bytes("block bytes", MAX_BLOCK_BYTES as usize)?;
        let gaps = consumed.gaps(0, len);
        if avail.len() as u64 != gaps.iter().map(|(s, e)| u64::from(e - s)).sum::<u64>()
            || avail.is_empty()
        {
            return Err(WireError::Invalid("block bytes"));
        }
        let mut data = SecretBytes::zeroed(len as usize);
        let mut at = 0usize;
        for (s, e) in gaps {
            let n = (e - s) as usize;
            data.expose_mut()[s as usize..e as usize].copy_from_slice(&avail[at..at + n]);
            at += n;
        }
        pool.blocks.insert(id, Block { data, consumed });
    }
    r.finish()?;
    Ok(pool)
}

fn counters_from(f: &[u64; COUNTER_FIELDS]) -> PoolCounters {
    let mut c = PoolCounters::default();
    for (i, u) in c.per_use.iter_mut().enumerate() {
        u.initiated_takes = f[4 * i];
        u.initiated_bytes = f[4 * i + 1];
        u.accepted_takes = f[4 * i + 2];
        u.accepted_bytes = f[4 * i + 3];
    }
    let blocks = 4 * KeyUse::ALL.len();
    c.appended_blocks = f[blocks];
    c.appended_bytes = f[blocks + 1];
    c.discarded_bytes = f[blocks + 2];
    c
}

/// One change recorded in the journal between two snapshots.
pub(super) enum JournalOp {
    Append {
        id: BlockId,
        data: SecretBytes,
    },
    Take {
        key_ref: KeyRef,
        key_use: KeyUse,
        initiated_here: bool,
    },
}

const OP_APPEND: u8 = 1;
const OP_TAKE: u8 = 2;

impl JournalOp {
    /// The record of an append (holds the block's key bytes).
    pub(super) fn encode_append(id: BlockId, data: &[u8]) -> SecretBytes {
        let mut w = SecretWriter::new(1 + 8 + 4 + data.len());
        w.u8(OP_APPEND);
        w.u64(id.0);
        w.u32(data.len() as u32);
        w.put(data);
        w.finish()
    }

    /// The record of a take: positions only, no key bytes.
    pub(super) fn encode_take(
        key_ref: &KeyRef,
        key_use: KeyUse,
        initiated_here: bool,
    ) -> SecretBytes {
        let mut pos = WireWriter::new();
        key_ref.encode(&mut pos);
        let pos = pos.finish();
        let mut w = SecretWriter::new(3 + pos.len());
        w.u8(OP_TAKE);
        w.u8(key_use.index() as u8);
        w.u8(u8::from(initiated_here));
        w.put(&pos);
        w.finish()
    }

    pub(super) fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = WireReader::new(buf);
        let op = match r.u8("journal op")? {
            OP_APPEND => {
                let id = BlockId(r.u64("block id")?);
                let data = r.bytes("block bytes", MAX_BLOCK_BYTES as usize)?;
                JournalOp::Append {
                    id,
                    data: SecretBytes::from_slice(data),
                }
            }
            OP_TAKE => {
                let key_use =
                    KeyUse::from_index(r.u8("key use")?).ok_or(WireError::Invalid("key use"))?;
                let initiated_here = match r.u8("initiator")? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Invalid("initiator")),
                };
                JournalOp::Take {
                    key_ref: KeyRef::decode(&mut r)?,
                    key_use,
                    initiated_here,
                }
            }
            _ => return Err(WireError::Invalid("journal op")),
        };
        r.finish()?;
        Ok(op)
    }
}
