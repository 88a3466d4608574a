//! Privileged integration tests of the XFRM layer on a real kernel carrying
//! real ESP packets, each scenario in its own freshly created namespaces
//! (see [`qkd_ipsec::testbed`]), torn down also when a test fails.
//!
//! Run them with `netns-tests/run`, which boots a kernel with ESP in a VM
//! when the host has none. They need root and never skip: a missing
//! capability or kernel feature is a failure. This target is `test = false`
//! so that a plain `cargo test` on a host without ESP does not run it.
//!
//! Scenarios, one module each: `tunnel`, `rekey`, `lifetime`, `ownership`
//! (all need ESP) and `no_esp` (needs a kernel *without* ESP). The
//! `agent_*` modules run real agent processes on a testbed
//! ([`qkd_ipsec::testbed::AgentPair`]): end to end, rekey soak,
//! eavesdropper, crash, hostile peer input, config errors and the demo;
//! `simulated_link_sealed` records the WAN and reads the capture with
//! [`pcap`]. The ETSI GS QKD 014 modules run agents as KMEs
//! (`etsi014_kme`, `tls_psk`, with the example SAE programs in the hosts'
//! namespaces; see `kme_support`) and a second pair keyed from them
//! (`etsi014_source`). The relay modules run a network of agents
//! ([`qkd_ipsec::testbed::AgentNetwork`]): a chain with keys relayed through
//! the middle gateway (`relay_chain`, then `relay_faults` on the same
//! agents) and a diamond with multipath relaying (`relay_multipath`).

mod agent_config;
mod agent_crash;
mod agent_demo;
mod agent_e2e;
mod agent_eve;
mod agent_hostile;
mod agent_soak;
mod agent_support;
mod etsi014_kme;
mod etsi014_source;
mod kme_support;
mod lifetime;
mod no_esp;
mod ownership;
mod pcap;
mod rekey;
mod relay_chain;
mod relay_faults;
mod relay_multipath;
mod simulated_link_sealed;
mod support;
mod tls_psk;
mod tunnel;
