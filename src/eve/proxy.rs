//! The intercept–resend proxy: accepts the transmitter's connections, dials
//! the receiver for each, and forwards both directions frame by frame.
//!
//! Owns the accept loop, the per-connection pumps, the per-connection fibre
//! key, the recording of classical frames and the one-shot in-path tamper.
//! Reads frames with the peer channel's bounded reader ([`read_frame`]), so
//! a frame over its limit or a stream that is not the peer protocol closes
//! both sides before anything big is allocated.
//!
//! Fibre frames are sealed ([`crate::peer::fibre`]). Handed the agents' lab
//! export of fibre base keys (`--fibre-keys`), Eve takes the epoch and the
//! dialer's nonce from the Hello and the acceptor's nonce from the
//! HelloReply — both in clear — derives the session's fibre key, and then
//! opens each fibre frame, attacks its pulses and re-seals it (numbering
//! from [`LAB_RESEAL_OFFSET`] so no nonce repeats), off the runtime threads.
//! Without a key for the session she forwards fibre frames unopened. Every
//! other frame is written out exactly as it came in.
//!
//! [`LAB_RESEAL_OFFSET`]: crate::peer::fibre::LAB_RESEAL_OFFSET

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::EveError;
use super::counters::{EveCounters, EveSnapshot};
use super::fraction::FractionDial;
use crate::peer::fibre::export::FibreKeyFile;
use crate::peer::fibre::{FibreOpener, FibreSealer};
use crate::peer::frame::{FrameLimits, FrameType, RawFrame, Split, split_frame};
use crate::peer::handshake::{Hello, reply_public_fields};
use crate::peer::transport::{ReadError, read_frame};
use crate::qkd::optics::{InterceptResend, NoiseRng, PulseFrame};

/// Classical frames recorded at most (a handshake and a few hundred
/// authenticated frames: enough to replay, small enough to keep in a test).
pub const MAX_RECORDING: usize = 64 << 10;

/// A one-shot active attack on the classical channel, for showing that the
/// peer channel refuses it. Applied to the first authenticated frame the
/// transmitter sends after Eve starts (one frame in the proxy's lifetime,
/// so the agents' reconnect then succeeds and the test can watch recovery).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InPathTamper {
    /// Forward everything unchanged (the default).
    #[default]
    None,
    /// Send that frame twice: the receiver sees a stale sequence number.
    Replay,
    /// Flip a bit of that frame's HMAC tag: the receiver sees a forgery.
    Forge,
}

/// Settings of one proxy.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where the transmitter connects (its peer `address` points here).
    pub listen: SocketAddr,
    /// The receiver's peer-channel listener.
    pub upstream: SocketAddr,
    /// Attacked fraction of pulses at start, in [0, 1].
    pub fraction: f64,
    /// Seed of Eve's randomness (her bases and coins); `None` draws one
    /// from the OS. Connection `i` uses a seed derived from `(seed, i)`.
    pub seed: Option<u64>,
    /// Must equal the agents' limits: a frame over them closes both sides.
    pub limits: FrameLimits,
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Bound on dialling the receiver.
    pub connect_timeout: Duration,
    /// Write the classical (non-fibre) frames the transmitter sends on the
    /// first connection to this file, for `eve hostile --attack replay`.
    pub record: Option<PathBuf>,
    pub tamper: InPathTamper,
    /// The agents' lab export of fibre base keys
    /// ([`crate::peer::fibre::export`]); without it Eve cannot open the
    /// sealed fibre, so a fraction above 0 is refused.
    pub fibre_keys: Option<PathBuf>,
}

impl ProxyConfig {
    /// Defaults: fraction 0, OS seed, default frame limits, 16 connections,
    /// 5 s connect timeout, no recording, no tamper.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Self {
            listen,
            upstream,
            fraction: 0.0,
            seed: None,
            limits: FrameLimits::default(),
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            record: None,
            tamper: InPathTamper::None,
            fibre_keys: None,
        }
    }
}

/// What every connection task shares.
struct Shared {
    cfg: ProxyConfig,
    counters: Arc<EveCounters>,
    dial: FractionDial,
    /// Cleared by the connection that records / the frame that is tampered.
    record_armed: AtomicBool,
    tamper_armed: AtomicBool,
    next_index: AtomicU64,
}

/// A bound proxy, ready to [`spawn`](EveProxy::spawn).
pub struct EveProxy {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl EveProxy {
    pub async fn bind(cfg: ProxyConfig) -> Result<Self, EveError> {
        let dial = FractionDial::new(cfg.fraction)?;
        match &cfg.fibre_keys {
            None if cfg.fraction > 0.0 => return Err(EveError::NoFibreKeys),
            None => {}
            // The agents append to the file as epochs appear; one that is
            // not there yet is read at each handshake. One that exists
            // must already be private and well formed.
            Some(path) if !path.exists() => {
                tracing::warn!(path = %path.display(), "fibre-key file does not exist yet; it is read at each handshake");
            }
            Some(path) => {
                FibreKeyFile::load(path).map_err(|e| EveError::FibreKeys(e.to_string()))?;
            }
        }
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|error| EveError::Bind {
                addr: cfg.listen,
                error,
            })?;
        let shared = Shared {
            record_armed: AtomicBool::new(cfg.record.is_some()),
            tamper_armed: AtomicBool::new(cfg.tamper != InPathTamper::None),
            cfg,
            counters: Arc::default(),
            dial,
            next_index: AtomicU64::new(0),
        };
        Ok(Self {
            listener,
            shared: Arc::new(shared),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    pub fn counters(&self) -> Arc<EveCounters> {
        Arc::clone(&self.shared.counters)
    }

    /// The dial that sets the attacked fraction while running.
    pub fn dial(&self) -> FractionDial {
        self.shared.dial.clone()
    }

    pub fn snapshot(&self) -> EveSnapshot {
        self.shared.counters.snapshot(self.shared.dial.get())
    }

    /// Runs the accept loop and every connection on `tracker` until
    /// `cancel`; cancelling closes all connections at once.
    pub fn spawn(self, tracker: &TaskTracker, cancel: CancellationToken) {
        let t = tracker.clone();
        tracker.spawn(self.accept_loop(t, cancel));
    }

    async fn accept_loop(self, tracker: TaskTracker, cancel: CancellationToken) {
        let c = &self.shared.counters;
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => return,
                a = self.listener.accept() => a,
            };
            let (client, from) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if c.open.load(Ordering::Relaxed) >= self.shared.cfg.max_connections as u64 {
                EveCounters::add(&c.refused, 1);
                tracing::warn!(%from, "refused: {} connections open", self.shared.cfg.max_connections);
                continue;
            }
            EveCounters::add(&c.connections, 1);
            EveCounters::add(&c.open, 1);
            let index = self.shared.next_index.fetch_add(1, Ordering::Relaxed);
            tracker.spawn(serve(
                client,
                from,
                index,
                Arc::clone(&self.shared),
                cancel.child_token(),
            ));
        }
    }
}

/// Decrements the open-connection gauge however a connection ends.
struct OpenGuard(Arc<EveCounters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How one connection ended.
#[derive(Debug)]
enum End {
    Cancelled,
    /// A side closed, failed or sent something that is not a valid frame.
    Pump {
        toward: &'static str,
        why: ReadOrWrite,
    },
}

#[derive(Debug)]
enum ReadOrWrite {
    Read(ReadError),
    Write(std::io::Error),
    Rewrite(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (toward, why) = match self {
            End::Cancelled => return f.write_str("eve is stopping"),
            End::Pump { toward, why } => (toward, why),
        };
        let from = if *toward == "receiver" {
            "transmitter"
        } else {
            "receiver"
        };
        match why {
            ReadOrWrite::Read(e) => write!(f, "reading from the {from}: {e}"),
            ReadOrWrite::Write(e) => write!(f, "writing to the {toward}: {e}"),
            ReadOrWrite::Rewrite(e) => write!(f, "{e}"),
        }
    }
}

async fn serve(
    client: TcpStream,
    from: SocketAddr,
    index: u64,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let _open = OpenGuard(Arc::clone(&shared.counters));
    let cfg = &shared.cfg;
    let connect = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(cfg.upstream));
    let upstream = tokio::select! {
        () = cancel.cancelled() => return,
        r = connect => r,
    };
    let upstream = match upstream {
        Ok(Ok(s)) => s,
        failed => {
            EveCounters::add(&shared.counters.upstream_failures, 1);
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            tracing::warn!(%from, upstream = %cfg.upstream, "cannot reach the receiver: {why}; closing the transmitter's connection");
            return;
        }
    };
    // Frames are forwarded whole; Nagle would only add latency.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let noise = match cfg.seed {
        Some(seed) => NoiseRng::from_seed(connection_seed(seed, index)),
        None => match NoiseRng::from_os() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("{e}; closing connection {index}");
                return;
            }
        },
    };
    let eve = InterceptResend::new(shared.dial.get(), noise).expect("the dial holds [0, 1]");
    let handshake = Arc::new(Mutex::new(HandshakeSeen::default()));
    let recording = shared
        .record_armed
        .swap(false, Ordering::Relaxed)
        .then(|| cfg.record.clone())
        .flatten()
        .map(Recorder::new);
    tracing::info!(%from, upstream = %cfg.upstream, index, "transmitter connected; forwarding");
    let mut to_receiver = TransmitterFrames {
        shared: Arc::clone(&shared),
        eve: Some(eve),
        recording,
        handshake: Arc::clone(&handshake),
        fibre: None,
    };
    let mut to_transmitter = ReceiverFrames {
        shared: Arc::clone(&shared),
        handshake,
    };
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let c = &shared.counters;
    let end = tokio::select! {
        () = cancel.cancelled() => End::Cancelled,
        why = pump(cr, uw, cfg.limits, Side::Transmitter(&mut to_receiver), &c.frames_to_receiver, &c.bytes_to_receiver) => {
            End::Pump { toward: "receiver", why }
        }
        why = pump(ur, cw, cfg.limits, Side::Receiver(&mut to_transmitter), &c.frames_to_transmitter, &c.bytes_to_transmitter) => {
            End::Pump { toward: "transmitter", why }
        }
    };
    if let End::Pump {
        why: ReadOrWrite::Read(ReadError::Frame(_)),
        ..
    } = &end
    {
        EveCounters::add(&c.frame_errors, 1);
    }
    tracing::info!(index, "connection closed on both sides ({end})");
}

/// Connection `index`'s seed: distinct streams for distinct connections
/// (splitmix64 finaliser over seed and index), reproducible from `--seed`.
pub(super) fn connection_seed(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which way a pump runs, with what it does to the frames.
enum Side<'a> {
    /// Transmitter → receiver: Hello, fibre and classical frames.
    Transmitter(&'a mut TransmitterFrames),
    /// Receiver → transmitter: watched for the HelloReply, never changed.
    Receiver(&'a mut ReceiverFrames),
}

/// Moves frames from `r` to `w` until either fails; frames from the
/// transmitter may be rewritten, the receiver's pass unchanged.
async fn pump(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    limits: FrameLimits,
    mut side: Side<'_>,
    frames: &AtomicU64,
    bytes: &AtomicU64,
) -> ReadOrWrite {
    let mut buf = BytesMut::new();
    loop {
        let frame = match read_frame(&mut r, &mut buf, &limits).await {
            Ok(f) => f,
            Err(e) => return ReadOrWrite::Read(e),
        };
        let out = match &mut side {
            Side::Transmitter(t) => match t.process(frame).await {
                Ok(out) => out,
                Err(e) => return ReadOrWrite::Rewrite(e),
            },
            Side::Receiver(r) => {
                // The HelloReply is looked at before it is forwarded, so the
                // fibre key is known before the transmitter can send fibre.
                r.observe(&frame, &limits).await;
                vec![frame]
            }
        };
        for f in out {
            if let Err(e) = w.write_all(&f).await {
                return ReadOrWrite::Write(e);
            }
            EveCounters::add(frames, 1);
            EveCounters::add(bytes, f.len() as u64);
        }
    }
}

/// What one connection's handshake showed in clear, and the fibre key Eve
/// derived from it.
#[derive(Default)]
struct HandshakeSeen {
    hello: Option<Hello>,
    fibre: Option<FibreCrypt>,
}

/// Eve's two ends of a session's sealed fibre: she opens what the
/// transmitter sealed and re-seals in her own counter range.
struct FibreCrypt {
    opener: FibreOpener,
    sealer: FibreSealer,
}

/// The receiver's frames: only the HelloReply matters (its nonce).
struct ReceiverFrames {
    shared: Arc<Shared>,
    handshake: Arc<Mutex<HandshakeSeen>>,
}

impl ReceiverFrames {
    async fn observe(&mut self, frame: &Bytes, limits: &FrameLimits) {
        if frame[3] != FrameType::HelloReply.code() {
            return;
        }
        let Some(path) = self.shared.cfg.fibre_keys.clone() else {
            return;
        };
        let Ok(Split::Frame(raw)) = split_frame(frame, limits) else {
            return;
        };
        let Ok((epoch, acceptor_nonce)) = reply_public_fields(&raw) else {
            return;
        };
        let Some(hello) = lock(&self.handshake).hello.clone() else {
            return;
        };
        if hello.epoch != epoch {
            return;
        }
        // The agents append a line per epoch: read the file afresh.
        let found = tokio::task::spawn_blocking(move || {
            FibreKeyFile::load(&path).map(|f| f.find(&hello.dialer, &hello.acceptor, epoch))
        })
        .await;
        let base = match found {
            Ok(Ok(Some(base))) => base,
            Ok(Ok(None)) => {
                tracing::warn!(
                    epoch,
                    "no fibre key for this session's epoch in the fibre-key file; its fibre passes unopened"
                );
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    "cannot read the fibre-key file ({e}); this session's fibre passes unopened"
                );
                return;
            }
            Err(e) => {
                tracing::warn!("fibre-key lookup failed: {e}");
                return;
            }
        };
        let hs = &mut *lock(&self.handshake);
        let Some(hello) = &hs.hello else { return };
        let key = || base.session_key(&hello.nonce, &acceptor_nonce);
        hs.fibre = Some(FibreCrypt {
            opener: FibreOpener::new(key()),
            sealer: FibreSealer::lab_reseal(key()),
        });
        tracing::info!(
            epoch,
            "derived this session's fibre key from the handshake nonces"
        );
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What Eve does to the transmitter's frames on one connection.
struct TransmitterFrames {
    shared: Arc<Shared>,
    /// Lent to a blocking thread while a fibre frame is rewritten.
    eve: Option<InterceptResend>,
    recording: Option<Recorder>,
    handshake: Arc<Mutex<HandshakeSeen>>,
    /// The session's fibre key once derived; lent like `eve`.
    fibre: Option<FibreCrypt>,
}

impl TransmitterFrames {
    /// The frames to send on in place of `frame`.
    async fn process(&mut self, frame: Bytes) -> Result<Vec<Bytes>, String> {
        let frame_type = FrameType::from_code(frame[3]).expect("read_frame checked the type");
        if frame_type == FrameType::Fibre {
            return Ok(vec![self.intercept(frame).await?]);
        }
        if frame_type == FrameType::Hello && self.shared.cfg.fibre_keys.is_some() {
            let limits = self.shared.cfg.limits;
            if let Ok(Split::Frame(raw)) = split_frame(&frame, &limits)
                && let Ok(hello) = Hello::decode(&raw)
            {
                *lock(&self.handshake) = HandshakeSeen {
                    hello: Some(hello),
                    fibre: None,
                };
            }
        }
        if let Some(rec) = self.recording.as_mut() {
            rec.append(&frame, &self.shared.counters).await;
        }
        if frame_type.is_authenticated() && self.shared.tamper_armed.swap(false, Ordering::Relaxed)
        {
            EveCounters::add(&self.shared.counters.tampered, 1);
            tracing::info!(?frame_type, tamper = ?self.shared.cfg.tamper, "tampering with an authenticated frame in flight");
            return Ok(match self.shared.cfg.tamper {
                InPathTamper::Replay => vec![frame.clone(), frame],
                InPathTamper::Forge => {
                    let mut forged = frame.to_vec();
                    *forged.last_mut().expect("a tag follows") ^= 0x01;
                    vec![Bytes::from(forged)]
                }
                InPathTamper::None => vec![frame],
            });
        }
        Ok(vec![frame])
    }

    /// Intercept–resend on one fibre frame, on a blocking thread.
    async fn intercept(&mut self, frame: Bytes) -> Result<Bytes, String> {
        let c = Arc::clone(&self.shared.counters);
        EveCounters::add(&c.fibre_frames, 1);
        let mut eve = self
            .eve
            .take()
            .ok_or("interceptor lost by an earlier failure")?;
        if self.fibre.is_none() {
            self.fibre = lock(&self.handshake).fibre.take();
        }
        let Some(mut crypt) = self.fibre.take() else {
            // No key for this session: the pulses cannot be measured.
            EveCounters::add(&c.fibre_unopened, 1);
            self.eve = Some(eve);
            return Ok(frame);
        };
        let fraction = self.shared.dial.get();
        let limits = self.shared.cfg.limits;
        let job = tokio::task::spawn_blocking(move || {
            let out = rewrite_fibre(&mut eve, &mut crypt, fraction, frame, &limits, &c);
            (eve, crypt, out)
        });
        let (eve, crypt, out) = job
            .await
            .map_err(|e| format!("fibre rewrite failed: {e}"))?;
        self.eve = Some(eve);
        self.fibre = Some(crypt);
        out
    }
}

/// Opens the frame, attacks the dialled fraction of its pulses, re-seals.
/// A frame Eve cannot open is forwarded as it came (the receiver judges
/// it); an opened payload that is not a pulse frame is re-sealed
/// unchanged. Every opened frame is re-sealed, attacked or not, so her
/// counters stay above the transmitter's (fraction 0 leaves the pulses
/// as they were).
fn rewrite_fibre(
    eve: &mut InterceptResend,
    crypt: &mut FibreCrypt,
    fraction: f64,
    frame: Bytes,
    limits: &FrameLimits,
    c: &EveCounters,
) -> Result<Bytes, String> {
    let opened = match split_frame(&frame, limits) {
        Ok(Split::Frame(raw)) => open(&mut crypt.opener, &raw),
        _ => Err("not a whole frame".into()),
    };
    let plain = match opened {
        Ok(p) => p,
        Err(e) => {
            EveCounters::add(&c.fibre_unopened, 1);
            tracing::debug!("cannot open a fibre frame ({e}); forwarded unchanged");
            return Ok(frame);
        }
    };
    let payload = match PulseFrame::decode(&plain) {
        Ok(mut pulses) => {
            EveCounters::add(&c.pulses, pulses.len() as u64);
            eve.set_fraction(fraction).expect("the dial holds [0, 1]");
            let attacked = eve.intercept(&mut pulses);
            EveCounters::add(&c.intercepted, attacked as u64);
            // Same records, same gaps: the same length as the original, so
            // the re-sealed frame stays within the limit the original passed.
            pulses.encode()
        }
        Err(e) => {
            EveCounters::add(&c.fibre_undecodable, 1);
            tracing::debug!("fibre payload is not a pulse frame ({e}); re-sealed unchanged");
            plain
        }
    };
    crypt
        .sealer
        .seal(&payload)
        .map(Bytes::from)
        .map_err(|e| format!("cannot re-seal a fibre frame: {e}"))
}

fn open(opener: &mut FibreOpener, raw: &RawFrame<'_>) -> Result<Vec<u8>, String> {
    opener.open(raw).map_err(|e| e.to_string())
}

/// Appends the classical frames of one connection to the recording file.
struct Recorder {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    written: usize,
    /// Set after an I/O error or when the cap is reached.
    stopped: bool,
}

impl Recorder {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: None,
            written: 0,
            stopped: false,
        }
    }

    async fn append(&mut self, frame: &[u8], c: &EveCounters) {
        if self.stopped {
            return;
        }
        if self.written + frame.len() > MAX_RECORDING {
            tracing::info!(path = %self.path.display(), bytes = self.written, "recording full");
            self.stopped = true;
            return;
        }
        if let Err(e) = self.write(frame).await {
            tracing::warn!(path = %self.path.display(), "recording stopped: {e}");
            self.stopped = true;
            return;
        }
        self.written += frame.len();
        EveCounters::add(&c.recorded_bytes, frame.len() as u64);
    }

    async fn write(&mut self, frame: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            let f = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&self.path)
                .await?;
            self.file = Some(f);
        }
        let f = self.file.as_mut().expect("opened above");
        f.write_all(frame).await?;
        // Flushed per frame: a replay tool may read the file at any time.
        f.flush().await
    }
}
