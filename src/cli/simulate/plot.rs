//! The sweep's key-rate-versus-distance plot: SVG with a logarithmic rate
//! axis, drawn with plotters' SVG backend only (no system font libraries:
//! without plotters' `ttf` feature, text is laid out with its built-in
//! metrics and left to the SVG viewer's fonts).
//!
//! Analytic curves are drawn on a fine grid; simulated rates are markers at
//! the swept distances. Non-positive rates have no place on a log axis and
//! are left out, as are rates more than six decades below the largest, so
//! that the collapse of a rate near its maximum distance does not squash
//! the rest of the plot.

use plotters::prelude::*;

use crate::qkd::analytic::GysModel;

use super::SimulateArgs;
use super::sweep::{SweepRange, SweepRow, analytic_rates};

const SIZE: (u32, u32) = (900, 560);
/// (km, key bits per pulse) points.
type Curve = Vec<(f64, f64)>;
/// Analytic curves: points per curve.
const GRID: usize = 400;
/// Decades shown below the largest rate.
const DECADES: f64 = 6.0;

/// The SVG document, or why plotters could not draw it.
pub fn render_svg(
    rows: &[SweepRow],
    range: &SweepRange,
    model: &GysModel,
    args: &SimulateArgs,
) -> Result<String, String> {
    let (x0, x1) = if range.end > range.start {
        (range.start, range.end)
    } else {
        (range.start - 1.0, range.start + 1.0)
    };
    let grid: Vec<f64> = (0..=GRID)
        .map(|i| x0 + (x1 - x0) * i as f64 / GRID as f64)
        .collect();
    let rates: Vec<(f64, f64)> = grid
        .iter()
        .map(|&km| analytic_rates(model, args, km))
        .collect();
    let vw: Curve = grid.iter().zip(&rates).map(|(&x, r)| (x, r.0)).collect();
    let inf: Curve = grid.iter().zip(&rates).map(|(&x, r)| (x, r.1)).collect();
    let finite: Curve = rows
        .iter()
        .filter_map(|r| Some((r.length_km, r.finite_rate_per_pulse?)))
        .collect();
    let asym: Curve = rows
        .iter()
        .filter_map(|r| Some((r.length_km, r.asymptotic_rate_per_pulse?)))
        .collect();

    let top = [&vw, &inf, &finite, &asym]
        .iter()
        .flat_map(|s| s.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    if top <= 0.0 {
        return Err("no positive key rate to plot".into());
    }
    let y1 = 10f64.powf(top.log10().ceil());
    let y0 = 10f64.powf((top.log10() - DECADES).floor());
    let visible =
        |s: &[(f64, f64)]| -> Vec<(f64, f64)> { s.iter().copied().filter(|p| p.1 >= y0).collect() };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let [mu, nu, _] = args.intensities;
        let caption = format!(
            "Key rate vs distance (μ = {mu}, ν = {nu}, {} sifted bits/block, q = p_z² = {})",
            args.block_bits, model.q
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("fibre length (km)")
            .y_desc("key bits per pulse")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0e}"))
            .draw()
            .map_err(|e| e.to_string())?;

        let lines: [(&str, &Curve, RGBColor); 2] = [
            (
                "GYS analytic, infinite decoys",
                &inf,
                RGBColor(120, 120, 120),
            ),
            ("GYS analytic, vacuum + weak decoy", &vw, BLUE),
        ];
        for (label, data, colour) in lines {
            chart
                .draw_series(LineSeries::new(visible(data), colour.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        let asym_colour = RGBColor(0, 150, 0);
        chart
            .draw_series(PointSeries::of_element(
                visible(&asym),
                5,
                asym_colour.filled(),
                &|c, s, st| Circle::new(c, s, st),
            ))
            .map_err(|e| e.to_string())?
            .label("simulated, asymptotic (Ma bounds on measured counts, f = 1.22)")
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, asym_colour.filled()));
        let finite_colour = RED;
        let finite = visible(&finite);
        chart
            .draw_series(LineSeries::new(
                finite.clone(),
                finite_colour.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(PointSeries::of_element(
                finite,
                6,
                finite_colour.stroke_width(2),
                &|c, s, st| Cross::new(c, s, st),
            ))
            .map_err(|e| e.to_string())?
            .label("simulated, finite key (Lim et al., Cascade's real leak)")
            .legend(move |(x, y)| Cross::new((x + 10, y), 6, finite_colour.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}
