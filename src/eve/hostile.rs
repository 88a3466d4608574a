//! The hostile peer: connects straight to an agent's peer port, sends one
//! kind of bad input, and reports how the connection ended.
//!
//! Owns the construction of each attack's bytes and the observation of the
//! agent's reaction; knows the frame layout ([`crate::peer::frame`]) and the
//! Hello ([`crate::peer::handshake`]) but holds no key. An agent that works
//! closes every one of these connections (at once, or after its handshake
//! timeout for a truncated frame) and keeps serving its real peer; the
//! netns "hostile peer input" test runs `qkd-ipsec eve hostile` as a
//! separate process and checks exactly that.
//!
//! | attack      | bytes sent                                                         |
//! |-------------|--------------------------------------------------------------------|
//! | `garbage`   | 1 KiB of seeded noise (not starting with "QK")                     |
//! | `truncated` | the first half of a valid Hello, then silence                      |
//! | `oversized` | a Hello header announcing a 4 GiB payload                          |
//! | `replay`    | a recording of a real transmitter's classical frames (handshake and what followed, from `eve --record`) |
//! | `forged`    | a valid Hello, then, after the agent's reply, a made-up Finish and a Qkd frame with a made-up HMAC tag |

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::EveError;
use super::proxy::MAX_RECORDING;
use crate::peer::frame::{
    FrameHeader, FrameLimits, FrameType, HEADER_LEN, Split, TAG_LEN, encode_plain, split_frame,
};
use crate::peer::handshake::{DialerHandshake, Hello, NONCE_LEN, valid_name};
use crate::peer::transport::read_frame;

/// One kind of bad input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostileAttack {
    Garbage,
    Truncated,
    Oversized,
    Replay,
    Forged,
}

impl HostileAttack {
    pub const ALL: [HostileAttack; 5] = [
        HostileAttack::Garbage,
        HostileAttack::Truncated,
        HostileAttack::Oversized,
        HostileAttack::Replay,
        HostileAttack::Forged,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HostileAttack::Garbage => "garbage",
            HostileAttack::Truncated => "truncated",
            HostileAttack::Oversized => "oversized",
            HostileAttack::Replay => "replay",
            HostileAttack::Forged => "forged",
        }
    }
}

/// What to send where.
#[derive(Clone, Debug)]
pub struct HostilePlan {
    /// The agent's peer-channel listen address.
    pub target: SocketAddr,
    pub attack: HostileAttack,
    /// Gateway names in the Hello (`truncated`, `forged`). With the right
    /// names a forged handshake reaches the key check, not just routing.
    pub dialer: String,
    pub acceptor: String,
    /// Channel-key epoch claimed in a forged Hello.
    pub epoch: u64,
    /// Recorded frames ([`load_recording`]): required by `replay`; for
    /// `forged` its Hello supplies names and epoch.
    pub recording: Option<Vec<u8>>,
    /// How long to wait for the agent to close (and to connect).
    pub wait: Duration,
    /// Seed of the garbage, nonces and made-up tags.
    pub seed: u64,
}

impl HostilePlan {
    /// A plan with placeholder names, epoch 0, no recording, 10 s wait.
    pub fn new(target: SocketAddr, attack: HostileAttack) -> Self {
        Self {
            target,
            attack,
            dialer: "eve".into(),
            acceptor: "victim".into(),
            epoch: 0,
            recording: None,
            wait: Duration::from_secs(10),
            seed: 1,
        }
    }
}

/// How the connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The agent closed it (EOF).
    Closed,
    /// The agent reset it (RST: it closed with our bytes unread).
    Reset,
    /// Still open when the wait ran out.
    StillOpen,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostileOutcome {
    pub attack: HostileAttack,
    pub bytes_sent: usize,
    /// Bytes the agent sent back (a HelloReply to a forged Hello: 88).
    pub bytes_received: usize,
    pub ending: Ending,
    /// From the end of sending until the ending was seen.
    pub elapsed: Duration,
}

impl HostileOutcome {
    /// The agent dropped the connection, as it must.
    pub fn closed_by_agent(&self) -> bool {
        self.ending != Ending::StillOpen
    }
}

impl fmt::Display for HostileOutcome {
    /// One `key=value` line, easy to grep in a test log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ending = match self.ending {
            Ending::Closed => "closed-by-agent",
            Ending::Reset => "reset-by-agent",
            Ending::StillOpen => "still-open",
        };
        write!(
            f,
            "attack={} outcome={ending} elapsed_ms={} bytes_sent={} bytes_received={}",
            self.attack.name(),
            self.elapsed.as_millis(),
            self.bytes_sent,
            self.bytes_received
        )
    }
}

/// Runs one attack and watches the agent's reaction.
pub async fn run_hostile(plan: &HostilePlan) -> Result<HostileOutcome, EveError> {
    let attack = plan.attack.name();
    let mut rng = SplitMix(plan.seed);
    let io = |error| EveError::Io { attack, error };
    if plan.attack == HostileAttack::Replay && plan.recording.is_none() {
        return Err(EveError::MissingInput {
            attack,
            what: "a recording (--recording FILE, made by `qkd-ipsec eve --record FILE`)",
        });
    }
    let mut stream = match tokio::time::timeout(plan.wait, TcpStream::connect(plan.target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => {
            return Err(EveError::Connect {
                addr: plan.target,
                error,
            });
        }
        Err(_) => return Err(EveError::ConnectTimeout { addr: plan.target }),
    };
    stream.set_nodelay(true).map_err(io)?;
    let mut sent = 0;
    let mut received = 0;
    match plan.attack {
        HostileAttack::Garbage => {
            let mut bytes: Vec<u8> = (0..1024).map(|_| rng.next() as u8).collect();
            bytes[0] = b'G';
            sent += send(&mut stream, &bytes).await;
        }
        HostileAttack::Truncated => {
            let hello = hello_frame(plan, &mut rng)?;
            sent += send(&mut stream, &hello[..hello.len() / 2]).await;
        }
        HostileAttack::Oversized => {
            let header = FrameHeader {
                frame_type: FrameType::Hello,
                len: u32::MAX,
                seq: 0,
            };
            sent += send(&mut stream, &header.to_bytes()).await;
        }
        HostileAttack::Replay => {
            let rec = plan.recording.as_deref().unwrap_or_default();
            sent += send(&mut stream, rec).await;
        }
        HostileAttack::Forged => {
            let hello = hello_frame(plan, &mut rng)?;
            sent += send(&mut stream, &hello).await;
            // Wait for the agent's HelloReply: only then does the made-up
            // confirmation reach the key check. An agent that closes first
            // (unknown names, wrong epoch) ends the attack early.
            let mut buf = BytesMut::new();
            let limits = FrameLimits::handshake_only();
            let reply = tokio::time::timeout(plan.wait, read_frame(&mut stream, &mut buf, &limits));
            if let Ok(Ok(frame)) = reply.await {
                received += frame.len();
                sent += send(&mut stream, &forged_frames(&mut rng)).await;
            }
        }
    }
    let (ending, elapsed, more) = watch_close(&mut stream, plan.wait).await;
    Ok(HostileOutcome {
        attack: plan.attack,
        bytes_sent: sent,
        bytes_received: received + more,
        ending,
        elapsed,
    })
}

/// Writes `bytes`; returns how many went out. A write error means the agent
/// has already closed, which [`watch_close`] then sees.
async fn send(stream: &mut TcpStream, bytes: &[u8]) -> usize {
    match stream.write_all(bytes).await {
        Ok(()) => bytes.len(),
        Err(_) => 0,
    }
}

/// A Hello frame with the plan's names and epoch (or the recording's) and
/// a seeded nonce.
fn hello_frame(plan: &HostilePlan, rng: &mut SplitMix) -> Result<Vec<u8>, EveError> {
    let (dialer, acceptor, epoch) = match plan.recording.as_deref().and_then(recorded_hello) {
        Some(h) => (h.dialer, h.acceptor, h.epoch),
        None => (plan.dialer.clone(), plan.acceptor.clone(), plan.epoch),
    };
    for name in [&dialer, &acceptor] {
        if !valid_name(name) {
            return Err(EveError::Name(name.clone()));
        }
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.iter_mut().for_each(|b| *b = rng.next() as u8);
    let (_, frame) = DialerHandshake::start(Hello {
        dialer,
        acceptor,
        epoch,
        nonce,
    })
    .map_err(|_| EveError::Name("(rejected by the handshake)".into()))?;
    Ok(frame)
}

/// A Finish with a made-up confirmation, then a Qkd frame (sequence 1)
/// with a made-up HMAC tag: what an attacker without the key can send.
fn forged_frames(rng: &mut SplitMix) -> Vec<u8> {
    let confirmation: Vec<u8> = (0..32).map(|_| rng.next() as u8).collect();
    let mut out = encode_plain(FrameType::Finish, &confirmation);
    let payload: Vec<u8> = (0..16).map(|_| rng.next() as u8).collect();
    let header = FrameHeader {
        frame_type: FrameType::Qkd,
        len: payload.len() as u32,
        seq: 1,
    };
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&payload);
    out.extend((0..TAG_LEN).map(|_| rng.next() as u8));
    out
}

/// Reads (and discards) until the agent closes or `wait` runs out.
async fn watch_close(stream: &mut TcpStream, wait: Duration) -> (Ending, Duration, usize) {
    let start = Instant::now();
    let mut scratch = [0u8; 4096];
    let mut received = 0;
    let ending = tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut scratch).await {
                Ok(0) => return Ending::Closed,
                Ok(n) => received += n,
                Err(_) => return Ending::Reset,
            }
        }
    })
    .await
    .unwrap_or(Ending::StillOpen);
    (ending, start.elapsed(), received)
}

/// The Hello at the start of a recording, if it starts with one.
fn recorded_hello(recording: &[u8]) -> Option<Hello> {
    match split_frame(recording, &FrameLimits::handshake_only()) {
        Ok(Split::Frame(f)) => Hello::decode(&f).ok(),
        _ => None,
    }
}

/// Reads a recording made by `qkd-ipsec eve --record`: at most
/// [`MAX_RECORDING`] bytes that start with a Hello frame.
pub fn load_recording(path: &Path) -> Result<Vec<u8>, EveError> {
    let bad = |why: String| EveError::Recording {
        path: path.to_owned(),
        why,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| bad(e.to_string()))?
        .len();
    if len > MAX_RECORDING as u64 {
        return Err(bad(format!(
            "{len} bytes; a recording holds at most {MAX_RECORDING}"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if bytes.len() < HEADER_LEN || recorded_hello(&bytes).is_none() {
        return Err(bad(
            "does not start with a Hello frame; record one with `qkd-ipsec eve --record FILE` while the transmitter connects".into(),
        ));
    }
    Ok(bytes)
}

/// splitmix64 (Steele, Lea, Flood 2014): attack bytes need no more than
/// reproducible noise.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
#[path = "hostile_tests.rs"]
mod tests;
