//! Arithmetic over GF(2)\[x\]: carry-less products, the field GF(2^128), and
//! Toeplitz (middle) products of long bit strings.
//!
//! Pure computation on slices and integers: no protocol, no I/O, no key
//! storage. Callers (`qkd::amplify`, `qkd::verify`, `qkd::auth`) keep key
//! bits in `crate::secret` types and pass scratch memory in, so nothing here
//! outlives a call holding key-derived data except what the caller owns.
//! x86_64 PCLMULQDQ / VPCLMULQDQ are used when the CPU has them (detected at
//! run time); a constant-time portable product works everywhere else.

#[cfg(target_arch = "x86_64")]
mod base_x86;
pub mod clmul;
pub mod field128;
pub mod middle_product;

pub use clmul::ClmulBackend;
pub use field128::{Gf128, poly_hash};
pub use middle_product::ToeplitzPlan;
