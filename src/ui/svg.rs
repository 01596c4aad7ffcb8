//! Server-side SVG charts for the dashboard: a stacked monthly bar chart, a line chart (the
//! backtest's calibration curves) and a grouped bar chart (its deciles). No JavaScript; the
//! values are also in each bar's or point's `<title>` (shown on hover and read by screen
//! readers).
use maud::{Markup, html};

/// One bar: a label under it and its stacked parts (bottom first).
#[derive(Debug, Clone)]
pub struct Bar {
    /// Label under the bar (`2026-03`).
    pub label: String,
    /// Stacked values, bottom first, one per series.
    pub parts: Vec<f64>,
}

/// Colours of the series, in order.
pub const PALETTE: [&str; 4] = ["#3b6fb6", "#e0913a", "#5aa469", "#b64c4c"];

/// A stacked bar chart of `bars`; `series` names the parts (legend), `fmt` formats values.
pub fn stacked_bars(
    title: &str,
    series: &[&str],
    bars: &[Bar],
    fmt: impl Fn(f64) -> String,
) -> Markup {
    let (w, h) = (640.0_f64, 220.0_f64);
    let (left, right, top, bottom) = (64.0, 8.0, 24.0, 36.0);
    let max = bars
        .iter()
        .map(|b| b.parts.iter().sum::<f64>())
        .fold(0.0_f64, f64::max);
    let scale_max = if max > 0.0 { nice_ceiling(max) } else { 1.0 };
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let slot = plot_w / bars.len().max(1) as f64;
    let bar_w = (slot * 0.7).max(1.0);
    let y = |v: f64| top + plot_h - v / scale_max * plot_h;
    html! {
        svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox={"0 0 " (w) " " (h)}
            role="img" aria-label=(title) {
            text x=(left) y="14" class="ct" { (title) }
            @for i in 0..=4 {
                @let v = scale_max * i as f64 / 4.0;
                line x1=(left) x2=(w - right) y1=(y(v)) y2=(y(v)) stroke="#ddd" {}
                text x=(left - 4.0) y=(y(v) + 4.0) text-anchor="end" class="ax" { (fmt(v)) }
            }
            @for (i, b) in bars.iter().enumerate() {
                @let x = left + slot * i as f64 + (slot - bar_w) / 2.0;
                @let total: f64 = b.parts.iter().sum();
                g {
                    title { (b.label) ": " (fmt(total)) }
                    @for (k, acc, v) in stack(&b.parts) {
                        rect x=(x) y=(y(acc + v)) width=(bar_w) height=((y(acc) - y(acc + v)).max(0.0))
                            fill=(PALETTE[k % PALETTE.len()]) {}
                    }
                }
                @if bars.len() <= 12 || i % 2 == 0 {
                    text x=(x + bar_w / 2.0) y=(h - bottom + 14.0) text-anchor="middle" class="ax" { (b.label) }
                }
            }
            @for (k, name) in series.iter().enumerate() {
                rect x=(left + 140.0 * k as f64) y=(h - 12.0) width="10" height="10" fill=(PALETTE[k % PALETTE.len()]) {}
                text x=(left + 14.0 + 140.0 * k as f64) y=(h - 3.0) class="ax" { (name) }
            }
        }
    }
}

/// A line chart: one polyline per series over the points labelled `labels` (every line as
/// long as `labels`), each point with its value in a `<title>`; the axis starts at 0.
pub fn line_chart(
    title: &str,
    series: &[&str],
    labels: &[String],
    lines: &[Vec<f64>],
    fmt: impl Fn(f64) -> String,
) -> Markup {
    let (w, h) = (640.0_f64, 220.0_f64);
    let (left, right, top, bottom) = (64.0, 8.0, 24.0, 36.0);
    let max = lines.iter().flatten().copied().fold(0.0_f64, f64::max);
    let scale_max = if max > 0.0 { nice_ceiling(max) } else { 1.0 };
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let n = labels.len().max(1);
    let x = |i: usize| {
        if n == 1 {
            left + plot_w / 2.0
        } else {
            left + plot_w * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| top + plot_h - v.max(0.0) / scale_max * plot_h;
    let every = n.div_ceil(12).max(1);
    html! {
        svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox={"0 0 " (w) " " (h)}
            role="img" aria-label=(title) {
            text x=(left) y="14" class="ct" { (title) }
            @for i in 0..=4 {
                @let v = scale_max * i as f64 / 4.0;
                line x1=(left) x2=(w - right) y1=(y(v)) y2=(y(v)) stroke="#ddd" {}
                text x=(left - 4.0) y=(y(v) + 4.0) text-anchor="end" class="ax" { (fmt(v)) }
            }
            @for (k, pts) in lines.iter().enumerate() {
                @let path = pts.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect::<Vec<_>>().join(" ");
                polyline points=(path) fill="none" stroke=(PALETTE[k % PALETTE.len()]) stroke-width="2" {}
                @for (i, v) in pts.iter().enumerate() {
                    circle cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(*v))) r="2.5" fill=(PALETTE[k % PALETTE.len()]) {
                        title { (series.get(k).copied().unwrap_or("")) ", " (labels.get(i).map_or("", |s| s.as_str())) ": " (fmt(*v)) }
                    }
                }
            }
            @for (i, l) in labels.iter().enumerate() {
                @if i % every == 0 || i + 1 == labels.len() {
                    text x=(x(i)) y=(h - bottom + 14.0) text-anchor="middle" class="ax" { (l) }
                }
            }
            @for (k, name) in series.iter().enumerate() {
                rect x=(left + 140.0 * k as f64) y=(h - 12.0) width="10" height="10" fill=(PALETTE[k % PALETTE.len()]) {}
                text x=(left + 14.0 + 140.0 * k as f64) y=(h - 3.0) class="ax" { (name) }
            }
        }
    }
}

/// A grouped bar chart: per bar label, its parts side by side (one per series), each with
/// its value in a `<title>`.
pub fn grouped_bars(
    title: &str,
    series: &[&str],
    bars: &[Bar],
    fmt: impl Fn(f64) -> String,
) -> Markup {
    let (w, h) = (640.0_f64, 220.0_f64);
    let (left, right, top, bottom) = (64.0, 8.0, 24.0, 36.0);
    let max = bars
        .iter()
        .flat_map(|b| b.parts.iter().copied())
        .fold(0.0_f64, f64::max);
    let scale_max = if max > 0.0 { nice_ceiling(max) } else { 1.0 };
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let slot = plot_w / bars.len().max(1) as f64;
    let per = series.len().max(1) as f64;
    let bar_w = (slot * 0.8 / per).max(1.0);
    let y = |v: f64| top + plot_h - v.max(0.0) / scale_max * plot_h;
    html! {
        svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox={"0 0 " (w) " " (h)}
            role="img" aria-label=(title) {
            text x=(left) y="14" class="ct" { (title) }
            @for i in 0..=4 {
                @let v = scale_max * i as f64 / 4.0;
                line x1=(left) x2=(w - right) y1=(y(v)) y2=(y(v)) stroke="#ddd" {}
                text x=(left - 4.0) y=(y(v) + 4.0) text-anchor="end" class="ax" { (fmt(v)) }
            }
            @for (i, b) in bars.iter().enumerate() {
                @let x0 = left + slot * i as f64 + slot * 0.1;
                @for (k, v) in b.parts.iter().enumerate() {
                    rect x=(x0 + bar_w * k as f64) y=(y(*v)) width=(bar_w) height=((y(0.0) - y(*v)).max(0.0))
                        fill=(PALETTE[k % PALETTE.len()]) {
                        title { (b.label) ", " (series.get(k).copied().unwrap_or("")) ": " (fmt(*v)) }
                    }
                }
                text x=(x0 + bar_w * per / 2.0) y=(h - bottom + 14.0) text-anchor="middle" class="ax" { (b.label) }
            }
            @for (k, name) in series.iter().enumerate() {
                rect x=(left + 140.0 * k as f64) y=(h - 12.0) width="10" height="10" fill=(PALETTE[k % PALETTE.len()]) {}
                text x=(left + 14.0 + 140.0 * k as f64) y=(h - 3.0) class="ax" { (name) }
            }
        }
    }
}

/// (series index, value below, value) of each part.
fn stack(parts: &[f64]) -> Vec<(usize, f64, f64)> {
    let mut acc = 0.0;
    parts
        .iter()
        .enumerate()
        .map(|(k, &v)| {
            let r = (k, acc, v.max(0.0));
            acc += v.max(0.0);
            r
        })
        .collect()
}

/// The smallest 1, 2, 2.5 or 5 times a power of ten at or above `v` (> 0).
pub fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(2000.0), 2000.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
    }

    #[test]
    fn a_chart_has_one_rect_per_part_and_the_totals_in_titles() {
        let bars = vec![
            Bar {
                label: "2026-01".into(),
                parts: vec![1.0, 2.0],
            },
            Bar {
                label: "2026-02".into(),
                parts: vec![0.0, 5.0],
            },
        ];
        let s = stacked_bars("t", &["a", "b"], &bars, |v| format!("{v:.0}")).into_string();
        assert!(s.starts_with("<svg"), "{s}");
        assert!(s.contains("<title>2026-01: 3</title>"), "{s}");
        assert!(s.contains("<title>2026-02: 5</title>"), "{s}");
        assert_eq!(s.matches("<rect").count(), 4 + 2, "parts and legend");
    }

    #[test]
    fn a_line_chart_has_one_polyline_per_series_and_each_point_titled() {
        let labels: Vec<String> = (1..=3).map(|w| format!("w{w}")).collect();
        let lines = vec![vec![1.0, 2.0, 4.0], vec![1.5, 2.5, 3.0]];
        let s = line_chart("t", &["predicted", "actual"], &labels, &lines, |v| {
            format!("{v:.1}")
        })
        .into_string();
        assert_eq!(s.matches("<polyline").count(), 2, "{s}");
        assert_eq!(s.matches("<circle").count(), 6, "{s}");
        assert!(s.contains("<title>actual, w3: 3.0</title>"), "{s}");
    }

    #[test]
    fn grouped_bars_stand_side_by_side() {
        let bars = vec![
            Bar {
                label: "1".into(),
                parts: vec![5.0, 4.0],
            },
            Bar {
                label: "2".into(),
                parts: vec![1.0, 0.0],
            },
        ];
        let s =
            grouped_bars("t", &["predicted", "actual"], &bars, |v| format!("{v:.0}")).into_string();
        assert_eq!(s.matches("<rect").count(), 4 + 2, "bars and legend: {s}");
        assert!(s.contains("<title>1, actual: 4</title>"), "{s}");
    }
}
