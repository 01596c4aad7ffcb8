//! Server-side SVG charts for the dashboard: a stacked monthly bar chart. No JavaScript; the
//! values are also in each bar's `<title>` (shown on hover and read by screen readers).
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
}
