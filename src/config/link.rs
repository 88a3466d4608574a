//! `[peer.link]` (what kind of key source the link is, and the simulated
//! optics) and `[peer.postprocessing]` (block size, Cascade, security
//! parameters) — the QKD link both gateways of a pair must describe
//! identically.
//!
//! `kind` is required, so that no file becomes a simulated link by
//! omission: a simulated link's keys are only as secret as the peer
//! channel's classical keys (bootstrap secret, then HMAC-era channel keys
//! that seal its fibre stream), never quantum-secure.
//!
//! Defaults: a 25 km fibre with the GYS detector of Gobby, Yuan and Shields
//! (APL 84, 3762 (2004)) as used by Ma, Qi, Zhao and Lo (PRA 72, 012326
//! (2005)), and decoy settings (μ = 0.6, 0.2, 0 sent with probabilities
//! 0.4, 0.4, 0.2) that give key from blocks of 2·10^5 sifted bits under the
//! finite-key bound of Lim et al. (PRA 89, 022307 (2014)); the GYS default
//! set needs about 10^6 (see `src/qkd/link/tests.rs`).
//!
//! Every field is checked here with its own path so all problems show at
//! once; the optics, estimate and block validators then run as a backstop.

use std::path::PathBuf;

use serde::Deserialize;

use super::Findings;
use crate::qkd::cascade::{CascadeConfig, CascadeVariant};
use crate::qkd::estimate::EstimateParams;
use crate::qkd::link::BlockConfig;
use crate::qkd::optics::frame::{MAX_FRAME_RECORDS, MAX_FRAME_SLOTS};
use crate::qkd::optics::{DetectorParams, FibreParams, LinkParams, MAX_INTENSITY, SourceParams};
use crate::qkd::verify::VerifyConfig;

/// Where a link's keys come from, as written in `[peer.link] kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// Simulated optics between the two agents: the QKD post-processing
    /// stack runs for real, but the "photons" are a sealed byte stream, so
    /// the keys are only as secret as the peer channel's classical keys.
    Simulated,
    /// Keys from a real QKD device over ETSI GS QKD 014 (needs the
    /// `[peer.etsi014]` section).
    Etsi014,
    /// No QKD link: keys relayed over other gateways' QKD links (needs
    /// `[peer.relay]` and `[network]`).
    Relayed,
}

impl LinkKind {
    pub fn name(self) -> &'static str {
        match self {
            LinkKind::Simulated => "simulated",
            LinkKind::Etsi014 => "etsi014",
            LinkKind::Relayed => "relayed",
        }
    }
}

/// `[peer.link]` as written: the kind of link and its simulated optics.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkSection {
    /// Where the link's keys come from. Required, on both gateways alike:
    /// `"simulated"` (simulated optics between the agents; the keys are
    /// only as secret as the peer channel's classical keys, not
    /// quantum-secure) or `"etsi014"` (a real QKD device over ETSI GS QKD
    /// 014).
    ///
    /// Example: `kind = "simulated"`
    pub kind: Option<LinkKind>,
    /// LAB ONLY. Append each channel-key epoch's fibre base key to this
    /// file (created 0600), so that `qkd-ipsec eve --fibre-keys FILE` can
    /// open and attack the sealed fibre stream. Whoever reads the file
    /// learns every key this link makes. Only with `kind = "simulated"`;
    /// unset by default.
    ///
    /// Example: `lab_export_fibre_keys = "/run/qkd-lab/fibre.keys"`
    pub lab_export_fibre_keys: Option<PathBuf>,
    /// LAB ONLY. When the pool with this peer is created (first start),
    /// fill it with the bytes of this 0600 file after the bootstrap block,
    /// in blocks of 64 KiB. Both gateways must name files with the same
    /// bytes. Those keys are only as secret as the file: they let a bench
    /// or a lab start with full pools instead of waiting for the simulated
    /// link. Never seeds again once the pool exists; `status` marks the
    /// pool. Only with `kind = "simulated"`; unset by default.
    ///
    /// Example: `lab_seed_pool = "/run/qkd-lab/seed-gw-b"`
    pub lab_seed_pool: Option<PathBuf>,
    /// Fibre length between the gateways (km). Default 25.
    ///
    /// Example: `length_km = 25.0`
    pub length_km: f64,
    /// Fibre attenuation α (dB/km); 0.21 in GYS. Default 0.21.
    ///
    /// Example: `attenuation_db_per_km = 0.21`
    pub attenuation_db_per_km: f64,
    /// Fixed loss of connectors, splices and the receiver's optics (dB).
    /// Default 0.
    ///
    /// Example: `insertion_loss_db = 1.5`
    pub insertion_loss_db: f64,
    /// Probability that a photon reaching a detector makes it click, in
    /// (0, 1]; 4.5 % in GYS. Default 0.045.
    ///
    /// Example: `detector_efficiency = 0.045`
    pub detector_efficiency: f64,
    /// Dark-count probability per gate of each of the two detectors, in
    /// [0, 0.5); GYS: Y0 = 1.7e-6 for both, so 8.5e-7 each. Default 8.5e-7.
    ///
    /// Example: `dark_count_probability = 8.5e-7`
    pub dark_count_probability: f64,
    /// Probability that a photon measured in its own basis hits the wrong
    /// detector (e_detector), in [0, 0.5]; 3.3 % in GYS. Default 0.033.
    ///
    /// Example: `misalignment = 0.033`
    pub misalignment: f64,
    /// Mean photon numbers [signal, decoy, vacuum] with signal > decoy +
    /// vacuum and decoy > vacuum ≥ 0 (Lim et al. 2014, Sec. II), each ≤ 5.
    /// Default [0.6, 0.2, 0.0].
    ///
    /// Example: `intensities = [0.6, 0.2, 0.0]`
    pub intensities: [f64; 3],
    /// Probabilities of sending each intensity; each in (0, 1), summing to 1.
    /// Default [0.4, 0.4, 0.2].
    ///
    /// Example: `probabilities = [0.4, 0.4, 0.2]`
    pub probabilities: [f64; 3],
    /// Probability of the Z (key) basis at both ends, in (0, 1); X tests.
    /// Default 0.5.
    ///
    /// Example: `p_z = 0.5`
    pub p_z: f64,
    /// Simulated pulse clock (Hz): the transmitter paces fibre frames so
    /// that a frame of n pulses takes n / pulse_rate_hz seconds. 1 GHz is a
    /// typical gated-InGaAs system. Default 1e9.
    ///
    /// Example: `pulse_rate_hz = 1e9`
    pub pulse_rate_hz: f64,
    /// Pulses per fibre frame at most, 1024..=2^30. Bounded so that a frame
    /// stays under the frame decoder's record limit (2^22 non-vacuum pulses)
    /// and under `channel.max_fibre_frame_bytes`. Default 2^23 (8 ms at 1 GHz).
    ///
    /// Example: `frame_slots = 8388608`
    pub frame_slots: u32,
}

impl Default for LinkSection {
    fn default() -> Self {
        let gys = LinkParams::gys(25.0);
        Self {
            kind: None,
            lab_export_fibre_keys: None,
            lab_seed_pool: None,
            length_km: gys.fibre.length_km,
            attenuation_db_per_km: gys.fibre.attenuation_db_per_km,
            insertion_loss_db: gys.fibre.insertion_loss_db,
            detector_efficiency: gys.detector.efficiency,
            dark_count_probability: gys.detector.dark_count_probability,
            misalignment: gys.detector.misalignment,
            intensities: [0.6, 0.2, 0.0],
            probabilities: [0.4, 0.4, 0.2],
            p_z: gys.source.p_z,
            pulse_rate_hz: 1e9,
            frame_slots: 1 << 23,
        }
    }
}

/// `[peer.postprocessing]` as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostprocessingSection {
    /// A block closes when its sifted key reaches this many bits; larger
    /// blocks have smaller finite-size penalties but take longer.
    /// 1024..=2^26. Default 200000.
    ///
    /// Example: `block_sifted_bits = 200000`
    pub block_sifted_bits: usize,
    /// Cascade schedule: `"original"` (Brassard–Salvail 1993), `"option7"`
    /// or `"option8"` (Martinez-Mateo et al. 2015, the default).
    ///
    /// Example: `cascade = "option8"`
    #[serde(deserialize_with = "cascade_variant")]
    pub cascade: CascadeVariant,
    /// Secrecy parameter ε_sec of the finite-key bound, in (0, 1).
    /// Default 1e-10.
    ///
    /// Example: `eps_sec = 1e-10`
    pub eps_sec: f64,
    /// Correctness parameter ε_cor (the verification hash's collision
    /// bound), in [2^-96, 0.5]. Default 1e-15.
    ///
    /// Example: `eps_cor = 1e-15`
    pub eps_cor: f64,
    /// A block is discarded when reconciliation finds more errors than this
    /// fraction, in (0, 0.5]. Default 0.11 (near the BB84 limit).
    ///
    /// Example: `max_qber_key = 0.11`
    pub max_qber_key: f64,
    /// A block is discarded, and an alarm raised, when the revealed
    /// test-basis bits show more errors than this, in (0, 0.5]. An
    /// intercept–resend attack on every pulse gives about 25 %. Default 0.11.
    ///
    /// Example: `max_qber_test = 0.11`
    pub max_qber_test: f64,
    /// A block is discarded when the phase-error bound reaches this, in
    /// (0, 0.5]. Default 0.5 (where h(φ) reaches 1).
    ///
    /// Example: `max_phase_error = 0.5`
    pub max_phase_error: f64,
}

impl Default for PostprocessingSection {
    fn default() -> Self {
        let e = EstimateParams::new([0.6, 0.2, 0.0], [0.4, 0.4, 0.2]);
        Self {
            block_sifted_bits: 200_000,
            cascade: CascadeVariant::default(),
            eps_sec: e.eps_sec,
            eps_cor: e.eps_cor,
            max_qber_key: e.max_qber_key,
            max_qber_test: e.max_qber_test,
            max_phase_error: e.max_phase_error,
        }
    }
}

fn cascade_variant<'de, D: serde::Deserializer<'de>>(d: D) -> Result<CascadeVariant, D::Error> {
    let s = String::deserialize(d)?;
    CascadeVariant::from_name(&s).ok_or_else(|| {
        let names: Vec<&str> = CascadeVariant::ALL.iter().map(|v| v.name()).collect();
        serde::de::Error::custom(format!(
            "unknown Cascade variant {s:?}; use one of {names:?}"
        ))
    })
}

/// A range check: `(field, value, ok, what it must be)`.
type Check = (&'static str, f64, bool, &'static str);

fn report(prefix: &str, checks: &[Check], f: &mut Findings) -> bool {
    let mut ok = true;
    for &(field, value, good, rule) in checks {
        // NaN fails every comparison, so `good` is false for it.
        if !good {
            ok = false;
            f.error(format!("{prefix}.{field}"), format!("{value} {rule}"));
        }
    }
    ok
}

fn unit(x: f64) -> bool {
    x > 0.0 && x < 1.0
}

fn non_negative(x: f64) -> bool {
    x >= 0.0 && x.is_finite()
}

impl LinkSection {
    /// Checks every field; `prefix` is the section's path (`peer[0].link`).
    pub(super) fn check(&self, prefix: &str, f: &mut Findings) -> bool {
        let [m1, m2, m3] = self.intensities;
        let [p1, p2, p3] = self.probabilities;
        let in_range = |m: f64| (0.0..=MAX_INTENSITY).contains(&m);
        let mut ok = report(
            prefix,
            &[
                (
                    "length_km",
                    self.length_km,
                    non_negative(self.length_km),
                    "must be finite and ≥ 0",
                ),
                (
                    "attenuation_db_per_km",
                    self.attenuation_db_per_km,
                    non_negative(self.attenuation_db_per_km),
                    "must be finite and ≥ 0",
                ),
                (
                    "insertion_loss_db",
                    self.insertion_loss_db,
                    non_negative(self.insertion_loss_db),
                    "must be finite and ≥ 0",
                ),
                (
                    "detector_efficiency",
                    self.detector_efficiency,
                    self.detector_efficiency > 0.0 && self.detector_efficiency <= 1.0,
                    "must lie in (0, 1]",
                ),
                (
                    "dark_count_probability",
                    self.dark_count_probability,
                    (0.0..0.5).contains(&self.dark_count_probability),
                    "must lie in [0, 0.5)",
                ),
                (
                    "misalignment",
                    self.misalignment,
                    (0.0..=0.5).contains(&self.misalignment),
                    "must lie in [0, 0.5]",
                ),
                (
                    "intensities[0]",
                    m1,
                    in_range(m1),
                    "must lie in [0, 5] (mean photons per pulse)",
                ),
                (
                    "intensities[1]",
                    m2,
                    in_range(m2),
                    "must lie in [0, 5] (mean photons per pulse)",
                ),
                (
                    "intensities[2]",
                    m3,
                    in_range(m3),
                    "must lie in [0, 5] (mean photons per pulse)",
                ),
                ("probabilities[0]", p1, unit(p1), "must lie in (0, 1)"),
                ("probabilities[1]", p2, unit(p2), "must lie in (0, 1)"),
                ("probabilities[2]", p3, unit(p3), "must lie in (0, 1)"),
                (
                    "p_z",
                    self.p_z,
                    unit(self.p_z),
                    "must lie in (0, 1): both bases are needed, Z for key and X for testing",
                ),
                (
                    "pulse_rate_hz",
                    self.pulse_rate_hz,
                    self.pulse_rate_hz > 0.0 && self.pulse_rate_hz.is_finite(),
                    "must be a positive number of pulses per second, e.g. 1e9",
                ),
            ],
            f,
        );
        if ok && !(m2 > m3 && m1 > m2 + m3) {
            ok = false;
            f.error(
                format!("{prefix}.intensities"),
                format!(
                    "{:?} must satisfy signal > decoy + vacuum and decoy > vacuum \
                     (Lim et al. 2014, Sec. II); e.g. [0.6, 0.2, 0.0]",
                    self.intensities
                ),
            );
        }
        let sum = p1 + p2 + p3;
        if ok && (sum - 1.0).abs() > 1e-9 {
            ok = false;
            f.error(
                format!("{prefix}.probabilities"),
                format!("{:?} sums to {sum}, not 1", self.probabilities),
            );
        }
        if !(1024..=MAX_FRAME_SLOTS).contains(&self.frame_slots) {
            ok = false;
            f.error(
                format!("{prefix}.frame_slots"),
                format!("{} must lie in 1024..={MAX_FRAME_SLOTS}", self.frame_slots),
            );
        } else if ok {
            let records = self.expected_frame_records();
            // 10 % margin: the count is binomial around its mean, with a
            // relative spread far below that for frames this large.
            if records * 1.1 > MAX_FRAME_RECORDS as f64 {
                ok = false;
                f.error(
                    format!("{prefix}.frame_slots"),
                    format!(
                        "{} pulses per frame would carry about {records:.0} non-vacuum pulses \
                         at {} km, over the frame limit of {MAX_FRAME_RECORDS}; lower frame_slots \
                         to {} or less",
                        self.frame_slots,
                        self.length_km,
                        (MAX_FRAME_RECORDS as f64 / 1.1 / self.nonvacuum_fraction()) as u64
                    ),
                );
            }
        }
        ok
    }

    /// Probability that a pulse still holds a photon after the fibre:
    /// Σ_k p_k (1 − e^{−μ_k T}).
    pub fn nonvacuum_fraction(&self) -> f64 {
        let t = self.to_link_params().fibre.transmittance();
        (0..3)
            .map(|k| self.probabilities[k] * (1.0 - (-self.intensities[k] * t).exp()))
            .sum()
    }

    /// Mean number of records in a full fibre frame.
    pub fn expected_frame_records(&self) -> f64 {
        self.frame_slots as f64 * self.nonvacuum_fraction()
    }

    /// Mean encoded size of a full frame: a 17-byte header and, per record,
    /// one state byte and a LEB128 gap (see `qkd::optics::frame`).
    pub fn expected_frame_bytes(&self) -> f64 {
        let frac = self.nonvacuum_fraction().max(1e-300);
        let mean_gap = 1.0 / frac;
        let gap_bytes = (mean_gap.max(1.0).log2() / 7.0).floor() + 1.0;
        17.0 + self.expected_frame_records() * (1.0 + gap_bytes)
    }

    /// The optics parameters of [`crate::qkd::optics`].
    pub fn to_link_params(&self) -> LinkParams {
        LinkParams {
            source: SourceParams {
                intensities: self.intensities,
                probabilities: self.probabilities,
                p_z: self.p_z,
            },
            fibre: FibreParams {
                length_km: self.length_km,
                attenuation_db_per_km: self.attenuation_db_per_km,
                insertion_loss_db: self.insertion_loss_db,
            },
            detector: DetectorParams {
                efficiency: self.detector_efficiency,
                dark_count_probability: self.dark_count_probability,
                misalignment: self.misalignment,
            },
        }
    }
}

impl PostprocessingSection {
    pub(super) fn check(&self, prefix: &str, f: &mut Findings) -> bool {
        let threshold = |x: f64| x > 0.0 && x <= 0.5;
        let mut ok = report(
            prefix,
            &[
                (
                    "eps_sec",
                    self.eps_sec,
                    unit(self.eps_sec),
                    "must lie in (0, 1), e.g. 1e-10",
                ),
                (
                    "max_qber_key",
                    self.max_qber_key,
                    threshold(self.max_qber_key),
                    "must lie in (0, 0.5], e.g. 0.11",
                ),
                (
                    "max_qber_test",
                    self.max_qber_test,
                    threshold(self.max_qber_test),
                    "must lie in (0, 0.5], e.g. 0.11",
                ),
                (
                    "max_phase_error",
                    self.max_phase_error,
                    threshold(self.max_phase_error),
                    "must lie in (0, 0.5], e.g. 0.5",
                ),
            ],
            f,
        );
        if let Err(e) = VerifyConfig::new(self.eps_cor) {
            ok = false;
            f.error(format!("{prefix}.eps_cor"), format!("{e}; e.g. 1e-15"));
        }
        let max = CascadeConfig::default().max_key_bits;
        if !(1024..=max).contains(&self.block_sifted_bits) {
            ok = false;
            f.error(
                format!("{prefix}.block_sifted_bits"),
                format!(
                    "{} must lie in 1024..={max}, e.g. 200000",
                    self.block_sifted_bits
                ),
            );
        }
        ok
    }
}

/// The block parameters both sides of the link run with.
pub(super) fn block_config(link: &LinkSection, post: &PostprocessingSection) -> BlockConfig {
    let mut b = BlockConfig::new(link.to_link_params(), post.block_sifted_bits);
    b.max_frame_slots = link.frame_slots;
    b.cascade.variant = post.cascade;
    b.estimate.eps_sec = post.eps_sec;
    b.estimate.eps_cor = post.eps_cor;
    b.estimate.max_qber_key = post.max_qber_key;
    b.estimate.max_qber_test = post.max_qber_test;
    b.estimate.max_phase_error = post.max_phase_error;
    b
}

/// Every field with its value, for comparing two gateways' files.
pub(super) fn shared_fields(
    link: &LinkSection,
    post: &PostprocessingSection,
) -> Vec<(String, String)> {
    let l = |n: &str, v: String| (format!("link.{n}"), v);
    let p = |n: &str, v: String| (format!("postprocessing.{n}"), v);
    let kind = link.kind.map_or("(missing)", LinkKind::name);
    vec![
        l("kind", kind.to_string()),
        l("length_km", link.length_km.to_string()),
        l(
            "attenuation_db_per_km",
            link.attenuation_db_per_km.to_string(),
        ),
        l("insertion_loss_db", link.insertion_loss_db.to_string()),
        l("detector_efficiency", link.detector_efficiency.to_string()),
        l(
            "dark_count_probability",
            link.dark_count_probability.to_string(),
        ),
        l("misalignment", link.misalignment.to_string()),
        l("intensities", format!("{:?}", link.intensities)),
        l("probabilities", format!("{:?}", link.probabilities)),
        l("p_z", link.p_z.to_string()),
        l("pulse_rate_hz", link.pulse_rate_hz.to_string()),
        l("frame_slots", link.frame_slots.to_string()),
        p("block_sifted_bits", post.block_sifted_bits.to_string()),
        p("cascade", post.cascade.name().to_string()),
        p("eps_sec", post.eps_sec.to_string()),
        p("eps_cor", post.eps_cor.to_string()),
        p("max_qber_key", post.max_qber_key.to_string()),
        p("max_qber_test", post.max_qber_test.to_string()),
        p("max_phase_error", post.max_phase_error.to_string()),
    ]
}
