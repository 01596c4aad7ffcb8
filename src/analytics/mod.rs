//! The analytics engine: who the customers are, which deals are repeat sales, and how each
//! customer scores (RFM, ABC, XYZ, value tier, purchase cycle, BG/NBD and Gamma-Gamma models,
//! CLV), plus the business figures of a period.
//!
//! Flow: pull -> cache -> **analyse** -> plan -> outbox -> CRM. The sidecar streams its cached
//! contacts, companies and deals into a [`DatasetBuilder`]; [`analyse`] is a pure function of
//! the [`Dataset`], the [`Settings`], the analysis instant and the portal time zone: no CRM
//! calls, no clock, so every result is reproducible. The planner and the server read the
//! [`Analysis`]; `rebuy segments` and `rebuy report` print it through [`render`];
//! [`classify_deal`] routes a single incoming deal in real time.
//!
//! # Layout
//! - [`settings`]: the per-portal mapping and thresholds ([`Settings`], `validate`).
//! - [`dataset`]: the streamed compact projection and identity resolution (union-find).
//! - `classify` (here): new / repeat / returning-inquiry deal classification.
//! - [`rfm`], [`abc_xyz`]: scores, segments, classes, grids.
//! - [`bgnbd`], [`gamma_gamma`] with [`special`] and [`optim`]: the models and their fits.
//! - [`figures`]: business figures of the period.
//! - [`render`]: table / CSV / JSON output.
//! - [`bench`]: synthetic data and timings for `rebuy bench analytics`.
//!
//! # Units and conventions
//! - Days are local calendar days in the portal time zone; a customer's purchases on one day
//!   count as one purchase (as in the customer-base literature), while their deals all add to
//!   revenue. `purchases` = purchase days, `deals` = won deals.
//! - Money is `Decimal` in the portal currency. The models compute in `f64` and their money
//!   outputs (expected order value, CLV) are converted to `Decimal` rounded to 2 decimal places
//!   (kopecks) at the boundary.
//! - Only sales with a purchase time at or before the analysis instant count; deals created
//!   after it are not classified.
//! - The model time unit is the day (`alpha` is in days).
pub mod abc_xyz;
pub mod backtest;
pub mod bgnbd;
#[cfg(test)]
mod cdnow;
mod classify;
pub mod dataset;
pub mod figures;
pub(crate) mod fit;
pub mod gamma_gamma;
pub mod mbgcnbd;
pub mod mbgnbd;
pub mod optim;
pub mod pareto_nbd;
pub mod periodic;
pub mod predicted;
pub mod render;
pub mod rfm;
pub mod settings;
pub mod special;
pub mod synthetic;
#[cfg(test)]
mod tests;

pub use abc_xyz::{Abc, AbcXyzMatrix, CycleStatus, Tier, Xyz};
pub use bgnbd::BgNbdParams;
pub use classify::{DealClass, DealClassification, classify_deal};
pub use dataset::{CustomerKey, Dataset, DatasetBuilder, MergedGroup};
pub use figures::{Concentration, Figures};
pub use gamma_gamma::GammaGammaParams;
pub use predicted::{ChurnBand, PredictedValues, predicted_values};
pub use rfm::{GridCell, RfmGrid, RfmSegment};
pub use settings::{
    AmountSource, ConsumptionRule, Mode, PurchaseTime, RfmScoring, Settings, SpendEntry, XyzMode,
};

use classify::Ctx;
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use rebuy_core::{CompanyId, ContactId};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;

/// One row of `rebuy segments`: a customer with every score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerRow {
    /// Stable customer key (`contact:123`, `company:45`).
    pub key: CustomerKey,
    /// Every contact of the customer (merged identities).
    pub contact_ids: Vec<ContactId>,
    /// Every company of the customer.
    pub company_ids: Vec<CompanyId>,
    /// Display name (the company's in B2B, else the contact with the smallest id that has one).
    pub name: String,
    /// Phones (E.164 where normalisable) of all members.
    pub phones: Vec<String>,
    /// Emails of all members.
    pub emails: Vec<String>,
    /// First purchase day (local).
    pub first_purchase: Date,
    /// Last purchase day (local).
    pub last_purchase: Date,
    /// Purchase days up to the analysis date.
    pub purchases: u32,
    /// Won deals up to the analysis date.
    pub deals: u32,
    /// Revenue over the whole history (portal currency).
    pub revenue: Decimal,
    /// Days from the last purchase to the analysis date.
    pub recency_days: i64,
    /// Recency score 1..5 (5 = most recent).
    pub r: u8,
    /// Frequency score 1..5.
    pub f: u8,
    /// Monetary score 1..5.
    pub m: u8,
    /// Named RFM segment (from R and F).
    pub rfm_segment: RfmSegment,
    /// ABC class by revenue share.
    pub abc: Abc,
    /// XYZ class.
    pub xyz: Xyz,
    /// Value tier.
    pub tier: Tier,
    /// The customer's cycle in days: a consumption rule on the last purchase, else the median
    /// interval between purchases (>= 2 purchases); `None` otherwise.
    pub cycle_days: Option<f64>,
    /// Expected next purchase day.
    pub next_purchase: Option<Date>,
    /// Status against the expected next purchase.
    pub cycle_status: Option<CycleStatus>,
    /// One purchase day only.
    pub one_time: bool,
    /// No purchase for `sleeping_after_days` or more.
    pub sleeping: bool,
    /// The driving model's probability of being alive (`ModelParams::driving`; none when the
    /// personal-cycle baseline drives).
    pub p_alive: Option<f64>,
    /// The driving model's expected purchases in the next 90 days.
    pub expected_purchases_90d: Option<f64>,
    /// The driving model's next purchase date with its 50% and 80% intervals (the date and
    /// no intervals when the personal-cycle baseline drives).
    pub next_purchase_forecast: Option<NextPurchase>,
    /// Expected order value (kopecks-rounded): Gamma-Gamma, or the shrunk per-customer mean
    /// when Gamma-Gamma has no finite mean (`ModelParams::order_value` says which).
    pub expected_order_value: Option<Decimal>,
    /// Predicted CLV over `clv_horizon_days`, discounted (kopecks-rounded).
    pub clv: Option<Decimal>,
}

/// When a customer is expected to buy next, if they buy again: the median of the wait from
/// the analysis date, and the intervals between its 25% and 75% and its 10% and 90%
/// quantiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NextPurchase {
    /// The median date.
    pub date: Date,
    /// The 50% interval (first, last day).
    pub interval_50: Option<(Date, Date)>,
    /// The 80% interval (first, last day).
    pub interval_80: Option<(Date, Date)>,
}

/// Customers and revenue of one RFM segment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentSummary {
    /// The segment.
    pub segment: RfmSegment,
    /// Customers in it.
    pub customers: u64,
    /// Their revenue.
    pub revenue: Decimal,
}

/// Fitted model parameters of the portal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelParams {
    /// BG/NBD (time unit: days); `None` when no customer came back.
    pub bgnbd: Option<BgNbdParams>,
    /// Gamma-Gamma (money unit: the portal currency); `None` with fewer than 2 repeat customers.
    pub gamma_gamma: Option<GammaGammaParams>,
    /// Customers the BG/NBD was fitted on, and the distinct (x, t_x, T) rows they collapse to.
    pub customers: u64,
    /// Distinct likelihood rows.
    pub distinct_rows: u64,
    /// The model (or baseline: `personal cycle`, `hiatus`) behind P(alive), expected
    /// purchases, the next-purchase forecast and CLV: the pinned one, else the backtest's
    /// choice on the portal's own history; when that model's fit on the whole history is
    /// degenerate (reported in the warnings), the next one the backtest ranks.
    pub driving: Option<String>,
    /// The driving model's parameters in words.
    pub driving_params: String,
    /// What the expected order values come from: `Gamma-Gamma` or `shrunk per-customer mean`.
    pub order_value: Option<String>,
    /// The driving model's figures in the backtest that chose it.
    pub evidence: Option<backtest::Evidence>,
}

/// Everything the analytics computed for one portal at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    /// The analysis instant.
    pub as_of: Timestamp,
    /// Its local date.
    pub as_of_date: Date,
    /// The portal currency all money is in.
    pub currency: String,
    /// One row per customer with at least one purchase, in customer-key order.
    pub customers: Vec<CustomerRow>,
    /// Every deal created up to the analysis instant, in deal-id order.
    pub deals: Vec<DealClassification>,
    /// Merged identity groups (more than one contact or company).
    pub merged: Vec<MergedGroup>,
    /// Customers per RFM segment.
    pub segments: Vec<SegmentSummary>,
    /// The R x F grid.
    pub rfm_grid: RfmGrid,
    /// The ABC x XYZ matrix.
    pub abc_xyz: AbcXyzMatrix,
    /// Business figures of the period.
    pub figures: Figures,
    /// Model parameters.
    pub models: ModelParams,
    /// Human-readable warnings (left-out currencies, concentration, model fits).
    pub warnings: Vec<String>,
}

/// Per-customer facts of the single pass over its deals.
#[derive(Debug, Clone)]
pub(crate) struct Core {
    pub group: u32,
    pub first_day: i64,
    pub last_day: i64,
    pub n_days: u32,
    pub deals: u32,
    pub revenue: Decimal,
    /// Revenue of the purchase days after the first (zbar numerator).
    pub repeat_revenue: Decimal,
    pub window_purchases: u32,
    pub interval_cv: Option<f64>,
    pub median_gap: Option<f64>,
    pub consumption_days: Option<f64>,
    /// Sum of the logarithms of the gaps between purchase days (MBG/CNBD-k's regularity).
    pub litt: f64,
    pub fig: figures::CustomerFigures,
    /// The purchase days (only when asked for: see [`purchase_days`]).
    pub days: Vec<i64>,
}

const DAY: i64 = 86_400;

/// The local day number (days since 1970-01-01 in `tz`) of a unix second.
pub(crate) fn local_day(ts: i64, tz: &TimeZone) -> i64 {
    let off = Timestamp::from_second(ts).map_or(0, |t| tz.to_offset(t).seconds() as i64);
    (ts + off).div_euclid(DAY)
}

/// The civil date of a day number (Howard Hinnant's `civil_from_days`).
pub fn date_of_day(z: i64) -> Date {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    Date::new(y.clamp(-9999, 9999) as i16, m as i8, d as i8).unwrap_or(Date::MIN)
}

/// The day number of a civil date.
pub fn day_of_date(d: Date) -> i64 {
    let (y, m, dd) = (d.year() as i64, d.month() as i64, d.day() as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A model's money output (`f64`) as `Decimal` rounded to 2 decimal places (kopecks). The
/// rounding happens on the `f64` (exact for amounts below 9e13) and the result is exact
/// decimal cents from there on.
fn to_money(v: f64) -> Option<Decimal> {
    let cents = (v * 100.0).round();
    (cents.is_finite() && cents.abs() < 9.0e15).then(|| Decimal::new(cents as i64, 2))
}

/// Every customer's purchase days (local day numbers, distinct, ascending) up to `as_of`, in
/// customer-key order, with the analysis date's day number: the input of [`backtest`].
pub fn purchase_days(
    data: &Dataset,
    settings: &Settings,
    as_of: Timestamp,
    tz: TimeZone,
) -> (Vec<Vec<i64>>, i64) {
    let mut warnings = Vec::new();
    let ctx = Ctx::new(data, settings, &mut warnings);
    let as_of_s = as_of.as_second();
    let as_of_day = local_day(as_of_s, &tz);
    let period = figures::Period::new(as_of_day, settings);
    let (mut cores, _, _) =
        classify::pass(data, settings, &ctx, as_of_s, as_of_day, &tz, &period, true);
    cores.sort_by_cached_key(|c| data.groups[c.group as usize].key);
    (cores.into_iter().map(|c| c.days).collect(), as_of_day)
}

/// Runs the whole analysis. Pure and deterministic: the same inputs give the same output.
pub fn analyse(data: &Dataset, settings: &Settings, as_of: Timestamp, tz: TimeZone) -> Analysis {
    let mut warnings = Vec::new();
    let ctx = Ctx::new(data, settings, &mut warnings);
    let as_of_s = as_of.as_second();
    let as_of_day = local_day(as_of_s, &tz);
    let period = figures::Period::new(as_of_day, settings);

    // 1. One pass per customer: purchases, classification of its deals, per-customer facts.
    // The purchase days are kept for the backtest that chooses the model.
    let (mut cores, mut deals, counters) = classify::pass(
        data,
        settings,
        &ctx,
        as_of_s,
        as_of_day,
        &tz,
        &period,
        settings.models,
    );
    deals.sort_unstable_by_key(|d| d.deal_id);
    counters.warn(data, &mut warnings);
    cores.sort_by_cached_key(|c| data.groups[c.group as usize].key);
    let n = cores.len();

    // 2. RFM scores: absolute thresholds by default (a dormant base has no recent customers),
    // quintiles when asked for.
    let recency: Vec<i64> = cores.iter().map(|c| as_of_day - c.last_day).collect();
    let median_cycle = {
        let mut gaps: Vec<f64> = cores.iter().filter_map(|c| c.median_gap).collect();
        (!gaps.is_empty()).then(|| abc_xyz::median(&mut gaps))
    };
    let r_thresholds = match settings.rfm_recency_scoring {
        RfmScoring::Quintiles => None,
        RfmScoring::Thresholds => Some(
            settings
                .rfm_recency_thresholds_days
                .unwrap_or_else(|| rfm::recency_thresholds_of_cycle(median_cycle)),
        ),
    };
    let f_thresholds = match settings.rfm_frequency_scoring {
        RfmScoring::Quintiles => None,
        RfmScoring::Thresholds => Some(
            settings
                .rfm_frequency_thresholds
                .unwrap_or(settings::DEFAULT_FREQUENCY_THRESHOLDS),
        ),
    };
    let r_scores = match &r_thresholds {
        Some(t) => recency
            .iter()
            .map(|&d| rfm::recency_threshold_score(d, t))
            .collect(),
        None => rfm::quintile_scores(&recency.iter().map(|d| -d).collect::<Vec<_>>()),
    };
    let f_scores = match &f_thresholds {
        Some(t) => cores
            .iter()
            .map(|c| rfm::threshold_score(c.n_days, t))
            .collect(),
        None => rfm::quintile_scores(&cores.iter().map(|c| c.n_days).collect::<Vec<_>>()),
    };
    let revenues: Vec<Decimal> = cores.iter().map(|c| c.revenue).collect();
    let m_scores = match &settings.rfm_monetary_thresholds {
        Some(t) => revenues
            .iter()
            .map(|&v| rfm::threshold_score(v, t))
            .collect(),
        None => match rfm::decimal_keys(&revenues) {
            Some(keys) => rfm::quintile_scores(&keys),
            None => rfm::quintile_scores(&revenues),
        },
    };
    let abc = abc_xyz::abc_classes(
        &revenues,
        settings.abc_a_max_share,
        settings.abc_b_max_share,
    );

    let (models, predictions) = fit_models(&cores, settings, as_of_day, &mut warnings);

    // 4. Rows.
    let mut rows = Vec::with_capacity(n);
    let mut grid = RfmGrid {
        recency_thresholds_days: r_thresholds,
        frequency_thresholds: f_thresholds,
        median_cycle_days: median_cycle,
        ..RfmGrid::default()
    };
    let mut matrix = AbcXyzMatrix::default();
    let mut segs: Vec<SegmentSummary> = RfmSegment::ALL
        .iter()
        .map(|&segment| SegmentSummary {
            segment,
            customers: 0,
            revenue: Decimal::ZERO,
        })
        .collect();
    let mut clv_total = Decimal::ZERO;
    let mut clv_count = 0u64;
    for (i, c) in cores.iter().enumerate() {
        let (r, f, m) = (r_scores[i], f_scores[i], m_scores[i]);
        let segment = rfm::segment(r, f);
        let xyz = match settings.xyz_mode {
            XyzMode::Frequency if c.window_purchases >= settings.xyz_x_min_purchases => Xyz::X,
            XyzMode::Frequency if c.window_purchases >= settings.xyz_y_min_purchases => Xyz::Y,
            XyzMode::Frequency => Xyz::Z,
            XyzMode::Cv => match c.interval_cv {
                Some(v) if v <= settings.xyz_x_max_cv => Xyz::X,
                Some(v) if v <= settings.xyz_y_max_cv => Xyz::Y,
                _ => Xyz::Z,
            },
        };
        let tier = if c.n_days <= 1 {
            Tier::OneTime
        } else {
            let aov = c.revenue / Decimal::from(c.deals.max(1));
            if aov >= settings.tier_large_order_min {
                Tier::Large
            } else if aov >= settings.tier_medium_order_min {
                Tier::Medium
            } else {
                Tier::Small
            }
        };
        let cycle = c.consumption_days.or(c.median_gap);
        let (next, status) = match cycle {
            Some(cyc) => {
                let next = c.last_day + cyc.round() as i64;
                let ahead = next - as_of_day;
                let since = (as_of_day - c.last_day) as f64;
                let status = if ahead > settings.due_soon_days as i64 {
                    CycleStatus::NotDue
                } else if ahead >= 0 {
                    CycleStatus::DueSoon
                } else if since <= settings.churn_factor * cyc {
                    CycleStatus::Overdue
                } else {
                    CycleStatus::Churned
                };
                (Some(date_of_day(next)), Some(status))
            }
            None => (None, None),
        };
        let pred = predictions.as_ref().map(|p| p[i]);
        let clv = pred.and_then(|p| p.clv);
        if let Some(v) = clv {
            clv_total += v;
            clv_count += 1;
        }
        let cell = &mut grid.cells[r as usize - 1][f as usize - 1];
        cell.customers += 1;
        cell.revenue += c.revenue;
        let cell = &mut matrix.cells[abc[i] as usize][xyz as usize];
        cell.customers += 1;
        cell.revenue += c.revenue;
        let s = &mut segs[RfmSegment::ALL
            .iter()
            .position(|&x| x == segment)
            .expect("listed")];
        s.customers += 1;
        s.revenue += c.revenue;
        let ident = identity_columns(data, c.group);
        rows.push(CustomerRow {
            key: data.groups[c.group as usize].key,
            contact_ids: ident.0,
            company_ids: ident.1,
            name: ident.2,
            phones: ident.3,
            emails: ident.4,
            first_purchase: date_of_day(c.first_day),
            last_purchase: date_of_day(c.last_day),
            purchases: c.n_days,
            deals: c.deals,
            revenue: c.revenue,
            recency_days: recency[i],
            r,
            f,
            m,
            rfm_segment: segment,
            abc: abc[i],
            xyz,
            tier,
            cycle_days: cycle,
            next_purchase: next,
            cycle_status: status,
            one_time: c.n_days <= 1,
            sleeping: recency[i] >= settings.sleeping_after_days as i64,
            p_alive: pred.and_then(|p| p.p_alive),
            expected_purchases_90d: pred.map(|p| p.e90),
            next_purchase_forecast: pred.and_then(|p| p.next),
            expected_order_value: pred.and_then(|p| p.eov),
            clv,
        });
    }

    // 5. Figures.
    let clv_stats = (clv_count > 0).then_some((clv_total, clv_count));
    let figures = figures::compute(&cores, &period, settings, clv_stats, &mut warnings);

    Analysis {
        as_of,
        as_of_date: date_of_day(as_of_day),
        currency: ctx.currency.clone(),
        customers: rows,
        deals,
        merged: data.merged.clone(),
        segments: segs,
        rfm_grid: grid,
        abc_xyz: matrix,
        figures,
        models,
        warnings,
    }
}

type Identity = (
    Vec<ContactId>,
    Vec<CompanyId>,
    String,
    Vec<String>,
    Vec<String>,
);

fn identity_columns(data: &Dataset, g: u32) -> Identity {
    let mut contacts = Vec::new();
    let mut companies = Vec::new();
    let mut company_name: Option<(u64, &str)> = None;
    let mut contact_name: Option<(u64, &str)> = None;
    let mut phones: Vec<String> = Vec::new();
    let mut emails: Vec<String> = Vec::new();
    let mut members: Vec<&dataset::NodeRec> = Vec::with_capacity(1);
    members.extend(data.group_members(g));
    if members.len() == 1 {
        let m = members[0];
        let (contacts, companies) = if m.is_company {
            (vec![], vec![CompanyId(m.id)])
        } else {
            (vec![ContactId(m.id)], vec![])
        };
        let list = |v: &[Box<str>]| v.iter().map(|s| s.to_string()).collect();
        return (
            contacts,
            companies,
            m.name.to_string(),
            list(&m.phones),
            list(&m.emails),
        );
    }
    // Companies first (B2B display), then by id: deterministic.
    members.sort_by_key(|m| (!m.is_company, m.id));
    for m in members {
        if m.is_company {
            companies.push(CompanyId(m.id));
        } else {
            contacts.push(ContactId(m.id));
        }
        if !m.name.is_empty() {
            let slot = if m.is_company {
                &mut company_name
            } else {
                &mut contact_name
            };
            if slot.is_none() {
                *slot = Some((m.id, &m.name));
            }
        }
        for p in m.phones.iter() {
            if !phones.iter().any(|x| **x == **p) {
                phones.push(p.to_string());
            }
        }
        for e in m.emails.iter() {
            if !emails.iter().any(|x| **x == **e) {
                emails.push(e.to_string());
            }
        }
    }
    let name = match data.mode {
        Mode::B2b => company_name.or(contact_name),
        Mode::B2c => contact_name.or(company_name),
    }
    .map_or_else(String::new, |(_, n)| n.to_owned());
    (contacts, companies, name, phones, emails)
}

/// Model predictions of one customer.
#[derive(Debug, Clone, Copy)]
struct Prediction {
    p_alive: Option<f64>,
    e90: f64,
    eov: Option<Decimal>,
    clv: Option<Decimal>,
    next: Option<NextPurchase>,
}

/// Prior weight, in orders, of the base's mean order value in the shrunk per-customer mean
/// that stands in for Gamma-Gamma when its fit has no finite mean (q <= 1) or is missing.
pub const SHRINK_ORDERS: f64 = 3.0;

/// The models the predictions fall back through when the backtest cannot tell them apart
/// (no customer bought in its holdout, or too short a history): the first whose fit is sound
/// drives them, the personal-cycle baseline when none is.
pub const PRODUCT_MODELS: [&str; 3] = ["BG/NBD", "MBG/NBD", "Pareto/NBD"];

/// What drives the predictions when no model does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Baseline {
    /// Last purchase plus the customer's own mean gap.
    PersonalCycle,
    /// The calibration rate of customers who bought within the last `holdout` days.
    Hiatus { holdout: f64 },
}

impl Baseline {
    fn name(self) -> &'static str {
        match self {
            Baseline::PersonalCycle => "personal cycle",
            Baseline::Hiatus { .. } => "hiatus",
        }
    }
}

/// The order the models are tried in, and the baseline after them. A pin comes first (a
/// pinned baseline skips the models); then, when the backtest tells the models apart, the
/// models that beat both baselines on its AUC without a degenerate fit, by holdout MAE (its
/// choice first), then its better baseline; otherwise [`PRODUCT_MODELS`] and the personal
/// cycle.
fn model_chain(
    pin: Option<&str>,
    bt: Option<&backtest::Backtest>,
    warnings: &mut Vec<String>,
) -> (Vec<&'static str>, Baseline, bool) {
    let holdout = bt.map_or(273.0, |b| (b.end_day - b.cutoff_day) as f64);
    let baseline_of = |name: &str| {
        if name.eq_ignore_ascii_case("hiatus") {
            Baseline::Hiatus { holdout }
        } else {
            Baseline::PersonalCycle
        }
    };
    if let Some(p) = pin
        && backtest::BASELINES
            .iter()
            .any(|b| b.eq_ignore_ascii_case(p))
    {
        return (Vec::new(), baseline_of(p), true);
    }
    let mut chain: Vec<&'static str> = pin
        .and_then(|p| backtest::MODELS.iter().find(|m| m.eq_ignore_ascii_case(p)))
        .into_iter()
        .copied()
        .collect();
    let evidence = bt.filter(|b| backtest::has_evidence(b));
    let terminal = match evidence {
        Some(b) => {
            let best_baseline = b
                .rows
                .iter()
                .filter(|r| r.kind == backtest::Kind::Baseline && r.auc.is_finite())
                .max_by(|a, b| a.auc.total_cmp(&b.auc));
            let bar = best_baseline.map_or(f64::NEG_INFINITY, |r| r.auc);
            let mut ranked: Vec<&backtest::BacktestRow> = b
                .rows
                .iter()
                .filter(|r| {
                    r.kind == backtest::Kind::Model
                        && r.problem.is_none()
                        && r.auc > bar
                        && r.mae.is_finite()
                })
                .collect();
            ranked.sort_by(|a, b| a.mae.total_cmp(&b.mae));
            for r in ranked {
                if let Some(m) = backtest::MODELS.iter().find(|m| **m == r.name)
                    && !chain.contains(m)
                {
                    chain.push(m);
                }
            }
            best_baseline.map_or(Baseline::PersonalCycle, |r| baseline_of(&r.name))
        }
        None => {
            warnings.push(match bt {
                Some(_) => "The backtest cannot tell the models apart on this base (every customer of its calibration period bought again in the holdout, or none did), so the first sound fit of BG/NBD, MBG/NBD, Pareto/NBD drives the predictions.".into(),
                None => "No backtest on this base, so the first sound fit of BG/NBD, MBG/NBD, Pareto/NBD drives the predictions.".into(),
            });
            for m in PRODUCT_MODELS {
                if !chain.contains(&m) {
                    chain.push(m);
                }
            }
            Baseline::PersonalCycle
        }
    };
    (chain, terminal, false)
}

fn fit_models(
    cores: &[Core],
    settings: &Settings,
    as_of_day: i64,
    warnings: &mut Vec<String>,
) -> (ModelParams, Option<Vec<Prediction>>) {
    let summary = |c: &Core| {
        (
            c.n_days - 1,
            (c.last_day - c.first_day) as f64,
            (as_of_day - c.first_day) as f64,
        )
    };
    let mut params = ModelParams {
        bgnbd: None,
        gamma_gamma: None,
        customers: cores.len() as u64,
        distinct_rows: 0,
        driving: None,
        driving_params: String::new(),
        order_value: None,
        evidence: None,
    };
    if !settings.models || cores.is_empty() {
        return (params, None);
    }
    let (rows, row_of) = bgnbd::aggregate_indexed(cores.iter().map(summary).collect());
    params.distinct_rows = rows.len() as u64;
    if !rows.iter().any(|r| r.x > 0) {
        warnings.push("models skipped: no customer has a repeat purchase".into());
        return (params, None);
    }
    let gaps = mbgcnbd::GapLogs {
        litt: cores.iter().map(|c| c.litt).sum(),
        gaps: cores.iter().map(|c| (c.n_days - 1) as f64).sum(),
    };
    let pin = settings
        .model
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty());
    // The backtest on the base's own history (a sample of a big base) chooses the model.
    let days: Vec<&[i64]> = cores.iter().map(|c| &c.days[..]).collect();
    let bt = backtest::portal(&days, as_of_day, None, pin);
    drop(days);
    let (chain, terminal, baseline_pinned) = model_chain(pin, bt.as_ref(), warnings);
    // BG/NBD is always fitted: its parameters are reported.
    let bg = bgnbd::fit(&rows);
    if let Some(bg) = bg
        && !bg.converged
    {
        warnings.push(
            "bg/nbd fit did not converge: p_alive and expected purchases are approximate".into(),
        );
    }
    params.bgnbd = bg;
    let t_max = rows.iter().fold(0.0f64, |m, r| m.max(r.t));
    let mut model: Option<backtest::Fitted> = None;
    for name in &chain {
        // MBG/CNBD-k keeps the regularity its backtest found (one fit instead of a search).
        let k = bt.as_ref().and_then(|b| {
            b.rows
                .iter()
                .find(|r| r.name == *name)
                .and_then(|r| r.regularity)
        });
        let fitted = match (*name, k) {
            ("BG/NBD", _) => bg.map(backtest::Fitted::Bg),
            ("MBG/CNBD-k", Some(k)) => mbgcnbd::fit_k(&rows, gaps, k).map(backtest::Fitted::Cnbd),
            _ => backtest::fit_model(name, &rows, gaps),
        };
        match fitted {
            Some(m) => match m.problem(t_max) {
                None => {
                    model = Some(m);
                    break;
                }
                Some(p) => warnings.push(p),
            },
            None => warnings.push(format!("{name} could not be fitted on this base.")),
        }
    }
    let driving = match &model {
        Some(m) => {
            params.driving_params = m.describe();
            m.name()
        }
        None => terminal.name(),
    };
    params.driving = Some(driving.to_string());
    if model.is_none() && !baseline_pinned {
        warnings.push(if chain.is_empty() {
            format!(
                "No model beats the baselines in the backtest on this portal's history, so the {} baseline drives the predictions, without a P(alive).",
                terminal.name()
            )
        } else {
            format!(
                "No model fits this base soundly, so the {} baseline drives the predictions, without a P(alive).",
                terminal.name()
            )
        });
    }
    if let Some(m) = &model
        && m.name() != chain[0]
    {
        warnings.push(format!("{} drives the predictions instead.", m.name()));
    }
    params.evidence = bt.as_ref().and_then(|b| backtest::Evidence::of(b, driving));

    // Order values: zbar, the mean value of the repeat purchase days (f64: a statistic for
    // the model).
    let zbar: Vec<f64> = cores
        .iter()
        .map(|c| {
            if c.n_days > 1 {
                c.repeat_revenue.to_f64().unwrap_or(0.0) / (c.n_days - 1) as f64
            } else {
                0.0
            }
        })
        .collect();
    let gg_data: Vec<(f64, f64)> = cores
        .iter()
        .zip(&zbar)
        .filter(|(c, _)| c.n_days > 1)
        .map(|(c, &z)| ((c.n_days - 1) as f64, z))
        .collect();
    let gg = gamma_gamma::fit(&gg_data);
    // The base's mean repeat order value, the prior of the shrunk per-customer mean.
    let (sum_v, sum_x) = gg_data
        .iter()
        .fold((0.0, 0.0), |(v, n), &(x, z)| (v + x * z, n + x));
    let base_mean = if sum_x > 0.0 { sum_v / sum_x } else { 0.0 };
    let shrunk = |x: u32, z: f64| {
        let xf = x as f64;
        Some((xf * z + SHRINK_ORDERS * base_mean) / (xf + SHRINK_ORDERS))
    };
    let use_gg = match &gg {
        Some(g) if g.q > 1.0 => {
            if !g.converged {
                warnings.push("gamma-gamma fit did not converge".into());
            }
            true
        }
        Some(g) => {
            warnings.push(format!(
                "Gamma-Gamma has no finite mean order value on this base (q = {:.3} <= 1), so order values and CLV use the shrunk per-customer mean: (x * mean repeat order + {SHRINK_ORDERS} * the base's mean repeat order {base_mean:.2}) / (x + {SHRINK_ORDERS}).",
                g.q
            ));
            false
        }
        None => {
            warnings.push(format!(
                "Gamma-Gamma skipped (fewer than 2 customers with repeat purchases), so order values and CLV use the shrunk per-customer mean: (x * mean repeat order + {SHRINK_ORDERS} * the base's mean repeat order {base_mean:.2}) / (x + {SHRINK_ORDERS})."
            ));
            false
        }
    };
    params.gamma_gamma = gg;
    params.order_value = Some(if use_gg {
        "Gamma-Gamma".into()
    } else {
        "shrunk per-customer mean".into()
    });

    // Per distinct row: P(alive), E[purchases in 90 days], discounted expected purchases over
    // the CLV horizon in 30-day steps (each step discounted at its end), the next-purchase
    // wait quantiles.
    let horizon = settings.clv_horizon_days as f64;
    let steps: Vec<(f64, f64)> = {
        let mut v = Vec::new();
        let mut t = 0.0;
        while t < horizon {
            t = (t + 30.0).min(horizon);
            v.push((t, (1.0 + settings.discount_rate_annual).powf(-t / 365.0)));
        }
        v
    };
    let mut horizons: Vec<f64> = steps.iter().map(|s| s.0).collect();
    horizons.push(90.0);
    let discount = |e: &[f64]| {
        let mut prev = 0.0;
        let mut disc = 0.0;
        for (i, &(_, factor)) in steps.iter().enumerate() {
            disc += (e[i] - prev) * factor;
            prev = e[i];
        }
        disc
    };
    type RowPred = (Option<f64>, f64, f64, [Option<f64>; 5]);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let row_preds: Vec<RowPred> = match &model {
        Some(backtest::Fitted::Bg(bg)) => {
            // The numerator of the conditional expectation depends on (x, T) only: compute it
            // once per distinct pair (far fewer than rows), then divide by each row's alive
            // denominator.
            let mut pairs: Vec<(u32, f64)> = rows.iter().map(|r| (r.x, r.t)).collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            pairs.dedup();
            let horizons = &horizons;
            let per_pair = |&(x, t): &(u32, f64)| {
                let e = bg.expected_numerators(horizons, x, t);
                (e[steps.len()], discount(&e))
            };
            let chunk = pairs.len().div_ceil(threads).max(1);
            let pair_preds: Vec<(f64, f64)> = std::thread::scope(|s| {
                let handles: Vec<_> = pairs
                    .chunks(chunk)
                    .map(|c| s.spawn(move || c.iter().map(per_pair).collect::<Vec<_>>()))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("prediction worker panicked"))
                    .collect()
            });
            let fitted = backtest::Fitted::Bg(*bg);
            rows.iter()
                .map(|r| {
                    let j = pairs
                        .binary_search_by(|p| p.0.cmp(&r.x).then(p.1.total_cmp(&r.t)))
                        .expect("every row has its pair");
                    let d = bg.alive_denominator(r.x, r.t_x, r.t);
                    let clean = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
                    (
                        Some(1.0 / d),
                        clean(pair_preds[j].0 / d),
                        clean(pair_preds[j].1 / d),
                        wait_quantiles(&fitted, r),
                    )
                })
                .collect()
        }
        Some(m) => {
            let horizons = &horizons;
            let per_row = |r: &bgnbd::SummaryRow| {
                let e = m.expected_many(horizons, r.x, r.t_x, r.t);
                (
                    Some(m.p_alive(r.x, r.t_x, r.t)),
                    e[steps.len()],
                    discount(&e),
                    wait_quantiles(m, r),
                )
            };
            let chunk = rows.len().div_ceil(threads).max(1);
            std::thread::scope(|s| {
                let handles: Vec<_> = rows
                    .chunks(chunk)
                    .map(|c| s.spawn(move || c.iter().map(per_row).collect::<Vec<_>>()))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("prediction worker panicked"))
                    .collect()
            })
        }
        None if matches!(terminal, Baseline::Hiatus { .. }) => {
            // The hiatus heuristic: a customer who bought within the last holdout-length of
            // days keeps their rate so far; others predict nothing. No dates.
            let Baseline::Hiatus { holdout } = terminal else {
                unreachable!("matched")
            };
            rows.iter()
                .map(|r| {
                    let rate = if r.t - r.t_x <= holdout && r.t > 0.0 {
                        r.x as f64 / r.t
                    } else {
                        0.0
                    };
                    let e: Vec<f64> = horizons.iter().map(|&h| rate * h).collect();
                    (None, e[steps.len()], discount(&e), [None; 5])
                })
                .collect()
        }
        None => {
            // The personal cycle: purchases at last + n mean gaps, unless more than one
            // cycle overdue; one-time buyers predict nothing and get no date.
            rows.iter()
                .map(|r| {
                    if r.x == 0 {
                        return (None, 0.0, 0.0, [None; 5]);
                    }
                    let gap = (r.t_x / r.x as f64).max(1.0);
                    let since = r.t - r.t_x;
                    let next = ((since / gap).floor() + 1.0) * gap - since;
                    let by = |h: f64| {
                        if since > 2.0 * gap || h < next {
                            0.0
                        } else {
                            ((h - next) / gap).floor() + 1.0
                        }
                    };
                    let e: Vec<f64> = horizons.iter().map(|&h| by(h)).collect();
                    (
                        None,
                        e[steps.len()],
                        discount(&e),
                        [None, None, Some(next), None, None],
                    )
                })
                .collect()
        }
    };
    let preds = cores
        .iter()
        .zip(&zbar)
        .zip(&row_of)
        .map(|((c, &zbar), &i)| {
            let x = c.n_days - 1;
            let (p_alive, e90, disc, q) = row_preds[i as usize];
            let eov = if use_gg {
                gg.and_then(|g| g.expected_order_value(x, zbar))
            } else {
                shrunk(x, zbar)
            };
            let day = |w: Option<f64>| w.map(|w| date_of_day(as_of_day + w.round() as i64));
            let next = q[2].map(|m| NextPurchase {
                date: date_of_day(as_of_day + m.round() as i64),
                interval_50: day(q[1]).zip(day(q[3])),
                interval_80: day(q[0]).zip(day(q[4])),
            });
            Prediction {
                p_alive,
                e90,
                eov: eov.and_then(to_money),
                clv: eov.and_then(|v| to_money(v * disc)),
                next,
            }
        })
        .collect();
    (params, Some(preds))
}

/// The 10%, 25%, 50%, 75% and 90% quantiles of the wait in days for the next purchase of an
/// alive customer.
fn wait_quantiles(m: &backtest::Fitted, r: &bgnbd::SummaryRow) -> [Option<f64>; 5] {
    [0.1, 0.25, 0.5, 0.75, 0.9].map(|q| m.next_purchase_quantile(q, r.x, r.t_x, r.t))
}

/// Helper for the planner: the rows of one segment.
pub fn segment_rows(
    analysis: &Analysis,
    segment: RfmSegment,
) -> impl Iterator<Item = &CustomerRow> {
    analysis
        .customers
        .iter()
        .filter(move |c| c.rfm_segment == segment)
}
