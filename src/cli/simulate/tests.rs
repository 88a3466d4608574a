//! CLI-level tests of `simulate`: flag parsing, validation errors that name
//! the flag and the library field, seeded reproducibility, JSON and sweep
//! output, the pulse budget. Blocks are the default 2·10^5 sifted bits (the
//! smallest that gives key with the default decoy settings); each takes a
//! fraction of a second at the test profile's opt-level.

use clap::Parser;

use super::*;

#[derive(Parser, Debug)]
struct TestCli {
    #[command(flatten)]
    args: SimulateArgs,
}

fn parse(cmdline: &str) -> Result<SimulateArgs, clap::Error> {
    let argv = std::iter::once("simulate").chain(cmdline.split_whitespace());
    TestCli::try_parse_from(argv).map(|c| c.args)
}

fn run(args: &SimulateArgs) -> Result<String, SimulateError> {
    let mut out = Vec::new();
    args.run(&mut out)?;
    Ok(String::from_utf8(out).expect("utf-8 output"))
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn defaults_are_the_documented_link() {
    let a = parse("").unwrap();
    assert_eq!(a.length_km, 25.0);
    assert_eq!(a.intensities, [0.6, 0.2, 0.0]);
    assert_eq!(a.probabilities, [0.4, 0.4, 0.2]);
    assert_eq!(a.block_bits, 200_000);
    assert_eq!(a.cascade, CascadeVariant::Option8);
    assert_eq!(a.clock_hz, 1e9);
    assert_eq!(a.seed, None);
    // The GYS detector of Ma et al. (2005).
    let p = a.link_params(a.length_km);
    assert_eq!(p.detector, LinkParams::gys(25.0).detector);
    assert_eq!(p.fibre, LinkParams::gys(25.0).fibre);
    a.validate().unwrap();
}

#[test]
fn flags_parse_into_the_block_config() {
    let a = parse(
        "--length-km 40 --attenuation 0.2 --insertion-loss 1.5 --efficiency 0.1 \
         --dark-count 1e-6 --misalignment 0.02 --intensities 0.5,0.1,0 \
         --probabilities 0.7,0.2,0.1 --p-z 0.8 --eve 0.25 --block-bits 50000 \
         --cascade original --eps-sec 1e-9 --eps-cor 1e-12 --blocks 2 --seed 9",
    )
    .unwrap();
    let cfg = a.block_config(a.length_km).unwrap();
    assert_eq!(cfg.link.fibre.length_km, 40.0);
    assert_eq!(cfg.link.fibre.attenuation_db_per_km, 0.2);
    assert_eq!(cfg.link.fibre.insertion_loss_db, 1.5);
    assert_eq!(cfg.link.detector.efficiency, 0.1);
    assert_eq!(cfg.link.detector.dark_count_probability, 1e-6);
    assert_eq!(cfg.link.detector.misalignment, 0.02);
    assert_eq!(cfg.link.source.intensities, [0.5, 0.1, 0.0]);
    assert_eq!(cfg.link.source.probabilities, [0.7, 0.2, 0.1]);
    assert_eq!(cfg.link.source.p_z, 0.8);
    assert_eq!(cfg.target_sifted_bits, 50_000);
    assert_eq!(cfg.cascade.variant, CascadeVariant::Original);
    assert_eq!(cfg.estimate.eps_sec, 1e-9);
    assert_eq!(cfg.estimate.eps_cor, 1e-12);
    assert_eq!((a.eve, a.blocks, a.seed), (0.25, 2, Some(9)));
}

#[test]
fn malformed_flags_are_parse_errors() {
    for (cmdline, needle) in [
        ("--intensities 0.6,0.2", "three comma-separated"),
        ("--probabilities 0.4,x,0.2", "not a number"),
        ("--cascade winnow", "original, option7 or option8"),
        ("--sweep 0:150", "START:END:STEP"),
        ("--sweep 50:10:5", "START ≤ END"),
        ("--sweep 0:10:0", "STEP must be > 0"),
        ("--sweep 0:1e6:0.5", "more than 1000"),
        ("--plot out.svg", "--sweep"),
        ("--sweep 0:10:5 --length-km 5", "cannot be used with"),
        ("--blocks=-1", "--blocks"),
    ] {
        let e = parse(cmdline).expect_err(cmdline).to_string();
        assert!(e.contains(needle), "{cmdline}: {e}");
    }
}

#[test]
fn invalid_values_name_the_flag_and_the_field() {
    for (cmdline, flag, field) in [
        ("--efficiency 2", "efficiency", "detector.efficiency"),
        (
            "--dark-count 0.7",
            "dark-count",
            "detector.dark_count_probability",
        ),
        (
            "--misalignment 0.6",
            "misalignment",
            "detector.misalignment",
        ),
        (
            "--attenuation=-1",
            "attenuation",
            "fibre.attenuation_db_per_km",
        ),
        (
            "--insertion-loss=-3",
            "insertion-loss",
            "fibre.insertion_loss_db",
        ),
        ("--length-km=-5", "length-km", "fibre.length_km"),
        (
            "--intensities 6,0.2,0",
            "intensities",
            "source.intensities[signal]",
        ),
        ("--intensities 0.2,0.3,0", "intensities", "μ1 > μ2 + μ3"),
        (
            "--probabilities 0.5,0.5,0.5",
            "probabilities",
            "source.probabilities",
        ),
        ("--eve 1.5", "eve", "eavesdropper.fraction"),
        ("--block-bits 10", "block-bits", "target_sifted_bits"),
        ("--eps-sec 0", "eps-sec", "eps_sec"),
        ("--eps-cor 2", "eps-cor", "eps_cor"),
        ("--p-z 1", "p-z", "(0, 1)"),
        ("--clock-hz 0", "clock-hz", "> 0"),
        ("--pulse-budget nan", "pulse-budget", "> 0"),
        ("--blocks 0", "blocks", "at least 1"),
    ] {
        let a = parse(cmdline).unwrap_or_else(|e| panic!("{cmdline}: {e}"));
        let e = a.run(&mut Vec::new()).expect_err(cmdline);
        assert_eq!(e.flag(), Some(flag), "{cmdline}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("--{flag}")), "{cmdline}: {msg}");
        assert!(msg.contains(field), "{cmdline}: {msg}");
    }
}

#[test]
fn seeded_runs_give_key_and_repeat_exactly() {
    let a = parse("--seed 11 --blocks 2 --json").unwrap();
    let first = json_lines(&run(&a).unwrap());
    let second = json_lines(&run(&a).unwrap());
    assert_eq!(first.len(), 3, "two blocks and a summary");
    for (x, y) in first.iter().zip(&second) {
        let (mut x, mut y) = (x.clone(), y.clone());
        // Only wall time may differ.
        x["wall_seconds"] = serde_json::Value::Null;
        y["wall_seconds"] = serde_json::Value::Null;
        assert_eq!(x, y);
    }
    for b in &first[..2] {
        assert_eq!(b["kind"], "block");
        assert!(b["aborted"].is_null(), "{b}");
        assert!(b["final_bits"].as_u64().unwrap() > 1000, "{b}");
        let sifted = b["sifted_bits"].as_u64().unwrap();
        assert!(sifted >= 200_000, "{b}");
        // A 25 km GYS link: QBER near e_d = 3.3 %, f of option 8 near 1.05.
        let q = b["qber_z"].as_f64().unwrap();
        assert!((0.025..0.045).contains(&q), "{b}");
        let f = b["efficiency"].as_f64().unwrap();
        assert!((1.0..1.3).contains(&f), "{b}");
        assert!(b["cascade_rounds"].as_u64().unwrap() > 0, "{b}");
        for field in [
            "pulses",
            "detections",
            "qber_x",
            "y1_lower",
            "e1_upper",
            "s1_key",
            "phase_error",
            "cascade_leaked_bits",
            "net_bits",
            "rate_per_pulse",
            "rate_per_second",
            "wall_seconds",
        ] {
            assert!(!b[field].is_null(), "{field} missing in {b}");
        }
        let rate = b["rate_per_pulse"].as_f64().unwrap();
        let per_s = b["rate_per_second"].as_f64().unwrap();
        assert!((per_s / rate - 1e9).abs() < 1.0, "{b}");
    }
    let s = &first[2];
    assert_eq!(s["kind"], "summary");
    assert_eq!(s["blocks_with_key"], 2);
    assert_eq!(s["seed"], 11);
    let total: u64 = first[..2]
        .iter()
        .map(|b| b["net_bits"].as_u64().unwrap())
        .sum();
    assert_eq!(s["net_bits"].as_u64().unwrap(), total);
    // A different seed gives different blocks.
    let other = json_lines(&run(&parse("--seed 12 --blocks 1 --json").unwrap()).unwrap());
    assert_ne!(other[0]["detections"], first[0]["detections"]);
}

#[test]
fn the_table_has_a_row_per_block_and_a_summary() {
    let text = run(&parse("--seed 5 --blocks 1").unwrap()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("block") && lines[0].contains("QBER_Z"));
    assert!(lines[1].trim_start().starts_with('0') && lines[1].ends_with("key"));
    assert!(lines[2].starts_with("summary: 1 blocks at 25 km, 1 with key"));
}

#[test]
fn an_eavesdropped_block_is_a_result_not_an_error() {
    let text = run(&parse("--seed 3 --blocks 1 --eve 1 --json").unwrap()).unwrap();
    let rows = json_lines(&text);
    assert_eq!(rows[0]["aborted"], "test_qber");
    assert_eq!(rows[0]["alarm"], true);
    assert_eq!(rows[0]["final_bits"], 0);
    assert!(rows[0]["qber_x"].as_f64().unwrap() > 0.2);
    assert!(rows[0]["intercepted"].as_u64().unwrap() > 0);
    assert_eq!(rows[1]["aborted"]["test_qber"], 1);
    let table = run(&parse("--seed 3 --blocks 1 --eve 1").unwrap()).unwrap();
    assert!(table.contains("ABORT test_qber (alarm)"), "{table}");
}

#[test]
fn a_block_beyond_the_budget_is_refused() {
    let e = run(&parse("--length-km 300 --seed 1").unwrap()).unwrap_err();
    assert!(matches!(e, SimulateError::Budget { .. }), "{e}");
    assert!(e.to_string().contains("--pulse-budget"), "{e}");
}

#[test]
fn sweep_tabulates_each_distance_and_plots() {
    let dir = std::env::temp_dir().join(format!("qkd-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg_path = dir.join("rate.svg");
    // 50 km runs a block; 250 km is far past the budget and runs none.
    let cmdline = format!(
        "--sweep 50:250:200 --blocks 1 --seed 4 --pulse-budget 1e10 --plot {}",
        svg_path.display()
    );
    let text = run(&parse(&cmdline).unwrap()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].contains("finite") && lines[0].contains("GYS_v+w"));
    assert!(lines[1].trim_start().starts_with("50 ") && lines[1].contains("1/1"));
    assert!(lines[2].trim_start().starts_with("250 "));
    assert!(lines[2].contains("no key within budget"), "{text}");
    assert!(
        lines[3].contains("Longest distance with key: 50 km"),
        "{text}"
    );

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.matches("<polyline").count() >= 3, "analytic curves");
    assert!(svg.contains("key bits per pulse"));
    assert!(svg.contains("<circle"), "simulated markers");
    std::fs::remove_dir_all(&dir).unwrap();

    let a = parse("--sweep 50:250:200 --blocks 1 --seed 4 --pulse-budget 1e10 --json").unwrap();
    let rows = json_lines(&run(&a).unwrap());
    assert_eq!(rows.len(), 3);
    let near = &rows[0];
    assert_eq!(near["kind"], "distance");
    assert_eq!(near["blocks"], 1);
    // The simulated asymptotic rate tracks the analytic one at the same μ, ν
    // (one block of counts: within a factor of 1.5).
    let sim = near["asymptotic_rate_per_pulse"].as_f64().unwrap();
    let gys = near["gys_vacuum_weak_per_pulse"].as_f64().unwrap();
    assert!(sim > 0.0 && (sim / gys - 1.0).abs() < 0.5, "{sim} vs {gys}");
    assert!(near["gys_infinite_decoy_per_pulse"].as_f64().unwrap() > gys);
    let far = &rows[1];
    assert_eq!(far["blocks"], 0);
    assert!(far["finite_rate_per_pulse"].is_null());
    assert!(far["note"].as_str().unwrap().contains("budget"));
    assert_eq!(rows[2]["kind"], "sweep_summary");
    let max_vw = rows[2]["gys_vacuum_weak_max_km"].as_f64().unwrap();
    assert!((100.0..150.0).contains(&max_vw), "{max_vw}");
}

#[test]
fn sweep_distances_include_both_ends() {
    let r = sweep::parse_sweep("0:150:10").unwrap();
    let d = r.distances();
    assert_eq!(d.len(), 16);
    assert_eq!((d[0], d[15]), (0.0, 150.0));
    assert_eq!(sweep::parse_sweep("5:5:1").unwrap().distances(), vec![5.0]);
}
