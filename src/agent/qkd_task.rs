//! One peer's QKD link over the network: runs [`AliceLink`] (transmitter) or
//! [`BobLink`] (receiver) on the peer channel's fibre and QKD streams and
//! appends every authenticated final key to the peer's pool.
//!
//! The state machines are CPU-heavy (Cascade, privacy amplification), so
//! every call into them runs on a blocking thread; this task only moves
//! bytes and waits. A link runs only while the pool is agreed for the
//! current session ([`super::peer_task`]); a new session starts a fresh
//! state machine, and blocks of older sessions are simply abandoned (they
//! consumed no key unless they reached the tags, and a block whose
//! confirmation was lost is discarded by the next pool agreement).
//!
//! The transmitter paces frames to the simulated pulse rate, so the key rate
//! per second is the link's, not the CPU's, whenever the CPU keeps up.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::keys::{BlockId, KeyRef, KeyUse, PersistedPool, Role};
use crate::peer::{Inbound, PeerHandle, Stream};
use crate::qkd::link::{
    AliceLink, AuthKeys, BlockConfig, BlockReport, BobLink, LinkError, LinkOutput, LinkRng,
};
use crate::qkd::optics::PulseFrame;
use crate::qkd::wire::{WireReader, WireWriter};
use crate::secret::SecretBytes;

use super::AgentError;

/// A block that makes no progress for this long is abandoned and a new one
/// started (a lost message on a live session, or a peer that restarted).
const BLOCK_STALL: Duration = Duration::from_secs(60);

/// What the QKD task tells the rest of the agent.
pub trait QkdObserver: Send + Sync + 'static {
    /// A block ended; `appended` says whether its key reached the pool.
    fn block_done(&self, peer: &str, report: &BlockReport, appended: bool);
    /// The pool changed (a block was appended).
    fn pool_changed(&self, peer: &str);
}

pub struct QkdTask {
    pub peer: String,
    pub role: Role,
    pub cfg: BlockConfig,
    /// Simulated pulses per second of the transmitter's clock.
    pub pulse_rate_hz: f64,
    pub handle: PeerHandle,
    pub fibre_rx: mpsc::Receiver<Inbound>,
    pub qkd_rx: mpsc::Receiver<Inbound>,
    pub pool: Arc<Mutex<PersistedPool>>,
    /// `Some(session)` while the pool is agreed for that session.
    pub ready: watch::Receiver<Option<u64>>,
    pub observer: Arc<dyn QkdObserver>,
    pub cancel: CancellationToken,
}

/// The pool as the link's source of one-time authentication key: Alice
/// takes with [`KeyUse::Auth`] and sends the [`KeyRef`]; Bob takes exactly
/// those bytes.
struct PoolAuth<'a>(&'a Mutex<PersistedPool>);

impl AuthKeys for PoolAuth<'_> {
    fn take(&mut self, len: usize) -> Result<(Vec<u8>, SecretBytes), LinkError> {
        let mut pool = lock(self.0);
        let (key_ref, key) = pool
            .take(KeyUse::Auth, len as u32)
            .map_err(|e| LinkError::AuthKeys(e.to_string()))?;
        let mut w = WireWriter::new();
        key_ref.encode(&mut w);
        Ok((w.finish(), key))
    }

    fn take_at(&mut self, reference: &[u8], len: usize) -> Result<SecretBytes, LinkError> {
        let mut r = WireReader::new(reference);
        let key_ref = KeyRef::decode(&mut r)?;
        r.finish()?;
        if key_ref.len() != len as u64 {
            return Err(LinkError::AuthKeys(format!(
                "reference names {} bytes, a block's tags need {len}",
                key_ref.len()
            )));
        }
        lock(self.0)
            .take_at(&key_ref, KeyUse::Auth)
            .map_err(|e| LinkError::AuthKeys(e.to_string()))
    }
}

pub(crate) use crate::ops::lock;

/// Either side's state machine, so one loop drives both.
enum Side {
    Alice(Box<AliceLink>),
    Bob(Box<BobLink>),
}

/// Outputs with frames already encoded (on the blocking thread).
enum Out {
    Fibre { bytes: Vec<u8>, slots: u32 },
    Send(Vec<u8>),
    Done(Box<LinkOutput>),
}

impl QkdTask {
    pub async fn run(mut self) -> Result<(), AgentError> {
        loop {
            let session = tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                s = wait_ready(&mut self.ready) => match s { Some(s) => s, None => return Ok(()) },
            };
            let side = self.new_side().await?;
            self.run_session(side, session).await?;
        }
    }

    async fn new_side(&self) -> Result<Side, AgentError> {
        let rng = LinkRng::from_os()?;
        Ok(match self.role {
            Role::Transmitter => {
                let first = lock(&self.pool).pool().next_block_id().0;
                Side::Alice(Box::new(AliceLink::new(self.cfg.clone(), rng, first)?))
            }
            Role::Receiver => Side::Bob(Box::new(BobLink::new(self.cfg.clone(), rng)?)),
        })
    }

    async fn run_session(&mut self, mut side: Side, session: u64) -> Result<(), AgentError> {
        let alice = matches!(side, Side::Alice(_));
        let mut next_frame_at = Instant::now();
        let mut last_progress = Instant::now();
        let mut pending = alice.then_some(Step::Start);
        loop {
            let step = match pending.take() {
                Some(step) => step,
                None => {
                    let stall = tokio::time::sleep_until(last_progress + BLOCK_STALL);
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Ok(()),
                        changed = self.ready.changed() => {
                            if changed.is_err() || *self.ready.borrow() != Some(session) {
                                return Ok(());
                            }
                            continue;
                        }
                        Some(m) = self.qkd_rx.recv() => {
                            if m.session != session { continue; }
                            Step::Message(m.payload)
                        }
                        Some(f) = self.fibre_rx.recv() => {
                            if f.session != session || alice { continue; }
                            Step::Fibre(f.payload)
                        }
                        _ = stall => {
                            last_progress = Instant::now();
                            if !alice { continue; }
                            tracing::warn!(peer = %self.peer, "QKD block stalled for {:?}; starting a new one", BLOCK_STALL);
                            Step::Start
                        }
                    }
                }
            };
            last_progress = Instant::now();
            let (s, outs) = self.step(side, step).await?;
            side = s;
            let block_over = self.emit(outs, &mut next_frame_at).await?;
            if block_over && alice && *self.ready.borrow() == Some(session) {
                pending = Some(Step::Start);
            }
        }
    }

    /// Runs one input through the state machine on a blocking thread.
    async fn step(&self, mut side: Side, step: Step) -> Result<(Side, Vec<Out>), AgentError> {
        let pool = self.pool.clone();
        let peer = self.peer.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut auth = PoolAuth(&pool);
            let outs = match (&mut side, step) {
                (Side::Alice(a), Step::Start) => a.start_block(),
                (Side::Alice(a), Step::Message(m)) => a.handle(&m, &mut auth),
                (Side::Bob(b), Step::Message(m)) => b.handle(&m, &mut auth),
                (Side::Bob(b), Step::Fibre(f)) => {
                    // The fibre is unauthenticated by nature: a bad or
                    // oversized frame is dropped, never trusted.
                    match PulseFrame::decode(&f).map(|frame| b.handle_fibre(&frame)) {
                        Ok(Ok(outs)) => Ok(outs),
                        Ok(Err(e)) => {
                            tracing::warn!(peer = %peer, error = %e, "dropping fibre frame");
                            Ok(Vec::new())
                        }
                        Err(e) => {
                            tracing::warn!(peer = %peer, error = %e, "dropping malformed fibre frame");
                            Ok(Vec::new())
                        }
                    }
                }
                _ => Ok(Vec::new()),
            };
            let outs = match outs {
                Ok(outs) => outs,
                Err(e) => {
                    // A message that fits no block (malformed or unexpected)
                    // is dropped: the channel authenticated it, so it is a
                    // bug or a version skew, not an attack; log and go on.
                    tracing::warn!(peer = %peer, error = %e, "QKD message refused");
                    Vec::new()
                }
            };
            let outs = outs.into_iter().map(encode_output).collect();
            (side, outs)
        })
        .await
        .map_err(|e| AgentError::Task(format!("QKD step panicked: {e}")))?;
        Ok(joined)
    }

    /// Sends what the state machine produced and stores a final key.
    /// Returns whether the block ended.
    async fn emit(
        &mut self,
        outs: Vec<Out>,
        next_frame_at: &mut Instant,
    ) -> Result<bool, AgentError> {
        let mut block_over = false;
        for out in outs {
            match out {
                Out::Fibre { bytes, slots } => {
                    // Pace to the simulated clock.
                    tokio::time::sleep_until(*next_frame_at).await;
                    *next_frame_at = Instant::now()
                        + Duration::from_secs_f64(slots as f64 / self.pulse_rate_hz.max(1.0));
                    self.send(Stream::Fibre, bytes).await;
                }
                Out::Send(bytes) => self.send(Stream::Qkd, bytes).await,
                Out::Done(done) => match *done {
                    LinkOutput::Key(k) => {
                        let bits = k.key.bits();
                        let bytes = k.key.to_bytes(bits / 8);
                        let id = BlockId(k.block_id);
                        let pool = self.pool.clone();
                        let appended =
                            tokio::task::spawn_blocking(move || lock(&pool).append(id, bytes))
                                .await
                                .map_err(|e| AgentError::Task(e.to_string()))?;
                        if let Err(e) = &appended {
                            tracing::error!(peer = %self.peer, block = k.block_id, error = %e, "could not store a QKD block");
                        }
                        self.observer
                            .block_done(&self.peer, &k.report, appended.is_ok());
                        self.observer.pool_changed(&self.peer);
                        block_over = true;
                    }
                    LinkOutput::Aborted(r) => {
                        self.observer.block_done(&self.peer, &r, false);
                        block_over = true;
                    }
                    _ => {}
                },
            }
        }
        Ok(block_over)
    }

    async fn send(&self, stream: Stream, bytes: Vec<u8>) {
        if let Err(e) = self.handle.send(stream, Bytes::from(bytes)).await {
            // The session ended: the ready watch will say so and the loop
            // starts over with the next session.
            tracing::debug!(peer = %self.peer, error = %e, "QKD send failed");
        }
    }
}

enum Step {
    Start,
    Message(Bytes),
    Fibre(Bytes),
}

fn encode_output(out: LinkOutput) -> Out {
    match out {
        LinkOutput::Fibre(frame) => Out::Fibre {
            slots: frame.slot_count(),
            bytes: frame.encode(),
        },
        LinkOutput::Send(b) => Out::Send(b),
        done => Out::Done(Box::new(done)),
    }
}

/// Waits until the pool is agreed for some session; `None` when the sender
/// is gone (the agent is stopping).
async fn wait_ready(ready: &mut watch::Receiver<Option<u64>>) -> Option<u64> {
    ready.wait_for(|s| s.is_some()).await.ok().and_then(|s| *s)
}
