//! RFM scoring: recency, frequency and monetary value scored 1..5, either by quintiles or by
//! configured thresholds, combined into the usual named segments, and the R x F grid.
//!
//! Quintile scores are value-based, so ties are deterministic: a customer's score is
//! `1 + floor(5 * worse / n)` where `worse` counts the customers with a strictly worse value
//! (longer recency, fewer purchases, less money). Equal values always get equal scores, the best
//! customers get 5 when their share allows it, and the score never depends on input order.
use rust_decimal::Decimal;
use serde::Serialize;

/// The named RFM segments, from the R x F score map (R first):
/// `55 54 45 44` champions... see [`segment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RfmSegment {
    /// Bought recently, buy often (R 5, F 4-5).
    Champions,
    /// Buy often, fairly recently (R 3-4, F 4-5).
    Loyal,
    /// Recent customers with a few purchases (R 4-5, F 2-3).
    PotentialLoyalists,
    /// Bought for the first time very recently (R 5, F 1).
    New,
    /// Recent first purchase (R 4, F 1).
    Promising,
    /// Average recency and frequency (R 3, F 3).
    NeedAttention,
    /// Below average recency, few purchases (R 3, F 1-2).
    AboutToSleep,
    /// Bought often, but long ago (R 1-2, F 3-4).
    AtRisk,
    /// Were among the most frequent, long gone (R 1-2, F 5).
    CantLoseThem,
    /// Long ago, few purchases (R 1-2, F 1-2 except 1-1).
    Hibernating,
    /// The lowest recency and frequency (R 1, F 1).
    Lost,
}

impl RfmSegment {
    /// Every segment, best first.
    pub const ALL: [RfmSegment; 11] = [
        RfmSegment::Champions,
        RfmSegment::Loyal,
        RfmSegment::PotentialLoyalists,
        RfmSegment::New,
        RfmSegment::Promising,
        RfmSegment::NeedAttention,
        RfmSegment::AboutToSleep,
        RfmSegment::AtRisk,
        RfmSegment::CantLoseThem,
        RfmSegment::Hibernating,
        RfmSegment::Lost,
    ];

    /// The snake_case name used in CSV, JSON and `--segment`.
    pub fn as_str(self) -> &'static str {
        match self {
            RfmSegment::Champions => "champions",
            RfmSegment::Loyal => "loyal",
            RfmSegment::PotentialLoyalists => "potential_loyalists",
            RfmSegment::New => "new",
            RfmSegment::Promising => "promising",
            RfmSegment::NeedAttention => "need_attention",
            RfmSegment::AboutToSleep => "about_to_sleep",
            RfmSegment::AtRisk => "at_risk",
            RfmSegment::CantLoseThem => "cant_lose_them",
            RfmSegment::Hibernating => "hibernating",
            RfmSegment::Lost => "lost",
        }
    }

    /// Parses a segment name (snake_case, case-insensitive; spaces and dashes allowed,
    /// apostrophes ignored: "can't lose them").
    pub fn parse(s: &str) -> Option<RfmSegment> {
        let norm: String = s
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| *c != '\'' && *c != '’')
            .map(|c| if c == ' ' || c == '-' { '_' } else { c })
            .collect();
        let norm = if norm == "loyal_customers" {
            "loyal".to_string()
        } else {
            norm
        };
        RfmSegment::ALL.into_iter().find(|seg| seg.as_str() == norm)
    }
}

/// The segment of an (R, F) score pair. Every one of the 25 cells maps to exactly one segment.
#[allow(overlapping_range_endpoints)] // earlier arms take precedence on purpose
pub fn segment(r: u8, f: u8) -> RfmSegment {
    use RfmSegment::*;
    match (r, f) {
        (1, 1) => Lost,
        (1..=2, 1..=2) => Hibernating,
        (1..=2, 3..=4) => AtRisk,
        (1..=2, _) => CantLoseThem,
        (3, 1..=2) => AboutToSleep,
        (3, 3) => NeedAttention,
        (3..=4, 4..=5) => Loyal,
        (4, 1) => Promising,
        (4, _) => PotentialLoyalists,
        (_, 1) => New,
        (_, 2..=3) => PotentialLoyalists,
        _ => Champions,
    }
}

/// Quintile scores of `values` where larger is better: `1 + floor(5 * smaller / n)`.
pub fn quintile_scores<T: PartialOrd + Copy>(values: &[T]) -> Vec<u8> {
    let n = values.len();
    // Sort (value, index) pairs: sequential memory, unlike sorting indices through `values`.
    let mut order: Vec<(T, u32)> = values.iter().copied().zip(0..n as u32).collect();
    order.sort_unstable_by(|a, b| a.0.partial_cmp(&b.0).expect("scores of comparable values"));
    let mut out = vec![0u8; n];
    let mut i = 0;
    while i < n {
        // The run of equal values starting at sorted position i: `i` values are smaller.
        let v = order[i].0;
        let mut j = i;
        while j < n && order[j].0 == v {
            j += 1;
        }
        let score = (1 + 5 * i / n) as u8;
        for &(_, k) in &order[i..j] {
            out[k as usize] = score;
        }
        i = j;
    }
    out
}

/// Exact integer sort keys for decimals (all rescaled to the largest scale among them), so
/// large customer lists sort on `i128` instead of `Decimal`; `None` when that would overflow.
pub fn decimal_keys(values: &[Decimal]) -> Option<Vec<i128>> {
    let scale = values.iter().map(|v| v.scale()).max().unwrap_or(0);
    values
        .iter()
        .map(|v| {
            v.mantissa()
                .checked_mul(10i128.checked_pow(scale - v.scale())?)
        })
        .collect()
}

/// Threshold score where larger is better: 1 + the number of thresholds `t` with `v >= t`.
pub fn threshold_score<T: PartialOrd>(v: T, thresholds: &[T; 4]) -> u8 {
    1 + thresholds.iter().filter(|t| v >= **t).count() as u8
}

/// Recency threshold score: 5 when `days <= t[0]` ... 1 when `days > t[3]`.
pub fn recency_threshold_score(days: i64, thresholds: &[u32; 4]) -> u8 {
    5 - thresholds.iter().filter(|&&t| days > t as i64).count() as u8
}

/// The default recency thresholds: 1, 2, 3 and 6 times the base's median purchase cycle in
/// days (R 5 = within one cycle, R 3 up to three: the default churn factor), or 30, 90, 180
/// and 365 days when no customer bought twice.
pub fn recency_thresholds_of_cycle(cycle_days: Option<f64>) -> [u32; 4] {
    match cycle_days {
        Some(c) if c.is_finite() => {
            let c = c.round().clamp(1.0, 3650.0) as u32;
            [c, 2 * c, 3 * c, 6 * c]
        }
        _ => [30, 90, 180, 365],
    }
}

/// One cell of a grid: customers and their revenue.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct GridCell {
    /// Customers in the cell.
    pub customers: u64,
    /// Their revenue over the whole history (portal currency).
    pub revenue: Decimal,
}

/// The RFM grid: `cells[r - 1][f - 1]`, with the thresholds the scores came from.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RfmGrid {
    /// Rows by R score 1..5, columns by F score 1..5.
    pub cells: [[GridCell; 5]; 5],
    /// The recency thresholds in days (`None`: quintiles).
    pub recency_thresholds_days: Option<[u32; 4]>,
    /// The frequency thresholds in purchases (`None`: quintiles).
    pub frequency_thresholds: Option<[u32; 4]>,
    /// The base's median purchase cycle in days (the median of the repeat buyers' median
    /// gaps; `None` without repeat buyers).
    pub median_cycle_days: Option<f64>,
}

impl RfmGrid {
    /// The label of R score `r` (1..5): `<= 30 d`, `31-60 d`, ..., `> 365 d`; `R{r}` for
    /// quintiles.
    pub fn r_label(&self, r: u8) -> String {
        match self.recency_thresholds_days {
            Some(t) => match r {
                5 => format!("<= {} d", t[0]),
                1 => format!("> {} d", t[3]),
                _ => {
                    let i = (5 - r) as usize;
                    format!("{}-{} d", t[i - 1] + 1, t[i])
                }
            },
            None => format!("R{r}"),
        }
    }

    /// The label of F score `f` (1..5): `1`, `2`, `3-4`, `5-7`, `8+` purchases; `F{f}` for
    /// quintiles.
    pub fn f_label(&self, f: u8) -> String {
        match self.frequency_thresholds {
            Some(t) => {
                let lo = if f == 1 { 1 } else { t[f as usize - 2] };
                match f {
                    5 => format!("{lo}+"),
                    _ => {
                        let hi = t[f as usize - 1] - 1;
                        if hi == lo {
                            lo.to_string()
                        } else {
                            format!("{lo}-{hi}")
                        }
                    }
                }
            }
            None => format!("F{f}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_cell_has_one_segment_and_all_segments_are_reachable() {
        let mut seen = std::collections::BTreeSet::new();
        for r in 1..=5 {
            for f in 1..=5 {
                seen.insert(segment(r, f));
            }
        }
        assert_eq!(seen.len(), RfmSegment::ALL.len());
        assert_eq!(segment(5, 5), RfmSegment::Champions);
        assert_eq!(segment(1, 5), RfmSegment::CantLoseThem);
        assert_eq!(segment(5, 1), RfmSegment::New);
        assert_eq!(segment(1, 1), RfmSegment::Lost);
    }

    #[test]
    fn quintiles_of_ten_distinct_values() {
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(quintile_scores(&v), vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
    }

    #[test]
    fn ties_get_one_score_whatever_the_order() {
        let v = [1, 1, 1, 1, 1, 1, 2, 2, 3, 9];
        assert_eq!(quintile_scores(&v), vec![1, 1, 1, 1, 1, 1, 4, 4, 5, 5]);
        let mut rev = v;
        rev.reverse();
        let mut s = quintile_scores(&rev);
        s.reverse();
        assert_eq!(s, quintile_scores(&v));
    }

    #[test]
    fn thresholds() {
        assert_eq!(threshold_score(1u32, &[2, 3, 5, 10]), 1);
        assert_eq!(threshold_score(5u32, &[2, 3, 5, 10]), 4);
        assert_eq!(threshold_score(50u32, &[2, 3, 5, 10]), 5);
        assert_eq!(recency_threshold_score(10, &[30, 90, 180, 365]), 5);
        assert_eq!(recency_threshold_score(30, &[30, 90, 180, 365]), 5);
        assert_eq!(recency_threshold_score(31, &[30, 90, 180, 365]), 4);
        assert_eq!(recency_threshold_score(1000, &[30, 90, 180, 365]), 1);
    }

    #[test]
    fn labels_name_the_thresholds() {
        let g = RfmGrid {
            recency_thresholds_days: Some(recency_thresholds_of_cycle(Some(29.6))),
            frequency_thresholds: Some(crate::analytics::settings::DEFAULT_FREQUENCY_THRESHOLDS),
            ..RfmGrid::default()
        };
        let f: Vec<String> = (1..=5).map(|f| g.f_label(f)).collect();
        assert_eq!(f, ["1", "2", "3-4", "5-7", "8+"]);
        let r: Vec<String> = (1..=5).rev().map(|r| g.r_label(r)).collect();
        assert_eq!(r, ["<= 30 d", "31-60 d", "61-90 d", "91-180 d", "> 180 d"]);
        assert_eq!(recency_thresholds_of_cycle(None), [30, 90, 180, 365]);
        assert_eq!(RfmGrid::default().f_label(3), "F3");
        assert_eq!(RfmGrid::default().r_label(3), "R3");
    }

    #[test]
    fn segment_names_parse() {
        assert_eq!(
            RfmSegment::parse("can't lose them"),
            Some(RfmSegment::CantLoseThem)
        );
        assert_eq!(RfmSegment::parse("At risk"), Some(RfmSegment::AtRisk));
        for s in RfmSegment::ALL {
            assert_eq!(RfmSegment::parse(s.as_str()), Some(s));
        }
    }

    proptest! {
        #[test]
        fn quintile_scores_within_1_to_5_and_monotone(v in proptest::collection::vec(0i64..20, 1..200)) {
            let s = quintile_scores(&v);
            for (i, a) in v.iter().enumerate() {
                prop_assert!((1..=5).contains(&s[i]));
                for (j, b) in v.iter().enumerate() {
                    if a < b { prop_assert!(s[i] <= s[j]); }
                    if a == b { prop_assert_eq!(s[i], s[j]); }
                }
            }
        }
    }
}
