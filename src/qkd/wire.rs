//! Bounded binary encoding shared by every QKD protocol message.
//!
//! Messages of the post-processing stages cross the network between agents,
//! so decoding treats its input as hostile: every length is checked against a
//! caller-given maximum before anything is allocated, truncation and trailing
//! bytes are errors, and nothing panics. Integers are little-endian.
//! The encoded bytes are also what the authentication stage tags, so an
//! encoding must be canonical (one byte string per message).

use thiserror::Error;

/// Why a message could not be decoded. Field-less where possible: these come
/// from the network and are counted, not pretty-printed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("message truncated while reading {0}")]
    Truncated(&'static str),
    #[error("{what}: length {len} exceeds the limit {max}")]
    TooLong {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Appends fields to a message buffer.
#[derive(Default)]
pub struct WireWriter {
    buf: Vec<u8>,
}

impl WireWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.u64(v.to_bits())
    }

    /// A length-prefixed (u32) byte string.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).expect("field longer than 4 GiB"));
        self.buf.extend_from_slice(v);
        self
    }

    /// A length-prefixed (u32) list of u32.
    pub fn u32s(&mut self, v: &[u32]) -> &mut Self {
        self.u32(u32::try_from(v.len()).expect("list longer than 2^32"));
        for x in v {
            self.u32(*x);
        }
        self
    }

    /// A bit string: u64 bit count, then the packed little-endian words
    /// (bit `i` is bit `i % 64` of word `i / 64`). Bits past the count in the
    /// last word must be zero; the reader enforces it.
    pub fn bits(&mut self, nbits: u64, words: &[u64]) -> &mut Self {
        assert_eq!(words.len() as u64, nbits.div_ceil(64), "word count");
        self.u64(nbits);
        for w in words {
            self.u64(*w);
        }
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Reads fields from an untrusted message.
pub struct WireReader<'a> {
    buf: &'a [u8],
}

impl<'a> WireReader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    /// A finite f64 (NaN and infinities are rejected).
    pub fn f64(&mut self, what: &'static str) -> Result<f64, WireError> {
        let v = f64::from_bits(self.u64(what)?);
        if v.is_finite() {
            Ok(v)
        } else {
            Err(WireError::Invalid(what))
        }
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], WireError> {
        let len = self.u32(what)? as usize;
        check_len(what, len as u64, max as u64)?;
        self.take(len, what)
    }

    /// A length-prefixed list of at most `max` u32.
    pub fn u32s(&mut self, what: &'static str, max: usize) -> Result<Vec<u32>, WireError> {
        let len = self.u32(what)? as usize;
        check_len(what, len as u64, max as u64)?;
        let raw = self.take(len * 4, what)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }

    /// A bit string of at most `max_bits` bits: returns (bit count, words).
    pub fn bits(
        &mut self,
        what: &'static str,
        max_bits: u64,
    ) -> Result<(u64, Vec<u64>), WireError> {
        let nbits = self.u64(what)?;
        check_len(what, nbits, max_bits)?;
        let nwords = nbits.div_ceil(64) as usize;
        let raw = self.take(nwords * 8, what)?;
        let words: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        if nbits % 64 != 0 {
            let last = words[nwords - 1];
            if last >> (nbits % 64) != 0 {
                return Err(WireError::Invalid(what));
            }
        }
        Ok((nbits, words))
    }

    /// Bytes not yet read.
    /// A u32 count that must be in `1..=max`; checked before the caller
    /// allocates anything for the items.
    pub fn count(&mut self, what: &'static str, max: usize) -> Result<usize, WireError> {
        let n = self.u32(what)? as usize;
        if n == 0 || n > max {
            return Err(WireError::TooLong {
                what,
                len: n as u64,
                max: max as u64,
            });
        }
        Ok(n)
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Ends decoding; trailing bytes are an error (encodings are canonical).
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.buf.len()))
        }
    }
}

fn check_len(what: &'static str, len: u64, max: u64) -> Result<(), WireError> {
    if len > max {
        Err(WireError::TooLong { what, len, max })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut w = WireWriter::new();
        w.u8(7).u16(513).u32(70_000).u64(1 << 40).f64(0.25);
        w.bytes(b"abc").u32s(&[1, 2, 3]).bits(70, &[u64::MAX, 0x3F]);
        let buf = w.finish();
        let mut r = WireReader::new(&buf);
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u16("b").unwrap(), 513);
        assert_eq!(r.u32("c").unwrap(), 70_000);
        assert_eq!(r.u64("d").unwrap(), 1 << 40);
        assert_eq!(r.f64("e").unwrap(), 0.25);
        assert_eq!(r.bytes("f", 3).unwrap(), b"abc");
        assert_eq!(r.u32s("g", 3).unwrap(), vec![1, 2, 3]);
        assert_eq!(r.bits("h", 70).unwrap(), (70, vec![u64::MAX, 0x3F]));
        r.finish().unwrap();
    }

    #[test]
    fn hostile_inputs_are_rejected() {
        // Length above the limit: refused before allocating.
        let mut w = WireWriter::new();
        w.u32(u32::MAX);
        let buf = w.finish();
        assert!(matches!(
            WireReader::new(&buf).u32s("list", 1000),
            Err(WireError::TooLong { .. })
        ));
        // Truncated.
        assert_eq!(
            WireReader::new(&[1, 2]).u32("x"),
            Err(WireError::Truncated("x"))
        );
        // Non-zero padding bits in a bit string.
        let mut w = WireWriter::new();
        w.u64(3).u64(0b1000);
        let buf = w.finish();
        assert_eq!(
            WireReader::new(&buf).bits("k", 64),
            Err(WireError::Invalid("k"))
        );
        // Trailing bytes.
        let r = WireReader::new(&[0]);
        assert_eq!(r.finish(), Err(WireError::Trailing(1)));
        // NaN.
        let mut w = WireWriter::new();
        w.f64(f64::NAN);
        assert!(WireReader::new(&w.finish()).f64("q").is_err());
    }
}
