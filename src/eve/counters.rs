//! What Eve reports: lifetime counters of the proxy (relaxed atomics, read
//! with [`EveCounters::snapshot`]) and their one-line human rendering.
//! Counts only — never pulse states or frame contents.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Lifetime counters of one [`super::EveProxy`].
#[derive(Debug, Default)]
pub struct EveCounters {
    /// Transmitter connections accepted.
    pub connections: AtomicU64,
    /// Connections open now (both sides up).
    pub open: AtomicU64,
    /// Connections closed at once: too many open already.
    pub refused: AtomicU64,
    /// Connections whose receiver side could not be reached.
    pub upstream_failures: AtomicU64,
    /// Connections closed because a frame broke the format or its limit.
    pub frame_errors: AtomicU64,
    /// Frames forwarded transmitter → receiver (fibre included).
    pub frames_to_receiver: AtomicU64,
    /// Frames forwarded receiver → transmitter.
    pub frames_to_transmitter: AtomicU64,
    pub bytes_to_receiver: AtomicU64,
    pub bytes_to_transmitter: AtomicU64,
    /// Fibre frames seen transmitter → receiver.
    pub fibre_frames: AtomicU64,
    /// Fibre frames whose payload was not a valid pulse frame (forwarded
    /// unchanged; the receiver refuses them).
    pub fibre_undecodable: AtomicU64,
    /// Fibre frames forwarded sealed, unopened: no fibre key for their
    /// session (no `--fibre-keys`, or no line for its epoch) or a frame
    /// that did not open.
    pub fibre_unopened: AtomicU64,
    /// Non-vacuum pulses in decoded fibre frames.
    pub pulses: AtomicU64,
    /// Pulses measured and resent.
    pub intercepted: AtomicU64,
    /// Authenticated frames replayed or altered in flight ([`super::InPathTamper`]).
    pub tampered: AtomicU64,
    /// Frame bytes written to the recording.
    pub recorded_bytes: AtomicU64,
}

/// A copy of [`EveCounters`] at one moment, with the fraction then set.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EveSnapshot {
    pub connections: u64,
    pub open: u64,
    pub refused: u64,
    pub upstream_failures: u64,
    pub frame_errors: u64,
    pub frames_to_receiver: u64,
    pub frames_to_transmitter: u64,
    pub bytes_to_receiver: u64,
    pub bytes_to_transmitter: u64,
    pub fibre_frames: u64,
    pub fibre_undecodable: u64,
    pub fibre_unopened: u64,
    pub pulses: u64,
    pub intercepted: u64,
    pub tampered: u64,
    pub recorded_bytes: u64,
    /// The attacked fraction in force when the snapshot was taken.
    pub fraction: f64,
}

impl EveCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self, fraction: f64) -> EveSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EveSnapshot {
            connections: g(&self.connections),
            open: g(&self.open),
            refused: g(&self.refused),
            upstream_failures: g(&self.upstream_failures),
            frame_errors: g(&self.frame_errors),
            frames_to_receiver: g(&self.frames_to_receiver),
            frames_to_transmitter: g(&self.frames_to_transmitter),
            bytes_to_receiver: g(&self.bytes_to_receiver),
            bytes_to_transmitter: g(&self.bytes_to_transmitter),
            fibre_frames: g(&self.fibre_frames),
            fibre_undecodable: g(&self.fibre_undecodable),
            fibre_unopened: g(&self.fibre_unopened),
            pulses: g(&self.pulses),
            intercepted: g(&self.intercepted),
            tampered: g(&self.tampered),
            recorded_bytes: g(&self.recorded_bytes),
            fraction,
        }
    }
}

impl EveSnapshot {
    /// Share of the pulses seen so far that Eve measured.
    pub fn intercepted_share(&self) -> f64 {
        if self.pulses == 0 {
            0.0
        } else {
            self.intercepted as f64 / self.pulses as f64
        }
    }
}

impl fmt::Display for EveSnapshot {
    /// One line for a terminal or a journal, e.g.
    /// `fraction 0.50 | pulses 1843210 intercepted 921377 (49.99 %) | ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fraction {:.2} | pulses {} intercepted {} ({:.2} %) | fibre frames {} ({} undecodable, {} sealed unopened) \
             | connections {} ({} open, {} refused, {} upstream failures, {} frame errors) \
             | bytes to receiver {} to transmitter {}",
            self.fraction,
            self.pulses,
            self.intercepted,
            100.0 * self.intercepted_share(),
            self.fibre_frames,
            self.fibre_undecodable,
            self.fibre_unopened,
            self.connections,
            self.open,
            self.refused,
            self.upstream_failures,
            self.frame_errors,
            self.bytes_to_receiver,
            self.bytes_to_transmitter,
        )?;
        if self.tampered > 0 {
            write!(f, " | tampered {}", self.tampered)?;
        }
        if self.recorded_bytes > 0 {
            write!(f, " | recorded {} bytes", self.recorded_bytes)?;
        }
        Ok(())
    }
}
