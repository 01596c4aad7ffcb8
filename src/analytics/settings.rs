//! Per-portal analytics settings: what counts as a sale, where the amount comes from, the
//! currency, B2C or B2B identity, and the thresholds of every rule. Read from the portal's
//! `[analytics]` config table (strictly: unknown keys are errors); every key has a default, so an
//! empty table is a working configuration. [`Settings::validate`] lists every problem at once for
//! `rebuy config check`.
//!
//! Money thresholds are `rust_decimal::Decimal` (write them as strings in TOML: `"50000"`);
//! shares, rates and factors are `f64` because they are statistics, not money.
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who the customer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The customer is the deal's main contact (merged with contacts sharing a phone or email).
    #[default]
    B2c,
    /// The customer is the deal's company (contacts of a company belong to it); deals without a
    /// company fall back to the B2C rule.
    B2b,
}

/// Where a sale's amount comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AmountSource {
    /// The deal amount (amoCRM `price`, Bitrix24 `OPPORTUNITY`).
    #[default]
    Deal,
    /// The sum of price x quantity of the deal's product rows; deals without rows use the deal
    /// amount.
    Products,
}

/// Which instant of a sale is its purchase time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PurchaseTime {
    /// When the deal was closed (falls back to creation when the CRM has no close time).
    #[default]
    Closed,
    /// When the deal was created.
    Created,
}

/// How XYZ classes are assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XyzMode {
    /// By the number of purchases in the last `xyz_window_days` (X = buys often).
    #[default]
    Frequency,
    /// Classic: by the coefficient of variation of the intervals between purchases (X = most
    /// regular). Customers with fewer than 3 purchases are Z.
    Cv,
}

/// How an RFM score is assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RfmScoring {
    /// By thresholds: fixed ones (frequency), or configured or derived from the base's median
    /// purchase cycle (recency). Absolute, so a dormant base has no recent customers.
    #[default]
    Thresholds,
    /// By quintiles of the base (relative: the most recent fifth is R 5 however long ago it
    /// bought; ties share a score, so a base of one-time buyers collapses into few columns).
    Quintiles,
}

/// A consumption rule: a product consumed at a known rate, so the next purchase is due at
/// `last purchase + quantity x days_per_unit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumptionRule {
    /// Matches product rows whose name contains this text (case-insensitive).
    #[serde(default)]
    pub product: Option<String>,
    /// Matches product rows with this catalog product id.
    #[serde(default)]
    pub product_id: Option<u64>,
    /// Days one unit lasts (a 19 l water bottle: 3 days).
    pub days_per_unit: f64,
}

/// Marketing and sales spend over a date range, for CAC. Spend is prorated by days when the
/// range only partly overlaps the figures period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendEntry {
    /// First day, inclusive (local date of the portal).
    pub from: jiff::civil::Date,
    /// Last day, inclusive.
    pub to: jiff::civil::Date,
    /// Spend in the portal currency.
    pub amount: Decimal,
}

/// The default frequency thresholds: F 1 = one purchase, 2 = two, 3 = three or four, 4 = five
/// to seven, 5 = eight or more.
pub const DEFAULT_FREQUENCY_THRESHOLDS: [u32; 4] = [2, 3, 5, 8];

/// Analytics settings of one portal. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    // ---- what a sale is --------------------------------------------------------------------
    /// Won deals count as sales (amoCRM status 142, Bitrix24 semantic `S`).
    pub won_is_sale: bool,
    /// When not empty, only deals of these pipelines (amoCRM) / categories (Bitrix24) count.
    pub sale_pipelines: Vec<u64>,
    /// Stages that count as a sale even when the deal is still open (e.g. "paid, delivering");
    /// amoCRM status id as text, Bitrix24 stage code (`C2:PREPAYMENT_INVOICE`).
    pub sale_stages: Vec<String>,
    /// Which instant of a sale is its purchase time.
    pub purchase_time: PurchaseTime,
    /// Where the amount comes from.
    pub amount_source: AmountSource,
    /// The portal currency (ISO code). `None`: the currency of most deal amounts.
    pub currency: Option<String>,
    /// Conversion rates: units of the portal currency per one unit of the keyed currency
    /// (`USD = "92.5"`). Sales in other currencies without a rate are left out with a warning.
    pub rates: BTreeMap<String, Decimal>,

    // ---- identity and routing --------------------------------------------------------------
    /// B2C (customer = contact) or B2B (customer = company).
    pub mode: Mode,
    /// A deal whose customer never bought is a *returning inquiry* when the customer had an
    /// earlier deal, or a contact created at least this many hours before the deal (younger
    /// contacts were created together with the inquiry).
    pub known_contact_min_age_hours: u32,

    // ---- RFM ---------------------------------------------------------------------------------
    /// How R is scored: `thresholds` (default) or `quintiles`.
    pub rfm_recency_scoring: RfmScoring,
    /// Recency score thresholds in days, ascending: R = 5 when recency <= t[0], 4 when <= t[1],
    /// 3 when <= t[2], 2 when <= t[3], else 1. `None`: 1, 2, 3 and 6 times the base's median
    /// purchase cycle (the median of the repeat buyers' median gaps; 30, 90, 180, 365 days
    /// without repeat buyers).
    pub rfm_recency_thresholds_days: Option<[u32; 4]>,
    /// How F is scored: `thresholds` (default) or `quintiles`.
    pub rfm_frequency_scoring: RfmScoring,
    /// Frequency score thresholds in purchases, ascending: F = 2 when purchases >= t[0] ... 5
    /// when >= t[3]. `None`: [`DEFAULT_FREQUENCY_THRESHOLDS`] (1, 2, 3-4, 5-7, 8+).
    pub rfm_frequency_thresholds: Option<[u32; 4]>,
    /// Monetary score thresholds (portal currency), ascending, like the frequency ones.
    /// `None`: quintiles.
    pub rfm_monetary_thresholds: Option<[Decimal; 4]>,

    // ---- ABC, tiers, XYZ ----------------------------------------------------------------------
    /// A = the customers (by revenue, descending) before the cumulative share reaches this.
    pub abc_a_max_share: f64,
    /// B = the following customers before the cumulative share reaches this; the rest are C.
    pub abc_b_max_share: f64,
    /// Average order at least this (portal currency): tier `large`.
    pub tier_large_order_min: Decimal,
    /// Average order at least this: tier `medium`; below: `small`. One purchase: `one_time`.
    pub tier_medium_order_min: Decimal,
    /// XYZ mode.
    pub xyz_mode: XyzMode,
    /// Frequency mode: the window (days before the analysis date) purchases are counted in.
    pub xyz_window_days: u32,
    /// Frequency mode: X when at least this many purchases in the window.
    pub xyz_x_min_purchases: u32,
    /// Frequency mode: Y when at least this many (and fewer than X); else Z.
    pub xyz_y_min_purchases: u32,
    /// CV mode: X when the coefficient of variation of intervals is at most this.
    pub xyz_x_max_cv: f64,
    /// CV mode: Y when at most this; else Z.
    pub xyz_y_max_cv: f64,

    // ---- purchase cycle ----------------------------------------------------------------------
    /// `due_soon` when the next purchase is at most this many days ahead.
    pub due_soon_days: u32,
    /// `churned` when the time since the last purchase exceeds this many cycles.
    pub churn_factor: f64,
    /// A customer with no purchase for this many days is flagged sleeping; also the activity
    /// window of the CRR figure.
    pub sleeping_after_days: u32,
    /// Per-product consumption rules (`[[analytics.consumption]]`).
    pub consumption: Vec<ConsumptionRule>,

    // ---- models --------------------------------------------------------------------------------
    /// Fit BG/NBD and Gamma-Gamma and predict P(alive), expected purchases and CLV.
    pub models: bool,
    /// The model that drives the predictions, pinned (`"Pareto/NBD"`, `"BG/NBD"`, `"MBG/NBD"`,
    /// `"MBG/CNBD-k"`, `"hiatus"`, `"personal cycle"`). `None`: the backtest's choice on the
    /// portal's own history. A model whose fit is degenerate passes to the next one the
    /// backtest ranks (the first sound of `PRODUCT_MODELS` when it cannot tell them apart).
    pub model: Option<String>,
    /// CLV horizon in days (summed in 30-day steps).
    pub clv_horizon_days: u32,
    /// Annual discount rate of the CLV (0.1 = 10% a year).
    pub discount_rate_annual: f64,

    // ---- business figures --------------------------------------------------------------------
    /// Length of the figures period, ending at the analysis date.
    pub period_days: u32,
    /// Warn when the top 3 customers bring at least this share of the period revenue.
    pub concentration_warn_top3_share: f64,
    /// Marketing and sales spend, for CAC.
    pub marketing_spend: Vec<SpendEntry>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            won_is_sale: true,
            sale_pipelines: Vec::new(),
            sale_stages: Vec::new(),
            purchase_time: PurchaseTime::Closed,
            amount_source: AmountSource::Deal,
            currency: None,
            rates: BTreeMap::new(),
            mode: Mode::B2c,
            known_contact_min_age_hours: 24,
            rfm_recency_scoring: RfmScoring::Thresholds,
            rfm_recency_thresholds_days: None,
            rfm_frequency_scoring: RfmScoring::Thresholds,
            rfm_frequency_thresholds: None,
            rfm_monetary_thresholds: None,
            abc_a_max_share: 0.80,
            abc_b_max_share: 0.95,
            tier_large_order_min: Decimal::from(50_000),
            tier_medium_order_min: Decimal::from(10_000),
            xyz_mode: XyzMode::Frequency,
            xyz_window_days: 365,
            xyz_x_min_purchases: 6,
            xyz_y_min_purchases: 2,
            xyz_x_max_cv: 0.10,
            xyz_y_max_cv: 0.25,
            due_soon_days: 7,
            churn_factor: 3.0,
            sleeping_after_days: 180,
            consumption: Vec::new(),
            models: true,
            model: None,
            clv_horizon_days: 365,
            discount_rate_annual: 0.10,
            period_days: 365,
            concentration_warn_top3_share: 0.5,
            marketing_spend: Vec::new(),
        }
    }
}

/// What counts as a sale: the one rule the analysis, the write-back facts and the dashboard
/// all use. A deal counts when its pipeline is a sale pipeline, and it is won (with
/// `won_is_sale`) or sits in a sale stage without being lost (a lost deal left in "paid,
/// delivering" is not a purchase). Callers that intern pipelines and stages pass membership.
pub fn sale_rule(
    won_is_sale: bool,
    state: rebuy_core::DealState,
    in_sale_pipeline: bool,
    in_sale_stage: bool,
) -> bool {
    use rebuy_core::DealState;
    in_sale_pipeline
        && ((won_is_sale && state == DealState::Won) || (state != DealState::Lost && in_sale_stage))
}

impl Settings {
    /// Whether a deal in this state, pipeline and stage counts as a sale ([`sale_rule`]).
    pub fn is_sale(&self, state: rebuy_core::DealState, pipeline: u64, stage: &str) -> bool {
        sale_rule(
            self.won_is_sale,
            state,
            self.sale_pipelines.is_empty() || self.sale_pipelines.contains(&pipeline),
            self.sale_stages.iter().any(|s| s == stage),
        )
    }

    /// Every problem of these settings, as lowercase phrases naming the key. Empty when valid.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.won_is_sale && self.sale_stages.is_empty() {
            p.push("won_is_sale = false and sale_stages is empty: nothing counts as a sale".into());
        }
        if let Some(c) = &self.currency
            && !is_currency_code(c)
        {
            p.push(format!("currency {c:?} is not a 3-letter ISO code"));
        }
        for (code, rate) in &self.rates {
            if !is_currency_code(code) {
                p.push(format!("rates: {code:?} is not a 3-letter ISO code"));
            }
            if *rate <= Decimal::ZERO {
                p.push(format!("rates.{code} must be positive, got {rate}"));
            }
        }
        if let Some(m) = &self.model {
            let known = super::backtest::MODELS
                .iter()
                .chain(super::backtest::BASELINES.iter());
            if !known.clone().any(|k| k.eq_ignore_ascii_case(m.trim())) {
                p.push(format!(
                    "model {m:?} is not one of {}",
                    known.copied().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if let Some(t) = self.rfm_recency_thresholds_days
            && !t.windows(2).all(|w| w[0] < w[1])
        {
            p.push(format!(
                "rfm_recency_thresholds_days must be strictly ascending, got {t:?}"
            ));
        }
        if let Some(t) = self.rfm_frequency_thresholds
            && (!t.windows(2).all(|w| w[0] < w[1]) || t[0] < 2)
        {
            p.push(format!(
                "rfm_frequency_thresholds must be strictly ascending from at least 2 purchases (F 1 is one purchase), got {t:?}"
            ));
        }
        if self.rfm_recency_scoring == RfmScoring::Quintiles
            && let Some(t) = self.rfm_recency_thresholds_days
        {
            p.push(format!(
                "rfm_recency_thresholds_days {t:?} is set but rfm_recency_scoring = \"quintiles\" ignores it"
            ));
        }
        if self.rfm_frequency_scoring == RfmScoring::Quintiles
            && let Some(t) = self.rfm_frequency_thresholds
        {
            p.push(format!(
                "rfm_frequency_thresholds {t:?} is set but rfm_frequency_scoring = \"quintiles\" ignores it"
            ));
        }
        if let Some(t) = self.rfm_monetary_thresholds
            && !t.windows(2).all(|w| w[0] < w[1])
        {
            p.push(format!(
                "rfm_monetary_thresholds must be strictly ascending, got {t:?}"
            ));
        }
        let share = |v: f64| v.is_finite() && v > 0.0 && v <= 1.0;
        if !share(self.abc_a_max_share) || !share(self.abc_b_max_share) {
            p.push("abc_a_max_share and abc_b_max_share must be in (0, 1]".into());
        } else if self.abc_a_max_share > self.abc_b_max_share {
            p.push(format!(
                "abc_a_max_share ({}) must not exceed abc_b_max_share ({})",
                self.abc_a_max_share, self.abc_b_max_share
            ));
        }
        if self.tier_medium_order_min < Decimal::ZERO {
            p.push("tier_medium_order_min must not be negative".into());
        }
        if self.tier_large_order_min < self.tier_medium_order_min {
            p.push(format!(
                "tier_large_order_min ({}) must be at least tier_medium_order_min ({})",
                self.tier_large_order_min, self.tier_medium_order_min
            ));
        }
        if self.xyz_window_days == 0 {
            p.push("xyz_window_days must be positive".into());
        }
        if self.xyz_y_min_purchases == 0 || self.xyz_x_min_purchases <= self.xyz_y_min_purchases {
            p.push(format!(
                "xyz thresholds need 0 < xyz_y_min_purchases ({}) < xyz_x_min_purchases ({})",
                self.xyz_y_min_purchases, self.xyz_x_min_purchases
            ));
        }
        if !(self.xyz_x_max_cv.is_finite()
            && self.xyz_x_max_cv >= 0.0
            && self.xyz_x_max_cv <= self.xyz_y_max_cv
            && self.xyz_y_max_cv.is_finite())
        {
            p.push("xyz cv thresholds need 0 <= xyz_x_max_cv <= xyz_y_max_cv".into());
        }
        if !(self.churn_factor.is_finite() && self.churn_factor >= 1.0) {
            p.push(format!(
                "churn_factor must be at least 1, got {}",
                self.churn_factor
            ));
        }
        if self.sleeping_after_days == 0 {
            p.push("sleeping_after_days must be positive".into());
        }
        for (i, r) in self.consumption.iter().enumerate() {
            if r.product.as_deref().is_none_or(|s| s.trim().is_empty()) && r.product_id.is_none() {
                p.push(format!(
                    "consumption[{i}]: set product (name substring) or product_id"
                ));
            }
            if !(r.days_per_unit.is_finite() && r.days_per_unit > 0.0) {
                p.push(format!("consumption[{i}]: days_per_unit must be positive"));
            }
        }
        if self.clv_horizon_days == 0 {
            p.push("clv_horizon_days must be positive".into());
        }
        if !(self.discount_rate_annual.is_finite() && self.discount_rate_annual > -1.0) {
            p.push("discount_rate_annual must be greater than -1".into());
        }
        if self.period_days == 0 {
            p.push("period_days must be positive".into());
        }
        if !share(self.concentration_warn_top3_share) {
            p.push("concentration_warn_top3_share must be in (0, 1]".into());
        }
        for (i, s) in self.marketing_spend.iter().enumerate() {
            if s.to < s.from {
                p.push(format!(
                    "marketing_spend[{i}]: to ({}) is before from ({})",
                    s.to, s.from
                ));
            }
            if s.amount < Decimal::ZERO {
                p.push(format!("marketing_spend[{i}]: amount must not be negative"));
            }
        }
        p
    }
}

fn is_currency_code(c: &str) -> bool {
    c.len() == 3 && c.chars().all(|ch| ch.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rebuy_core::DealState;

    /// The case the three former copies disagreed on: a lost deal left in a sale stage.
    #[test]
    fn a_lost_deal_in_a_sale_stage_is_not_a_sale() {
        let s = Settings {
            sale_stages: vec!["paid".into()],
            sale_pipelines: vec![7],
            ..Settings::default()
        };
        assert!(
            s.is_sale(DealState::Open, 7, "paid"),
            "open in a sale stage"
        );
        assert!(
            !s.is_sale(DealState::Lost, 7, "paid"),
            "lost in a sale stage"
        );
        assert!(s.is_sale(DealState::Won, 7, "delivered"), "won");
        assert!(!s.is_sale(DealState::Won, 8, "paid"), "another pipeline");
        let no_won = Settings {
            won_is_sale: false,
            ..s.clone()
        };
        assert!(!no_won.is_sale(DealState::Won, 7, "delivered"));
        assert!(no_won.is_sale(DealState::Won, 7, "paid"));
    }

    #[test]
    fn defaults_are_valid() {
        assert!(Settings::default().validate().is_empty());
    }

    #[test]
    fn every_problem_is_listed() {
        let s = Settings {
            abc_a_max_share: 0.99,
            churn_factor: 0.5,
            sleeping_after_days: 0,
            rates: [("usd".to_string(), Decimal::ZERO)].into(),
            consumption: vec![ConsumptionRule {
                product: None,
                product_id: None,
                days_per_unit: 0.0,
            }],
            ..Settings::default()
        };
        let p = s.validate();
        assert_eq!(p.len(), 6, "{p:#?}");
    }

    #[test]
    fn deserialises_with_defaults_and_rejects_unknown_keys() {
        let s: Settings = serde_json::from_str(
            r#"{"mode":"b2b","rates":{"USD":"92.5"},"consumption":[{"product":"Вода 19 л","days_per_unit":3}]}"#,
        )
        .unwrap();
        assert_eq!(s.mode, Mode::B2b);
        assert_eq!(s.rates["USD"], Decimal::new(925, 1));
        assert_eq!(s.sleeping_after_days, 180);
        assert!(serde_json::from_str::<Settings>(r#"{"sleeping_days":3}"#).is_err());
    }
}
