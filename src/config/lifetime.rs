//! `[tunnel.lifetime]`: the kernel's per-SA limits, their defaults
//! (derived from the rekey interval) and the rules they must follow.

use serde::Deserialize;

use super::Findings;
use super::values::HumanDuration;
use crate::xfrm::{Lifetimes, Limits};

/// Without ESN the 32-bit sequence number must not wrap (RFC 4303 §3.3.3):
/// at most 2^32 − 1 packets per SA, enforced by the hard packet limit.
pub const MAX_PACKETS_WITHOUT_ESN: u64 = u32::MAX as u64;

/// `[tunnel.lifetime]` as written: the kernel's limits per SA. Soft limits
/// make the kernel ask for a rekey; hard limits delete the SA (traffic is
/// then dropped until a new one is in place). Omitted fields get defaults
/// derived from `rekey_interval`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifetimeSection {
    /// Seconds after which the kernel asks for a rekey. Default: halfway
    /// between `rekey_interval` and `hard_seconds` (and below the latter).
    ///
    /// Example: `soft_seconds = 1200`
    pub soft_seconds: Option<u64>,
    /// Seconds after which the kernel deletes the SA; must exceed
    /// `rekey_interval`. Bounds how long a key is used when rekeying fails
    /// (e.g. the pool ran dry). Default: 3 × `rekey_interval`.
    ///
    /// Example: `hard_seconds = 1800`
    pub hard_seconds: Option<u64>,
    /// Bytes after which the kernel asks for a rekey. Default: half of
    /// `hard_bytes`, or none.
    ///
    /// Example: `soft_bytes = 500000000000`
    pub soft_bytes: Option<u64>,
    /// Bytes after which the SA is deleted. Default: none.
    ///
    /// Example: `hard_bytes = 1000000000000`
    pub hard_bytes: Option<u64>,
    /// Packets after which the kernel asks for a rekey. Default: half of
    /// `hard_packets`.
    ///
    /// Example: `soft_packets = 2147483647`
    pub soft_packets: Option<u64>,
    /// Packets after which the SA is deleted; at most 2^32 − 1 without ESN
    /// (the sequence number must not wrap). Default: 2^32 − 1 without ESN,
    /// none with ESN.
    ///
    /// Example: `hard_packets = 4294967295`
    pub hard_packets: Option<u64>,
}

impl LifetimeSection {
    /// Fills in the defaults for a tunnel rekeyed every `rekey_interval`
    /// and checks the limits; `prefix` is the tunnel's path.
    pub(super) fn resolve(
        &self,
        prefix: &str,
        rekey_interval: HumanDuration,
        esn: bool,
        f: &mut Findings,
    ) -> Option<Lifetimes> {
        let l = self;
        let interval = rekey_interval.get();
        let path = |field: &str| format!("{prefix}.lifetime.{field}");
        let mut ok = true;
        for (field, v) in [
            ("soft_seconds", l.soft_seconds),
            ("hard_seconds", l.hard_seconds),
            ("soft_bytes", l.soft_bytes),
            ("hard_bytes", l.hard_bytes),
            ("soft_packets", l.soft_packets),
            ("hard_packets", l.hard_packets),
        ] {
            if v == Some(0) {
                ok = false;
                f.error(
                    path(field),
                    "0 would expire the SA at once; omit the field for the default",
                );
            }
        }
        let secs = interval.as_secs();
        let hard_seconds = l.hard_seconds.unwrap_or(3 * secs);
        // Derived soft limits stay below the hard one whatever it is, so a
        // bad hard limit is reported once, on itself.
        let soft_seconds = l.soft_seconds.unwrap_or(
            ((secs + hard_seconds) / 2)
                .min(hard_seconds.saturating_sub(1))
                .max(1),
        );
        let hard_packets = l.hard_packets.or((!esn).then_some(MAX_PACKETS_WITHOUT_ESN));
        let soft_packets = l.soft_packets.or(hard_packets.map(|h| h / 2));
        let hard_bytes = l.hard_bytes;
        let soft_bytes = l.soft_bytes.or(hard_bytes.map(|h| h / 2));
        if !esn {
            for (field, v) in [
                ("hard_packets", l.hard_packets),
                ("soft_packets", l.soft_packets),
            ] {
                if let Some(v) = v.filter(|&v| v > MAX_PACKETS_WITHOUT_ESN) {
                    ok = false;
                    f.error(
                        path(field),
                        format!(
                            "{v} exceeds 2^32-1 (no ESN: the 32-bit sequence number must not wrap); \
                             lower it or set esn = true"
                        ),
                    );
                }
            }
        }
        if hard_seconds <= secs && l.hard_seconds != Some(0) {
            ok = false;
            f.error(
                path("hard_seconds"),
                format!(
                    "{hard_seconds} s is not longer than rekey_interval ({}): the SA would be deleted \
                     before it is rekeyed and traffic dropped meanwhile; raise hard_seconds above {secs} \
                     or shorten rekey_interval",
                    rekey_interval
                ),
            );
        }
        for (what, soft, hard, soft_written) in [
            (
                "seconds",
                Some(soft_seconds),
                Some(hard_seconds),
                l.soft_seconds.is_some(),
            ),
            ("bytes", soft_bytes, hard_bytes, l.soft_bytes.is_some()),
            (
                "packets",
                soft_packets,
                hard_packets,
                l.soft_packets.is_some(),
            ),
        ] {
            if let (Some(s), Some(h)) = (soft, hard)
                && s >= h
                && s != 0
            {
                ok = false;
                let field = if soft_written {
                    format!("soft_{what}")
                } else {
                    format!("hard_{what}")
                };
                f.error(
                    path(&field),
                    format!("soft limit {s} must be below the hard limit {h}: the soft limit asks for the rekey that must happen before the hard limit deletes the SA"),
                );
            }
        }
        if l.soft_seconds.is_some() && soft_seconds < secs {
            f.warn(
                path("soft_seconds"),
                format!(
                    "{soft_seconds} s is below rekey_interval ({}): every rekey will be triggered by the \
                     kernel's soft expiry, never by the timer",
                    rekey_interval
                ),
            );
        }
        ok.then_some(Lifetimes {
            soft: Limits {
                bytes: soft_bytes,
                packets: soft_packets,
                seconds: Some(soft_seconds),
            },
            hard: Limits {
                bytes: hard_bytes,
                packets: hard_packets,
                seconds: Some(hard_seconds),
            },
        })
    }
}
