//! Which kernel XFRM objects belong to this program.
//!
//! Other IPsec software (strongSwan, libreswan, hand-made `ip xfrm` state) may
//! share the kernel, so we never flush a whole SAD/SPD and never touch an
//! object we cannot prove is ours. Ownership is a rule over fields the kernel
//! stores with every object:
//!
//! * an **SA** is ours iff its reqid is in [`Ownership::reqids`], its SPI is
//!   in [`Ownership::spis`] (when set) and its mark equals
//!   [`Ownership::mark`] (when set);
//! * a **policy** is ours iff one of its templates has a reqid in
//!   [`Ownership::reqids`] and its mark equals [`Ownership::mark`] (when set).
//!
//! Defaults: reqids `0x5144_0000..=0x5144_ffff` and SPIs
//! `0x5144_0000..=0x5144_ffff` ("QD" in the high half), no mark. strongSwan
//! numbers reqids from 1 and allocates SPIs in `0xc0000000..=0xcfffffff`;
//! iproute2 and the kernel default to `0x100..=0x0fffffff` for ALLOCSPI and
//! hand-made SAs usually carry reqid 0 — none of these overlap the defaults.
//! Reqid 0 and SPIs 0..=255 (reserved, RFC 4303 §2.1) are never ownable.
//!
//! The larval SAs the kernel creates on ACQUIRE (SPI 0) are not ours by this
//! rule; the kernel expires them itself (`net.core.xfrm_acq_expires`).

use std::fmt;
use std::ops::RangeInclusive;

use super::XfrmError;

/// An XFRM mark (value under mask), as `ip xfrm … mark V/M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct XfrmMark {
    pub value: u32,
    pub mask: u32,
}

impl XfrmMark {
    /// Mark `value` with a full mask.
    pub fn exact(value: u32) -> Self {
        Self {
            value,
            mask: u32::MAX,
        }
    }
}

impl fmt::Display for XfrmMark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}/{:#x}", self.value, self.mask)
    }
}

/// SPIs 0..=255 are reserved by IANA (RFC 4303 §2.1); no range may include
/// them.
pub const FIRST_USABLE_SPI: u32 = 256;

/// The rule that recognises our SAs and policies (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// Reqids we use; every SA and policy template of ours carries one.
    pub reqids: RangeInclusive<u32>,
    /// SPIs we allocate for inbound SAs (the peer uses the same rule, so our
    /// outbound SAs carry SPIs from its range — configure both alike).
    /// `None` means SPIs are not part of the rule.
    pub spis: Option<RangeInclusive<u32>>,
    /// A mark every SA and policy of ours carries, if any.
    pub mark: Option<XfrmMark>,
}

impl Default for Ownership {
    fn default() -> Self {
        Self {
            reqids: 0x5144_0000..=0x5144_ffff,
            spis: Some(0x5144_0000..=0x5144_ffff),
            mark: None,
        }
    }
}

impl fmt::Display for Ownership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "reqid {:#x}..={:#x}",
            self.reqids.start(),
            self.reqids.end()
        )?;
        if let Some(spis) = &self.spis {
            write!(f, ", SPI {:#x}..={:#x}", spis.start(), spis.end())?;
        }
        if let Some(mark) = &self.mark {
            write!(f, ", mark {mark}")?;
        }
        Ok(())
    }
}

impl Ownership {
    /// Rejects rules that could claim objects made by others: empty ranges,
    /// reqid 0 (the default of hand-made SAs), reserved SPIs.
    pub fn validate(&self) -> Result<(), XfrmError> {
        let invalid = |reason: String| {
            Err(XfrmError::InvalidSpec {
                what: "ownership",
                reason,
            })
        };
        if self.reqids.is_empty() {
            return invalid("empty reqid range".into());
        }
        if *self.reqids.start() == 0 {
            return invalid("reqid 0 is the default of hand-made SAs and cannot be owned".into());
        }
        if let Some(spis) = &self.spis {
            if spis.is_empty() {
                return invalid("empty SPI range".into());
            }
            if *spis.start() < FIRST_USABLE_SPI {
                return invalid(format!(
                    "SPIs below {FIRST_USABLE_SPI} are reserved (RFC 4303 §2.1)"
                ));
            }
        }
        Ok(())
    }

    /// Whether an SA with these fields is ours.
    pub fn owns_sa(&self, reqid: u32, spi: u32, mark: Option<XfrmMark>) -> bool {
        self.reqids.contains(&reqid)
            && self.spis.as_ref().is_none_or(|r| r.contains(&spi))
            && self.mark_matches(mark)
    }

    /// Whether a policy whose templates carry `template_reqids` and whose
    /// mark is `mark` is ours.
    pub fn owns_policy(&self, template_reqids: &[u32], mark: Option<XfrmMark>) -> bool {
        template_reqids.iter().any(|r| self.reqids.contains(r)) && self.mark_matches(mark)
    }

    /// The rule's mark matches an object's mark. The kernel reports "no mark"
    /// as an absent attribute or as 0/0; both mean unmarked.
    fn mark_matches(&self, mark: Option<XfrmMark>) -> bool {
        let normalise = |m: Option<XfrmMark>| m.filter(|m| m.value != 0 || m.mask != 0);
        match self.mark {
            None => true,
            Some(ours) => normalise(mark) == normalise(Some(ours)),
        }
    }

    /// Checks that an SA we are about to create or delete is ours.
    pub(crate) fn check_sa(
        &self,
        reqid: u32,
        spi: u32,
        mark: Option<XfrmMark>,
        what: impl FnOnce() -> String,
    ) -> Result<(), XfrmError> {
        if self.owns_sa(reqid, spi, mark) {
            Ok(())
        } else {
            Err(XfrmError::NotOwned {
                what: what(),
                ownership: self.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_are_valid_and_exclude_hand_made_objects() {
        let o = Ownership::default();
        o.validate().unwrap();
        assert!(o.owns_sa(0x5144_0001, 0x5144_0010, None));
        // `ip xfrm state add … reqid 0` / strongSwan-style reqid 1.
        assert!(!o.owns_sa(0, 0x5144_0010, None));
        assert!(!o.owns_sa(1, 0x5144_0010, None));
        // Right reqid, foreign SPI (strongSwan's default range).
        assert!(!o.owns_sa(0x5144_0001, 0xc000_0001, None));
        assert!(o.owns_policy(&[0, 0x5144_0002], None));
        assert!(!o.owns_policy(&[], None));
        assert!(!o.owns_policy(&[0, 1], None));
    }

    #[test]
    fn mark_is_part_of_the_rule_when_set() {
        let o = Ownership {
            mark: Some(XfrmMark::exact(7)),
            ..Ownership::default()
        };
        assert!(o.owns_sa(0x5144_0001, 0x5144_0001, Some(XfrmMark::exact(7))));
        assert!(!o.owns_sa(0x5144_0001, 0x5144_0001, None));
        assert!(!o.owns_sa(0x5144_0001, 0x5144_0001, Some(XfrmMark::exact(8))));
        // Without a mark in the rule, 0/0 and absent are both fine.
        let o = Ownership::default();
        assert!(o.owns_sa(
            0x5144_0001,
            0x5144_0001,
            Some(XfrmMark { value: 0, mask: 0 })
        ));
    }

    #[test]
    #[allow(clippy::reversed_empty_ranges)] // empty ranges are the point
    fn invalid_rules_are_rejected() {
        let bad = [
            Ownership {
                reqids: 0..=10,
                ..Ownership::default()
            },
            Ownership {
                reqids: 10..=9,
                ..Ownership::default()
            },
            Ownership {
                spis: Some(1..=1000),
                ..Ownership::default()
            },
            Ownership {
                spis: Some(5000..=4000),
                ..Ownership::default()
            },
        ];
        for o in bad {
            assert!(o.validate().is_err(), "{o} accepted");
        }
    }

    proptest! {
        /// Nothing outside the reqid range is ever claimed, whatever the SPI
        /// and mark.
        #[test]
        fn never_claims_outside_reqid_range(reqid: u32, spi: u32, v: u32, m: u32) {
            let o = Ownership::default();
            if !o.reqids.contains(&reqid) {
                let mark = Some(XfrmMark { value: v, mask: m });
                prop_assert!(!o.owns_sa(reqid, spi, mark));
                prop_assert!(!o.owns_policy(&[reqid], None));
            }
        }
    }
}
