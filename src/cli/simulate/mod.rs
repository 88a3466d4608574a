//! `qkd-ipsec simulate`: Alice, Bob and (optionally) an intercept–resend
//! eavesdropper in one process, joined by the in-memory channel of
//! [`InProcessLink`], running the real block protocol over simulated optics.
//!
//! This module owns the command's flags, their validation (the library
//! validates; we only name the flag that carried the bad value), seeding,
//! and the pulse budget that bounds a run's cost. Figures are formatted in
//! [`rows`], distance sweeps live in [`sweep`] and the SVG plot in [`plot`].
//! Nothing here prints key bytes: the keys of a simulated block are dropped
//! (zeroised) as soon as the block's figures are taken.

mod plot;
mod rows;
mod sweep;

#[cfg(test)]
mod tests;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::Rng;
use thiserror::Error;

use crate::qkd::analytic::expected_clicks;
use crate::qkd::cascade::CascadeVariant;
use crate::qkd::estimate::EstimateError;
use crate::qkd::link::{BlockConfig, InProcessLink, LinkError, LinkRng, SimulatedBlock};
use crate::qkd::optics::{
    DetectorParams, FibreParams, Intensity, LinkParams, NoiseRng, OpticsError, SourceParams,
};
use crate::secret::SecretBytes;

use rows::{BlockRow, RunSummary};
use sweep::SweepRange;

/// The flags of `qkd-ipsec simulate` (defaults and their reasons in
/// `AFTER_HELP`, which `--help` prints).
#[derive(Args, Debug, Clone)]
#[command(after_help = AFTER_HELP)]
pub struct SimulateArgs {
    /// Fibre length (km).
    #[arg(long, default_value_t = 25.0)]
    pub length_km: f64,
    /// Fibre attenuation α (dB/km); GYS: 0.21.
    #[arg(long, default_value_t = 0.21)]
    pub attenuation: f64,
    /// Fixed loss of connectors and Bob's optics (dB).
    #[arg(long, default_value_t = 0.0)]
    pub insertion_loss: f64,
    /// Detector efficiency η_det (0, 1]; GYS: 0.045.
    #[arg(long, default_value_t = 0.045)]
    pub efficiency: f64,
    /// Dark-count probability per gate of each of the two detectors; GYS:
    /// Y0 = 1.7e-6 for both, so 8.5e-7 each.
    #[arg(long, default_value = "8.5e-7")]
    pub dark_count: f64,
    /// Optical misalignment error e_detector; GYS: 0.033.
    #[arg(long, default_value_t = 0.033)]
    pub misalignment: f64,
    /// Mean photon numbers signal,decoy,vacuum (μ > ν + vacuum, ν > vacuum).
    #[arg(long, value_name = "MU,NU,VAC", value_parser = parse_triple, default_value = "0.6,0.2,0")]
    pub intensities: [f64; 3],
    /// Probabilities of sending signal,decoy,vacuum (sum 1).
    #[arg(long, value_name = "P1,P2,P3", value_parser = parse_triple, default_value = "0.4,0.4,0.2")]
    pub probabilities: [f64; 3],
    /// Probability of the Z (key) basis, for Alice and Bob; X tests.
    #[arg(long, default_value_t = 0.5)]
    pub p_z: f64,
    /// Fraction of pulses an intercept–resend eavesdropper attacks [0, 1].
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    pub eve: f64,
    /// Sifted key bits per block (a block closes once it has this many).
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    pub block_bits: usize,
    /// Cascade variant: original | option7 | option8.
    #[arg(long, value_parser = parse_cascade, default_value = "option8")]
    pub cascade: CascadeVariant,
    /// Secrecy parameter ε_sec.
    #[arg(long, default_value = "1e-10")]
    pub eps_sec: f64,
    /// Correctness parameter ε_cor.
    #[arg(long, default_value = "1e-15")]
    pub eps_cor: f64,
    /// Blocks to run (per distance with --sweep).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub blocks: u32,
    /// Fixed seed for every random choice: reproducible and INSECURE (the
    /// keys are predictable). Without it the OS random source is used.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Simulated pulse rate (Hz). It only converts per-pulse rates into
    /// bits per second of simulated link time; 1 GHz is a common gate rate
    /// of current InGaAs single-photon detectors.
    #[arg(long, default_value = "1e9")]
    pub clock_hz: f64,
    /// Most pulses simulated at one distance (all blocks together). Blocks
    /// that would pass it are not run; see the notes below.
    #[arg(long, value_name = "PULSES", default_value = "2e11")]
    pub pulse_budget: f64,
    /// Sweep distances START:END:STEP (km) instead of one --length-km.
    #[arg(long, value_name = "START:END:STEP", value_parser = sweep::parse_sweep,
          conflicts_with = "length_km")]
    pub sweep: Option<SweepRange>,
    /// With --sweep: write a key-rate-versus-distance plot (SVG, log y).
    #[arg(long, value_name = "FILE.svg", requires = "sweep")]
    pub plot: Option<PathBuf>,
    /// Machine-readable output: one JSON object per line (per block or per
    /// distance), then a summary object.
    #[arg(long)]
    pub json: bool,
}

const AFTER_HELP: &str = "\
Defaults: the GYS link of Ma, Qi, Zhao and Lo (PRA 72, 012326, 2005):
alpha 0.21 dB/km, detector efficiency 4.5 %, dark count 8.5e-7 per detector
and gate, misalignment 3.3 %, at 25 km; decoy-state source mu 0.6, nu 0.2,
vacuum, sent with probabilities 0.4, 0.4, 0.2; p_z 0.5; blocks of 2e5
sifted bits. These decoy settings, not the GYS asymptotic optimum (mu ~0.48,
nu 0.1, mostly signal), are the default because the finite-key bounds of Lim
et al. (PRA 89, 022307, 2014) need many decoy and vacuum detections: with
them a 2e5-bit block already yields key up to about 90 km, whereas the
GYS-optimal set needs blocks of about 1e6 bits.

Figures per block: pulses (slots Alice sent), detections, sifted (Z-basis)
bits, QBER Z (errors Cascade corrected) and X (revealed test bits), Ma et al.
vacuum+weak bounds Y1^L and e1^U from the block's gains, Lim et al.'s
single-photon events s1 (key basis) and phase-error bound phi, Cascade's
leak and f = leak/(n h(QBER)), the finite-key length (final bits), the net
bits after repaying the block's authentication key, and the net rate per
pulse and per second of simulated clock (pulses / --clock-hz; processing and
classical round trips are not counted). An aborted block is a result: its
cause is printed and the exit status stays 0.

Pulse budget: a block cannot stop half-way, so before each block its pulse
count is predicted from the exact click model (as Alice does). Blocks that
would take a distance past --pulse-budget are not run; with none run, the
row reads 'no key within budget'. Long distances need ~10^10-10^11 pulses per
block of 2e5 sifted bits.";

impl SimulateArgs {
    /// Runs the command, printing to stdout.
    pub fn exec(self) -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        self.run(&mut stdout.lock())?;
        Ok(())
    }

    /// Runs the command, writing its output to `out`.
    pub fn run(&self, out: &mut dyn Write) -> Result<(), SimulateError> {
        self.validate()?;
        match &self.sweep {
            Some(range) => sweep::run(self, range, out),
            None => self.run_blocks(out),
        }
    }

    /// Checks what the library does not (or cannot attribute to a flag).
    fn validate(&self) -> Result<(), SimulateError> {
        let positive = |flag, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(SimulateError::invalid(flag, v, "must be finite and > 0"))
            }
        };
        positive("clock-hz", self.clock_hz)?;
        positive("pulse-budget", self.pulse_budget)?;
        // p_z = 0 gives no key bits at all (a block would never fill);
        // p_z = 1 leaves no test basis to estimate phase errors from.
        if !(self.p_z > 0.0 && self.p_z < 1.0) {
            return Err(SimulateError::invalid(
                "p-z",
                self.p_z,
                "must lie in (0, 1)",
            ));
        }
        if self.blocks == 0 {
            return Err(SimulateError::invalid("blocks", 0, "must be at least 1"));
        }
        // Everything else: build the configuration the library validates.
        self.block_config(self.length_km)?;
        // The driver checks the fraction only when it builds the attacker;
        // check it here so the error names the flag before any block runs.
        crate::qkd::optics::InterceptResend::new(self.eve, NoiseRng::from_seed(0))
            .map_err(|e| SimulateError::from_link(e.into()))?;
        Ok(())
    }

    /// The link as the flags describe it, at `length_km`.
    fn link_params(&self, length_km: f64) -> LinkParams {
        LinkParams {
            source: SourceParams {
                intensities: self.intensities,
                probabilities: self.probabilities,
                p_z: self.p_z,
            },
            fibre: FibreParams {
                length_km,
                attenuation_db_per_km: self.attenuation,
                insertion_loss_db: self.insertion_loss,
            },
            detector: DetectorParams {
                efficiency: self.efficiency,
                dark_count_probability: self.dark_count,
                misalignment: self.misalignment,
            },
        }
    }

    /// The validated block configuration at `length_km`.
    fn block_config(&self, length_km: f64) -> Result<BlockConfig, SimulateError> {
        let mut cfg = BlockConfig::new(self.link_params(length_km), self.block_bits);
        cfg.cascade.variant = self.cascade;
        cfg.estimate.eps_sec = self.eps_sec;
        cfg.estimate.eps_cor = self.eps_cor;
        cfg.validate().map_err(SimulateError::from_link)?;
        Ok(cfg)
    }

    /// The eavesdropper's noise source, when there is one. `stream` makes
    /// seeded runs at different distances independent.
    fn eve_noise(&self, stream: u64) -> Result<Option<(f64, NoiseRng)>, SimulateError> {
        if self.eve == 0.0 {
            return Ok(None);
        }
        let noise = match self.seed {
            Some(s) => NoiseRng::from_seed(derive_seed(s, stream, SEED_EVE)),
            None => NoiseRng::from_os().map_err(|e| SimulateError::Link(e.into()))?,
        };
        Ok(Some((self.eve, noise)))
    }

    /// A link at `length_km`, seeded from `--seed` (stream `stream`) or the OS.
    fn link(&self, length_km: f64, stream: u64) -> Result<InProcessLink, SimulateError> {
        let cfg = self.block_config(length_km)?;
        let (alice, bob, bootstrap) = match self.seed {
            Some(s) => {
                let mut boot = ChaCha20Rng::seed_from_u64(derive_seed(s, stream, SEED_BOOT));
                let mut bytes = SecretBytes::zeroed(BOOTSTRAP_BYTES);
                boot.fill_bytes(bytes.expose_mut());
                (
                    LinkRng::insecure_from_fixed_seed(derive_seed(s, stream, SEED_ALICE)),
                    LinkRng::insecure_from_fixed_seed(derive_seed(s, stream, SEED_BOB)),
                    bytes,
                )
            }
            None => {
                let bytes = SecretBytes::random(BOOTSTRAP_BYTES)
                    .map_err(|e| SimulateError::Link(LinkError::Random(e.to_string())))?;
                (LinkRng::from_os()?, LinkRng::from_os()?, bytes)
            }
        };
        let eve = self.eve_noise(stream)?;
        Ok(InProcessLink::new(cfg, alice, bob, eve, &bootstrap)?)
    }

    /// Pulses one block is expected to take at `length_km`: the target over
    /// the expected sifted bits per pulse of the exact click model, with the
    /// 5 % margin Alice's frame sizing adds.
    fn expected_block_pulses(&self, length_km: f64) -> f64 {
        let link = self.link_params(length_km);
        let per_pulse: f64 = Intensity::ALL
            .iter()
            .map(|&k| self.probabilities[k.index()] * expected_clicks(&link, k, self.eve).gain)
            .sum::<f64>()
            * self.p_z
            * self.p_z;
        1.05 * self.block_bits as f64 / per_pulse
    }

    /// How many of `--blocks` fit the pulse budget at `length_km`.
    fn blocks_within_budget(&self, length_km: f64) -> u32 {
        let per_block = self.expected_block_pulses(length_km);
        let fit = (self.pulse_budget / per_block).floor();
        (fit.min(self.blocks as f64)).max(0.0) as u32
    }

    /// Plain mode: `--blocks` blocks at `--length-km`.
    fn run_blocks(&self, out: &mut dyn Write) -> Result<(), SimulateError> {
        let km = self.length_km;
        let blocks = self.blocks_within_budget(km);
        if blocks == 0 {
            return Err(SimulateError::Budget {
                km,
                needed: self.expected_block_pulses(km),
                budget: self.pulse_budget,
            });
        }
        if blocks < self.blocks {
            eprintln!(
                "note: running {blocks} of {} blocks: more would pass --pulse-budget {:.3e}",
                self.blocks, self.pulse_budget
            );
        }
        let mut link = self.link(km, 0)?;
        let mut summary = RunSummary::new(self.clock_hz);
        if !self.json {
            rows::write_header(out)?;
        }
        for _ in 0..blocks {
            let (block, wall) = run_one(&mut link)?;
            let row = BlockRow::new(&block, self, km, wall);
            summary.add(&row);
            if self.json {
                writeln!(out, "{}", serde_json::to_string(&row)?)?;
            } else {
                rows::write_row(out, &row)?;
            }
        }
        if self.json {
            writeln!(out, "{}", serde_json::to_string(&summary.finish(self))?)?;
        } else {
            rows::write_summary(out, &summary.finish(self))?;
        }
        Ok(())
    }
}

/// Runs one block and drops its keys (zeroised) at once: the simulation
/// only reports on them. Returns the block's figures and wall time.
fn run_one(link: &mut InProcessLink) -> Result<(SimulatedBlock, f64), SimulateError> {
    let start = Instant::now();
    let mut block = link.run_block()?;
    let wall = start.elapsed().as_secs_f64();
    if let Some((a, b)) = block.keys.take() {
        // The driver guarantees this; a simulation that ever breaks it
        // must say so loudly rather than report key rates.
        if !a.ct_eq(&b) {
            return Err(SimulateError::KeysDiffer(block.alice.block_id));
        }
    }
    Ok((block, wall))
}

/// Bootstrap authentication secret: one block's tags (64 bytes) and some.
const BOOTSTRAP_BYTES: usize = 128;
const SEED_ALICE: u64 = 0xA11C_E000_0000_0001;
const SEED_BOB: u64 = 0xB0B0_0000_0000_0002;
const SEED_EVE: u64 = 0xE7E0_0000_0000_0003;
const SEED_BOOT: u64 = 0xB007_0000_0000_0004;

/// Independent 64-bit seeds per role and stream (SplitMix64 finaliser).
fn derive_seed(seed: u64, stream: u64, role: u64) -> u64 {
    let mut z = seed
        .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(role);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Why `simulate` could not run. An aborted block is not an error.
#[derive(Debug, Error)]
pub enum SimulateError {
    #[error("invalid --{flag} = {value}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The library's message already says what is wrong; it is part of
    /// this message rather than a `source`, so `{:#}` does not repeat it.
    #[error("invalid --{flag}: {cause}")]
    Parameter {
        flag: &'static str,
        cause: LinkError,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(
        "no key within budget at {km} km: one block needs about {needed:.3e} pulses, \
         --pulse-budget is {budget:.3e}; raise the budget or lower --block-bits"
    )]
    Budget { km: f64, needed: f64, budget: f64 },
    #[error("block {0}: Alice's and Bob's keys differ (driver bug)")]
    KeysDiffer(u64),
    // With #[from] the cause is the `source`, which `{:#}` appends.
    #[error("writing output")]
    Io(#[from] std::io::Error),
    #[error("encoding JSON")]
    Json(#[from] serde_json::Error),
    #[error("plot {path}: {reason}")]
    Plot { path: PathBuf, reason: String },
}

impl SimulateError {
    fn invalid(flag: &'static str, value: impl std::fmt::Display, reason: &'static str) -> Self {
        SimulateError::Invalid {
            flag,
            value: value.to_string(),
            reason,
        }
    }

    /// A library validation error, with the flag that set the field.
    fn from_link(e: LinkError) -> Self {
        match flag_of(&e) {
            Some(flag) => SimulateError::Parameter { flag, cause: e },
            None => SimulateError::Link(e),
        }
    }

    /// The flag a validation error points at, if it names one.
    pub fn flag(&self) -> Option<&'static str> {
        match self {
            SimulateError::Invalid { flag, .. } | SimulateError::Parameter { flag, .. } => {
                Some(flag)
            }
            _ => None,
        }
    }
}

/// Library field names (prefixes) and the flags that set them.
const FIELD_FLAGS: [(&str, &str); 10] = [
    ("source.intensities", "intensities"),
    ("source.probabilities", "probabilities"),
    ("source.p_z", "p-z"),
    ("fibre.length_km", "length-km"),
    ("fibre.attenuation_db_per_km", "attenuation"),
    ("fibre.insertion_loss_db", "insertion-loss"),
    ("detector.efficiency", "efficiency"),
    ("detector.dark_count_probability", "dark-count"),
    ("detector.misalignment", "misalignment"),
    ("eavesdropper.fraction", "eve"),
];

fn flag_of(e: &LinkError) -> Option<&'static str> {
    match e {
        LinkError::Optics(OpticsError::InvalidParameter { name, .. }) => FIELD_FLAGS
            .iter()
            .find(|(field, _)| name.starts_with(field))
            .map(|&(_, flag)| flag),
        LinkError::Estimate(EstimateError::Intensities(_)) => Some("intensities"),
        LinkError::Estimate(EstimateError::Probabilities(_)) => Some("probabilities"),
        LinkError::Estimate(EstimateError::Epsilon { name, .. }) => match *name {
            "eps_sec" => Some("eps-sec"),
            "eps_cor" => Some("eps-cor"),
            _ => None,
        },
        LinkError::Config(msg) if msg.contains("target_sifted_bits") => Some("block-bits"),
        LinkError::Config(msg) if msg.contains("eps_cor") => Some("eps-cor"),
        _ => None,
    }
}

/// `MU,NU,VAC`-style lists of exactly three numbers.
fn parse_triple(s: &str) -> Result<[f64; 3], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [a, b, c] = parts.as_slice() else {
        return Err(format!("expected three comma-separated numbers, got {s:?}"));
    };
    let num = |x: &str| {
        x.parse::<f64>()
            .map_err(|_| format!("{x:?} is not a number"))
    };
    Ok([num(a)?, num(b)?, num(c)?])
}

fn parse_cascade(s: &str) -> Result<CascadeVariant, String> {
    CascadeVariant::from_name(s)
        .ok_or_else(|| format!("unknown Cascade variant {s:?}: use original, option7 or option8"))
}
