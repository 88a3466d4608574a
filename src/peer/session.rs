//! One authenticated session: moving frames both ways and switching the
//! channel key in band.
//!
//! Owns a connection from the end of its handshake until it fails, is
//! replaced or is cancelled. Two concurrent halves run in the link's task:
//! the *reader* (verifies and delivers frames, runs the key-switch protocol,
//! answers switch requests) and the *writer* (seals and sends queued frames
//! and keepalives, control before QKD before fibre). The fibre stream is
//! sealed with the session's fibre key from the handshake, which a key
//! switch does not change ([`super::fibre`]). They are separate
//! futures so that a large write never stops reading (two peers writing
//! large frames at each other would otherwise deadlock on full TCP
//! buffers); the reader hands the writer link messages and key changes over
//! a small channel, so every key change happens exactly at its boundary
//! frame.
//!
//! Key switch (dialer D, acceptor A, current epoch n, each step persisted
//! before the next message is sent — see [`super::channel_key`]):
//! 1. D takes 32 bytes from the pool, sends `KeyOffer{n+1, ref}` (old keys);
//! 2. A takes the same bytes (`take_at`), records them as pending, sends
//!    `KeyAccept{n+1}` (old keys), then sends under the n+1 keys;
//! 3. D, on `KeyAccept`: commits n+1, receives under n+1 from then on, sends
//!    `KeyActivate{n+1}` (old keys), then sends under n+1;
//! 4. A, on `KeyActivate`: receives under n+1, promotes the pending key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

use super::PeerError;
use super::fibre::export::FibreKeyExport;
use super::fibre::{FibreError, FibreOpener, FibreSealer};
use super::frame::{FrameError, FrameType, HEADER_LEN, Opener, Sealer, Split, split_frame};
use super::handshake::{CHANNEL_KEY_LEN, Established, FrameKeys, SessionContext, frame_keys};
use super::link_message::LinkMessage;
use super::link_shared::{LinkRequest, LinkShared, Outbound, OutboundQueues};
use super::transport::{ReadError, read_frame};
use super::{Inbound, Stream};
use crate::secret::{Secret, SecretBytes};

/// A connection whose handshake succeeded, ready for a session.
pub(crate) struct AuthenticatedConn {
    pub stream: TcpStream,
    /// Bytes read past the last handshake frame.
    pub buffered: BytesMut,
    pub established: Established,
    pub remote: SocketAddr,
}

/// Why a session ended.
pub(crate) enum SessionEnd {
    Cancelled,
    /// A newer authenticated connection for this link arrived (acceptor).
    Replaced(Box<AuthenticatedConn>),
    Failed(SessionError),
}

/// What broke a session. Logged and counted; never carries key bytes.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("socket write failed: {0}")]
    Write(std::io::Error),
    #[error("cannot seal a frame: {0}")]
    Seal(FrameError),
    #[error("fibre frame refused: {0}")]
    Fibre(FibreError),
    #[error("cannot seal a fibre frame: {0}")]
    FibreSeal(FibreError),
    #[error("the channel-key record could not be written: {0}")]
    Store(String),
}

/// What the reader asks the writer to send.
struct WriterCmd {
    message: LinkMessage,
    /// New sending key, used from the frame after this one on.
    then_rekey: Option<Secret<32>>,
}

/// The session's fixed facts.
struct SessionParams<'a> {
    shared: &'a LinkShared,
    id: u64,
    dialer: bool,
    context: SessionContext,
    cancel: &'a CancellationToken,
}

/// Runs a session until it ends. Counts frames and failures.
pub(crate) async fn run(
    shared: &LinkShared,
    conn: AuthenticatedConn,
    id: u64,
    queues: &mut OutboundQueues,
    requests: &mut mpsc::Receiver<LinkRequest>,
    incoming: Option<&mut mpsc::Receiver<Box<AuthenticatedConn>>>,
    cancel: &CancellationToken,
) -> SessionEnd {
    let dialer = shared.is_dialer();
    let AuthenticatedConn {
        stream,
        buffered,
        established,
        ..
    } = conn;
    let Established {
        context,
        keys,
        fibre,
        ..
    } = established;
    let (send_key, recv_key) = keys.for_side(dialer);
    // The transmitter (dialer) only seals fibre, the receiver only opens it.
    let (fibre_sealer, fibre_opener) = if dialer {
        (Some(FibreSealer::new(fibre)), None)
    } else {
        (None, Some(FibreOpener::new(fibre)))
    };
    let (reader, writer) = stream.into_split();
    let params = SessionParams {
        shared,
        id,
        dialer,
        context,
        cancel,
    };
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    let reading = read_half(
        &params,
        reader,
        buffered,
        Openers {
            frames: Opener::new(recv_key),
            fibre: fibre_opener,
        },
        cmd_tx,
        requests,
        incoming,
    );
    let sealers = Sealers {
        frames: Sealer::new(send_key),
        fibre: fibre_sealer,
    };
    let writing = write_half(&params, writer, sealers, cmd_rx, queues);
    tokio::select! {
        end = reading => end,
        r = writing => match r {
            Ok(()) => SessionEnd::Cancelled,
            Err(e) => SessionEnd::Failed(e),
        },
    }
}

/// The reader's keys: frame MAC (changes at key switches) and, on the
/// receiver, the fibre key (fixed for the session).
struct Openers {
    frames: Opener,
    fibre: Option<FibreOpener>,
}

/// The writer's keys, as [`Openers`]; the transmitter holds the fibre one.
struct Sealers {
    frames: Sealer,
    fibre: Option<FibreSealer>,
}

/// State of an in-band key switch, on either side.
enum Switch {
    Idle,
    /// Dialer: offer sent, waiting for the acceptor's answer.
    Offered {
        epoch: u64,
        key: SecretBytes,
        reply: oneshot::Sender<Result<u64, PeerError>>,
    },
    /// Acceptor: accepted; receive keys change at `KeyActivate`.
    Accepted {
        epoch: u64,
        recv_key: Secret<32>,
    },
}

async fn read_half(
    p: &SessionParams<'_>,
    mut reader: OwnedReadHalf,
    mut buf: BytesMut,
    mut openers: Openers,
    cmds: mpsc::Sender<WriterCmd>,
    requests: &mut mpsc::Receiver<LinkRequest>,
    mut incoming: Option<&mut mpsc::Receiver<Box<AuthenticatedConn>>>,
) -> SessionEnd {
    let limits = p.shared.cfg.limits;
    let idle = p.shared.cfg.idle_timeout;
    let mut switch = Switch::Idle;
    let mut deadline = Instant::now() + idle;
    loop {
        let frame = tokio::select! {
            biased;
            () = p.cancel.cancelled() => return SessionEnd::Cancelled,
            Some(conn) = recv_opt(&mut incoming) => return SessionEnd::Replaced(conn),
            Some(req) = requests.recv() => {
                if let Err(e) = on_request(p, req, &mut switch, &cmds).await {
                    return SessionEnd::Failed(e);
                }
                continue;
            }
            r = timeout_at(deadline, read_frame(&mut reader, &mut buf, &limits)) => match r {
                Ok(Ok(frame)) => frame,
                Ok(Err(e)) => return SessionEnd::Failed(e.into()),
                Err(_) => return SessionEnd::Failed(SessionError::Idle(idle)),
            },
        };
        deadline = Instant::now() + idle;
        if let Err(e) = on_frame(p, frame, &mut openers, &mut switch, &cmds).await {
            return e;
        }
    }
}

/// Receives from an optional channel; pends forever without one.
async fn recv_opt<T>(rx: &mut Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn on_frame(
    p: &SessionParams<'_>,
    frame: Bytes,
    openers: &mut Openers,
    switch: &mut Switch,
    cmds: &mpsc::Sender<WriterCmd>,
) -> Result<(), SessionEnd> {
    let counters = &p.shared.counters;
    // read_frame returned exactly one whole frame that passed these checks.
    let Ok(Split::Frame(raw)) = split_frame(&frame, &p.shared.cfg.limits) else {
        return Err(violation(p, "frame changed between reads".into()));
    };
    let header = raw.header;
    if let Err(e) = openers.frames.open(&raw) {
        match e {
            FrameError::BadMac(_) => counters.auth_failures.fetch_add(1, Ordering::Relaxed),
            FrameError::Replay { .. } => counters.replays.fetch_add(1, Ordering::Relaxed),
            _ => counters.protocol_errors.fetch_add(1, Ordering::Relaxed),
        };
        return Err(SessionEnd::Failed(SessionError::Read(e.into())));
    }
    let mut payload = frame.slice(HEADER_LEN..HEADER_LEN + header.len as usize);
    let stream = match header.frame_type {
        FrameType::Qkd => Stream::Qkd,
        FrameType::Control => Stream::Control,
        // The fibre runs from the transmitter (dialer) to the receiver only,
        // so only the receiver holds a fibre opener.
        FrameType::Fibre if !p.dialer => {
            let Some(fibre) = openers.fibre.as_mut() else {
                return Err(violation(p, "fibre frame without a fibre key".into()));
            };
            payload = match fibre.open(&raw) {
                Ok(plain) => Bytes::from(plain),
                Err(e) => {
                    let c = match e {
                        FibreError::BadTag => &counters.auth_failures,
                        FibreError::Replay { .. } => &counters.replays,
                        _ => &counters.protocol_errors,
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    return Err(SessionEnd::Failed(SessionError::Fibre(e)));
                }
            };
            Stream::Fibre
        }
        FrameType::Link => {
            let msg = LinkMessage::decode(&payload).map_err(|e| violation(p, e.to_string()))?;
            return on_link_message(p, msg, &mut openers.frames, switch, cmds).await;
        }
        other => return Err(violation(p, format!("{other:?} frame inside a session"))),
    };
    counters.frames_in[stream.index()].fetch_add(1, Ordering::Relaxed);
    counters
        .bytes_in
        .fetch_add(frame.len() as u64, Ordering::Relaxed);
    let item = Inbound {
        session: p.id,
        payload,
    };
    tokio::select! {
        r = p.shared.inbound[stream.index()].send(item) => {
            if r.is_err() {
                counters.undeliverable.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
        () = p.cancel.cancelled() => Err(SessionEnd::Cancelled),
    }
}

fn violation(p: &SessionParams<'_>, what: String) -> SessionEnd {
    p.shared
        .counters
        .protocol_errors
        .fetch_add(1, Ordering::Relaxed);
    SessionEnd::Failed(SessionError::Protocol(what))
}

/// Lab only: exports a new epoch's fibre base. A failure costs the lab
/// eavesdropper that epoch, not the link, so it is logged, not fatal.
fn lab_export(export: &Option<FibreKeyExport>, epoch: u64, key: &SecretBytes) {
    if let Some(x) = export
        && let Err(e) = x.export(epoch, key)
    {
        tracing::warn!(epoch, error = %e, "could not export the fibre base key (lab_export_fibre_keys)");
    }
}

/// Runs blocking pool and record work off the runtime threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("blocking task failed: {e}")))
}

async fn send_cmd(
    cmds: &mpsc::Sender<WriterCmd>,
    message: LinkMessage,
    then_rekey: Option<Secret<32>>,
) -> Result<(), SessionError> {
    cmds.send(WriterCmd {
        message,
        then_rekey,
    })
    .await
    .map_err(|_| SessionError::Protocol("writer stopped".into()))
}

/// Dialer: a switch request from the API.
async fn on_request(
    p: &SessionParams<'_>,
    req: LinkRequest,
    switch: &mut Switch,
    cmds: &mpsc::Sender<WriterCmd>,
) -> Result<(), SessionError> {
    let LinkRequest::SwitchKey(reply) = req;
    if !p.dialer {
        let _ = reply.send(Err(PeerError::NotSwitchInitiator));
        return Ok(());
    }
    if !matches!(switch, Switch::Idle) {
        let _ = reply.send(Err(PeerError::SwitchInProgress));
        return Ok(());
    }
    let pool = Arc::clone(&p.shared.pool);
    let taken = blocking(move || {
        pool.take_channel_key(CHANNEL_KEY_LEN as u32)
            .map_err(|e| e.to_string())
    })
    .await;
    let (key_ref, key) = match taken {
        Ok(t) => t,
        Err(e) => {
            let _ = reply.send(Err(PeerError::SwitchFailed(e)));
            return Ok(());
        }
    };
    let epoch = p.shared.store_lock().current_epoch() + 1;
    tracing::info!(peer = %p.shared.cfg.peer_name, epoch, "offering a QKD channel key");
    send_cmd(cmds, LinkMessage::KeyOffer { epoch, key_ref }, None).await?;
    *switch = Switch::Offered { epoch, key, reply };
    Ok(())
}

async fn on_link_message(
    p: &SessionParams<'_>,
    msg: LinkMessage,
    opener: &mut Opener,
    switch: &mut Switch,
    cmds: &mpsc::Sender<WriterCmd>,
) -> Result<(), SessionEnd> {
    let fail = |e: SessionError| SessionEnd::Failed(e);
    match (msg, p.dialer) {
        (LinkMessage::Ping, _) => Ok(()),
        (LinkMessage::KeyOffer { epoch, key_ref }, false) => {
            if !matches!(switch, Switch::Idle) {
                return Err(violation(p, "key offer during a switch".into()));
            }
            let current = p.shared.store_lock().current_epoch();
            if epoch != current + 1 {
                return Err(violation(
                    p,
                    format!("key offer for epoch {epoch} at epoch {current}"),
                ));
            }
            let (pool, store, ctx, shared) = (
                Arc::clone(&p.shared.pool),
                Arc::clone(&p.shared.store),
                p.context.clone(),
                p.shared.fibre_export.clone(),
            );
            // Take the referenced bytes and record them before answering.
            let accepted = blocking(move || {
                let key = pool
                    .accept_channel_key(&key_ref)
                    .map_err(|e| e.to_string())?;
                let keys = frame_keys(&key, epoch, &ctx);
                lab_export(&shared, epoch, &key);
                let mut store = store.lock().map_err(|_| "channel-key lock poisoned")?;
                store.set_next(key).map_err(|e| e.to_string())?;
                Ok(keys)
            })
            .await;
            match accepted {
                Ok(keys) => {
                    let (send, recv) = keys.for_side(false);
                    send_cmd(cmds, LinkMessage::KeyAccept { epoch }, Some(send))
                        .await
                        .map_err(fail)?;
                    *switch = Switch::Accepted {
                        epoch,
                        recv_key: recv,
                    };
                }
                Err(e) => {
                    tracing::warn!(peer = %p.shared.cfg.peer_name, epoch, error = %e, "refusing the offered channel key");
                    send_cmd(cmds, LinkMessage::KeyReject { epoch }, None)
                        .await
                        .map_err(fail)?;
                }
            }
            Ok(())
        }
        (LinkMessage::KeyActivate { epoch }, false) => {
            let Switch::Accepted { epoch: e, .. } = switch else {
                return Err(violation(
                    p,
                    "key activation without an accepted offer".into(),
                ));
            };
            if *e != epoch {
                return Err(violation(
                    p,
                    format!("activation of epoch {epoch}, accepted {e}"),
                ));
            }
            let Switch::Accepted { recv_key, .. } = std::mem::replace(switch, Switch::Idle) else {
                unreachable!()
            };
            opener.rekey(recv_key);
            let store = Arc::clone(&p.shared.store);
            // A failed write here is recoverable: the dialer authenticates
            // with epoch n+1 next time, which promotes the pending key.
            if let Err(e) = blocking(move || {
                let mut s = store.lock().map_err(|_| "channel-key lock poisoned")?;
                s.promote_next().map_err(|e| e.to_string())
            })
            .await
            {
                tracing::warn!(peer = %p.shared.cfg.peer_name, epoch, error = %e, "could not record the activated channel key; it is promoted at the next handshake");
            }
            p.shared.switched(epoch);
            Ok(())
        }
        (LinkMessage::KeyAccept { epoch }, true) => {
            let Switch::Offered { epoch: e, .. } = switch else {
                return Err(violation(p, "key acceptance without an offer".into()));
            };
            if *e != epoch {
                return Err(violation(
                    p,
                    format!("acceptance of epoch {epoch}, offered {e}"),
                ));
            }
            let Switch::Offered { key, reply, .. } = std::mem::replace(switch, Switch::Idle) else {
                unreachable!()
            };
            let keys: FrameKeys = frame_keys(&key, epoch, &p.context);
            let (store, shared) = (Arc::clone(&p.shared.store), p.shared.fibre_export.clone());
            let committed = blocking(move || {
                // Before the commit: the next handshake may use the epoch.
                lab_export(&shared, epoch, &key);
                let mut s = store.lock().map_err(|_| "channel-key lock poisoned")?;
                s.commit(key).map_err(|e| e.to_string())
            })
            .await;
            if let Err(e) = committed {
                // Without the record, a restart would authenticate with the
                // old key; end the session so both sides fall back to it
                // consistently (the acceptor drops its pending key).
                let _ = reply.send(Err(PeerError::SwitchFailed(e.clone())));
                return Err(fail(SessionError::Store(e)));
            }
            let (send, recv) = keys.for_side(true);
            opener.rekey(recv);
            send_cmd(cmds, LinkMessage::KeyActivate { epoch }, Some(send))
                .await
                .map_err(fail)?;
            p.shared.switched(epoch);
            let _ = reply.send(Ok(epoch));
            Ok(())
        }
        (LinkMessage::KeyReject { epoch }, true) => {
            let Switch::Offered { epoch: e, .. } = switch else {
                return Err(violation(p, "key rejection without an offer".into()));
            };
            if *e != epoch {
                return Err(violation(
                    p,
                    format!("rejection of epoch {epoch}, offered {e}"),
                ));
            }
            if let Switch::Offered { reply, .. } = std::mem::replace(switch, Switch::Idle) {
                let _ = reply.send(Err(PeerError::SwitchRejected { epoch }));
            }
            Ok(())
        }
        (m, dialer) => Err(violation(
            p,
            format!(
                "{m:?} is not expected by the {}",
                if dialer { "dialer" } else { "acceptor" }
            ),
        )),
    }
}

async fn write_half(
    p: &SessionParams<'_>,
    mut writer: OwnedWriteHalf,
    mut sealers: Sealers,
    mut cmds: mpsc::Receiver<WriterCmd>,
    queues: &mut OutboundQueues,
) -> Result<(), SessionError> {
    let keepalive = p.shared.cfg.keepalive_interval;
    let mut last_write = Instant::now();
    loop {
        let (frame, stream, rekey) = tokio::select! {
            biased;
            cmd = cmds.recv() => match cmd {
                Some(WriterCmd { message, then_rekey }) => {
                    let f = sealers.frames.seal(FrameType::Link, &message.encode()).map_err(SessionError::Seal)?;
                    (f, None, then_rekey)
                }
                // The reader ended; the session result comes from it.
                None => return Ok(()),
            },
            Some(o) = queues.control.recv() => match sealed(p, &mut sealers, Stream::Control, o)? {
                Some(f) => (f, Some(Stream::Control), None),
                None => continue,
            },
            Some(o) = queues.qkd.recv() => match sealed(p, &mut sealers, Stream::Qkd, o)? {
                Some(f) => (f, Some(Stream::Qkd), None),
                None => continue,
            },
            Some(o) = queues.fibre.recv() => match sealed(p, &mut sealers, Stream::Fibre, o)? {
                Some(f) => (f, Some(Stream::Fibre), None),
                None => continue,
            },
            () = sleep_until(last_write + keepalive) => {
                let f = sealers.frames.seal(FrameType::Link, &LinkMessage::Ping.encode()).map_err(SessionError::Seal)?;
                (f, None, None)
            }
        };
        writer
            .write_all(&frame)
            .await
            .map_err(SessionError::Write)?;
        last_write = Instant::now();
        if let Some(k) = rekey {
            sealers.frames.rekey(k);
        }
        let c = &p.shared.counters;
        c.bytes_out.fetch_add(frame.len() as u64, Ordering::Relaxed);
        if let Some(s) = stream {
            c.frames_out[s.index()].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Encodes a queued payload, or `None` when it was queued for an earlier
/// session (discarded and counted).
fn sealed(
    p: &SessionParams<'_>,
    sealers: &mut Sealers,
    stream: Stream,
    o: Outbound,
) -> Result<Option<Vec<u8>>, SessionError> {
    if o.session != p.id {
        p.shared
            .counters
            .stale_dropped
            .fetch_add(1, Ordering::Relaxed);
        return Ok(None);
    }
    Ok(Some(match stream {
        Stream::Fibre => sealers
            .fibre
            .as_mut()
            .ok_or_else(|| SessionError::Protocol("only the transmitter sends fibre".into()))?
            .seal(&o.payload)
            .map_err(SessionError::FibreSeal)?,
        s => sealers
            .frames
            .seal(s.frame_type(), &o.payload)
            .map_err(SessionError::Seal)?,
    }))
}
