//! The QKD link stack as sans-IO state machines.
//!
//! Each protocol step is a state machine fed with messages and returning the
//! messages to send, so the same code runs in-process (simulate, benches,
//! tests) and between two agents over the network. This module does no I/O,
//! knows no tokio, and never touches the key pool or the kernel.
pub mod amplify;
pub mod analytic;
pub mod auth;
pub mod cascade;
pub mod estimate;
pub mod link;
pub mod optics;
pub mod sift;
pub mod verify;
pub mod wire;
