//! qkd-ipsec: a QKD-to-IPsec key feeder for Linux VPN gateways.
//!
//! Data flows top to bottom through these layers:
//!
//! | module        | owns                                                            |
//! |---------------|-----------------------------------------------------------------|
//! | [`qkd`]       | the QKD link stack as pure state machines: simulated optics, sifting, parameter estimation, Cascade, verification, privacy amplification, authentication. No I/O, no tokio. |
//! | [`etsi014`]   | ETSI GS QKD 014 key delivery: its JSON documents; keys from a QKD device's KME (a key source beside `qkd`). |
//! | [`keys`]      | per-peer key pools (block IDs, lockstep consumption, persistence). |
//! | [`rekey`]     | per-tunnel rekey engines (timer, soft expiry, acquire).          |
//! | [`kme`]       | the ETSI GS QKD 014 key service for local applications (beside `rekey`: keys from the pools, delivered over HTTPS). |
//! | [`xfrm`]      | the kernel: SAs, policies and events over netlink, netns-aware. |
//! | [`peer`]      | the authenticated channel between two agents.                   |
//! | [`relay`]     | trusted-relay keys: one-time-padded, tagged hop messages, multipath shares, the destination's inbox (above `keys` and `peer`; no I/O). |
//! | [`secret`]    | the only types that hold key bytes.                             |
//! | [`http`]      | the one HTTP stack (hyper 1): server runner with bounds, for the KME and metrics. |
//! | [`tls`]       | the one TLS stack (rustls): mutual-TLS configs, PEM files, identities from certificates. |
//! | [`gf2`]       | carry-less arithmetic: GF(2^128), Toeplitz middle products (no protocol). |
//! | [`netns`]     | network namespace handles; running code inside one.             |
//! | [`ops`]       | status board, alarms, status socket, metrics, systemd notify, logging. |
//! | [`testbed`]   | disposable gateway topologies in namespaces — a pair, a relay chain or diamond — and agents on them (tests, demo). |
//! | [`eve`]       | the lab attacker: intercept–resend proxy on the fibre stream, hostile peer client. |
//! | [`config`]    | the gateway's TOML configuration: format, checks, conversions to the layers' types. |
//! | [`cli`]       | command-line entry points; `main.rs` only calls [`cli::main`].  |
//!
//! Rules: only `xfrm` talks to the kernel's XFRM; only `keys` holds pools;
//! key bytes live only in [`secret`] types.

pub mod agent;
pub mod cli;
pub mod config;
pub mod etsi014;
pub mod eve;
pub mod gf2;
pub mod http;
pub mod keys;
pub mod kme;
pub mod netns;
pub mod ops;
pub mod peer;
pub mod qkd;
pub mod rekey;
pub mod relay;
pub mod secret;
pub mod testbed;
pub mod tls;
pub mod xfrm;
