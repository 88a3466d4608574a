//! The lab attacker: `qkd-ipsec eve`.
//!
//! Two tools for demonstrating and testing what the agents detect:
//!
//! * [`EveProxy`] — a TCP man-in-the-middle on the peer channel. The QKD
//!   transmitter dials Eve instead of the receiver; Eve dials the receiver
//!   and forwards both directions frame by frame. Fibre frames are sealed
//!   ([`crate::peer::fibre`]): only when handed the agents' lab export of
//!   fibre base keys (`--fibre-keys`) does Eve open them, decode them as
//!   [`PulseFrame`]s, put a chosen fraction of their pulses through
//!   [`InterceptResend`] (measure in a random basis, resend the same photon
//!   number in the state found) and re-seal them; this raises the
//!   test-basis QBER by about a quarter of that fraction. Without the keys
//!   she forwards fibre unopened and attacks nothing. Every other frame
//!   passes byte for byte: Eve holds no channel key and cannot change an
//!   authenticated frame without being caught. The attacked fraction can
//!   be changed while she runs ([`FractionDial`], `--fraction-file`).
//!   Optionally she records the classical frames of the first connection
//!   (for a later replay) and tampers once with an authenticated frame in
//!   flight ([`InPathTamper`]).
//! * [`hostile`] — a client that connects straight to an agent's peer port
//!   and sends garbage, a truncated frame, an oversized length, a replayed
//!   recording or a forged handshake, and reports whether the agent closed
//!   the connection.
//!
//! This module only touches sockets, the frame structure
//! ([`crate::peer::frame`]) and, when given, the fibre-key export; it holds
//! no channel key, reads no configuration file of the agent and never
//! talks to the kernel. Fibre records name the
//! photons' states outright (a simulation device, see
//! [`crate::qkd::optics::frame`]); Eve only rewrites them through
//! [`InterceptResend`] and never stores or prints them, so she learns no
//! more than a measuring attacker could.
//!
//! [`PulseFrame`]: crate::qkd::optics::PulseFrame
//! [`InterceptResend`]: crate::qkd::optics::InterceptResend

mod counters;
mod fraction;
pub mod hostile;
mod proxy;

#[cfg(test)]
mod link_tests;
#[cfg(test)]
mod proxy_tests;

use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;

pub use counters::{EveCounters, EveSnapshot};
pub use fraction::{FractionDial, parse_fraction};
pub use proxy::{EveProxy, InPathTamper, ProxyConfig};

/// Why Eve could not start or could not carry out an attack.
#[derive(Debug, Error)]
pub enum EveError {
    // The io::Error is in the message, not a `source`, so `{:#}` chains
    // do not print it twice.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("timed out connecting to {addr}; is the agent listening there?")]
    ConnectTimeout { addr: SocketAddr },
    #[error("the attacked fraction {0} is outside [0, 1]")]
    Fraction(f64),
    #[error(
        "the fibre stream is sealed: Eve cannot measure pulses without the agents' fibre keys. \
         Set `lab_export_fibre_keys = \"FILE\"` in the transmitter's [peer.link] and pass \
         --fibre-keys FILE, or attack nothing (--fraction 0)"
    )]
    NoFibreKeys,
    #[error("fibre-key file: {0}")]
    FibreKeys(String),
    #[error("fraction file {}: {why}", path.display())]
    FractionFile { path: PathBuf, why: String },
    #[error("recording {}: {why}", path.display())]
    Recording { path: PathBuf, why: String },
    #[error("the {attack} attack needs {what}")]
    MissingInput {
        attack: &'static str,
        what: &'static str,
    },
    #[error("gateway name {0:?} is not valid (1..64 bytes of [A-Za-z0-9._-])")]
    Name(String),
    #[error("socket error during the {attack} attack: {error}")]
    Io {
        attack: &'static str,
        error: std::io::Error,
    },
}
