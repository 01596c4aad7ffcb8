//! Business figures of a period (the `period_days` days ending on the analysis date): buyers,
//! new and repeat customers, repeat-purchase rate, AOV, revenue from repeat purchases, CRR,
//! historical LTV, predicted CLV, revenue concentration and CAC.
//!
//! Definitions (all over local days, the period is `(as_of - period_days, as_of]`):
//! - *customers*: customers with a purchase in the period; *new*: their first purchase ever is
//!   in the period; *repeat*: they have a purchase in the period after their first purchase day.
//! - *AOV* = period revenue / won deals in the period.
//! - *repeat revenue*: revenue of the purchase days after each customer's first one.
//! - *CRR* = (active at period end - new) / active at period start, where *active* means a
//!   purchase within the last `sleeping_after_days` days.
//! - *historical LTV* = all revenue up to the analysis date / all customers.
//! - *concentration*: shares of the period revenue of the top 1, 3, 10 customers and of the top
//!   20% of the period's customers.
//! - *CAC* = marketing spend prorated to the period / new customers.
use super::abc_xyz::share_decimal;
use super::settings::Settings;
use super::{Core, date_of_day, day_of_date};
use jiff::civil::Date;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;

/// The figures period in local day numbers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Period {
    /// The day before the period (exclusive start).
    pub before: i64,
    /// The last day (the analysis date).
    pub end: i64,
    /// The activity window for CRR.
    pub active_days: i64,
}

impl Period {
    pub(crate) fn new(as_of_day: i64, s: &Settings) -> Period {
        Period {
            before: as_of_day - s.period_days as i64,
            end: as_of_day,
            active_days: s.sleeping_after_days as i64,
        }
    }

    fn contains(&self, day: i64) -> bool {
        day > self.before && day <= self.end
    }
}

/// A customer's contribution to the period figures.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CustomerFigures {
    pub revenue: Decimal,
    pub orders: u32,
    pub bought: bool,
    pub new: bool,
    pub repeat: bool,
    pub repeat_revenue: Decimal,
    pub active_start: bool,
    pub active_end: bool,
}

/// Computes a customer's period facts from its purchases `(ts, day, amount, deal)` and purchase
/// days `(day, amount)` (sorted).
pub(crate) fn customer(
    purchases: &[(i64, i64, Decimal, u32)],
    days: &[(i64, Decimal)],
    p: &Period,
    _s: &Settings,
) -> CustomerFigures {
    let first = days[0].0;
    let mut f = CustomerFigures {
        orders: purchases.iter().filter(|x| p.contains(x.1)).count() as u32,
        ..Default::default()
    };
    for &(day, amount) in days {
        if p.contains(day) {
            f.bought = true;
            f.revenue += amount;
            if day > first {
                f.repeat = true;
                f.repeat_revenue += amount;
            }
        }
        if day <= p.before && day > p.before - p.active_days {
            f.active_start = true;
        }
        if day <= p.end && day > p.end - p.active_days {
            f.active_end = true;
        }
    }
    f.new = p.contains(first);
    f
}

/// Revenue shares of the top customers of the period.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Concentration {
    /// Share of the largest customer.
    pub top1_share: f64,
    /// Share of the 3 largest.
    pub top3_share: f64,
    /// Share of the 10 largest.
    pub top10_share: f64,
    /// Share of the largest 20% of the period's customers (rounded up).
    pub top20pct_share: f64,
    /// How many customers the top 20% are.
    pub top20pct_customers: u64,
}

/// The business figures. Money in the portal currency; rates and shares as fractions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    /// First day of the period.
    pub period_start: Date,
    /// Last day of the period (the analysis date).
    pub period_end: Date,
    /// Customers with a purchase in the period.
    pub customers: u64,
    /// Of them, customers whose first purchase is in the period.
    pub new_customers: u64,
    /// Of them, customers with a repeat purchase in the period.
    pub repeat_customers: u64,
    /// repeat_customers / customers.
    pub repeat_purchase_rate: Option<f64>,
    /// Period revenue.
    pub revenue: Decimal,
    /// Won deals in the period.
    pub orders: u64,
    /// Average order value: revenue / orders.
    pub aov: Option<Decimal>,
    /// Period revenue of repeat purchases.
    pub repeat_revenue: Decimal,
    /// repeat_revenue / revenue.
    pub repeat_revenue_share: Option<f64>,
    /// Customers active (bought within `sleeping_after_days`) at the period start.
    pub active_at_start: u64,
    /// Customers active at the period end.
    pub active_at_end: u64,
    /// Customer retention rate (E - N) / S after domain.md, with the three counted on one
    /// footing: S = active at the period start, E = active at its end, N = customers new in
    /// the period *and* active at its end (a new customer who already went to sleep is in
    /// neither E nor N, so the rate cannot go negative through mismatched populations).
    pub crr: Option<f64>,
    /// Every customer up to the analysis date.
    pub customers_total: u64,
    /// All revenue up to the analysis date.
    pub revenue_total: Decimal,
    /// Historical LTV: revenue_total / customers_total.
    pub historical_ltv: Option<Decimal>,
    /// Sum of the predicted CLVs over `clv_horizon_days`.
    pub predicted_clv_total: Option<Decimal>,
    /// Mean predicted CLV.
    pub predicted_clv_mean: Option<Decimal>,
    /// Revenue concentration in the period.
    pub concentration: Concentration,
    /// Set when the top 3 bring at least `concentration_warn_top3_share`.
    pub concentration_warning: Option<String>,
    /// Marketing spend prorated to the period, when configured.
    pub marketing_spend: Option<Decimal>,
    /// Customer acquisition cost: marketing_spend / new_customers.
    pub cac: Option<Decimal>,
}

fn ratio(a: Decimal, b: Decimal) -> f64 {
    if b.is_zero() {
        0.0
    } else {
        (a / b).to_f64().unwrap_or(0.0)
    }
}

pub(crate) fn compute(
    cores: &[Core],
    p: &Period,
    s: &Settings,
    clv: Option<(Decimal, u64)>,
    warnings: &mut Vec<String>,
) -> Figures {
    let count = |f: fn(&Core) -> bool| cores.iter().filter(|c| f(c)).count() as u64;
    let customers = count(|c| c.fig.bought);
    let new_customers = count(|c| c.fig.new);
    let repeat_customers = count(|c| c.fig.repeat);
    let revenue: Decimal = cores.iter().map(|c| c.fig.revenue).sum();
    let orders: u64 = cores.iter().map(|c| c.fig.orders as u64).sum();
    let repeat_revenue: Decimal = cores.iter().map(|c| c.fig.repeat_revenue).sum();
    let active_at_start = count(|c| c.fig.active_start);
    let active_at_end = count(|c| c.fig.active_end);
    let new_and_active_at_end = count(|c| c.fig.new && c.fig.active_end);
    let revenue_total: Decimal = cores.iter().map(|c| c.revenue).sum();
    let customers_total = cores.len() as u64;

    let mut period_rev: Vec<Decimal> = cores
        .iter()
        .filter(|c| c.fig.bought)
        .map(|c| c.fig.revenue)
        .collect();
    period_rev.sort_unstable_by(|a, b| b.cmp(a));
    let top = |k: usize| ratio(period_rev.iter().take(k).sum(), revenue);
    let top20 = period_rev.len().div_ceil(5);
    let concentration = Concentration {
        top1_share: top(1),
        top3_share: top(3),
        top10_share: top(10),
        top20pct_share: top(top20),
        top20pct_customers: top20 as u64,
    };
    let limit = share_decimal(s.concentration_warn_top3_share);
    let top3: Decimal = period_rev.iter().take(3).sum();
    let concentration_warning = (revenue > Decimal::ZERO && top3 >= limit * revenue).then(|| {
        format!(
            "concentration: the top 3 customers bring {:.1}% of the period revenue (warning at {:.0}%)",
            concentration.top3_share * 100.0,
            s.concentration_warn_top3_share * 100.0
        )
    });
    if let Some(w) = &concentration_warning {
        warnings.push(w.clone());
    }

    let period_start = date_of_day(p.before + 1);
    let period_end = date_of_day(p.end);
    let marketing_spend = (!s.marketing_spend.is_empty()).then(|| {
        s.marketing_spend
            .iter()
            .map(|e| {
                let (from, to) = (day_of_date(e.from), day_of_date(e.to));
                let len = to - from + 1;
                let overlap = (to.min(p.end) - from.max(p.before + 1) + 1).max(0);
                if len <= 0 {
                    Decimal::ZERO
                } else {
                    e.amount * Decimal::from(overlap) / Decimal::from(len)
                }
            })
            .sum::<Decimal>()
            .round_dp(2)
    });
    let cac = marketing_spend
        .filter(|_| new_customers > 0)
        .map(|m| (m / Decimal::from(new_customers)).round_dp(2));
    Figures {
        period_start,
        period_end,
        customers,
        new_customers,
        repeat_customers,
        repeat_purchase_rate: (customers > 0).then(|| repeat_customers as f64 / customers as f64),
        revenue,
        orders,
        aov: (orders > 0).then(|| (revenue / Decimal::from(orders)).round_dp(2)),
        repeat_revenue,
        repeat_revenue_share: (revenue > Decimal::ZERO).then(|| ratio(repeat_revenue, revenue)),
        active_at_start,
        active_at_end,
        crr: (active_at_start > 0).then(|| {
            (active_at_end as f64 - new_and_active_at_end as f64) / active_at_start as f64
        }),
        customers_total,
        revenue_total,
        historical_ltv: (customers_total > 0)
            .then(|| (revenue_total / Decimal::from(customers_total)).round_dp(2)),
        predicted_clv_total: clv.map(|c| c.0),
        predicted_clv_mean: clv.map(|c| (c.0 / Decimal::from(c.1)).round_dp(2)),
        concentration,
        concentration_warning,
        marketing_spend,
        cac,
    }
}
