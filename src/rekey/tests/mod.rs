//! Engine tests: a simulated gateway pair ([`sim`]) driven through rekeys,
//! triggers, faults and restarts, with the invariants checked after every
//! step; message and keying unit tests; property tests over random event
//! interleavings.

mod fake_kernel;
mod keying_tests;
mod messages_tests;
mod props;
mod restarts;
mod scenarios;
mod sim;
