//! ABC by revenue share, value tiers by average order, XYZ by purchase frequency (or, classic,
//! by the regularity of intervals), and the purchase-cycle status.
use super::rfm::GridCell;
use rust_decimal::Decimal;
use serde::Serialize;

/// ABC class by cumulative revenue share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Abc {
    /// The customers bringing the first `abc_a_max_share` of revenue.
    A,
    /// The next ones, up to `abc_b_max_share`.
    B,
    /// The rest.
    C,
}

/// XYZ class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Xyz {
    /// Buys most often (or most regularly, in CV mode).
    X,
    /// Average.
    Y,
    /// Occasional.
    Z,
}

/// Value tier by average order value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Average order >= `tier_large_order_min`.
    Large,
    /// Average order >= `tier_medium_order_min`.
    Medium,
    /// Smaller orders.
    Small,
    /// Bought once (one purchase day).
    OneTime,
}

/// Where a customer stands against the expected next purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CycleStatus {
    /// The next purchase is more than `due_soon_days` ahead.
    NotDue,
    /// The next purchase is at most `due_soon_days` ahead (or today).
    DueSoon,
    /// Past the expected date, within `churn_factor` cycles of the last purchase.
    Overdue,
    /// More than `churn_factor` cycles since the last purchase.
    Churned,
}

impl Abc {
    /// "A", "B", "C".
    pub fn as_str(self) -> &'static str {
        ["A", "B", "C"][self as usize]
    }
}

impl Xyz {
    /// "X", "Y", "Z".
    pub fn as_str(self) -> &'static str {
        ["X", "Y", "Z"][self as usize]
    }
}

impl Tier {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        ["large", "medium", "small", "one_time"][self as usize]
    }
}

impl CycleStatus {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        ["not_due", "due_soon", "overdue", "churned"][self as usize]
    }
}

/// ABC classes of `revenues` (same order as given). Customers are ranked by revenue descending,
/// ties by input position (callers pass customers in key order); a customer is A while the
/// cumulative share *before* it is below `a_max`, so the customer crossing the cutoff is still
/// A and A is never empty when there is revenue.
pub fn abc_classes(revenues: &[Decimal], a_max: f64, b_max: f64) -> Vec<Abc> {
    let total: Decimal = revenues.iter().sum();
    let mut order: Vec<usize> = (0..revenues.len()).collect();
    match super::rfm::decimal_keys(revenues) {
        Some(k) => order.sort_unstable_by(|&i, &j| k[j].cmp(&k[i]).then(i.cmp(&j))),
        None => order.sort_unstable_by(|&i, &j| revenues[j].cmp(&revenues[i]).then(i.cmp(&j))),
    }
    let mut out = vec![Abc::C; revenues.len()];
    if total <= Decimal::ZERO {
        return out;
    }
    // Shares are compared exactly: cum / total < cutoff  <=>  cum < cutoff * total.
    let a_cut = share_decimal(a_max) * total;
    let b_cut = share_decimal(b_max) * total;
    let mut cum = Decimal::ZERO;
    for i in order {
        out[i] = if revenues[i] <= Decimal::ZERO {
            Abc::C
        } else if cum < a_cut {
            Abc::A
        } else if cum < b_cut {
            Abc::B
        } else {
            Abc::C
        };
        cum += revenues[i];
    }
    out
}

/// A configured share as the decimal it was written as (`0.8`, not the binary 0.80000000000000004).
pub(crate) fn share_decimal(v: f64) -> Decimal {
    format!("{v}").parse().unwrap_or(Decimal::ONE)
}

/// The ABC x XYZ matrix: `cells[abc][xyz]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct AbcXyzMatrix {
    /// Rows A, B, C; columns X, Y, Z.
    pub cells: [[GridCell; 3]; 3],
}

/// Median of a non-empty slice (sorts it).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Coefficient of variation (population standard deviation / mean) of a slice.
pub fn cv(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    var.sqrt() / mean
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    #[test]
    fn abc_default_cutoffs() {
        let r = [dec!(50), dec!(30), dec!(15), dec!(5)];
        assert_eq!(
            abc_classes(&r, 0.8, 0.95),
            vec![Abc::A, Abc::A, Abc::B, Abc::C]
        );
        // The customer crossing 80% is still A.
        let r = [dec!(10), dec!(60), dec!(30)];
        assert_eq!(abc_classes(&r, 0.8, 0.95), vec![Abc::B, Abc::A, Abc::A]);
        // Ties keep input order.
        let r = [dec!(10); 10];
        let c = abc_classes(&r, 0.8, 0.95);
        assert_eq!(c.iter().filter(|&&x| x == Abc::A).count(), 8);
        assert_eq!(&c[8..], &[Abc::B, Abc::B]);
        let r = [dec!(80), dec!(15), dec!(4), dec!(1)];
        assert_eq!(
            abc_classes(&r, 0.8, 0.95),
            vec![Abc::A, Abc::B, Abc::C, Abc::C]
        );
    }

    #[test]
    fn median_and_cv() {
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&mut [5.0, 1.0, 3.0, 100.0]), 4.0);
        assert!((cv(&[10.0, 10.0, 10.0])).abs() < 1e-12);
        assert!((cv(&[5.0, 15.0]) - 0.5).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn abc_shares_sum_to_total(v in proptest::collection::vec(0u32..100_000, 1..100)) {
            let r: Vec<Decimal> = v.iter().map(|&x| Decimal::new(x as i64, 2)).collect();
            let c = abc_classes(&r, 0.8, 0.95);
            let total: Decimal = r.iter().sum();
            let by = |k: Abc| r.iter().zip(&c).filter(|(_, cl)| **cl == k).map(|(x, _)| *x).sum::<Decimal>();
            prop_assert_eq!(by(Abc::A) + by(Abc::B) + by(Abc::C), total);
            // A holds the largest revenues: no B or C customer has more than any A customer.
            let min_a = r.iter().zip(&c).filter(|(_, cl)| **cl == Abc::A).map(|(x, _)| *x).min();
            let max_rest = r.iter().zip(&c).filter(|(_, cl)| **cl != Abc::A).map(|(x, _)| *x).max();
            if let (Some(a), Some(b)) = (min_a, max_rest) { prop_assert!(a >= b); }
        }
    }
}
