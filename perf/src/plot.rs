//! `--plot FILE.svg`: the latency percentile curve (x: percentile on a "nines" scale,
//! y: latency on a logarithmic scale) above IOPS over time (one step per interval the
//! run measured, at the interval's own length). A mixed workload gets a curve for its
//! reads and one for its writes (and the total IOPS), named in a legend. SVG only; text
//! is left to the viewer's fonts.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;
use crate::stats::DirStats;

/// A named, coloured line of points.
type Line<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

/// Percentile -> x position: 0 at 0%, 1 at 90%, 2 at 99%, 3 at 99.9% ...
fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(1e-7).log10()
}

fn nines_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    if x < 0.5 {
        "0%".to_string()
    } else {
        let digits = (x.round() as usize).saturating_sub(2);
        format!("{p:.digits$}%")
    }
}

/// `v` with at most `decimals` decimals and no trailing zeros: 2.50 -> "2.5", 3.0 -> "3".
fn trim(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A count for an axis: 950, 12K, 400K, 1.25M.
fn count_label(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6, 2))
    } else if a >= 1e3 {
        format!("{}K", trim(v / 1e3, 1))
    } else {
        trim(v, 1)
    }
}

/// A latency in microseconds for an axis: 12 us, 1.5 ms, 2 s.
fn latency_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", trim(us / 1e6, 2))
    } else if us >= 1e3 {
        format!("{} ms", trim(us / 1e3, 2))
    } else {
        format!("{} us", trim(us, 2))
    }
}

/// Seconds for an axis: 0 s, 2.5 s.
fn seconds_label(s: f64) -> String {
    format!("{} s", trim(s, 2))
}

/// The percentile curve of `d` in microseconds, from 0% to the maximum.
fn percentile_curve(d: &DirStats) -> Vec<(f64, f64)> {
    let h = &d.hist;
    let mut pts = Vec::new();
    let mut x = 0.0;
    while x <= 5.0 {
        let p = 1.0 - 10f64.powf(-x);
        pts.push((x, (h.value_at_quantile(p) as f64 / 1000.0).max(0.001)));
        x += 0.05;
    }
    pts.push((nines(100.0), (h.max() as f64 / 1000.0).max(0.001)));
    pts
}

/// The curves a run has: its reads and its writes apart when it has both, else the
/// one direction it has (named after it), else none.
fn curves(report: &Report) -> Vec<(&'static str, &DirStats, RGBColor)> {
    let Some((r, w)) = &report.by_op else {
        return report
            .combined
            .iter()
            .filter(|c| c.ios > 0)
            .map(|c| ("all", c, BLUE))
            .collect();
    };
    let mut out = Vec::new();
    if r.ios > 0 {
        out.push(("reads", r, BLUE));
    }
    if w.ios > 0 {
        out.push(("writes", w, RED));
    }
    out
}

/// Draws the report's curves into an SVG file.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, (1000, 820)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(430);
    let s = &report.settings;
    let mix = if s.workload.contains("rw") {
        format!(" {}% reads", s.read_percent)
    } else {
        String::new()
    };
    let title = format!(
        "{}{mix}, {} B, QD{} - {}",
        s.workload, s.io_size, s.queue_depth, s.target
    );
    let curves = curves(report);
    let mixed = curves.len() > 1;

    // Percentile curves from the whole run's histograms, latency on a log scale.
    let series: Vec<Line> = curves
        .iter()
        .map(|(name, d, c)| (*name, percentile_curve(d), *c))
        .collect();
    let all = series.iter().flat_map(|s| s.1.iter().map(|p| p.1));
    let (lo, hi) = all.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if hi > 0.0 {
        (lo * 0.8, hi * 1.25)
    } else {
        (1.0, 1000.0)
    };
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("Latency by percentile: {title}"),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..5.2f64, (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (log scale)")
        .x_labels(6)
        .y_labels(8)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| latency_label(*y))
        .draw()
        .map_err(|e| err(&e))?;
    for (name, pts, color) in series {
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if !curves.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }

    // IOPS over time: each interval the run measured, as a step over its own length.
    let steps = |f: &dyn Fn(&crate::report::IntervalRow) -> f64| -> Vec<(f64, f64)> {
        let mut pts = Vec::new();
        for iv in &report.intervals {
            let v = f(iv);
            pts.push((iv.t_s - iv.len_s, v));
            pts.push((iv.t_s, v));
        }
        pts
    };
    let mut lines: Vec<Line> = Vec::new();
    if mixed {
        lines.push(("reads", steps(&|i| i.read_iops), BLUE));
        lines.push(("writes", steps(&|i| i.write_iops), RED));
        lines.push(("total", steps(&|i| i.iops), BLACK));
    } else {
        let (name, color) = curves.first().map_or(("all", BLUE), |c| (c.0, c.2));
        lines.push((name, steps(&|i| i.iops), color));
    }
    let tmax = report
        .intervals
        .last()
        .map_or(1.0, |i| i.t_s)
        .max(f64::EPSILON);
    // Head room above the highest step for the legend.
    let imax = report.intervals.iter().map(|i| i.iops).fold(1.0, f64::max) * 1.3;
    let resolution = report.intervals.first().map_or(String::new(), |i| {
        format!(" (per {})", seconds_label(i.len_s))
    });
    let mut chart = ChartBuilder::on(&bottom)
        .caption(format!("IOPS over time{resolution}"), ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..tmax, 0.0..imax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time since the warm-up ended")
        .y_desc("IOPS")
        .x_label_formatter(&|x| seconds_label(*x))
        .y_label_formatter(&|y| count_label(*y))
        .draw()
        .map_err(|e| err(&e))?;
    for (name, pts, color) in lines {
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if !report.intervals.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_scale() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(3.0), "99.9%");
    }

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(count_label(400_000.0), "400K");
        assert_eq!(count_label(1_250_000.0), "1.25M");
        assert_eq!(count_label(12_345.0), "12.3K");
        assert_eq!(count_label(950.0), "950");
        assert_eq!(count_label(0.0), "0");
        assert_eq!(latency_label(12.0), "12 us");
        assert_eq!(latency_label(1500.0), "1.5 ms");
        assert_eq!(latency_label(2_000_000.0), "2 s");
        assert_eq!(latency_label(0.5), "0.5 us");
        assert_eq!(seconds_label(2.5), "2.5 s");
        assert_eq!(seconds_label(10.0), "10 s");
    }
}
