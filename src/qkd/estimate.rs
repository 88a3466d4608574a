//! Parameter estimation: how much secret key a block holds.
//!
//! Two estimators, both pure functions of a block's public statistics:
//!
//! * [`finite_key_length`] — the composable finite-key length of Lim, Curty,
//!   Walenta, Xu and Zbinden, "Concise security bounds for practical
//!   decoy-state quantum key distribution", PRA 89, 022307 (2014), Eqs. (1)–(5),
//!   for three intensities μ1 > μ2 + μ3, μ2 > μ3 ≥ 0. Their key basis is
//!   called X and their test basis Z; here the key basis is Z and the test
//!   basis X, so their `n_{X,k}` is our `key_detections[k]`, their
//!   `n_{Z,k}`, `m_{Z,k}` our `test_detections[k]`, `test_errors[k]`.
//!   The result carries every intermediate bound and a [`Verdict`]: abort
//!   when a QBER passes its threshold, when no single-photon events can be
//!   certified, when the phase-error bound reaches its tolerance, or when the
//!   length is not positive.
//! * [`asymptotic_estimate`] — the vacuum + weak decoy bounds of Ma, Qi, Zhao
//!   and Lo, PRA 72, 012326 (2005), on the single-photon yield Y1 and error
//!   e1, and the GLLP rate R ≥ q{−Q_μ f(E_μ) H2(E_μ) + Q1 [1 − H2(e1)]}, for
//!   per-block figures and for comparing the simulator with the analytic model.
//!
//! This module sees counts only — never key bits — and does no I/O.

use thiserror::Error;

/// Why the inputs cannot be estimated at all (as opposed to a block that
/// yields no key, which is a [`Verdict::Abort`]).
#[derive(Debug, Error, Clone, PartialEq)]
pub enum EstimateError {
    #[error(
        "intensities {0:?} violate μ1 > μ2 + μ3 and μ2 > μ3 ≥ 0 (Lim et al. 2014, Sec. II); \
         choose a signal brighter than decoy plus vacuum"
    )]
    Intensities([f64; 3]),
    #[error("intensity probabilities {0:?} must each lie in (0, 1) and sum to 1")]
    Probabilities([f64; 3]),
    #[error("{name} = {value} must lie in (0, 1)")]
    Epsilon { name: &'static str, value: f64 },
    #[error("{name} = {value} must lie in (0, 0.5]")]
    Threshold { name: &'static str, value: f64 },
    #[error("{errors} errors among {detections} detections is impossible")]
    Counts { errors: u64, detections: u64 },
}

/// Why a block yields no key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AbortReason {
    /// Errors found by reconciliation exceed the threshold.
    KeyQber { qber: f64, max: f64 },
    /// Errors among the revealed test-basis bits exceed the threshold.
    TestQber { qber: f64, max: f64 },
    /// The lower bound on single-photon events in a basis is not positive.
    NoSinglePhotons,
    /// The phase-error bound φ reaches the tolerance (Lim et al. step 4).
    PhaseError { phi: f64, max: f64 },
    /// ℓ of Eq. (1) is not positive.
    NonPositiveLength,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Accept,
    Abort(AbortReason),
}

/// Fixed protocol parameters of the estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct EstimateParams {
    /// [μ1, μ2, μ3] = [signal, decoy, vacuum].
    pub intensities: [f64; 3],
    /// [p_μ1, p_μ2, p_μ3].
    pub probabilities: [f64; 3],
    /// Secrecy parameter ε_sec.
    pub eps_sec: f64,
    /// Correctness parameter ε_cor (the verification hash's collision bound).
    pub eps_cor: f64,
    /// Abort above this key-basis QBER (after reconciliation).
    pub max_qber_key: f64,
    /// Abort above this test-basis QBER.
    pub max_qber_test: f64,
    /// Abort when the phase-error bound reaches φ_tol.
    pub max_phase_error: f64,
}

impl EstimateParams {
    /// ε_sec = 1e-10, ε_cor = 1e-15 (the ε_cor of Lim et al.'s evaluation);
    /// QBER thresholds at 11 %, near the asymptotic BB84 limit of 11.0 %
    /// (Shor–Preskill), φ_tol = ½ (where h(φ) reaches 1).
    pub fn new(intensities: [f64; 3], probabilities: [f64; 3]) -> Self {
        Self {
            intensities,
            probabilities,
            eps_sec: 1e-10,
            eps_cor: 1e-15,
            max_qber_key: 0.11,
            max_qber_test: 0.11,
            max_phase_error: 0.5,
        }
    }

    pub fn validate(&self) -> Result<(), EstimateError> {
        let [m1, m2, m3] = self.intensities;
        if !(m3 >= 0.0 && m2 > m3 && m1 > m2 + m3 && m1.is_finite()) {
            return Err(EstimateError::Intensities(self.intensities));
        }
        let p = self.probabilities;
        if !p.iter().all(|&x| x > 0.0 && x < 1.0) || (p.iter().sum::<f64>() - 1.0).abs() > 1e-9 {
            return Err(EstimateError::Probabilities(p));
        }
        for (name, value) in [("eps_sec", self.eps_sec), ("eps_cor", self.eps_cor)] {
            if !(value > 0.0 && value < 1.0) {
                return Err(EstimateError::Epsilon { name, value });
            }
        }
        for (name, value) in [
            ("max_qber_key", self.max_qber_key),
            ("max_qber_test", self.max_qber_test),
            ("max_phase_error", self.max_phase_error),
        ] {
            if !(value > 0.0 && value <= 0.5) {
                return Err(EstimateError::Threshold { name, value });
            }
        }
        Ok(())
    }
}

/// A block's public statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockCounts {
    /// Key-basis (Z) coincidences per class: the block's key bits.
    pub key_detections: [u64; 3],
    /// Test-basis (X) coincidences per class.
    pub test_detections: [u64; 3],
    /// Errors among the revealed test-basis coincidences per class.
    pub test_errors: [u64; 3],
    /// Errors reconciliation corrected in the key block (all classes).
    pub key_errors: u64,
    /// λ_EC: bits revealed by reconciliation and verification.
    pub leaked_bits: u64,
}

/// The decoy-state bounds of one basis.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BasisBounds {
    /// n^-_k = e^{μk}/p_k (n_k − δ), Hoeffding-corrected (Eq. 2 text).
    pub n_minus: [f64; 3],
    /// n^+_k = e^{μk}/p_k (n_k + δ).
    pub n_plus: [f64; 3],
    /// s_0^l, vacuum events (Eq. 2), clamped at 0.
    pub vacuum_events: f64,
    /// s_1^l, single-photon events (Eq. 3), clamped at 0.
    pub single_photon_events: f64,
}

/// Everything Eq. (1) is built from, for the per-block report.
#[derive(Debug, Clone, PartialEq)]
pub struct FiniteKeyEstimate {
    /// τ0, τ1: probabilities that Alice sends 0 and 1 photons.
    pub tau: [f64; 2],
    pub key: BasisBounds,
    pub test: BasisBounds,
    /// v_{Z,1}^u of Eq. (4) (test basis): single-photon bit errors.
    pub test_single_photon_errors: f64,
    /// φ^u of Eq. (5): phase-error rate of the key basis' single photons.
    pub phase_error: f64,
    pub qber_key: f64,
    pub qber_test: f64,
    pub leaked_bits: u64,
    /// ℓ before flooring (may be negative).
    pub length_real: f64,
    /// ℓ, zero unless the verdict is Accept.
    pub secret_bits: u64,
    pub verdict: Verdict,
}

/// h(x) = −x log2 x − (1 − x) log2(1 − x), with h(0) = h(1) = 0; arguments
/// are clamped to [0, 1].
pub fn binary_entropy(x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    -x * x.log2() - (1.0 - x) * (1.0 - x).log2()
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Eq. (2) and Eq. (3) of Lim et al. for one basis, with the Hoeffding
/// deviation δ = √(n/2 · ln(21/ε_sec)) of the text below Eq. (2).
fn basis_bounds(p: &EstimateParams, tau: [f64; 2], counts: [u64; 3]) -> BasisBounds {
    let [m1, m2, m3] = p.intensities;
    let total: u64 = counts.iter().sum();
    let delta = (total as f64 / 2.0 * (21.0 / p.eps_sec).ln()).sqrt();
    let scale: [f64; 3] = std::array::from_fn(|k| p.intensities[k].exp() / p.probabilities[k]);
    let n_minus: [f64; 3] = std::array::from_fn(|k| scale[k] * (counts[k] as f64 - delta));
    let n_plus: [f64; 3] = std::array::from_fn(|k| scale[k] * (counts[k] as f64 + delta));
    // Eq. (2): s_0 ≥ τ0 (μ2 n^-_{μ3} − μ3 n^+_{μ2}) / (μ2 − μ3).
    let s0 = (tau[0] * (m2 * n_minus[2] - m3 * n_plus[1]) / (m2 - m3)).max(0.0);
    // Eq. (3): s_1 ≥ τ1 μ1 [n^-_{μ2} − n^+_{μ3} − (μ2² − μ3²)/μ1² (n^+_{μ1} − s_0/τ0)]
    //                 / (μ1(μ2 − μ3) − μ2² + μ3²).
    let s1 = tau[1]
        * m1
        * (n_minus[1] - n_plus[2] - (m2 * m2 - m3 * m3) / (m1 * m1) * (n_plus[0] - s0 / tau[0]))
        / (m1 * (m2 - m3) - m2 * m2 + m3 * m3);
    BasisBounds {
        n_minus,
        n_plus,
        vacuum_events: s0,
        single_photon_events: s1.max(0.0),
    }
}

/// γ(a, b, c, d) of Eq. (5): √[(c + d)(1 − b)b / (c d ln 2) ·
/// log2((c + d)/(c d (1 − b) b) · 21²/a²)].
fn gamma(a: f64, b: f64, c: f64, d: f64) -> f64 {
    let inner = (c + d) / (c * d * (1.0 - b) * b) * 441.0 / (a * a);
    ((c + d) * (1.0 - b) * b / (c * d * std::f64::consts::LN_2) * inner.log2())
        .max(0.0)
        .sqrt()
}

/// The secret key length of a block, Lim et al. (2014) Eq. (1), with all
/// intermediate bounds.
///
/// `leaked_bits` is λ_EC. Eq. (1) already charges log2(2/ε_cor) for the
/// verification hash; a caller that also counts the hash's bits in λ_EC (as
/// this crate's driver does, to be safe) pays them twice — about
/// log2(1/ε_cor) ≈ 50 bits per block.
pub fn finite_key_length(
    p: &EstimateParams,
    c: &BlockCounts,
) -> Result<FiniteKeyEstimate, EstimateError> {
    p.validate()?;
    for k in 0..3 {
        if c.test_errors[k] > c.test_detections[k] {
            return Err(EstimateError::Counts {
                errors: c.test_errors[k],
                detections: c.test_detections[k],
            });
        }
    }
    let n_key: u64 = c.key_detections.iter().sum();
    let n_test: u64 = c.test_detections.iter().sum();
    let m_test: u64 = c.test_errors.iter().sum();
    if c.key_errors > n_key {
        return Err(EstimateError::Counts {
            errors: c.key_errors,
            detections: n_key,
        });
    }
    // τ_n = Σ_k e^{−μk} μk^n p_k / n! (text below Eq. (2)).
    let tau0: f64 = (0..3)
        .map(|k| (-p.intensities[k]).exp() * p.probabilities[k])
        .sum();
    let tau1: f64 = (0..3)
        .map(|k| (-p.intensities[k]).exp() * p.intensities[k] * p.probabilities[k])
        .sum();
    let tau = [tau0, tau1];
    let key = basis_bounds(p, tau, c.key_detections);
    let test = basis_bounds(p, tau, c.test_detections);

    // Eq. (4): v_{Z,1} ≤ τ1 (m^+_{μ2} − m^-_{μ3}) / (μ2 − μ3), with
    // m^±_k = e^{μk}/p_k (m_k ± √(m/2 · ln(21/ε_sec))).
    let [_, m2, m3] = p.intensities;
    let dm = (m_test as f64 / 2.0 * (21.0 / p.eps_sec).ln()).sqrt();
    let m_plus2 = m2.exp() / p.probabilities[1] * (c.test_errors[1] as f64 + dm);
    let m_minus3 = m3.exp() / p.probabilities[2] * (c.test_errors[2] as f64 - dm);
    let v1 = (tau1 * (m_plus2 - m_minus3) / (m2 - m3)).max(0.0);

    let qber_key = ratio(c.key_errors, n_key);
    let qber_test = ratio(m_test, n_test);
    let mut est = FiniteKeyEstimate {
        tau,
        key,
        test,
        test_single_photon_errors: v1,
        phase_error: 0.5,
        qber_key,
        qber_test,
        leaked_bits: c.leaked_bits,
        length_real: 0.0,
        secret_bits: 0,
        verdict: Verdict::Accept,
    };
    let abort = |mut e: FiniteKeyEstimate, why| {
        e.verdict = Verdict::Abort(why);
        Ok(e)
    };
    if qber_test > p.max_qber_test {
        return abort(
            est,
            AbortReason::TestQber {
                qber: qber_test,
                max: p.max_qber_test,
            },
        );
    }
    if qber_key > p.max_qber_key {
        return abort(
            est,
            AbortReason::KeyQber {
                qber: qber_key,
                max: p.max_qber_key,
            },
        );
    }
    let (s1_test, s1_key) = (test.single_photon_events, key.single_photon_events);
    if s1_test <= 0.0 || s1_key <= 0.0 {
        return abort(est, AbortReason::NoSinglePhotons);
    }
    // Eq. (5): φ ≤ v1/s1 + γ(ε_sec, v1/s1, s1_test, s1_key). γ vanishes as
    // v1/s1 → 0, where its logarithm diverges; evaluating it no lower than
    // one error in s1_test is my conservative choice, not the paper's.
    let b = (v1 / s1_test).min(1.0);
    let b_gamma = b.max(1.0 / s1_test).min(0.5);
    let phi = b + gamma(p.eps_sec, b_gamma, s1_test, s1_key);
    est.phase_error = phi.min(0.5);
    if phi >= p.max_phase_error {
        return abort(
            est,
            AbortReason::PhaseError {
                phi,
                max: p.max_phase_error,
            },
        );
    }
    // Eq. (1).
    let l = key.vacuum_events + s1_key * (1.0 - binary_entropy(phi))
        - c.leaked_bits as f64
        - 6.0 * (21.0 / p.eps_sec).log2()
        - (2.0 / p.eps_cor).log2();
    est.length_real = l;
    if l < 1.0 {
        return abort(est, AbortReason::NonPositiveLength);
    }
    est.secret_bits = l.floor() as u64;
    Ok(est)
}

/// A check that needs only the revealed test-basis bits, so a driver can
/// abort a block before spending reconciliation on it.
pub fn test_basis_check(p: &EstimateParams, c: &BlockCounts) -> Result<(), AbortReason> {
    let n: u64 = c.test_detections.iter().sum();
    let m: u64 = c.test_errors.iter().sum();
    let q = ratio(m, n);
    if q > p.max_qber_test {
        Err(AbortReason::TestQber {
            qber: q,
            max: p.max_qber_test,
        })
    } else {
        Ok(())
    }
}

/// Ma et al. (2005) vacuum + weak decoy bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VacuumWeakBounds {
    pub y1_lower: f64,
    pub e1_upper: f64,
    /// Q1^L = Y1^L μ e^{−μ}.
    pub q1_lower: f64,
}

/// The vacuum + weak decoy bounds of Ma et al. (2005), their Eqs. (34) and
/// (37) (numbering as cited by other implementations; I could not read the
/// paper itself and checked the formulas by rederiving them from
/// Q_ν e^ν = Σ Y_i ν^i / i! with Y_i ≤ 1 and μ > ν):
///
/// Y1^L = μ/(μν − ν²) [Q_ν e^ν − Q_μ e^μ ν²/μ² − (μ² − ν²)/μ² Y0],
/// e1^U = (E_ν Q_ν e^ν − e0 Y0) / (Y1^L ν).
///
/// Y1^L is clamped at 0 and e1^U to [0, ½].
pub fn vacuum_weak_bounds(
    mu: f64,
    nu: f64,
    q_mu: f64,
    q_nu: f64,
    y0: f64,
    e_nu: f64,
    e0: f64,
) -> VacuumWeakBounds {
    let y1 = (mu / (mu * nu - nu * nu)
        * (q_nu * nu.exp()
            - q_mu * mu.exp() * nu * nu / (mu * mu)
            - (mu * mu - nu * nu) / (mu * mu) * y0))
        .max(0.0);
    let e1 = if y1 > 0.0 {
        ((e_nu * q_nu * nu.exp() - e0 * y0) / (y1 * nu)).clamp(0.0, 0.5)
    } else {
        0.5
    };
    VacuumWeakBounds {
        y1_lower: y1,
        e1_upper: e1,
        q1_lower: y1 * mu * (-mu).exp(),
    }
}

/// Measured per-class figures of a block (or of a long simulation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoyObservation {
    /// [μ, ν, 0].
    pub intensities: [f64; 3],
    /// Gains Q_k: detections per pulse sent of class k.
    pub gains: [f64; 3],
    /// QBERs E_k in matching bases.
    pub qbers: [f64; 3],
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AsymptoticEstimate {
    pub y0: f64,
    pub bounds: VacuumWeakBounds,
    /// R per pulse, q{−Q_μ f H2(E_μ) + Q1^L [1 − H2(e1^U)]}, not clamped.
    pub rate: f64,
}

/// The GLLP rate with Ma et al.'s vacuum + weak bounds from measured data
/// (Y0 is the vacuum class's gain, e0 = ½). Requires a true vacuum (μ3 = 0).
pub fn asymptotic_estimate(
    obs: &DecoyObservation,
    f_ec: f64,
    q: f64,
) -> Result<AsymptoticEstimate, EstimateError> {
    let [mu, nu, vac] = obs.intensities;
    if !(vac == 0.0 && nu > 0.0 && mu > nu) {
        return Err(EstimateError::Intensities(obs.intensities));
    }
    let y0 = obs.gains[2];
    let bounds = vacuum_weak_bounds(mu, nu, obs.gains[0], obs.gains[1], y0, obs.qbers[1], 0.5);
    let rate = q
        * (-obs.gains[0] * f_ec * binary_entropy(obs.qbers[0])
            + bounds.q1_lower * (1.0 - binary_entropy(bounds.e1_upper)));
    Ok(AsymptoticEstimate { y0, bounds, rate })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qkd::analytic::GysModel;

    /// Expected counts of a GYS link at `km` with `pulses` pulses, p_Z = ½
    /// and the key basis' errors at the model's QBER.
    fn gys_counts(p: &EstimateParams, km: f64, pulses: f64) -> BlockCounts {
        let m = GysModel::GYS;
        let eta = m.eta(km);
        let mut c = BlockCounts::default();
        let mut key_err = 0.0;
        for k in 0..3 {
            let mu = p.intensities[k];
            let (q, e) = if mu == 0.0 {
                (m.y0, 0.5)
            } else {
                (m.gain(eta, mu), m.qber(eta, mu))
            };
            let matched = pulses * p.probabilities[k] * q * 0.25;
            c.key_detections[k] = matched.round() as u64;
            c.test_detections[k] = matched.round() as u64;
            c.test_errors[k] = (matched * e).round() as u64;
            key_err += matched * e;
        }
        c.key_errors = key_err.round() as u64;
        let n: u64 = c.key_detections.iter().sum();
        c.leaked_bits = (1.2 * n as f64 * binary_entropy(c.key_errors as f64 / n as f64)) as u64;
        c
    }

    fn params() -> EstimateParams {
        EstimateParams::new([0.48, 0.1, 0.0], [0.6, 0.25, 0.15])
    }

    #[test]
    fn lim_bounds_tend_to_ma_bounds_for_huge_blocks() {
        // With δ/n → 0, Eq. (3) divided by τ1 · (pulses in the basis) is
        // exactly Ma et al.'s Y1^L; check the algebra agrees.
        let p = params();
        let m = GysModel::GYS;
        let eta = m.eta(30.0);
        let pulses = 1e22;
        let c = gys_counts(&p, 30.0, pulses);
        let est = finite_key_length(&p, &c).unwrap();
        let basis_pulses = pulses * 0.25;
        let y1_lim = est.key.single_photon_events / (est.tau[1] * basis_pulses);
        let ma = vacuum_weak_bounds(
            0.48,
            0.1,
            m.gain(eta, 0.48),
            m.gain(eta, 0.1),
            m.y0,
            m.qber(eta, 0.1),
            0.5,
        );
        assert!(
            (y1_lim / ma.y1_lower - 1.0).abs() < 1e-4,
            "{y1_lim} vs {}",
            ma.y1_lower
        );
        let y0_lim = est.key.vacuum_events / (est.tau[0] * basis_pulses);
        assert!((y0_lim / m.y0 - 1.0).abs() < 1e-4, "{y0_lim}");
        // e1 from Eq. (4)/(3) in the test basis against Ma's e1^U.
        let e1 = est.test_single_photon_errors / est.test.single_photon_events;
        assert!(
            (e1 / ma.e1_upper - 1.0).abs() < 1e-3,
            "{e1} vs {}",
            ma.e1_upper
        );
        assert_eq!(est.verdict, Verdict::Accept);
    }

    #[test]
    fn finite_length_grows_towards_the_asymptote() {
        let p = params();
        let mut last = 0.0;
        for pulses in [1e10, 1e11, 1e12] {
            let c = gys_counts(&p, 25.0, pulses);
            let est = finite_key_length(&p, &c).unwrap();
            assert_eq!(est.verdict, Verdict::Accept, "{pulses}: {est:?}");
            let per_pulse = est.secret_bits as f64 / pulses;
            assert!(per_pulse > last, "{pulses}: {per_pulse} ≤ {last}");
            // Never above the infinite-decoy asymptote with the same leak (×¼
            // for the key-basis coincidences of p_Z = ½ instead of q = ½).
            let bound = GysModel {
                f_ec: 1.2,
                ..GysModel::GYS
            }
            .rate_infinite_decoy(25.0, 0.48)
                * 0.5;
            assert!(per_pulse < bound, "{per_pulse} vs {bound}");
            last = per_pulse;
        }
    }

    #[test]
    fn aborts() {
        let p = params();
        let c = gys_counts(&p, 25.0, 1e11);
        // A small block cannot pay for its finite-size terms.
        let small = gys_counts(&p, 25.0, 1e6);
        let e = finite_key_length(&p, &small).unwrap();
        assert!(
            matches!(
                e.verdict,
                Verdict::Abort(AbortReason::NonPositiveLength | AbortReason::NoSinglePhotons)
            ),
            "{e:?}"
        );
        assert_eq!(e.secret_bits, 0);
        // Test-basis QBER of 25 %.
        let mut bad = c.clone();
        bad.test_errors = std::array::from_fn(|k| bad.test_detections[k] / 4);
        let e = finite_key_length(&p, &bad).unwrap();
        assert!(matches!(
            e.verdict,
            Verdict::Abort(AbortReason::TestQber { .. })
        ));
        assert!(test_basis_check(&p, &bad).is_err());
        assert!(test_basis_check(&p, &c).is_ok());
        // Key QBER of 12 %.
        let mut bad = c.clone();
        bad.key_errors = bad.key_detections.iter().sum::<u64>() * 12 / 100;
        let e = finite_key_length(&p, &bad).unwrap();
        assert!(matches!(
            e.verdict,
            Verdict::Abort(AbortReason::KeyQber { .. })
        ));
        // A leak as large as the key.
        let mut bad = c.clone();
        bad.leaked_bits = bad.key_detections.iter().sum();
        let e = finite_key_length(&p, &bad).unwrap();
        assert_eq!(e.verdict, Verdict::Abort(AbortReason::NonPositiveLength));
        // Invalid inputs are errors, not aborts.
        let mut q = params();
        q.intensities = [0.1, 0.1, 0.0];
        assert!(finite_key_length(&q, &c).is_err());
        let mut q = params();
        q.eps_sec = 0.0;
        assert!(finite_key_length(&q, &c).is_err());
        let mut bad = c.clone();
        bad.test_errors[0] = bad.test_detections[0] + 1;
        assert!(finite_key_length(&p, &bad).is_err());
    }

    #[test]
    fn entropy_edges() {
        assert_eq!(binary_entropy(0.0), 0.0);
        assert_eq!(binary_entropy(1.0), 0.0);
        assert!((binary_entropy(0.5) - 1.0).abs() < 1e-15);
        assert!((binary_entropy(0.11) - 0.4999).abs() < 1e-3);
    }
}
