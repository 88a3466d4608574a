//! `simulate --sweep START:END:STEP`: key rate versus distance, simulated
//! next to the analytic model.
//!
//! At each distance the same link runs up to `--blocks` blocks within the
//! pulse budget, and one row compares:
//!
//! * **finite** — Lim et al.'s ℓ per pulse actually produced by the blocks
//!   (Σ final bits / Σ pulses, at this block size, with Cascade's real leak);
//! * **asym** — the asymptotic GLLP rate with Ma et al.'s vacuum + weak
//!   bounds from the *measured* gains and test-basis QBERs of those blocks,
//!   with f = 1.22 (Ma et al.'s value, not the measured f, so that the
//!   column differs from the analytic one only by what the simulator does);
//! * **GYS v+w** — the same formula on the analytic GYS model at the same
//!   μ, ν (f = 1.22), and **GYS inf** — the infinite-decoy bound at μ.
//!
//! Every rate is per pulse with q = p_z²: only Z–Z coincidences become key
//! here, so with p_z = ½ the figures are half of Ma et al.'s symmetric
//! q = ½ curves. The analytic columns assume no eavesdropper.

use std::io::Write;
use std::str::FromStr;

use serde::Serialize;

use crate::qkd::analytic::GysModel;
use crate::qkd::cascade::binary_entropy;
use crate::qkd::sift::SiftStats;

use super::rows::{ma_estimate, opt, pct, ratio, sci};
use super::{SimulateArgs, SimulateError, plot, run_one};

/// Ma et al.'s error-correction inefficiency f(E) for GYS.
pub const F_EC_MA: f64 = 1.22;

/// At most this many distances per sweep.
const MAX_DISTANCES: usize = 1000;

/// Distances START, START + STEP, … ≤ END (km).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepRange {
    pub start: f64,
    pub end: f64,
    pub step: f64,
}

impl SweepRange {
    pub fn distances(&self) -> Vec<f64> {
        // Index-based, so 0:150:10 ends at exactly 150 despite rounding.
        let n = ((self.end - self.start) / self.step + 1e-9).floor() as usize;
        (0..=n).map(|i| self.start + i as f64 * self.step).collect()
    }
}

impl FromStr for SweepRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_sweep(s)
    }
}

/// Parses `START:END:STEP` (km).
pub fn parse_sweep(s: &str) -> Result<SweepRange, String> {
    let parts: Vec<&str> = s.split(':').map(str::trim).collect();
    let [a, b, c] = parts.as_slice() else {
        return Err(format!("expected START:END:STEP in km, got {s:?}"));
    };
    let num = |name: &str, x: &str| {
        x.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("{name} {x:?} is not a finite number"))
    };
    let r = SweepRange {
        start: num("START", a)?,
        end: num("END", b)?,
        step: num("STEP", c)?,
    };
    if r.start < 0.0 || r.end < r.start {
        return Err(format!("need 0 ≤ START ≤ END, got {s:?}"));
    }
    if r.step <= 0.0 {
        return Err(format!("STEP must be > 0, got {s:?}"));
    }
    if (r.end - r.start) / r.step >= MAX_DISTANCES as f64 {
        return Err(format!("{s:?} gives more than {MAX_DISTANCES} distances"));
    }
    Ok(r)
}

/// One distance of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    pub kind: &'static str,
    pub length_km: f64,
    pub blocks: u32,
    pub blocks_with_key: u32,
    pub pulses: u64,
    /// Pulses one block was expected to need (the budget check).
    pub expected_block_pulses: f64,
    pub sifted_bits: u64,
    pub qber_z: Option<f64>,
    pub qber_x: Option<f64>,
    /// Pooled Σ leak / Σ n·h(Q).
    pub efficiency: Option<f64>,
    /// Σ final bits / Σ pulses (Lim et al. 2014, this block size).
    pub finite_rate_per_pulse: Option<f64>,
    pub net_rate_per_second: Option<f64>,
    /// Ma et al. bounds on the measured counts, f = 1.22, q = p_z².
    pub asymptotic_rate_per_pulse: Option<f64>,
    pub y1_lower: Option<f64>,
    pub e1_upper: Option<f64>,
    /// Analytic GYS model, vacuum + weak decoy at the same μ, ν.
    pub gys_vacuum_weak_per_pulse: f64,
    /// Analytic GYS model, infinitely many decoys, same μ.
    pub gys_infinite_decoy_per_pulse: f64,
    /// Why there is no finite-key rate, if there is none.
    pub note: Option<String>,
    pub wall_seconds: f64,
}

/// The analytic sweep summary (`"kind": "sweep_summary"`).
#[derive(Debug, Clone, Serialize)]
struct SweepSummary {
    kind: &'static str,
    distances: usize,
    pulses: u64,
    wall_seconds: f64,
    /// Longest swept distance where a block produced key.
    longest_with_key_km: Option<f64>,
    /// Where the analytic rates at these μ, ν reach zero.
    gys_vacuum_weak_max_km: f64,
    gys_infinite_decoy_max_km: f64,
    f_ec: f64,
    q: f64,
}

/// The GYS model of Ma et al. (2005) with this run's link parameters:
/// η_Bob folds in the insertion loss, Y0 is both detectors' dark counts,
/// f = 1.22 and q = p_z² (see the module doc).
pub fn analytic_model(args: &SimulateArgs) -> GysModel {
    let pd = args.dark_count;
    GysModel {
        alpha_db_per_km: args.attenuation,
        eta_bob: args.efficiency * 10f64.powf(-args.insertion_loss / 10.0),
        y0: 1.0 - (1.0 - pd) * (1.0 - pd),
        e0: 0.5,
        e_detector: args.misalignment,
        f_ec: F_EC_MA,
        q: args.p_z * args.p_z,
    }
}

/// The two analytic rates at `km` for the run's μ, ν.
pub fn analytic_rates(m: &GysModel, args: &SimulateArgs, km: f64) -> (f64, f64) {
    let [mu, nu, _] = args.intensities;
    (
        m.rate_vacuum_weak(km, mu, nu),
        m.rate_infinite_decoy(km, mu),
    )
}

/// The distance where a rate that falls with distance reaches zero.
fn zero_crossing(rate: impl Fn(f64) -> f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1000.0);
    if rate(lo) <= 0.0 {
        return 0.0;
    }
    while hi - lo > 1e-3 {
        let mid = 0.5 * (lo + hi);
        if rate(mid) > 0.0 { lo = mid } else { hi = mid }
    }
    lo
}

/// Counts pooled over a distance's blocks.
#[derive(Default)]
struct Pool {
    blocks: u32,
    with_key: u32,
    aborted: Vec<&'static str>,
    stats: SiftStats,
    pulses: u64,
    corrected: u64,
    reconciled: u64,
    leaked: u64,
    shannon_bits: f64,
    final_bits: u64,
    net_bits: i64,
    wall: f64,
}

impl Pool {
    fn add(&mut self, b: &crate::qkd::link::SimulatedBlock, wall: f64) {
        let r = &b.alice;
        self.blocks += 1;
        match r.aborted {
            None => self.with_key += 1,
            Some(c) if !self.aborted.contains(&c.name()) => self.aborted.push(c.name()),
            Some(_) => {}
        }
        self.stats += r.stats;
        self.pulses += r.slots;
        if let (Some(e), Some(q)) = (r.key_errors, r.qber_key()) {
            self.corrected += e;
            self.reconciled += r.sifted_bits();
            self.leaked += r.cascade_leaked_bits;
            self.shannon_bits += r.sifted_bits() as f64 * binary_entropy(q);
        }
        self.final_bits += r.final_bits;
        self.net_bits += r.net_bits().max(0);
        self.wall += wall;
    }

    fn row(&self, km: f64, args: &SimulateArgs, expected: f64, m: &GysModel) -> SweepRow {
        let ran = self.blocks > 0;
        let ma = ma_estimate(&self.stats, self.pulses, args, F_EC_MA).filter(|_| ran);
        let test_bits: u64 = self.stats.test.iter().sum();
        let test_errors: u64 = self.stats.test_errors.iter().sum();
        let per_pulse = |bits: f64| ran.then(|| bits / self.pulses.max(1) as f64);
        let note = if !ran {
            Some(format!(
                "no key within budget (a block needs ~{} pulses)",
                sci(expected)
            ))
        } else if self.with_key == 0 {
            Some(format!("no key: {}", self.aborted.join(", ")))
        } else {
            None
        };
        let (vw, inf) = analytic_rates(m, args, km);
        SweepRow {
            kind: "distance",
            length_km: km,
            blocks: self.blocks,
            blocks_with_key: self.with_key,
            pulses: self.pulses,
            expected_block_pulses: expected,
            sifted_bits: self.stats.key.iter().sum(),
            qber_z: (self.reconciled > 0).then(|| ratio(self.corrected, self.reconciled)),
            qber_x: (test_bits > 0).then(|| ratio(test_errors, test_bits)),
            efficiency: (self.shannon_bits > 0.0).then(|| self.leaked as f64 / self.shannon_bits),
            finite_rate_per_pulse: per_pulse(self.final_bits as f64),
            net_rate_per_second: per_pulse(self.net_bits as f64).map(|r| r * args.clock_hz),
            asymptotic_rate_per_pulse: ma.map(|e| e.rate),
            y1_lower: ma.map(|e| e.bounds.y1_lower),
            e1_upper: ma.map(|e| e.bounds.e1_upper),
            gys_vacuum_weak_per_pulse: vw,
            gys_infinite_decoy_per_pulse: inf,
            note,
            wall_seconds: self.wall,
        }
    }
}

/// Runs the sweep, prints its table (or JSON lines) and writes the plot.
pub fn run(
    args: &SimulateArgs,
    range: &SweepRange,
    out: &mut dyn Write,
) -> Result<(), SimulateError> {
    let model = analytic_model(args);
    // Open the plot file first: a long sweep should not end in "cannot
    // write the plot".
    let plot_file = match &args.plot {
        Some(path) => Some((
            path,
            std::fs::File::create(path).map_err(|e| plot_error(path, e))?,
        )),
        None => None,
    };
    if !args.json {
        write_header(out)?;
    }
    let mut rows = Vec::new();
    for (i, km) in range.distances().into_iter().enumerate() {
        let expected = args.expected_block_pulses(km);
        let mut pool = Pool::default();
        let blocks = args.blocks_within_budget(km);
        if blocks > 0 {
            // Stream 0 is plain mode's; distances take 1, 2, ….
            let mut link = args.link(km, i as u64 + 1)?;
            for _ in 0..blocks {
                let (block, wall) = run_one(&mut link)?;
                pool.add(&block, wall);
            }
        }
        let row = pool.row(km, args, expected, &model);
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&row)?)?;
        } else {
            write_row(out, &row)?;
        }
        rows.push(row);
    }
    let [mu, nu, _] = args.intensities;
    let summary = SweepSummary {
        kind: "sweep_summary",
        distances: rows.len(),
        pulses: rows.iter().map(|r| r.pulses).sum(),
        wall_seconds: rows.iter().map(|r| r.wall_seconds).sum(),
        longest_with_key_km: rows
            .iter()
            .filter(|r| r.blocks_with_key > 0)
            .map(|r| r.length_km)
            .reduce(f64::max),
        gys_vacuum_weak_max_km: zero_crossing(|l| model.rate_vacuum_weak(l, mu, nu)),
        gys_infinite_decoy_max_km: zero_crossing(|l| model.rate_infinite_decoy(l, mu)),
        f_ec: F_EC_MA,
        q: model.q,
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    } else {
        writeln!(
            out,
            "rates per pulse, q = p_z² = {}; asym and GYS use f = {F_EC_MA}. Longest distance \
             with key: {}; analytic rate at μ = {mu}, ν = {nu} reaches 0 at {:.1} km \
             (vacuum+weak), {:.1} km (infinite decoy). {} pulses, {:.1} s wall.",
            model.q,
            summary
                .longest_with_key_km
                .map_or("none".into(), |k| format!("{k} km")),
            summary.gys_vacuum_weak_max_km,
            summary.gys_infinite_decoy_max_km,
            sci(summary.pulses as f64),
            summary.wall_seconds,
        )?;
    }
    if let Some((path, mut file)) = plot_file {
        let svg = match plot::render_svg(&rows, range, &model, args) {
            Ok(svg) => svg,
            Err(reason) => {
                // Leave no empty file behind for a plot that was not drawn.
                drop(file);
                let _ = std::fs::remove_file(path);
                return Err(SimulateError::Plot {
                    path: path.clone(),
                    reason,
                });
            }
        };
        file.write_all(svg.as_bytes())
            .map_err(|e| plot_error(path, e))?;
    }
    Ok(())
}

fn plot_error(path: &std::path::Path, e: std::io::Error) -> SimulateError {
    SimulateError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

const COLUMNS: [(&str, usize); 13] = [
    ("km", 6),
    ("blocks", 6),
    ("pulses", 9),
    ("sifted", 8),
    ("QBER_Z", 7),
    ("QBER_X", 7),
    ("f", 6),
    ("finite", 9),
    ("net/s", 9),
    ("asym", 9),
    ("GYS_v+w", 9),
    ("GYS_inf", 9),
    ("note", 0),
];

fn write_header(out: &mut dyn Write) -> std::io::Result<()> {
    let cells: Vec<String> = COLUMNS.iter().map(|(h, _)| h.to_string()).collect();
    write_cells(out, &cells)
}

fn write_row(out: &mut dyn Write, r: &SweepRow) -> std::io::Result<()> {
    let cells = vec![
        format!("{}", r.length_km),
        format!("{}/{}", r.blocks_with_key, r.blocks),
        sci(r.pulses as f64),
        r.sifted_bits.to_string(),
        opt(r.qber_z, pct),
        opt(r.qber_x, pct),
        opt(r.efficiency, |x| format!("{x:.3}")),
        opt(r.finite_rate_per_pulse, sci),
        opt(r.net_rate_per_second, sci),
        opt(r.asymptotic_rate_per_pulse, signed_sci),
        signed_sci(r.gys_vacuum_weak_per_pulse),
        signed_sci(r.gys_infinite_decoy_per_pulse),
        r.note.clone().unwrap_or_default(),
    ];
    write_cells(out, &cells)
}

fn write_cells(out: &mut dyn Write, cells: &[String]) -> std::io::Result<()> {
    let mut line = String::new();
    for (cell, (_, width)) in cells.iter().zip(COLUMNS) {
        line.push_str(&format!("{cell:>width$} "));
    }
    writeln!(out, "{}", line.trim_end())
}

/// Rates that may be negative (no key): shown as "≤0" rather than a
/// meaningless negative number of bits.
fn signed_sci(x: f64) -> String {
    if x > 0.0 { sci(x) } else { "≤0".into() }
}
