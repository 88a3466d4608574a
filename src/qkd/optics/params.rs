//! Link parameters of the simulated optics: source, fibre and detector.
//!
//! Owns the physical description of one link and its validation; the stages
//! ([`super::Source`], [`super::Detector`]) derive their sampling tables from
//! it. It must not hold randomness or state.

use super::OpticsError;

/// The three intensity classes of decoy-state BB84 (Lim et al., PRA 89,
/// 022307 (2014), Sec. II: μ1 > μ2 + μ3, μ2 > μ3 ≥ 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Intensity {
    /// μ1, the signal intensity.
    Signal = 0,
    /// μ2, the weak decoy.
    Decoy = 1,
    /// μ3, the vacuum (or near-vacuum) decoy.
    Vacuum = 2,
}

impl Intensity {
    pub const ALL: [Intensity; 3] = [Intensity::Signal, Intensity::Decoy, Intensity::Vacuum];

    /// The class with index `i` (0, 1, 2), as packed on the wire.
    pub fn from_index(i: u8) -> Option<Self> {
        match i {
            0 => Some(Intensity::Signal),
            1 => Some(Intensity::Decoy),
            2 => Some(Intensity::Vacuum),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A BB84 basis. Z carries the key, X tests for phase errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Basis {
    Z = 0,
    X = 1,
}

impl Basis {
    pub fn from_bit(b: bool) -> Self {
        if b { Basis::X } else { Basis::Z }
    }

    pub fn is_x(self) -> bool {
        self == Basis::X
    }
}

/// The largest mean photon number a class may have. Photon numbers are
/// carried in 6 bits (at most 63, see the frame format); for μ ≤ 5 the
/// Poisson tail beyond 63 is below 1e-40, so the cap changes nothing.
pub const MAX_INTENSITY: f64 = 5.0;

/// Alice's weak-coherent-pulse source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceParams {
    /// Mean photon numbers [signal, decoy, vacuum] at Alice's output.
    pub intensities: [f64; 3],
    /// Probabilities of choosing each class; they sum to 1.
    pub probabilities: [f64; 3],
    /// Probability that Alice (and Bob) choose the Z (key) basis.
    pub p_z: f64,
}

/// The fibre between Alice and Bob.
#[derive(Debug, Clone, PartialEq)]
pub struct FibreParams {
    pub length_km: f64,
    /// Attenuation coefficient α (dB/km); 0.21 in GYS (Ma et al. 2005).
    pub attenuation_db_per_km: f64,
    /// Fixed loss of connectors, splices, Bob's optics before the detector (dB).
    pub insertion_loss_db: f64,
}

/// Bob's receiver: active basis choice, two threshold detectors.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorParams {
    /// Probability that a photon reaching a detector makes it click.
    pub efficiency: f64,
    /// Dark-count probability per gate of each of the two detectors.
    pub dark_count_probability: f64,
    /// Probability that a photon measured in its own basis reaches the wrong
    /// detector (optical misalignment, e_detector).
    pub misalignment: f64,
}

/// Everything that describes one simulated link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkParams {
    pub source: SourceParams,
    pub fibre: FibreParams,
    pub detector: DetectorParams,
}

impl FibreParams {
    /// Total power transmittance 10^(−(αL + insertion)/10).
    pub fn transmittance(&self) -> f64 {
        10f64.powf(-(self.attenuation_db_per_km * self.length_km + self.insertion_loss_db) / 10.0)
    }
}

impl LinkParams {
    /// The GYS link of Gobby, Yuan and Shields (APL 84, 3762 (2004)) as used
    /// by Ma, Qi, Zhao and Lo, PRA 72, 012326 (2005): α = 0.21 dB/km,
    /// η_Bob = 4.5 %, Y0 = 1.7e-6 (two detectors, so 8.5e-7 each),
    /// e_detector = 3.3 %. The source is a vacuum + weak decoy set with μ near
    /// the optimum Ma et al. report for GYS (≈ 0.48) and unbiased bases, as in
    /// their q = 1/2 analysis.
    pub fn gys(length_km: f64) -> Self {
        LinkParams {
            source: SourceParams {
                intensities: [0.48, 0.1, 0.0],
                probabilities: [0.6, 0.25, 0.15],
                p_z: 0.5,
            },
            fibre: FibreParams {
                length_km,
                attenuation_db_per_km: 0.21,
                insertion_loss_db: 0.0,
            },
            detector: DetectorParams {
                efficiency: 0.045,
                dark_count_probability: 8.5e-7,
                misalignment: 0.033,
            },
        }
    }

    /// Checks every parameter's range; the stages call this before building
    /// their tables.
    pub fn validate(&self) -> Result<(), OpticsError> {
        let s = &self.source;
        for (i, &mu) in s.intensities.iter().enumerate() {
            check(
                INTENSITY_NAMES[i],
                mu,
                (0.0..=MAX_INTENSITY).contains(&mu),
                "must lie in [0, 5]",
            )?;
        }
        for (i, &p) in s.probabilities.iter().enumerate() {
            check(
                PROBABILITY_NAMES[i],
                p,
                (0.0..=1.0).contains(&p),
                "must lie in [0, 1]",
            )?;
        }
        let sum: f64 = s.probabilities.iter().sum();
        check(
            "source.probabilities (sum)",
            sum,
            (sum - 1.0).abs() < 1e-9,
            "must sum to 1",
        )?;
        check(
            "source.p_z",
            s.p_z,
            (0.0..=1.0).contains(&s.p_z),
            "must lie in [0, 1]",
        )?;
        let f = &self.fibre;
        check(
            "fibre.length_km",
            f.length_km,
            f.length_km >= 0.0 && f.length_km.is_finite(),
            "must be finite and ≥ 0",
        )?;
        check(
            "fibre.attenuation_db_per_km",
            f.attenuation_db_per_km,
            f.attenuation_db_per_km >= 0.0 && f.attenuation_db_per_km.is_finite(),
            "must be finite and ≥ 0",
        )?;
        check(
            "fibre.insertion_loss_db",
            f.insertion_loss_db,
            f.insertion_loss_db >= 0.0 && f.insertion_loss_db.is_finite(),
            "must be finite and ≥ 0",
        )?;
        let d = &self.detector;
        check(
            "detector.efficiency",
            d.efficiency,
            d.efficiency > 0.0 && d.efficiency <= 1.0,
            "must lie in (0, 1]",
        )?;
        check(
            "detector.dark_count_probability",
            d.dark_count_probability,
            (0.0..0.5).contains(&d.dark_count_probability),
            "must lie in [0, 0.5)",
        )?;
        check(
            "detector.misalignment",
            d.misalignment,
            (0.0..=0.5).contains(&d.misalignment),
            "must lie in [0, 0.5]",
        )?;
        Ok(())
    }
}

const INTENSITY_NAMES: [&str; 3] = [
    "source.intensities[signal]",
    "source.intensities[decoy]",
    "source.intensities[vacuum]",
];
const PROBABILITY_NAMES: [&str; 3] = [
    "source.probabilities[signal]",
    "source.probabilities[decoy]",
    "source.probabilities[vacuum]",
];

fn check(
    name: &'static str,
    value: f64,
    ok: bool,
    reason: &'static str,
) -> Result<(), OpticsError> {
    // NaN fails every range check above, so `ok` is false for it.
    if ok {
        Ok(())
    } else {
        Err(OpticsError::InvalidParameter {
            name,
            value,
            reason,
        })
    }
}
