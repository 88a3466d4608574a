//! Trusted-relay key distribution: keys for two gateways without a QKD link
//! between them, carried hop by hop over other links, one-time-padded with
//! each hop's own QKD key (the SECOQC scheme), and optionally split over
//! node-disjoint paths so that no single relay learns them.
//!
//! This module holds the parts without I/O: the hop message with its
//! one-time pad and Wegman–Carter tag ([`hop`]), XOR shares for multipath
//! ([`shares`]) and the destination's inbox ([`inbox`]). Paths come from the
//! `[network]` section ([`crate::config::Network`]); the agent
//! (`agent::relay_task`) moves the messages and takes the pads from the
//! pools.
//!
//! # How a key travels
//!
//! The source S of a relayed link (its `role = "transmitter"`) draws a key K
//! from the OS RNG — not from its pool with the first hop: that pool's bytes
//! are the first hop's pads, and drawing K from it would spend the hop's key
//! twice over for nothing; K must only be secret and uniform, which the OS
//! RNG gives. S splits K into one share per path (one path: the share is
//! K), and sends each share along its path: on every hop the sender takes
//! `len + 32` fresh bytes of that hop's pool, pads the share with the
//! first `len` and tags the message with the other 32; the receiver takes
//! the same bytes, checks the tag, removes the pad and, if it is not the
//! destination, does the same on the next hop with that hop's pool. A node
//! that cannot go on (no pool on the next hop, link down, relaying off)
//! sends a refusal back along the path, holding nothing. The destination D
//! joins the shares and holds K until S offers it (by key ID, over the peer
//! channel between S and D, authenticated with their own keys); D's answer
//! is the end-to-end acknowledgement, and only then does either side put K
//! in their pool — exactly as keys from a QKD device's KME
//! ([`crate::etsi014::source`]).
//!
//! Every pad byte is taken by the pool's `take` on one end and `take_at`
//! on the other, which refuses bytes already consumed: a retry, a replay or
//! a message sent again after a crash always uses fresh pad, never the same
//! bytes twice.

pub mod export;
pub mod hop;
pub mod inbox;
pub mod shares;

pub use hop::{HopError, RelayHeader, RelayHop, RelayRefusal, pad_len};
pub use inbox::{Filed, Inbox};
