//! Kernel IPsec (XFRM) over netlink: SAs, policies, events — netns-aware.
//!
//! The only module that talks to the kernel's XFRM. It touches only objects
//! it owns (recognised by reqid range, SPI range or mark) and never flushes a
//! whole SAD/SPD. Netlink messages that carry key bytes are never logged and
//! their buffers are zeroised after sending.
