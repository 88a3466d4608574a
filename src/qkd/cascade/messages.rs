//! Cascade messages and their canonical encoding through [`crate::qkd::wire`].
//!
//! Bob (corrector) sends a [`ParityRequest`] naming blocks and bisection
//! nodes; Alice (responder) answers with a [`ParityReply`] holding exactly
//! one parity bit per name, in request order. Parity bits are disclosed by
//! construction (they are what Cascade leaks and what privacy amplification
//! pays for), but they are still derived from the key: `Debug` shows counts
//! only, and nothing here logs them.
//!
//! Decoding is bounded by caller-given limits and never panics.

use std::fmt;

use crate::qkd::wire::{WireError, WireReader, WireWriter};

use super::params::Schedule;

const TAG_REQUEST: u8 = 0xC1;
const TAG_REPLY: u8 = 0xC2;

/// Encoded size of one [`BlockRange`] / [`NodeRef`]: u8 + u32 + u32.
const ENTRY_BYTES: usize = 9;

/// The top-level parities of blocks `first .. first + count` of a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    pub pass: u8,
    pub first: u32,
    pub count: u32,
}

/// A node of the bisection tree of one top-level block: `node` is its heap
/// id (1 = the whole block, 2i / 2i+1 = the halves of node i).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRef {
    pub pass: u8,
    pub block: u32,
    pub node: u32,
}

/// Bob → Alice: the parities Bob needs this round, all independent of each
/// other, batched into one message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParityRequest {
    /// 0 for the first request, then one more per request.
    pub round: u32,
    pub ranges: Vec<BlockRange>,
    pub nodes: Vec<NodeRef>,
}

impl ParityRequest {
    /// Number of parity bits this request asks for.
    pub fn parity_count(&self) -> u64 {
        self.ranges.iter().map(|r| u64::from(r.count)).sum::<u64>() + self.nodes.len() as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w =
            WireWriter::with_capacity(13 + ENTRY_BYTES * (self.ranges.len() + self.nodes.len()));
        w.u8(TAG_REQUEST).u32(self.round);
        w.u32(u32::try_from(self.ranges.len()).expect("range count fits u32"));
        for r in &self.ranges {
            w.u8(r.pass).u32(r.first).u32(r.count);
        }
        w.u32(u32::try_from(self.nodes.len()).expect("node count fits u32"));
        for n in &self.nodes {
            w.u8(n.pass).u32(n.block).u32(n.node);
        }
        w.finish()
    }

    /// Decodes a request of at most `max_nodes` nodes (and at most
    /// [`Schedule::MAX_PASSES`] ranges). Validity against a schedule is the
    /// responder's business.
    pub fn decode(buf: &[u8], max_nodes: usize) -> Result<Self, WireError> {
        let mut r = WireReader::new(buf);
        if r.u8("request tag")? != TAG_REQUEST {
            return Err(WireError::Invalid("request tag"));
        }
        let round = r.u32("round")?;
        let count = list_len(&mut r, "block ranges", Schedule::MAX_PASSES)?;
        let mut ranges = Vec::with_capacity(count);
        for _ in 0..count {
            ranges.push(BlockRange {
                pass: r.u8("range pass")?,
                first: r.u32("range first")?,
                count: r.u32("range count")?,
            });
        }
        let count = list_len(&mut r, "nodes", max_nodes)?;
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            nodes.push(NodeRef {
                pass: r.u8("node pass")?,
                block: r.u32("node block")?,
                node: r.u32("node id")?,
            });
        }
        r.finish()?;
        Ok(Self {
            round,
            ranges,
            nodes,
        })
    }
}

/// Reads a list length, refusing it if above `max` or longer than the bytes
/// left (so nothing is allocated for a lie).
fn list_len(r: &mut WireReader<'_>, what: &'static str, max: usize) -> Result<usize, WireError> {
    let len = r.u32(what)? as usize;
    if len > max {
        return Err(WireError::TooLong {
            what,
            len: len as u64,
            max: max as u64,
        });
    }
    if len.saturating_mul(ENTRY_BYTES) > r.remaining() {
        return Err(WireError::Truncated(what));
    }
    Ok(len)
}

/// A packed string of parity bits (bit i = bit i % 64 of word i / 64).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ParityBits {
    len: usize,
    words: Vec<u64>,
}

impl ParityBits {
    pub fn with_capacity(bits: usize) -> Self {
        Self {
            len: 0,
            words: Vec::with_capacity(bits.div_ceil(64)),
        }
    }

    #[inline]
    pub fn push(&mut self, bit: bool) {
        if self.len.is_multiple_of(64) {
            self.words.push(0);
        }
        if bit {
            self.words[self.len / 64] |= 1 << (self.len % 64);
        }
        self.len += 1;
    }

    /// Bit `i`, or `None` past the end.
    #[inline]
    pub fn get(&self, i: usize) -> Option<bool> {
        (i < self.len).then(|| (self.words[i / 64] >> (i % 64)) & 1 == 1)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for ParityBits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParityBits(<{} bits>)", self.len)
    }
}

/// Alice → Bob: one parity per requested block and node, in request order
/// (all ranges first, then all nodes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParityReply {
    /// The round of the request answered.
    pub round: u32,
    pub parities: ParityBits,
}

impl ParityReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = WireWriter::with_capacity(13 + 8 * self.parities.words.len());
        w.u8(TAG_REPLY).u32(self.round);
        w.bits(self.parities.len as u64, &self.parities.words);
        w.finish()
    }

    /// Decodes a reply of at most `max_bits` parity bits.
    pub fn decode(buf: &[u8], max_bits: u64) -> Result<Self, WireError> {
        let mut r = WireReader::new(buf);
        if r.u8("reply tag")? != TAG_REPLY {
            return Err(WireError::Invalid("reply tag"));
        }
        let round = r.u32("round")?;
        let (len, words) = r.bits("parities", max_bits)?;
        r.finish()?;
        Ok(Self {
            round,
            parities: ParityBits {
                len: len as usize,
                words,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_request() -> impl Strategy<Value = ParityRequest> {
        let range = (any::<u8>(), any::<u32>(), any::<u32>())
            .prop_map(|(pass, first, count)| BlockRange { pass, first, count });
        let node = (any::<u8>(), any::<u32>(), any::<u32>())
            .prop_map(|(pass, block, node)| NodeRef { pass, block, node });
        (
            any::<u32>(),
            prop::collection::vec(range, 0..=Schedule::MAX_PASSES),
            prop::collection::vec(node, 0..200),
        )
            .prop_map(|(round, ranges, nodes)| ParityRequest {
                round,
                ranges,
                nodes,
            })
    }

    fn arb_reply() -> impl Strategy<Value = ParityReply> {
        (any::<u32>(), prop::collection::vec(any::<bool>(), 0..500)).prop_map(|(round, bits)| {
            let mut parities = ParityBits::with_capacity(bits.len());
            bits.into_iter().for_each(|b| parities.push(b));
            ParityReply { round, parities }
        })
    }

    proptest! {
        #[test]
        fn request_roundtrips(m in arb_request()) {
            let bytes = m.encode();
            prop_assert_eq!(ParityRequest::decode(&bytes, 200).unwrap(), m);
        }

        #[test]
        fn reply_roundtrips(m in arb_reply()) {
            let bytes = m.encode();
            let back = ParityReply::decode(&bytes, 500).unwrap();
            prop_assert_eq!(back.encode(), bytes);
            prop_assert_eq!(back, m);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = ParityRequest::decode(&bytes, 1000);
            let _ = ParityReply::decode(&bytes, 1000);
        }

        #[test]
        fn corrupted_requests_are_rejected_or_reencode_identically(
            m in arb_request(), at in any::<prop::sample::Index>(), x in 1u8..=255,
        ) {
            let mut bytes = m.encode();
            let i = at.index(bytes.len());
            bytes[i] ^= x;
            // Either refused, or a different but canonical message.
            if let Ok(d) = ParityRequest::decode(&bytes, 200) {
                prop_assert_eq!(d.encode(), bytes);
            }
        }
    }

    #[test]
    fn limits_and_truncation_are_errors() {
        let m = ParityRequest {
            round: 3,
            ranges: vec![],
            nodes: vec![
                NodeRef {
                    pass: 0,
                    block: 1,
                    node: 2
                };
                10
            ],
        };
        let bytes = m.encode();
        assert!(matches!(
            ParityRequest::decode(&bytes, 9),
            Err(WireError::TooLong { .. })
        ));
        assert!(ParityRequest::decode(&bytes[..bytes.len() - 1], 10).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            ParityRequest::decode(&long, 10),
            Err(WireError::Trailing(1))
        );
        // A huge claimed count with few bytes is refused without allocating.
        let mut w = WireWriter::new();
        w.u8(TAG_REQUEST).u32(0).u32(0).u32(u32::MAX);
        assert!(ParityRequest::decode(&w.finish(), usize::MAX).is_err());
        // Wrong tag.
        assert!(ParityReply::decode(&bytes, 100).is_err());
        let reply = ParityReply::default().encode();
        assert!(ParityRequest::decode(&reply, 100).is_err());
        // Reply longer than allowed.
        let mut p = ParityBits::default();
        (0..65).for_each(|_| p.push(true));
        let r = ParityReply {
            round: 0,
            parities: p,
        }
        .encode();
        assert!(ParityReply::decode(&r, 64).is_err());
        assert!(ParityReply::decode(&r, 65).is_ok());
    }

    #[test]
    fn debug_shows_no_parity_values() {
        let mut p = ParityBits::default();
        p.push(true);
        p.push(false);
        assert_eq!(format!("{p:?}"), "ParityBits(<2 bits>)");
    }
}
