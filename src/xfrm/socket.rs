//! The NETLINK_XFRM transport: framing, sending, receiving, acks and dumps,
//! with every buffer that may hold key bytes zeroised after use.
//!
//! Why our own framing instead of netlink-proto/xfrmnetlink: those copy the
//! serialised request (key included) into buffers we cannot reach to wipe,
//! and parse GETSA dump replies (which carry the SA keys) into plain `Vec`s.
//! Here the send buffer is a `Zeroizing<Vec<u8>>`, the receive buffer is
//! wiped after each datagram, and reply parsing is left to callers that skip
//! algorithm attributes.
//!
//! Why a non-blocking socket under tokio's `AsyncFd` rather than a blocking
//! socket on a helper thread: the event stream must wait indefinitely without
//! pinning a thread, and the kernel answers most XFRM requests inside
//! `sendmsg` (the reply is queued before `send` returns), so the first
//! non-blocking `recv` nearly always succeeds without a wake-up. Requests on
//! one socket are serialised by a mutex; replies are matched by sequence
//! number, so replies to a cancelled request are skipped, not misread.
//!
//! `NETLINK_CAP_ACK` is set so the kernel does not echo our request (and its
//! key) back in error messages; `NETLINK_EXT_ACK` is set so errors carry the
//! kernel's explanation ("Requested AEAD algorithm not found").
//!
//! Nothing here logs message contents.

use std::io;

use netlink_packet_core::{
    Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_NOOP, NLMSG_OVERRUN, NetlinkBuffer,
};
use netlink_sys::{Socket, protocols::NETLINK_XFRM};
use nix::errno::Errno;
use tokio::io::unix::AsyncFd;
use tokio::sync::Mutex;
use zeroize::{Zeroize, Zeroizing};

use super::XfrmError;
use crate::netns::Netns;

/// Large enough for any single datagram the kernel sends on NETLINK_XFRM:
/// dumps are filled up to the reader's buffer size, capped at 32 KiB by
/// `netlink_dump`, and single replies are far smaller.
const RECV_BUFFER_LEN: usize = 64 * 1024;

const NLMSG_HDR_LEN: usize = 16;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// How a request expects to be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Zero or more reply messages, then an ack (NLMSG_ERROR with code 0).
    Ack,
    /// A multipart dump ending in NLMSG_DONE.
    Dump,
}

/// One socket, opened in a given namespace, serving one request at a time.
pub(crate) struct XfrmSocket {
    fd: AsyncFd<Socket>,
    state: Mutex<SocketState>,
}

struct SocketState {
    seq: u32,
    rx: Box<[u8]>,
}

/// Opens a NETLINK_XFRM socket inside `netns` (on a helper thread, see
/// [`crate::netns`]), configured and non-blocking, not yet registered with a
/// runtime.
pub(crate) fn open_raw(netns: &Netns, groups: &[u32]) -> Result<Socket, XfrmError> {
    netns.run(|| -> Result<Socket, XfrmError> {
        let mut socket = Socket::new(NETLINK_XFRM).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) {
                XfrmError::XfrmUserMissing
            } else {
                io_err("open NETLINK_XFRM socket", e)
            }
        })?;
        socket
            .bind_auto()
            .map_err(|e| io_err("bind NETLINK_XFRM socket", e))?;
        socket
            .set_cap_ack(true)
            .map_err(|e| io_err("set NETLINK_CAP_ACK", e))?;
        // Extended acks only add explanations; older kernels lack them.
        let _ = socket.set_ext_ack(true);
        for &group in groups {
            socket.add_membership(group).map_err(|e| {
                if e.raw_os_error() == Some(libc::EPERM) {
                    XfrmError::PermissionDenied {
                        operation: "subscribing to XFRM events",
                    }
                } else {
                    io_err("subscribe to XFRM multicast group", e)
                }
            })?;
        }
        socket
            .set_non_blocking(true)
            .map_err(|e| io_err("make NETLINK_XFRM socket non-blocking", e))?;
        Ok(socket)
    })?
}

/// Registers `socket` with the current tokio reactor.
pub(crate) fn register(
    socket: Socket,
    operation: &'static str,
) -> Result<AsyncFd<Socket>, XfrmError> {
    // SAFETY: `netlink_sys::Socket` owns its descriptor (closed only in its
    // Drop) and `as_raw_fd` always returns that same descriptor; the AsyncFd
    // takes ownership of the Socket, so the descriptor stays open and
    // unchanged for the AsyncFd's whole life.
    unsafe { AsyncFd::register(socket) }.map_err(|e| io_err(operation, e.into()))
}

pub(crate) fn io_err(operation: &'static str, source: io::Error) -> XfrmError {
    XfrmError::Io { operation, source }
}

impl XfrmSocket {
    /// Opens a request socket in `netns`. Must be called inside a tokio
    /// runtime (the socket is registered with its reactor).
    pub(crate) fn open(netns: &Netns) -> Result<Self, XfrmError> {
        let socket = open_raw(netns, &[])?;
        Ok(Self {
            fd: register(socket, "register netlink socket")?,
            state: Mutex::new(SocketState {
                seq: 0,
                rx: vec![0u8; RECV_BUFFER_LEN].into_boxed_slice(),
            }),
        })
    }

    /// Sends one request and collects its answer. `on_message` sees every
    /// reply message that is not an ack/done (type, payload); it must copy
    /// out what it needs — the receive buffer is wiped afterwards.
    pub(crate) async fn request<F>(
        &self,
        operation: &'static str,
        message_type: u16,
        payload: &(dyn Emitable + Sync),
        reply: Reply,
        mut on_message: F,
    ) -> Result<(), XfrmError>
    where
        F: FnMut(u16, &[u8]) -> Result<(), XfrmError>,
    {
        let mut state = self.state.lock().await;
        state.seq = state.seq.wrapping_add(1).max(1);
        let seq = state.seq;
        let flags = match reply {
            Reply::Ack => NLM_F_REQUEST | NLM_F_ACK,
            Reply::Dump => NLM_F_REQUEST | NLM_F_DUMP,
        };
        {
            let frame = frame(message_type, flags, seq, payload)?;
            self.send(operation, &frame).await?;
            // `frame` (possibly holding a key) is zeroised on drop here.
        }
        let rx = &mut state.rx;
        loop {
            let n = self.recv(operation, rx).await?;
            let outcome = walk_datagram(operation, &rx[..n], seq, &mut on_message);
            rx[..n].zeroize();
            match outcome? {
                Walk::Finished => return Ok(()),
                Walk::More => continue,
                Walk::Error { errno, message } => {
                    return Err(kernel_error(operation, errno, message));
                }
            }
        }
    }

    async fn send(&self, operation: &'static str, frame: &[u8]) -> Result<(), XfrmError> {
        loop {
            match self.fd.get_ref().send(frame, 0) {
                Ok(n) if n == frame.len() => return Ok(()),
                Ok(n) => {
                    return Err(XfrmError::Io {
                        operation,
                        source: io::Error::other(format!(
                            "short netlink send: {n} of {} bytes",
                            frame.len()
                        )),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut guard = self.fd.writable().await.map_err(|e| io_err(operation, e))?;
                    guard.clear_ready();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(map_socket_error(operation, e)),
            }
        }
    }

    /// Receives one datagram into `rx`, returning its length.
    async fn recv(&self, operation: &'static str, rx: &mut [u8]) -> Result<usize, XfrmError> {
        recv_datagram(&self.fd, operation, rx).await
    }
}

/// Receives one datagram from a non-blocking netlink socket. Tries
/// immediately (the kernel usually queued the answer during `send`) and only
/// then waits for readiness.
pub(crate) async fn recv_datagram(
    fd: &AsyncFd<Socket>,
    operation: &'static str,
    rx: &mut [u8],
) -> Result<usize, XfrmError> {
    loop {
        let mut slice: &mut [u8] = rx;
        // MSG_TRUNC makes recv report the real length of an oversized
        // datagram instead of silently cutting it.
        match fd.get_ref().recv(&mut slice, libc::MSG_TRUNC) {
            Ok(n) if n > rx.len() => {
                rx.zeroize();
                return Err(XfrmError::Malformed {
                    operation,
                    detail: format!("datagram of {n} bytes exceeds the {} byte buffer", rx.len()),
                });
            }
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut guard = fd.readable().await.map_err(|e| io_err(operation, e))?;
                guard.clear_ready();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(map_socket_error(operation, e)),
        }
    }
}

fn map_socket_error(operation: &'static str, e: io::Error) -> XfrmError {
    match e.raw_os_error() {
        Some(libc::EPERM) => XfrmError::PermissionDenied { operation },
        _ => io_err(operation, e),
    }
}

/// Serialises header + payload into a buffer that is zeroised on drop.
pub(crate) fn frame(
    message_type: u16,
    flags: u16,
    seq: u32,
    payload: &dyn Emitable,
) -> Result<Zeroizing<Vec<u8>>, XfrmError> {
    let total = NLMSG_HDR_LEN + payload.buffer_len();
    let length = u32::try_from(total).map_err(|_| XfrmError::InvalidSpec {
        what: "netlink message",
        reason: format!("{total} bytes do not fit a netlink header"),
    })?;
    let mut buf = Zeroizing::new(vec![0u8; total]);
    {
        let mut header = NetlinkBuffer::new(&mut buf[..]);
        header.set_length(length);
        header.set_message_type(message_type);
        header.set_flags(flags);
        header.set_sequence_number(seq);
        header.set_port_number(0);
    }
    payload.emit(&mut buf[NLMSG_HDR_LEN..]);
    Ok(buf)
}

/// Outcome of walking one datagram.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Walk {
    Finished,
    More,
    Error { errno: i32, message: Option<String> },
}

/// Walks the messages of one datagram with bounds checks, handing reply
/// messages for `seq` to `on_message`. Messages for other sequence numbers
/// (answers to cancelled requests) are skipped.
pub(crate) fn walk_datagram<F>(
    operation: &'static str,
    mut data: &[u8],
    seq: u32,
    on_message: &mut F,
) -> Result<Walk, XfrmError>
where
    F: FnMut(u16, &[u8]) -> Result<(), XfrmError>,
{
    let mut finished = false;
    while !data.is_empty() && !finished {
        let msg = NetlinkBuffer::new_checked(data).map_err(|e| XfrmError::Malformed {
            operation,
            detail: e.to_string(),
        })?;
        let len = msg.length() as usize;
        let kind = msg.message_type();
        let flags = msg.flags();
        let body = &data[NLMSG_HDR_LEN..len];
        if msg.sequence_number() == seq {
            match kind {
                NLMSG_NOOP => {}
                NLMSG_OVERRUN => {
                    return Err(XfrmError::Malformed {
                        operation,
                        detail: "NLMSG_OVERRUN".into(),
                    });
                }
                NLMSG_ERROR => {
                    let (errno, message) = parse_error(operation, flags, body)?;
                    if errno == 0 {
                        finished = true;
                    } else {
                        return Ok(Walk::Error { errno, message });
                    }
                }
                NLMSG_DONE => {
                    if flags & NLM_F_DUMP_INTR != 0 {
                        return Err(XfrmError::DumpInterrupted { operation });
                    }
                    // A dump may end in an error code in NLMSG_DONE.
                    if let Some(code) = body.get(..4) {
                        let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
                        if code < 0 {
                            return Ok(Walk::Error {
                                errno: -code,
                                message: None,
                            });
                        }
                    }
                    finished = true;
                }
                _ => {
                    if flags & NLM_F_DUMP_INTR != 0 {
                        return Err(XfrmError::DumpInterrupted { operation });
                    }
                    // A non-multipart reply (GETSA, ALLOCSPI) is followed
                    // by the ack; dump parts are followed by NLMSG_DONE.
                    on_message(kind, body)?;
                }
            }
        }
        // Messages are 4-byte aligned; the last one may lack padding.
        let advance = len.next_multiple_of(4).min(data.len());
        data = &data[advance..];
    }
    Ok(if finished { Walk::Finished } else { Walk::More })
}

/// Parses an NLMSG_ERROR body: the (negated) errno, then the offending
/// request's header (capped: we set NETLINK_CAP_ACK), then optional
/// extended-ack attributes carrying the kernel's message.
fn parse_error(
    operation: &'static str,
    flags: u16,
    body: &[u8],
) -> Result<(i32, Option<String>), XfrmError> {
    let malformed = |detail: &str| XfrmError::Malformed {
        operation,
        detail: detail.to_string(),
    };
    let code = body
        .get(..4)
        .ok_or_else(|| malformed("short NLMSG_ERROR"))?;
    let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    if code == 0 || flags & NLM_F_ACK_TLVS == 0 {
        return Ok((code.unsigned_abs() as i32, None));
    }
    let inner = body
        .get(4..4 + NLMSG_HDR_LEN)
        .ok_or_else(|| malformed("NLMSG_ERROR without the request header"))?;
    let tlv_start = if flags & NLM_F_CAPPED != 0 {
        4 + NLMSG_HDR_LEN
    } else {
        // Uncapped (should not happen with NETLINK_CAP_ACK): skip the echo.
        let inner_len = u32::from_ne_bytes([inner[0], inner[1], inner[2], inner[3]]) as usize;
        4 + inner_len.next_multiple_of(4)
    };
    let message = body.get(tlv_start..).and_then(|tlvs| {
        netlink_packet_core::NlasIterator::new(tlvs)
            .filter_map(Result::ok)
            .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
            .map(|nla| {
                let v = nla.value();
                let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
                // Bounded: the kernel's messages are short literals.
                String::from_utf8_lossy(&v[..end.min(256)]).into_owned()
            })
    });
    Ok((code.unsigned_abs() as i32, message))
}

/// Maps a kernel errno to an error; verbs refine EEXIST/ESRCH/ENOSYS with
/// their own context.
fn kernel_error(operation: &'static str, errno: i32, message: Option<String>) -> XfrmError {
    let errno = Errno::from_raw(errno);
    match errno {
        Errno::EPERM => XfrmError::PermissionDenied { operation },
        _ => XfrmError::Kernel {
            operation,
            errno,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NLM_F_MULTIPART;

    fn header(len: u32, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v
    }

    fn ack(seq: u32, code: i32, extack: Option<&str>) -> Vec<u8> {
        let mut body = code.to_ne_bytes().to_vec();
        body.extend(header(16, 0x10, 0, seq)); // echoed request header (capped)
        let mut flags = NLM_F_CAPPED;
        if let Some(msg) = extack {
            flags |= NLM_F_ACK_TLVS;
            let mut value = msg.as_bytes().to_vec();
            value.push(0);
            let nla_len = 4 + value.len();
            body.extend_from_slice(&(nla_len as u16).to_ne_bytes());
            body.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
            body.extend(value);
            while !body.len().is_multiple_of(4) {
                body.push(0);
            }
        }
        let mut m = header((16 + body.len()) as u32, NLMSG_ERROR, flags, seq);
        m.extend(body);
        m
    }

    #[test]
    fn ack_finishes_and_error_carries_extack() {
        let mut seen = 0;
        let mut count = |_: u16, _: &[u8]| {
            seen += 1;
            Ok(())
        };
        assert_eq!(
            walk_datagram("t", &ack(5, 0, None), 5, &mut count).unwrap(),
            Walk::Finished
        );
        let w = walk_datagram(
            "t",
            &ack(5, -libc::ENOSYS, Some("Requested AEAD algorithm not found")),
            5,
            &mut count,
        )
        .unwrap();
        assert_eq!(
            w,
            Walk::Error {
                errno: libc::ENOSYS,
                message: Some("Requested AEAD algorithm not found".into())
            }
        );
        assert_eq!(seen, 0);
    }

    #[test]
    fn replies_for_other_sequence_numbers_are_skipped() {
        let mut data = header(20, 0x10, 0, 4);
        data.extend_from_slice(&[1, 2, 3, 4]);
        data.extend(header(20, 0x10, 0, 5));
        data.extend_from_slice(&[9, 9, 9, 9]);
        data.extend(ack(5, 0, None));
        let mut got = Vec::new();
        let w = walk_datagram("t", &data, 5, &mut |k, b: &[u8]| {
            got.push((k, b.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(w, Walk::Finished);
        assert_eq!(got, vec![(0x10, vec![9, 9, 9, 9])]);
    }

    #[test]
    fn dump_done_and_interrupted_dump() {
        let mut data = header(20, 0x10, NLM_F_MULTIPART, 9);
        data.extend_from_slice(&[0; 4]);
        let mut done = header(20, NLMSG_DONE, NLM_F_MULTIPART, 9);
        done.extend_from_slice(&0i32.to_ne_bytes());
        let mut all = data.clone();
        all.extend(done);
        let mut n = 0;
        assert_eq!(
            walk_datagram("t", &all, 9, &mut |_, _: &[u8]| {
                n += 1;
                Ok(())
            })
            .unwrap(),
            Walk::Finished
        );
        assert_eq!(n, 1);
        assert_eq!(
            walk_datagram("t", &data, 9, &mut |_, _: &[u8]| Ok(())).unwrap(),
            Walk::More
        );
        let intr = header(16, 0x10, NLM_F_MULTIPART | NLM_F_DUMP_INTR, 9);
        assert!(matches!(
            walk_datagram("t", &intr, 9, &mut |_, _: &[u8]| Ok(())),
            Err(XfrmError::DumpInterrupted { .. })
        ));
    }

    #[test]
    fn truncated_and_garbage_datagrams_are_errors_not_panics() {
        let mut full = ack(1, -libc::EINVAL, Some("x"));
        for cut in 0..full.len() {
            let _ = walk_datagram("t", &full[..cut], 1, &mut |_, _: &[u8]| Ok(()));
        }
        // A length field pointing past the end.
        full[0] = 0xff;
        assert!(walk_datagram("t", &full, 1, &mut |_, _: &[u8]| Ok(())).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data: Vec<u8>, seq: u32) {
            let _ = walk_datagram("t", &data, seq, &mut |_, _: &[u8]| Ok(()));
        }
    }
}
