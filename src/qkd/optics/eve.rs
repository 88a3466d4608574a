//! An intercept–resend eavesdropper on the fibre.
//!
//! Eve sits on the record stream at the fibre's output, just before Bob. On a
//! chosen fraction of the non-vacuum pulses she measures in a uniformly random
//! basis with an ideal detector — learning Alice's bit when her basis matches
//! and a random bit otherwise — and resends the same number of photons in the
//! state she found. Bob's click statistics are unchanged; in a matching basis
//! half of the attacked pulses become random, so the QBER rises by about a
//! quarter of the attacked fraction (exactly ¼ − e_d/2 of it, because an
//! attacked pulse in Eve's wrong basis no longer suffers misalignment).
//! Vacuum slots carry nothing to attack, so a fraction of the records is the
//! same as that fraction of all pulses. This module must not read Alice's or
//! Bob's choices beyond the frame itself.

use super::OpticsError;
use super::frame::PulseFrame;
use super::params::Basis;
use super::rng::NoiseRng;

#[derive(Debug)]
pub struct InterceptResend {
    fraction: f64,
    noise: NoiseRng,
}

impl InterceptResend {
    /// Attacks each non-vacuum pulse with probability `fraction` ∈ [0, 1].
    pub fn new(fraction: f64, noise: NoiseRng) -> Result<Self, OpticsError> {
        Self::check_fraction(fraction)?;
        Ok(Self { fraction, noise })
    }

    fn check_fraction(fraction: f64) -> Result<(), OpticsError> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(OpticsError::InvalidParameter {
                name: "eavesdropper.fraction",
                value: fraction,
                reason: "must lie in [0, 1]",
            });
        }
        Ok(())
    }

    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// Changes the attacked fraction from the next pulse on (a lab
    /// attacker turning her dial); refused outside [0, 1].
    pub fn set_fraction(&mut self, fraction: f64) -> Result<(), OpticsError> {
        Self::check_fraction(fraction)?;
        self.fraction = fraction;
        Ok(())
    }

    /// Rewrites the attacked records of `frame`; returns how many.
    pub fn intercept(&mut self, frame: &mut PulseFrame) -> usize {
        let mut attacked = 0;
        for i in 0..frame.len() {
            if self.noise.uniform() >= self.fraction {
                continue;
            }
            let rec = frame.record(i);
            let eve_basis = Basis::from_bit(self.noise.coin());
            let eve_bit = if eve_basis == rec.basis {
                rec.bit
            } else {
                self.noise.coin()
            };
            frame.repolarise(i, eve_basis, eve_bit);
            attacked += 1;
        }
        attacked
    }
}
