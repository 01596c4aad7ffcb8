//! The predicted values written to the CRM card (`[portal.mapping.fields]` keys `p_alive`,
//! `expected_purchases_90d`, `clv_12m`, `churn_band`): rounded so that a field changes only
//! when the prediction moves visibly, and so that a numeric CRM field accepts the text
//! (plain decimal with '.', never a float's noise like `0.30000000000000004`).
use super::CustomerRow;
use rust_decimal::Decimal;
use rust_decimal::prelude::FromPrimitive;

/// P(alive) at or above this is a low churn risk.
pub const LOW_RISK_FROM: f64 = 0.7;
/// P(alive) at or above this (and below [`LOW_RISK_FROM`]) is a medium churn risk; below it,
/// high.
pub const MEDIUM_RISK_FROM: f64 = 0.3;

/// How likely a customer is to have stopped buying, from the driving model's P(alive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChurnBand {
    /// P(alive) >= 0.7.
    Low,
    /// 0.3 <= P(alive) < 0.7.
    Medium,
    /// P(alive) < 0.3.
    High,
}

impl ChurnBand {
    /// Every band, lowest risk first.
    pub const ALL: [ChurnBand; 3] = [ChurnBand::Low, ChurnBand::Medium, ChurnBand::High];

    /// The band of a P(alive); `None` when it is not a number.
    pub fn of(p_alive: f64) -> Option<ChurnBand> {
        if !p_alive.is_finite() {
            return None;
        }
        Some(if p_alive >= LOW_RISK_FROM {
            ChurnBand::Low
        } else if p_alive >= MEDIUM_RISK_FROM {
            ChurnBand::Medium
        } else {
            ChurnBand::High
        })
    }

    /// The value written to the CRM (`low`, `medium`, `high`: codes, like the RFM segments).
    pub fn as_str(self) -> &'static str {
        match self {
            ChurnBand::Low => "low",
            ChurnBand::Medium => "medium",
            ChurnBand::High => "high",
        }
    }
}

/// A number as a CRM numeric field takes it: rounded to `dp` decimals, trailing zeros
/// dropped, '.' as the separator; `None` for NaN and infinities.
pub fn decimal_text(x: f64, dp: u32) -> Option<String> {
    let d = Decimal::from_f64(x)?.round_dp(dp).normalize();
    // -0 prints as "-0".
    Some(if d.is_zero() {
        "0".into()
    } else {
        d.to_string()
    })
}

/// The predicted field values of one customer; `None` where the driving model gives none
/// (the personal-cycle baseline has no P(alive)), which clears the field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PredictedValues {
    /// P(alive), two decimals.
    pub p_alive: Option<String>,
    /// Expected purchases in 90 days, two decimals.
    pub expected_purchases_90d: Option<String>,
    /// CLV over `clv_horizon_days`, whole currency units.
    pub clv_12m: Option<String>,
    /// Churn band code.
    pub churn_band: Option<String>,
}

/// The predicted values of a customer row, as written to the CRM.
pub fn predicted_values(row: &CustomerRow) -> PredictedValues {
    PredictedValues {
        p_alive: row.p_alive.and_then(|p| decimal_text(p, 2)),
        expected_purchases_90d: row.expected_purchases_90d.and_then(|x| decimal_text(x, 2)),
        clv_12m: row.clv.map(|c| {
            let c = c.round_dp(0).normalize();
            if c.is_zero() {
                "0".into()
            } else {
                c.to_string()
            }
        }),
        // The band of the P(alive) shown beside it (0.699 shows as 0.7: low, not medium).
        churn_band: row
            .p_alive
            .and_then(|p| ChurnBand::of((p * 100.0).round() / 100.0))
            .map(|b| b.as_str().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_plain_decimals_without_float_noise() {
        assert_eq!(decimal_text(0.1 + 0.2, 2).as_deref(), Some("0.3"));
        assert_eq!(decimal_text(0.876_543, 2).as_deref(), Some("0.88"));
        assert_eq!(decimal_text(2.0, 2).as_deref(), Some("2"));
        assert_eq!(decimal_text(-0.001, 2).as_deref(), Some("0"));
        assert_eq!(decimal_text(1234567.891, 2).as_deref(), Some("1234567.89"));
        assert_eq!(decimal_text(f64::NAN, 2), None);
        assert_eq!(decimal_text(f64::INFINITY, 2), None);
    }

    #[test]
    fn churn_bands_follow_the_documented_thresholds() {
        assert_eq!(ChurnBand::of(0.95), Some(ChurnBand::Low));
        assert_eq!(ChurnBand::of(0.7), Some(ChurnBand::Low));
        assert_eq!(ChurnBand::of(0.69), Some(ChurnBand::Medium));
        assert_eq!(ChurnBand::of(0.3), Some(ChurnBand::Medium));
        assert_eq!(ChurnBand::of(0.29), Some(ChurnBand::High));
        assert_eq!(ChurnBand::of(f64::NAN), None);
    }
}
