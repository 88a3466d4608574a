//! Tests of the simulated physics against closed-form expectations.
//!
//! Every comparison is a binomial (or delta-method) bound computed from the
//! expectation, at 5σ unless stated: a seeded run fails only if the
//! simulator's law differs from the model (≈ 6e-7 false-alarm chance per
//! check otherwise).

use super::*;
use crate::qkd::analytic::{GysModel, expected_clicks};
use crate::qkd::estimate::{
    AbortReason, BlockCounts, DecoyObservation, EstimateParams, Verdict, asymptotic_estimate,
    binary_entropy, finite_key_length,
};

/// Ground-truth counts per intensity class.
#[derive(Debug, Default, Clone)]
struct Tally {
    slots: u64,
    detections: [u64; 3],
    /// Matching bases, either basis.
    matched: [u64; 3],
    errors: [u64; 3],
    z_matched: [u64; 3],
    z_errors: [u64; 3],
    x_matched: [u64; 3],
    x_errors: [u64; 3],
}

fn simulate(params: &LinkParams, eve: f64, slots: u64, seed: u64) -> Tally {
    let mut src = Source::new(
        params,
        ChoiceRng::insecure_from_fixed_seed(seed),
        NoiseRng::from_seed(seed ^ 1),
    )
    .unwrap();
    let mut det = Detector::new(
        params,
        ChoiceRng::insecure_from_fixed_seed(seed ^ 2),
        NoiseRng::from_seed(seed ^ 3),
    )
    .unwrap();
    let mut attacker = InterceptResend::new(eve, NoiseRng::from_seed(seed ^ 4)).unwrap();
    let mut t = Tally::default();
    let frame_slots = 1u64 << 26;
    let mut left = slots;
    while left > 0 {
        let n = left.min(frame_slots) as u32;
        left -= n as u64;
        let (mut frame, log) = src.emit(n).unwrap();
        if eve > 0.0 {
            attacker.intercept(&mut frame);
        }
        let d = det.detect(&frame);
        let a = src.resolve(log, d.slots()).unwrap();
        for i in 0..d.len() {
            let k = a.class(i).index();
            t.detections[k] += 1;
            if a.basis(i) != d.basis(i) {
                continue;
            }
            let err = (a.bit(i) != d.bit(i)) as u64;
            t.matched[k] += 1;
            t.errors[k] += err;
            if a.basis(i) == Basis::Z {
                t.z_matched[k] += 1;
                t.z_errors[k] += err;
            } else {
                t.x_matched[k] += 1;
                t.x_errors[k] += err;
            }
        }
    }
    t.slots = slots;
    t
}

/// |observed − n p| ≤ z √(n p (1 − p)), with a floor of one count.
fn assert_binomial(what: &str, observed: u64, n: u64, p: f64, z: f64) {
    let mean = n as f64 * p;
    let sd = (mean * (1.0 - p)).sqrt().max(1.0);
    let dev = (observed as f64 - mean).abs();
    assert!(
        dev <= z * sd,
        "{what}: observed {observed}, expected {mean:.1} ± {sd:.1} (n = {n}, p = {p:.3e})"
    );
}

fn check_against_model(params: &LinkParams, eve: f64, t: &Tally) {
    let pz = params.source.p_z;
    let p_match = pz * pz + (1.0 - pz) * (1.0 - pz);
    for class in Intensity::ALL {
        let k = class.index();
        let c = expected_clicks(params, class, eve);
        let pk = params.source.probabilities[k];
        assert_binomial(
            &format!("{class:?} detections"),
            t.detections[k],
            t.slots,
            pk * c.gain,
            5.0,
        );
        assert_binomial(
            &format!("{class:?} matched bases"),
            t.matched[k],
            t.detections[k],
            p_match,
            5.0,
        );
        assert_binomial(
            &format!("{class:?} errors"),
            t.errors[k],
            t.matched[k],
            c.qber(),
            5.0,
        );
    }
}

#[test]
fn honest_link_qber_is_misalignment_plus_dark_counts() {
    // Short link: misalignment dominates.
    let short = LinkParams::gys(0.0);
    check_against_model(&short, 0.0, &simulate(&short, 0.0, 20_000_000, 1));
    // 120 km: dark counts make up a third of the errors; check that the
    // model's dark-count share is resolved, not just the total.
    let long = LinkParams::gys(120.0);
    let t = simulate(&long, 0.0, 1_500_000_000, 2);
    check_against_model(&long, 0.0, &t);
    let mut no_dark = long.clone();
    no_dark.detector.dark_count_probability = 0.0;
    let q_dark = expected_clicks(&long, Intensity::Signal, 0.0).qber();
    let q_none = expected_clicks(&no_dark, Intensity::Signal, 0.0).qber();
    let m = t.matched[0] as f64;
    let sd = (m * q_dark * (1.0 - q_dark)).sqrt();
    assert!(
        (q_dark - q_none) * m > 5.0 * sd,
        "dark-count share not resolvable: test too small"
    );
    let observed = t.errors[0] as f64 / m;
    assert!(
        (observed - q_none) * m > 2.0 * sd,
        "QBER {observed} shows no dark-count contribution"
    );
}

#[test]
fn eavesdropper_raises_z_qber_by_a_quarter_of_her_fraction() {
    let p = LinkParams::gys(10.0);
    let honest = simulate(&p, 0.0, 40_000_000, 3);
    check_against_model(&p, 0.0, &honest);
    let ed = p.detector.misalignment;
    for (i, frac) in [0.25, 1.0].into_iter().enumerate() {
        let t = simulate(&p, frac, 40_000_000, 4 + i as u64);
        check_against_model(&p, frac, &t);
        // The Z-basis rise against the honest run: ≈ frac/4, exactly
        // frac(¼ − e_d/2) to first order; both runs' binomial errors add.
        let q = |e: u64, m: u64| e as f64 / m as f64;
        let (q0, q1) = (
            q(honest.z_errors[0], honest.z_matched[0]),
            q(t.z_errors[0], t.z_matched[0]),
        );
        let sd = (q0 * (1.0 - q0) / honest.z_matched[0] as f64
            + q1 * (1.0 - q1) / t.z_matched[0] as f64)
            .sqrt();
        let rise = q1 - q0;
        let expect = frac * (0.25 - ed / 2.0);
        assert!(
            (rise - expect).abs() < 5.0 * sd + 1e-3,
            "fraction {frac}: rise {rise:.4}, expected {expect:.4} ± {sd:.4}"
        );
        assert!((rise - frac / 4.0).abs() < frac * ed / 2.0 + 5.0 * sd + 1e-3);
    }
}

/// A link where a block big enough for the finite-key bounds (~10^6 key
/// bits) fits in a fast test: all loss in the fibre (η_det = 1), so nearly
/// every simulated photon is a detection.
fn bright_link() -> LinkParams {
    let mut p = LinkParams::gys(0.0);
    p.fibre.insertion_loss_db = 9.0;
    p.detector.efficiency = 1.0;
    p.source.intensities = [0.5, 0.1, 0.0];
    p.source.probabilities = [0.5, 0.3, 0.2];
    p
}

fn block_counts(t: &Tally) -> BlockCounts {
    let n: u64 = t.z_matched.iter().sum();
    let e: u64 = t.z_errors.iter().sum();
    BlockCounts {
        key_detections: t.z_matched,
        test_detections: t.x_matched,
        test_errors: t.x_errors,
        key_errors: e,
        // A reconciliation at f = 1.2 plus a 64-bit verification tag.
        leaked_bits: (1.2 * n as f64 * binary_entropy(e as f64 / n as f64)) as u64 + 64,
    }
}

#[test]
fn full_intercept_resend_leaves_no_key() {
    let p = bright_link();
    let est = EstimateParams::new(p.source.intensities, p.source.probabilities);
    let slots = 300_000_000;
    let honest = finite_key_length(&est, &block_counts(&simulate(&p, 0.0, slots, 7))).unwrap();
    // The same block without Eve yields key, so the abort below is Eve's doing.
    assert_eq!(honest.verdict, Verdict::Accept, "{honest:?}");
    assert!(honest.secret_bits > 10_000, "{honest:?}");
    let attacked = finite_key_length(&est, &block_counts(&simulate(&p, 1.0, slots, 8))).unwrap();
    assert_eq!(attacked.secret_bits, 0);
    assert!(
        matches!(
            attacked.verdict,
            Verdict::Abort(AbortReason::TestQber { .. } | AbortReason::KeyQber { .. })
        ),
        "{attacked:?}"
    );
    assert!(
        attacked.qber_key > 0.2 && attacked.qber_test > 0.2,
        "{attacked:?}"
    );
}

/// The vacuum + weak decoy rate from a run's measured gains and QBERs.
fn simulated_rate(mu: [f64; 3], probs: [f64; 3], slots: f64, cells: &[[f64; 3]; 3]) -> f64 {
    // cells[k] = [matched errors, matched correct, unmatched detections].
    let gains = std::array::from_fn(|k| cells[k].iter().sum::<f64>() / (slots * probs[k]));
    let qbers = std::array::from_fn(|k| cells[k][0] / (cells[k][0] + cells[k][1]).max(1.0));
    let obs = DecoyObservation {
        intensities: mu,
        gains,
        qbers,
    };
    asymptotic_estimate(&obs, GysModel::GYS.f_ec, GysModel::GYS.q)
        .unwrap()
        .rate
}

#[test]
fn simulated_asymptotic_rate_matches_the_analytic_model() {
    let gys = GysModel::GYS;
    for (km, slots, seed) in [
        (0.0, 20e6, 11),
        (25.0, 1e8, 12),
        (50.0, 4e8, 13),
        (100.0, 4e9, 14),
    ] {
        let mut p = LinkParams::gys(km);
        p.source.probabilities = [0.5, 0.3, 0.2];
        let (mu, probs) = (p.source.intensities, p.source.probabilities);
        let t = simulate(&p, 0.0, slots as u64, seed);
        let cells: [[f64; 3]; 3] = std::array::from_fn(|k| {
            let e = t.errors[k] as f64;
            [
                e,
                t.matched[k] as f64 - e,
                (t.detections[k] - t.matched[k]) as f64,
            ]
        });
        let r_sim = simulated_rate(mu, probs, slots, &cells);
        let r_ana = gys.rate_vacuum_weak(km, mu[0], mu[1]);
        // The same formula on the exact expectations of the simulated
        // receiver: the model difference the comparison must allow.
        let exact = std::array::from_fn(|k| {
            let c = expected_clicks(&p, Intensity::ALL[k], 0.0);
            let n = slots * probs[k];
            [
                n * c.error_gain * 0.5,
                n * (c.gain - c.error_gain) * 0.5,
                n * c.gain * 0.5,
            ]
        });
        let r_exact = simulated_rate(mu, probs, slots, &exact);
        // Delta method over the nine (nearly Poisson) cells.
        let mut var = 0.0;
        for k in 0..3 {
            for j in 0..3 {
                let x = cells[k][j];
                let h = (x * 1e-4).max(0.5);
                let mut up = cells;
                up[k][j] += h;
                let mut dn = cells;
                dn[k][j] = (x - h).max(0.0);
                let d = (simulated_rate(mu, probs, slots, &up)
                    - simulated_rate(mu, probs, slots, &dn))
                    / (x + h - dn[k][j]);
                var += d * d * x.max(1.0);
            }
        }
        let sd = var.sqrt();
        eprintln!(
            "{km:>5} km: R_sim {r_sim:.4e} ± {sd:.1e}, R_GYS {r_ana:.4e}, R_exact-model {r_exact:.4e}"
        );
        assert!(
            sd < 0.1 * r_ana,
            "{km} km: run too short to test anything (σ = {sd:.2e})"
        );
        assert!(
            (r_sim - r_ana).abs() <= 4.0 * sd + (r_exact - r_ana).abs(),
            "{km} km: simulated {r_sim:.4e} vs analytic {r_ana:.4e} (σ {sd:.1e})"
        );
    }
}
