//! Alice's source seen through the fibre.
//!
//! A phase-randomised coherent state of mean photon number μ passing a
//! channel of transmittance t is exactly a coherent state of mean tμ, so the
//! photon number at the fibre's output is Poisson(tμ) and the source can emit
//! the fibre's output directly. Slots whose output is vacuum are never walked:
//! the next non-vacuum slot is found by geometric skipping with the class
//! mixture P(non-vacuum) = Σ_k p_k (1 − e^{−tμ_k}); its class is drawn from the
//! posterior p_k (1 − e^{−tμ_k}) / P(non-vacuum), its photon number from the
//! zero-truncated Poisson(tμ_k), basis and bit independently. Alice keeps her
//! (class, basis, bit) for those slots in an [`EmissionLog`]; for a slot Bob
//! reports that is not in it (a dark count on a vacuum slot) she draws them
//! only then, from the exact conditional law given vacuum: class ∝
//! p_k e^{−tμ_k}, basis and bit as always. Every marginal is therefore the
//! same as if each slot had been drawn up front.
//!
//! This module owns Alice's choices; it must not look at Bob's outcomes.

use super::OpticsError;
use super::frame::{MAX_PHOTONS, PulseFrame, PulseRecord};
use super::params::{Basis, Intensity, LinkParams};
use super::rng::{ChoiceRng, ClassChooser, GeometricSkip, NoiseRng, TruncatedPoisson, threshold32};

/// Alice: draws key-bearing choices from a [`ChoiceRng`] and the channel's
/// photon statistics from a [`NoiseRng`].
#[derive(Debug)]
pub struct Source {
    choices: ChoiceRng,
    noise: NoiseRng,
    next_slot: u64,
    nonvacuum_probability: f64,
    skip: GeometricSkip,
    nonvacuum_class: ClassChooser,
    vacuum_class: ClassChooser,
    photons: [TruncatedPoisson; 3],
    p_z_threshold: u64,
}

/// Alice's private record of the non-vacuum slots of one frame.
pub struct EmissionLog {
    first_slot: u64,
    slot_count: u32,
    offsets: Vec<u32>,
    /// `class << 2 | basis << 1 | bit`.
    states: Vec<u8>,
}

/// Alice's (class, basis, bit) for each slot Bob reported, in slot order.
pub struct AlicePulses {
    slots: Vec<u64>,
    /// `class << 2 | basis << 1 | bit`.
    states: Vec<u8>,
}

impl Source {
    /// A source whose first frame starts at slot 0.
    pub fn new(
        params: &LinkParams,
        choices: ChoiceRng,
        noise: NoiseRng,
    ) -> Result<Self, OpticsError> {
        params.validate()?;
        let t = params.fibre.transmittance();
        let mu = params.source.intensities;
        let p = params.source.probabilities;
        // P(non-vacuum | k) = 1 − e^{−tμ_k}, computed without cancellation.
        let nonvac: [f64; 3] = std::array::from_fn(|k| p[k] * -(-t * mu[k]).exp_m1());
        let vac: [f64; 3] = std::array::from_fn(|k| p[k] * (-t * mu[k]).exp());
        let nonvacuum_probability: f64 = nonvac.iter().sum();
        Ok(Self {
            choices,
            noise,
            next_slot: 0,
            nonvacuum_probability,
            skip: GeometricSkip::new(nonvacuum_probability),
            nonvacuum_class: ClassChooser::new(if nonvacuum_probability > 0.0 {
                nonvac
            } else {
                p
            }),
            vacuum_class: ClassChooser::new(vac),
            photons: std::array::from_fn(|k| TruncatedPoisson::new(t * mu[k], MAX_PHOTONS as u32)),
            p_z_threshold: threshold32(params.source.p_z),
        })
    }

    /// Probability that a slot is non-vacuum at the fibre's output.
    pub fn nonvacuum_probability(&self) -> f64 {
        self.nonvacuum_probability
    }

    /// The first slot of the next frame.
    pub fn next_slot(&self) -> u64 {
        self.next_slot
    }

    /// Emits the next `slot_count` slots: the frame for the fibre and Alice's
    /// log of the same slots.
    pub fn emit(&mut self, slot_count: u32) -> Result<(PulseFrame, EmissionLog), OpticsError> {
        let first_slot = self.next_slot;
        let mut frame = PulseFrame::empty(first_slot, slot_count)?;
        self.next_slot = frame.end_slot();
        let expect = (slot_count as f64 * self.nonvacuum_probability * 1.01) as usize + 16;
        frame.reserve(expect);
        let mut log = EmissionLog {
            first_slot,
            slot_count,
            offsets: Vec::with_capacity(expect),
            states: Vec::with_capacity(expect),
        };
        let end = slot_count as u64;
        let mut pos = 0u64;
        loop {
            pos = pos.saturating_add(self.skip.sample(&mut self.noise));
            if pos >= end {
                break;
            }
            let w = self.choices.next_u64();
            let (class, basis, bit) = self.split_choice(w, &self.nonvacuum_class);
            let photons = self.photons[class as usize].sample(&mut self.noise);
            frame.push_unchecked(pos as u32, PulseRecord::state_byte(photons, basis, bit));
            log.offsets.push(pos as u32);
            log.states.push(pack(class, basis, bit));
            pos += 1;
        }
        Ok((frame, log))
    }

    /// One ChaCha word → (class, basis, bit): bits 0..32 choose the basis,
    /// bits 32..63 the class, bit 63 the bit value.
    #[inline]
    fn split_choice(&self, w: u64, classes: &ClassChooser) -> (u8, Basis, bool) {
        let basis = Basis::from_bit((w & 0xFFFF_FFFF) >= self.p_z_threshold);
        let class = classes.choose((w >> 32) & 0x7FFF_FFFF);
        (class, basis, w >> 63 == 1)
    }

    /// Alice's choices for the slots Bob reported in `log`'s frame.
    /// `detected` comes from the network: it must be strictly increasing and
    /// inside the frame, or the call fails without drawing anything.
    pub fn resolve(
        &mut self,
        log: EmissionLog,
        detected: &[u64],
    ) -> Result<AlicePulses, OpticsError> {
        let end = log.first_slot + log.slot_count as u64;
        let in_order = detected.windows(2).all(|w| w[0] < w[1]);
        let in_range = detected.first().is_none_or(|&s| s >= log.first_slot)
            && detected.last().is_none_or(|&s| s < end);
        if !in_order || !in_range {
            return Err(OpticsError::DetectedSlots {
                first_slot: log.first_slot,
                end_slot: end,
            });
        }
        let mut states = Vec::with_capacity(detected.len());
        let mut j = 0;
        for &slot in detected {
            let off = (slot - log.first_slot) as u32;
            while j < log.offsets.len() && log.offsets[j] < off {
                j += 1;
            }
            if j < log.offsets.len() && log.offsets[j] == off {
                states.push(log.states[j]);
            } else {
                let w = self.choices.next_u64();
                let (class, basis, bit) = self.split_choice(w, &self.vacuum_class);
                states.push(pack(class, basis, bit));
            }
        }
        Ok(AlicePulses {
            slots: detected.to_vec(),
            states,
        })
    }
}

#[inline]
fn pack(class: u8, basis: Basis, bit: bool) -> u8 {
    (class << 2) | ((basis as u8) << 1) | bit as u8
}

impl EmissionLog {
    pub fn first_slot(&self) -> u64 {
        self.first_slot
    }

    pub fn slot_count(&self) -> u32 {
        self.slot_count
    }

    /// Non-vacuum slots emitted.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }
}

impl AlicePulses {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn slots(&self) -> &[u64] {
        &self.slots
    }

    pub fn class(&self, i: usize) -> Intensity {
        Intensity::from_index(self.states[i] >> 2).expect("classes are 0..=2 by construction")
    }

    pub fn basis(&self, i: usize) -> Basis {
        Basis::from_bit(self.states[i] & 2 != 0)
    }

    /// Alice's bit: key material when the bases match in Z.
    pub(crate) fn bit(&self, i: usize) -> bool {
        self.states[i] & 1 != 0
    }
}

impl std::fmt::Debug for EmissionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EmissionLog {{ first_slot: {}, records: {} }}",
            self.first_slot,
            self.len()
        )
    }
}

impl std::fmt::Debug for AlicePulses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlicePulses {{ pulses: {} }}", self.len())
    }
}

impl Drop for EmissionLog {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.states);
    }
}

impl Drop for AlicePulses {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.states);
    }
}
