//! Reading whole frames from a socket into a bounded buffer.
//!
//! Owns the read buffer discipline shared by handshakes and sessions: read
//! until [`split_frame`] finds a whole frame, reserve only what a validated
//! header asks for (so an announced length over the limit is refused before
//! anything is allocated), and return the frame's bytes. Cancel-safe: bytes
//! already read stay in the caller's buffer.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::frame::{FrameError, FrameLimits, Split, split_frame};

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer closed the connection in the middle of a frame")]
    Truncated,
    #[error("socket read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes asked of the socket per read when no header says more.
const READ_CHUNK: usize = 4096;

/// Reads the next whole frame; returns its bytes (header, payload, tag).
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    limits: &FrameLimits,
) -> Result<Bytes, ReadError> {
    loop {
        let need = match split_frame(buf, limits)? {
            Split::Frame(f) => {
                let total = f.total_len();
                return Ok(buf.split_to(total).freeze());
            }
            Split::Incomplete { need } => need,
        };
        // `need` is bounded by the validated header (or is the header size),
        // so this reservation is bounded by the limits.
        buf.reserve(need.saturating_sub(buf.len()).max(READ_CHUNK));
        if reader.read_buf(buf).await? == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Truncated
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::frame::{FrameHeader, FrameType};

    /// A structurally valid fibre frame (the reader checks no tags).
    fn fibre_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = FrameHeader {
            frame_type: FrameType::Fibre,
            len: payload.len() as u32,
            seq: 1,
        }
        .to_bytes()
        .to_vec();
        f.extend_from_slice(payload);
        f
    }

    #[tokio::test]
    async fn frames_split_across_reads_and_eof_cases() {
        let a = fibre_frame(&[1; 5000]);
        let b = fibre_frame(b"xy");
        let mut all = a.clone();
        all.extend_from_slice(&b);
        // A reader that yields 7 bytes at a time.
        let mut r = tokio_test_reader(all.clone(), 7);
        let mut buf = BytesMut::new();
        let limits = FrameLimits::default();
        assert_eq!(read_frame(&mut r, &mut buf, &limits).await.unwrap(), a);
        assert_eq!(read_frame(&mut r, &mut buf, &limits).await.unwrap(), b);
        assert!(matches!(
            read_frame(&mut r, &mut buf, &limits).await,
            Err(ReadError::Closed)
        ));
        let mut r = tokio_test_reader(all[..100].to_vec(), 64);
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_frame(&mut r, &mut buf, &limits).await,
            Err(ReadError::Truncated)
        ));
        assert!(buf.capacity() < 64 * 1024, "reserved only what was asked");
    }

    #[tokio::test]
    async fn oversized_announcement_allocates_nothing_big() {
        let mut h = fibre_frame(&[]);
        h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = tokio_test_reader(h, 16);
        let mut buf = BytesMut::new();
        let err = read_frame(&mut r, &mut buf, &FrameLimits::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ReadError::Frame(FrameError::TooLong { .. })));
        assert!(buf.capacity() < 64 * 1024);
    }

    /// An in-memory reader returning at most `chunk` bytes per read.
    fn tokio_test_reader(data: Vec<u8>, chunk: usize) -> impl AsyncRead + Unpin {
        struct Chunked(std::io::Cursor<Vec<u8>>, usize);
        impl AsyncRead for Chunked {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                out: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                let n = self.1.min(out.remaining());
                let mut tmp = vec![0u8; n];
                let got = std::io::Read::read(&mut self.0, &mut tmp)?;
                out.put_slice(&tmp[..got]);
                std::task::Poll::Ready(Ok(()))
            }
        }
        Chunked(std::io::Cursor::new(data), chunk)
    }
}
