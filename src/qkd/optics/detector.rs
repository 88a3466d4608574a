//! Bob's receiver: active basis choice, two threshold detectors.
//!
//! Each photon of a pulse clicks with probability η (thinning a Poisson
//! stream keeps it Poisson, so this is exact for coherent states); a photon
//! measured in its own basis reaches the wrong detector with the misalignment
//! probability, one measured in the other basis reaches either detector with
//! probability ½. Each detector also fires a dark count per gate with
//! probability p_d, independently; the slots with any dark count are found by
//! geometric skipping over all slots of the frame (P = 1 − (1 − p_d)²), so
//! vacuum slots are never walked. Both detectors firing is a double click and
//! gets a random bit (Lim et al. 2014, Sec. II, step 2). Bob's basis and the
//! double-click bit come from his [`ChoiceRng`]; they are drawn only for slots
//! that click, which leaves their law unchanged because nothing else depends
//! on them.
//!
//! This module owns Bob's outcomes; it must not look at Alice's log.

use super::OpticsError;
use super::frame::PulseFrame;
use super::params::{Basis, LinkParams};
use super::rng::{ChoiceRng, GeometricSkip, NoiseRng, threshold32};

/// Bob's detector stage.
#[derive(Debug)]
pub struct Detector {
    choices: ChoiceRng,
    noise: NoiseRng,
    /// P(photon clicks) as a threshold on a 64-bit uniform.
    efficiency: u64,
    /// P(wrong detector | matching basis) as a threshold on a 64-bit uniform.
    misalignment: u64,
    dark: GeometricSkip,
    /// P(both detectors dark | some dark count) = p_d / (2 − p_d).
    dark_both: f64,
    p_z_threshold: u64,
}

/// The slots of one frame where Bob's detectors clicked.
pub struct Detections {
    first_slot: u64,
    end_slot: u64,
    slots: Vec<u64>,
    /// `double << 2 | basis << 1 | bit`.
    outcomes: Vec<u8>,
}

const DOUBLE: u8 = 4;

fn threshold64(p: f64) -> u64 {
    if p >= 1.0 {
        u64::MAX
    } else {
        (p.max(0.0) * 18_446_744_073_709_551_616.0) as u64
    }
}

impl Detector {
    pub fn new(
        params: &LinkParams,
        choices: ChoiceRng,
        noise: NoiseRng,
    ) -> Result<Self, OpticsError> {
        params.validate()?;
        let d = &params.detector;
        let pd = d.dark_count_probability;
        Ok(Self {
            choices,
            noise,
            efficiency: threshold64(d.efficiency),
            misalignment: threshold64(d.misalignment),
            dark: GeometricSkip::new(pd * (2.0 - pd)),
            dark_both: pd / (2.0 - pd),
            p_z_threshold: threshold32(params.source.p_z),
        })
    }

    /// Measures every slot of `frame`.
    pub fn detect(&mut self, frame: &PulseFrame) -> Detections {
        let (offsets, states) = frame.raw();
        let end = frame.slot_count() as u64;
        let mut out = Detections {
            first_slot: frame.first_slot(),
            end_slot: frame.end_slot(),
            slots: Vec::new(),
            outcomes: Vec::new(),
        };
        let mut next_dark = self.dark.sample(&mut self.noise);
        for (&off, &state) in offsets.iter().zip(states) {
            let off = off as u64;
            while next_dark < off {
                let clicks = self.dark_pattern();
                self.record(&mut out, next_dark, clicks, None);
                next_dark = self.next_dark_after(next_dark);
            }
            let mut clicks = 0u8;
            if next_dark == off {
                clicks = self.dark_pattern();
                next_dark = self.next_dark_after(next_dark);
            }
            let mut bob_basis = None;
            let photons = state >> 2;
            let basis = Basis::from_bit(state & 2 != 0);
            let bit = state & 1;
            for _ in 0..photons {
                if self.noise.next_u64() >= self.efficiency {
                    continue;
                }
                let b = *bob_basis.get_or_insert_with(|| self.draw_basis());
                let port = if b == basis {
                    bit ^ (self.noise.next_u64() < self.misalignment) as u8
                } else {
                    self.noise.coin() as u8
                };
                clicks |= 1 << port;
            }
            if clicks != 0 {
                self.record(&mut out, off, clicks, bob_basis);
            }
        }
        while next_dark < end {
            let clicks = self.dark_pattern();
            self.record(&mut out, next_dark, clicks, None);
            next_dark = self.next_dark_after(next_dark);
        }
        out
    }

    #[inline]
    fn next_dark_after(&mut self, slot: u64) -> u64 {
        (slot + 1).saturating_add(self.dark.sample(&mut self.noise))
    }

    /// Which detectors fire, given that at least one dark count happened:
    /// bit 0 = detector 0, bit 1 = detector 1.
    fn dark_pattern(&mut self) -> u8 {
        if self.noise.uniform() < self.dark_both {
            3
        } else {
            1 << self.noise.coin() as u8
        }
    }

    #[inline]
    fn draw_basis(&mut self) -> Basis {
        Basis::from_bit((self.choices.next_u64() & 0xFFFF_FFFF) >= self.p_z_threshold)
    }

    fn record(&mut self, out: &mut Detections, offset: u64, clicks: u8, basis: Option<Basis>) {
        let basis = basis.unwrap_or_else(|| self.draw_basis());
        let outcome = match clicks {
            1 => 0,
            2 => 1,
            _ => DOUBLE | (self.choices.next_u64() >> 63) as u8,
        };
        out.slots.push(out.first_slot + offset);
        out.outcomes.push(outcome | ((basis as u8) << 1));
    }
}

impl Detections {
    /// An empty set of detections for a slot range (for tests and drivers
    /// that merge frames).
    pub fn empty(first_slot: u64, end_slot: u64) -> Self {
        Self {
            first_slot,
            end_slot,
            slots: Vec::new(),
            outcomes: Vec::new(),
        }
    }

    pub fn first_slot(&self) -> u64 {
        self.first_slot
    }

    pub fn end_slot(&self) -> u64 {
        self.end_slot
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Absolute slots that clicked, increasing.
    pub fn slots(&self) -> &[u64] {
        &self.slots
    }

    pub fn basis(&self, i: usize) -> Basis {
        Basis::from_bit(self.outcomes[i] & 2 != 0)
    }

    pub fn is_double_click(&self, i: usize) -> bool {
        self.outcomes[i] & DOUBLE != 0
    }

    pub fn double_clicks(&self) -> usize {
        self.outcomes.iter().filter(|&&o| o & DOUBLE != 0).count()
    }

    /// Bob's bit: key material when the bases match in Z.
    pub(crate) fn bit(&self, i: usize) -> bool {
        self.outcomes[i] & 1 != 0
    }
}

impl std::fmt::Debug for Detections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Detections {{ slots: {}..{}, clicks: {} }}",
            self.first_slot,
            self.end_slot,
            self.len()
        )
    }
}

impl Drop for Detections {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.outcomes);
    }
}
