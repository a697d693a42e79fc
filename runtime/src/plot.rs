//! SVG charts for `capsa bench --plot`, drawn with plotters.

use std::path::Path;

use plotters::prelude::*;

use crate::bench::{IoSummary, MemorySummary, NetSummary, Summary, NET_HEADINGS};

#[derive(Debug, thiserror::Error)]
#[error("{path}: cannot draw the chart: {message}")]
pub struct PlotError {
    path: String,
    message: String,
}

const PALETTE: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
];

/// One horizontal bar per runner: the bar is the median, the whisker spans
/// min to p99, so spread and outliers are visible at a glance.
pub fn startup(summaries: &[Summary], path: &Path, title: &str) -> Result<(), PlotError> {
    let rows: Vec<(String, f64, f64, f64)> = summaries
        .iter()
        .map(|s| (s.name.clone(), s.p50_ms, s.min_ms, s.p99_ms))
        .collect();
    bars(
        &rows,
        path,
        title,
        "start-to-exit latency, ms (bar: median, whisker: min to p99)",
    )
}

pub fn memory(summaries: &[MemorySummary], path: &Path) -> Result<(), PlotError> {
    let rows: Vec<(String, f64, f64, f64)> = summaries
        .iter()
        .map(|s| {
            let mean = s.mean_pss_kib / 1024.0;
            let idle = s.idle_pss_kib as f64 / 1024.0;
            (
                format!("{} (x{})", s.name, s.concurrent),
                mean,
                idle.min(mean),
                idle.max(mean),
            )
        })
        .collect();
    bars(
        &rows,
        path,
        "memory per idle instance",
        "PSS per instance, MiB (bar: mean at density, whisker: single idle instance)",
    )
}

/// Sequential throughput per mode, reads and writes as separate bars.
pub fn io(summaries: &[IoSummary], path: &Path) -> Result<(), PlotError> {
    let mut rows = Vec::new();
    for s in summaries {
        rows.push((
            format!("{} read", s.name),
            s.seq_read_mib_s,
            s.seq_read_mib_s,
            s.seq_read_mib_s,
        ));
    }
    for s in summaries {
        rows.push((
            format!("{} write", s.name),
            s.seq_write_mib_s,
            s.seq_write_mib_s,
            s.seq_write_mib_s,
        ));
    }
    bars(
        &rows,
        path,
        "sequential file I/O, same files",
        "MiB/s (median of runs)",
    )
}

/// Each figure as a fraction of the host's, so throughput and round trips
/// share one axis.
pub fn net(summaries: &[NetSummary], path: &Path) -> Result<(), PlotError> {
    let host = summaries
        .iter()
        .find(|s| s.name == "host")
        .or(summaries.first());
    let mut rows = Vec::new();
    for (figure, label) in NET_HEADINGS.iter().enumerate() {
        for s in summaries {
            let ratio = host.map_or(f64::NAN, |h| s.figures()[figure] / h.figures()[figure]);
            // A figure that could not be measured is drawn as nothing.
            let ratio = if ratio.is_finite() { ratio } else { 0.0 };
            rows.push((format!("{} {label}", s.name), ratio, ratio, ratio));
        }
    }
    bars(
        &rows,
        path,
        "loopback sockets, relative to the host",
        "median as a fraction of the host's (1.0 = the host)",
    )
}

fn bars(
    rows: &[(String, f64, f64, f64)],
    path: &Path,
    title: &str,
    x_desc: &str,
) -> Result<(), PlotError> {
    let error = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let height = 120 + 60 * rows.len() as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let max = rows
        .iter()
        .map(|r| r.3.max(r.1))
        .fold(0.0f64, f64::max)
        .max(f64::EPSILON)
        * 1.15;
    let count = rows.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(170)
        .build_cartesian_2d(0f64..max, (0..count).into_segmented())
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(x_desc)
        .y_labels(rows.len())
        .y_label_formatter(&|value| match value {
            SegmentValue::CenterOf(i) => rows
                .get(*i as usize)
                .map(|r| r.0.clone())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| error(&e))?;
    for (i, (_, value, low, high)) in rows.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let row = i as i32;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row)),
                    (*value, SegmentValue::Exact(row + 1)),
                ],
                color.mix(0.8).filled(),
            )))
            .map_err(|e| error(&e))?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![
                    (*low, SegmentValue::CenterOf(row)),
                    (*high, SegmentValue::CenterOf(row)),
                ],
                BLACK.stroke_width(2),
            )))
            .map_err(|e| error(&e))?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{value:.1}"),
                (*value + max * 0.01, SegmentValue::Exact(row)),
                ("sans-serif", 14),
            )))
            .map_err(|e| error(&e))?;
    }
    root.present().map_err(|e| error(&e))
}
