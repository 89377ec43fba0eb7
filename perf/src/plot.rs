//! `--plot FILE.svg`: the latency percentile curve (x: percentile on a "nines" scale,
//! y: latency) above IOPS per second. SVG only; text is left to the viewer's fonts.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

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

/// Draws the report's curves into an SVG file.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(420);
    let title = format!(
        "{} {} B QD{} - {}",
        report.settings.workload,
        report.settings.io_size,
        report.settings.queue_depth,
        report.settings.target
    );

    // Percentile curve from the whole run's histogram.
    let mut pts = Vec::new();
    if let Some(h) = report
        .combined
        .as_ref()
        .map(|c| &c.hist)
        .filter(|h| !h.is_empty())
    {
        let mut x = 0.0;
        while x <= 5.0 {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            pts.push((x, h.value_at_quantile(p / 100.0) as f64 / 1000.0));
            x += 0.05;
        }
        pts.push((nines(100.0), h.max() as f64 / 1000.0));
    }
    let ymax = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            format!("Latency by percentile: {title}"),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..5.2f64, 0.0..ymax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_labels(6)
        .x_label_formatter(&|x| nines_label(*x))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(pts, &BLUE))
        .map_err(|e| err(&e))?;

    // IOPS per second.
    let iops: Vec<(f64, f64)> = report.intervals.iter().map(|i| (i.t_s, i.iops)).collect();
    let tmax = iops.last().map_or(1.0, |p| p.0).max(1.0);
    let imax = iops.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("IOPS over time", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..tmax, 0.0..imax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("IOPS")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(iops.iter().copied(), &RED))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(iops.iter().map(|p| Circle::new(*p, 3, RED.filled())))
        .map_err(|e| err(&e))?;
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
}
