//! The figures `simulate` prints: one [`BlockRow`] per block and a
//! [`Summary`], as an aligned text table or as JSON lines.
//!
//! These are the CLI's own serde structs, built from the protocol's
//! [`crate::qkd::link::BlockReport`] (which stays free of serde): public counts and bounds
//! only, never key bits.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use crate::qkd::cascade::binary_entropy;
use crate::qkd::estimate::{AsymptoticEstimate, DecoyObservation, asymptotic_estimate};
use crate::qkd::link::SimulatedBlock;
use crate::qkd::sift::SiftStats;

use super::SimulateArgs;

/// One block's figures: Alice's report (Bob's agrees on every public count)
/// and Bob's count of Cascade rounds.
#[derive(Debug, Clone, Serialize)]
pub struct BlockRow {
    pub kind: &'static str,
    pub block: u64,
    pub length_km: f64,
    pub pulses: u64,
    pub frames: u32,
    pub detections: u64,
    /// Z–Z coincidences: the sifted key.
    pub sifted_bits: u64,
    /// X–X coincidences, all revealed to estimate errors.
    pub test_bits: u64,
    /// Errors Cascade corrected (None if Cascade did not run).
    pub key_errors: Option<u64>,
    /// key_errors / sifted bits.
    pub qber_z: Option<f64>,
    /// Errors among the revealed X-basis bits.
    pub qber_x: f64,
    /// Ma et al. (2005) vacuum + weak bounds from this block's gains.
    pub y1_lower: Option<f64>,
    pub e1_upper: Option<f64>,
    /// Lim et al. (2014) Eq. (3): single-photon events in the key basis.
    pub s1_key: Option<f64>,
    /// Lim et al. (2014) Eq. (5): phase-error bound φ^u.
    pub phase_error: Option<f64>,
    pub cascade_leaked_bits: u64,
    pub verify_bits: u64,
    pub cascade_rounds: u32,
    /// f = leak / (n·h(QBER_Z)), None when QBER_Z is 0 or unknown.
    pub efficiency: Option<f64>,
    /// Lim et al.'s ℓ (0 on abort).
    pub final_bits: u64,
    pub auth_key_bits: u64,
    /// Final bits less the authentication key the block consumed.
    pub net_bits: i64,
    pub rate_per_pulse: f64,
    pub rate_per_second: f64,
    pub wall_seconds: f64,
    pub intercepted: u64,
    /// Abort cause, None when the block produced key.
    pub aborted: Option<&'static str>,
    /// The abort is a security alarm (eavesdropping or tampering suspected).
    pub alarm: bool,
}

impl BlockRow {
    pub fn new(b: &SimulatedBlock, args: &SimulateArgs, length_km: f64, wall: f64) -> Self {
        let r = &b.alice;
        let decoy = ma_estimate(&r.stats, r.slots, args, 1.0);
        let net = r.net_bits();
        let rate = net.max(0) as f64 / r.slots.max(1) as f64;
        BlockRow {
            kind: "block",
            block: r.block_id,
            length_km,
            pulses: r.slots,
            frames: r.frames,
            detections: r.detections(),
            sifted_bits: r.sifted_bits(),
            test_bits: r.test_bits(),
            key_errors: r.key_errors,
            qber_z: r.qber_key(),
            qber_x: r.qber_test(),
            y1_lower: decoy.map(|d| d.bounds.y1_lower),
            e1_upper: decoy.map(|d| d.bounds.e1_upper),
            s1_key: r.estimate.as_ref().map(|e| e.key.single_photon_events),
            phase_error: r.estimate.as_ref().map(|e| e.phase_error),
            cascade_leaked_bits: r.cascade_leaked_bits,
            verify_bits: r.verify_bits,
            // Bob runs the corrector; only he counts its rounds.
            cascade_rounds: b.bob.cascade_rounds,
            efficiency: r.efficiency(),
            final_bits: r.final_bits,
            auth_key_bits: r.auth_key_bits,
            net_bits: net,
            rate_per_pulse: rate,
            rate_per_second: rate * args.clock_hz,
            wall_seconds: wall,
            intercepted: b.intercepted,
            aborted: r.aborted.map(|c| c.name()),
            alarm: r.aborted.is_some_and(|c| c.is_alarm()),
        }
    }
}

/// Measured gains and test-basis QBERs per class; the pulses of class k are
/// taken as slots·p_k (the expected count, as the link's report does).
pub fn observation(stats: &SiftStats, slots: u64, args: &SimulateArgs) -> DecoyObservation {
    let slots = slots.max(1) as f64;
    DecoyObservation {
        intensities: args.intensities,
        gains: std::array::from_fn(|k| {
            stats.detections[k] as f64 / (slots * args.probabilities[k])
        }),
        qbers: std::array::from_fn(|k| ratio(stats.test_errors[k], stats.test[k])),
    }
}

/// Ma et al.'s bounds and GLLP rate from measured counts, with
/// error-correction inefficiency `f_ec` and q = p_z² (the fraction of
/// detections that become key here: Z–Z coincidences only). None when the
/// intensities have no true vacuum, which the formula requires.
pub fn ma_estimate(
    stats: &SiftStats,
    slots: u64,
    args: &SimulateArgs,
    f_ec: f64,
) -> Option<AsymptoticEstimate> {
    if slots == 0 {
        return None;
    }
    asymptotic_estimate(&observation(stats, slots, args), f_ec, args.p_z * args.p_z).ok()
}

pub fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Totals over a run.
#[derive(Debug, Default)]
pub struct RunSummary {
    clock_hz: f64,
    blocks: u32,
    with_key: u32,
    aborted: BTreeMap<&'static str, u32>,
    pulses: u64,
    sifted: u64,
    leaked: u64,
    /// Σ n·h(Q) over blocks Cascade ran on, for the pooled f.
    shannon_bits: f64,
    corrected: u64,
    reconciled: u64,
    final_bits: u64,
    net_bits: i64,
    wall: f64,
}

/// The summary object (`"kind": "summary"` in JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub kind: &'static str,
    pub length_km: f64,
    pub seed: Option<u64>,
    pub cascade: &'static str,
    pub block_bits: usize,
    pub blocks: u32,
    pub blocks_with_key: u32,
    pub aborted: BTreeMap<&'static str, u32>,
    pub pulses: u64,
    pub sifted_bits: u64,
    /// Σ corrected errors / Σ reconciled bits.
    pub qber_z: Option<f64>,
    /// Σ leak / Σ n·h(Q): the pooled reconciliation efficiency.
    pub efficiency: Option<f64>,
    pub final_bits: u64,
    pub net_bits: i64,
    pub rate_per_pulse: f64,
    pub rate_per_second: f64,
    /// Pulses / clock: the link time the run represents.
    pub simulated_seconds: f64,
    pub clock_hz: f64,
    pub wall_seconds: f64,
}

impl RunSummary {
    pub fn new(clock_hz: f64) -> Self {
        Self {
            clock_hz,
            ..Default::default()
        }
    }

    pub fn add(&mut self, row: &BlockRow) {
        self.blocks += 1;
        match row.aborted {
            None => self.with_key += 1,
            Some(cause) => *self.aborted.entry(cause).or_default() += 1,
        }
        self.pulses += row.pulses;
        self.sifted += row.sifted_bits;
        if let (Some(errors), Some(q)) = (row.key_errors, row.qber_z) {
            self.corrected += errors;
            self.reconciled += row.sifted_bits;
            self.leaked += row.cascade_leaked_bits;
            self.shannon_bits += row.sifted_bits as f64 * binary_entropy(q);
        }
        self.final_bits += row.final_bits;
        self.net_bits += row.net_bits.max(0);
        self.wall += row.wall_seconds;
    }

    pub fn finish(&self, args: &SimulateArgs) -> Summary {
        let rate = self.net_bits as f64 / self.pulses.max(1) as f64;
        Summary {
            kind: "summary",
            length_km: args.length_km,
            seed: args.seed,
            cascade: args.cascade.name(),
            block_bits: args.block_bits,
            blocks: self.blocks,
            blocks_with_key: self.with_key,
            aborted: self.aborted.clone(),
            pulses: self.pulses,
            sifted_bits: self.sifted,
            qber_z: (self.reconciled > 0).then(|| ratio(self.corrected, self.reconciled)),
            efficiency: (self.shannon_bits > 0.0).then(|| self.leaked as f64 / self.shannon_bits),
            final_bits: self.final_bits,
            net_bits: self.net_bits,
            rate_per_pulse: rate,
            rate_per_second: rate * self.clock_hz,
            simulated_seconds: self.pulses as f64 / self.clock_hz,
            clock_hz: self.clock_hz,
            wall_seconds: self.wall,
        }
    }
}

/// Column headers and widths of the block table.
const COLUMNS: [(&str, usize); 18] = [
    ("block", 5),
    ("pulses", 9),
    ("detect", 8),
    ("sifted", 8),
    ("QBER_Z", 7),
    ("QBER_X", 7),
    ("Y1^L", 9),
    ("e1^U", 7),
    ("s1", 8),
    ("phi", 7),
    ("leak", 7),
    ("f", 6),
    ("final", 7),
    ("net", 7),
    ("net/pulse", 9),
    ("net/s", 9),
    ("wall", 7),
    ("result", 0),
];

pub fn write_header(out: &mut dyn Write) -> std::io::Result<()> {
    let cells: Vec<String> = COLUMNS.iter().map(|(h, _)| h.to_string()).collect();
    write_cells(out, &cells)
}

pub fn write_row(out: &mut dyn Write, r: &BlockRow) -> std::io::Result<()> {
    let result = match r.aborted {
        None => "key".to_string(),
        Some(cause) if r.alarm => format!("ABORT {cause} (alarm)"),
        Some(cause) => format!("abort {cause}"),
    };
    let cells = vec![
        r.block.to_string(),
        sci(r.pulses as f64),
        r.detections.to_string(),
        r.sifted_bits.to_string(),
        opt(r.qber_z, pct),
        pct(r.qber_x),
        opt(r.y1_lower, sci),
        opt(r.e1_upper, pct),
        opt(r.s1_key, |x| format!("{x:.0}")),
        opt(r.phase_error, pct),
        r.cascade_leaked_bits.to_string(),
        opt(r.efficiency, |x| format!("{x:.3}")),
        r.final_bits.to_string(),
        r.net_bits.to_string(),
        sci(r.rate_per_pulse),
        sci(r.rate_per_second),
        format!("{:.3}s", r.wall_seconds),
        result,
    ];
    write_cells(out, &cells)
}

pub fn write_summary(out: &mut dyn Write, s: &Summary) -> std::io::Result<()> {
    let aborted: Vec<String> = s.aborted.iter().map(|(c, n)| format!("{n} {c}")).collect();
    writeln!(
        out,
        "summary: {} blocks at {} km, {} with key{}; {} pulses, {} sifted bits, QBER_Z {}, \
         f {}; {} final bits, {} net bits = {} per pulse = {} bit/s at {} Hz \
         ({:.3} s simulated, {:.3} s wall)",
        s.blocks,
        s.length_km,
        s.blocks_with_key,
        if aborted.is_empty() {
            String::new()
        } else {
            format!(" (aborted: {})", aborted.join(", "))
        },
        sci(s.pulses as f64),
        s.sifted_bits,
        opt(s.qber_z, pct),
        opt(s.efficiency, |x| format!("{x:.3}")),
        s.final_bits,
        s.net_bits,
        sci(s.rate_per_pulse),
        sci(s.rate_per_second),
        sci(s.clock_hz),
        s.simulated_seconds,
        s.wall_seconds,
    )
}

fn write_cells(out: &mut dyn Write, cells: &[String]) -> std::io::Result<()> {
    let mut line = String::new();
    for (cell, (_, width)) in cells.iter().zip(COLUMNS) {
        line.push_str(&format!("{cell:>width$} "));
    }
    writeln!(out, "{}", line.trim_end())
}

/// Numbers spanning many decades: three significant digits.
pub fn sci(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else {
        format!("{x:.2e}")
    }
}

pub fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

pub fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "-".into(), f)
}
