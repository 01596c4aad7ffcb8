//! Proof of value: what the touches brought, treated against the control groups.
//!
//! - **Outcomes.** A touch is a playbook task the outbox sent (done); whether a manager
//!   completed it is read back from the CRM on sync (`sync::tasks::refresh_task_states`). A held-out
//!   customer has a virtual touch instead ([`crate::holdout`]), on the day the touch would have
//!   been. The outcome of either is whether the customer bought within `outcome_window_days`
//!   (default 30) from that day, and for how much.
//! - **Observations.** One per customer, scope (a rule, or every touch for the overall line)
//!   and calendar month: the customer's first touch of the scope in that month opens the
//!   window. The overall line compares customers with a real touch against the global
//!   holdout; a rule's line compares its touched customers against the customers held out of
//!   it (by the global holdout or its own). Observations whose window has not closed at the
//!   results instant are counted as awaiting, never as "did not buy".
//! - **Statistics** ([`compare`]): purchase rate and revenue per customer of each group; the
//!   incremental revenue per customer is the difference of the means with Welch's standard
//!   error and a 95% normal interval (times the treated customers: the incremental revenue);
//!   a comparison is "not enough data yet" while either group has fewer than
//!   [`MIN_GROUP`] observations, or while the interval holds 0 and the groups are smaller than
//!   what an 80%-power test of the observed effect (at least 10% of the holdout's revenue per
//!   customer) needs; the size needed is given.
use crate::config::PortalConfig;
use crate::holdout::VirtualTouch;
use crate::outbox::ActionState;
use crate::store::Store;
use crate::sync::tasks::is_touch_rule;
use anyhow::{Result, bail};
use jiff::Timestamp;
use jiff::civil::Date;
use rebuy_core::WriteOp;
use rust_decimal::{Decimal, MathematicalOps};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Fewer observations than this in a group: not enough data for the normal approximation.
pub const MIN_GROUP: u64 = 30;

/// A period of `rebuy results --period`: `2026-11`, `2026-Q4`, `2026` or `all`, as the local
/// dates `[from, to)`.
pub fn parse_period(s: &str) -> Result<Option<(Date, Date)>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    let bad = || {
        anyhow::anyhow!(
            "--period {s:?}: expected a month (2026-11), a quarter (2026-Q4), a year (2026) or all"
        )
    };
    let year = |y: &str| -> Result<i16> {
        y.parse::<i16>()
            .ok()
            .filter(|y| (1900..=9999).contains(y))
            .ok_or_else(bad)
    };
    let span = |y: i16, m: i8, months: i8| -> Result<Option<(Date, Date)>> {
        let from = Date::new(y, m, 1).map_err(|_| bad())?;
        let to = from
            .checked_add(jiff::Span::new().months(months))
            .map_err(|_| bad())?;
        Ok(Some((from, to)))
    };
    match s.split_once('-') {
        None => span(year(s)?, 1, 12),
        Some((y, q)) if q.starts_with(['Q', 'q']) => {
            let q: i8 = q[1..]
                .parse()
                .ok()
                .filter(|q| (1..=4).contains(q))
                .ok_or_else(bad)?;
            span(year(y)?, (q - 1) * 3 + 1, 3)
        }
        Some((y, m)) => {
            let m: i8 = m
                .parse()
                .ok()
                .filter(|m| (1..=12).contains(m))
                .ok_or_else(bad)?;
            span(year(y)?, m, 1)
        }
    }
}

/// One group of a comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Group {
    /// Observations (customer-months) whose outcome window has closed.
    pub customers: u64,
    /// Of them, those who bought within the window.
    pub buyers: u64,
    /// `buyers / customers` (0..1).
    pub purchase_rate: Decimal,
    /// Revenue within the windows.
    pub revenue: Decimal,
    /// `revenue / customers`.
    pub revenue_per_customer: Decimal,
    /// Treated: observations whose task a manager completed.
    pub completed: u64,
    /// Observations whose window is still open (not counted above).
    pub awaiting: u64,
}

/// What a comparison says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The interval is above 0.
    Uplift,
    /// The interval holds 0 and the groups were large enough to see the effect.
    NoUplift,
    /// The interval is below 0.
    Negative,
    /// Too few observations: at least this many per group are needed (treated, holdout);
    /// `None` when no size would do (no spread, no revenue to measure against).
    NotEnoughData {
        /// Treated observations needed.
        treated_needed: Option<u64>,
        /// Holdout observations needed.
        holdout_needed: Option<u64>,
    },
}

/// Treated against holdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Purchase rate difference (treated - holdout).
    pub rate_diff: Decimal,
    /// Its 95% interval.
    pub rate_interval: (Decimal, Decimal),
    /// Revenue per customer, treated - holdout.
    pub revenue_diff: Decimal,
    /// Its 95% interval.
    pub revenue_interval: (Decimal, Decimal),
    /// Welch's standard error of `revenue_diff`.
    pub standard_error: Decimal,
    /// Incremental revenue: `revenue_diff` x treated customers.
    pub incremental_revenue: Decimal,
    /// Its 95% interval.
    pub incremental_interval: (Decimal, Decimal),
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// The 97.5% normal quantile (two-sided 95%).
const Z_95: Decimal = Decimal::from_parts(196, 0, 0, false, 2);
/// The 80% normal quantile (power 80%).
const Z_80: Decimal = Decimal::from_parts(8416, 0, 0, false, 4);

fn mean_var(xs: &[Decimal]) -> (Decimal, Decimal) {
    if xs.is_empty() {
        return (Decimal::ZERO, Decimal::ZERO);
    }
    let n = Decimal::from(xs.len());
    let mean = xs.iter().sum::<Decimal>() / n;
    if xs.len() < 2 {
        return (mean, Decimal::ZERO);
    }
    let ss: Decimal = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
    (mean, ss / (n - Decimal::ONE))
}

/// Difference of means with Welch's standard error: (diff, se).
fn welch(t: &[Decimal], h: &[Decimal]) -> (Decimal, Decimal, Decimal, Decimal) {
    let (mt, vt) = mean_var(t);
    let (mh, vh) = mean_var(h);
    let nt = Decimal::from(t.len().max(1));
    let nh = Decimal::from(h.len().max(1));
    let se = (vt / nt + vh / nh).sqrt().unwrap_or_default();
    (mt - mh, se, vt, vh)
}

/// Compares treated and holdout outcomes (revenue per observation; a purchase is revenue
/// above 0 or a flag in `bought`).
pub fn compare(
    treated: &[Decimal],
    treated_bought: &[bool],
    holdout: &[Decimal],
    holdout_bought: &[bool],
) -> Comparison {
    let (diff, se, vt, vh) = welch(treated, holdout);
    let ones = |b: &[bool]| -> Vec<Decimal> {
        b.iter()
            .map(|x| if *x { Decimal::ONE } else { Decimal::ZERO })
            .collect()
    };
    let (rdiff, rse, _, _) = welch(&ones(treated_bought), &ones(holdout_bought));
    let (lo, hi) = (diff - Z_95 * se, diff + Z_95 * se);
    let nt = treated.len() as u64;
    let nh = holdout.len() as u64;
    let n_t = Decimal::from(nt);
    // Size for 80% power at the observed effect, but at least 10% of the holdout's revenue
    // per customer (a tiny observed effect would ask for millions), at the current
    // treated/holdout ratio.
    let (mh, _) = mean_var(holdout);
    let effect = diff.max(mh / Decimal::TEN);
    let needed = if effect > Decimal::ZERO && nh > 0 && (vt + vh) > Decimal::ZERO {
        let ratio = Decimal::from(nt.max(1)) / Decimal::from(nh);
        let k = (Z_95 + Z_80) * (Z_95 + Z_80);
        let nh_needed = (k * (vt / ratio + vh) / (effect * effect)).ceil();
        let nh_needed = nh_needed
            .to_string()
            .parse::<u64>()
            .ok()
            .map(|n| n.max(MIN_GROUP));
        nh_needed.map(|n| {
            let t = (Decimal::from(n) * ratio).ceil();
            (
                t.to_string()
                    .parse::<u64>()
                    .unwrap_or(u64::MAX)
                    .max(MIN_GROUP),
                n,
            )
        })
    } else {
        None
    };
    let verdict = if nt < MIN_GROUP || nh < MIN_GROUP {
        Verdict::NotEnoughData {
            treated_needed: Some(needed.map_or(MIN_GROUP, |n| n.0)),
            holdout_needed: Some(needed.map_or(MIN_GROUP, |n| n.1)),
        }
    } else if lo > Decimal::ZERO {
        Verdict::Uplift
    } else if hi < Decimal::ZERO {
        Verdict::Negative
    } else {
        match needed {
            Some((t, h)) if nt < t || nh < h => Verdict::NotEnoughData {
                treated_needed: Some(t),
                holdout_needed: Some(h),
            },
            Some(_) => Verdict::NoUplift,
            None if se == Decimal::ZERO => Verdict::NotEnoughData {
                treated_needed: None,
                holdout_needed: None,
            },
            None => Verdict::NoUplift,
        }
    };
    let money = |d: Decimal| d.round_dp(2);
    let share = |d: Decimal| d.round_dp(4);
    Comparison {
        rate_diff: share(rdiff),
        rate_interval: (share(rdiff - Z_95 * rse), share(rdiff + Z_95 * rse)),
        revenue_diff: money(diff),
        revenue_interval: (money(lo), money(hi)),
        standard_error: money(se),
        incremental_revenue: money(diff * n_t),
        incremental_interval: (money(lo * n_t), money(hi * n_t)),
        verdict,
    }
}

/// One line of the results: a rule, or every touch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    /// `playbook.rule`, or `overall`.
    pub rule: String,
    /// Customers touched.
    pub treated: Group,
    /// Customers held out.
    pub holdout: Group,
    /// The comparison.
    pub comparison: Comparison,
}

/// `rebuy results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Results {
    /// Portal.
    pub portal: String,
    /// The results instant.
    pub as_of: Timestamp,
    /// Touches of this period only (`2026-11`), or all.
    pub period: String,
    /// The outcome window, days.
    pub window_days: u32,
    /// Every touch, against the global holdout.
    pub overall: Line,
    /// Per rule.
    pub rules: Vec<Line>,
}

/// One touch, real or virtual.
#[derive(Debug, Clone)]
pub struct Touch {
    /// Rule.
    pub rule: String,
    /// Customer key text.
    pub customer: String,
    /// Local day.
    pub day: Date,
    /// Real (sent) or held out.
    pub treated: bool,
    /// Held out by the global holdout (virtual touches).
    pub global: bool,
    /// A manager completed the task (real touches).
    pub completed: bool,
}

/// The touches of a store: the sent playbook tasks (with the touches merged into them) and
/// the virtual touches.
pub fn touches(store: &Store, tz: &jiff::tz::TimeZone) -> Result<Vec<Touch>> {
    let entries = store.outbox_all()?;
    let states = store.task_outcomes()?;
    let mut out = Vec::new();
    for e in entries {
        if !matches!(e.state, ActionState::Done { .. }) || !is_touch_rule(&e.action.rule) {
            continue;
        }
        let WriteOp::CreateTask { due, .. } = &e.action.op else {
            continue;
        };
        let day = due.to_zoned(tz.clone()).date();
        let completed = states.get(&e.action.key).is_some_and(|s| s.completed);
        // A merged touch was carried out by the task it joined.
        for k in std::iter::once(&e.action.key).chain(e.action.merged.iter()) {
            let Some(rule) = k.split('/').nth(1) else {
                continue;
            };
            if !is_touch_rule(rule) {
                continue;
            }
            out.push(Touch {
                rule: rule.to_owned(),
                customer: e.action.customer.clone(),
                day,
                treated: true,
                global: false,
                completed,
            });
        }
    }
    for v in store.virtual_touches()? {
        let VirtualTouch {
            rule,
            customer,
            day,
            global,
            ..
        } = v;
        out.push(Touch {
            rule,
            customer,
            day,
            treated: false,
            global,
            completed: false,
        });
    }
    Ok(out)
}

/// A customer's purchases: (local day, amount), oldest first.
pub type Purchases = HashMap<String, Vec<(Date, Decimal)>>;

/// Computes the results from touches and purchases (pure).
#[allow(clippy::too_many_arguments)]
pub fn compute(
    portal: &str,
    as_of: Timestamp,
    as_of_date: Date,
    period: Option<(Date, Date)>,
    period_label: &str,
    window_days: u32,
    touches: &[Touch],
    purchases: &Purchases,
) -> Results {
    // (scope, treated, customer, year, month) -> (first day, completed, global)
    let mut obs: BTreeMap<(String, bool, &str, i16, i8), (Date, bool)> = BTreeMap::new();
    for t in touches {
        if period.is_some_and(|(from, to)| t.day < from || t.day >= to) {
            continue;
        }
        let mut put = |scope: &str| {
            let k = (
                scope.to_owned(),
                t.treated,
                t.customer.as_str(),
                t.day.year(),
                t.day.month(),
            );
            let e = obs.entry(k).or_insert((t.day, t.completed));
            if t.day < e.0 {
                *e = (t.day, t.completed);
            }
        };
        put(&t.rule);
        if t.treated || t.global {
            put("");
        }
    }
    let window = i64::from(window_days);
    #[derive(Default)]
    struct Acc {
        t: (Vec<Decimal>, Vec<bool>, u64, u64),
        h: (Vec<Decimal>, Vec<bool>, u64),
    }
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    for ((scope, treated, customer, _, _), (day, completed)) in obs {
        let a = acc.entry(scope).or_default();
        let end = day
            .checked_add(jiff::Span::new().days(window))
            .unwrap_or(Date::MAX);
        if end > as_of_date {
            if treated {
                a.t.3 += 1;
            } else {
                a.h.2 += 1;
            }
            continue;
        }
        let (mut revenue, mut bought) = (Decimal::ZERO, false);
        for (d, amount) in purchases.get(customer).map(Vec::as_slice).unwrap_or(&[]) {
            if *d >= day && *d < end {
                revenue += *amount;
                bought = true;
            }
        }
        if treated {
            a.t.0.push(revenue);
            a.t.1.push(bought);
            a.t.2 += u64::from(completed);
        } else {
            a.h.0.push(revenue);
            a.h.1.push(bought);
        }
    }
    let group = |rev: &[Decimal], bought: &[bool], completed: u64, awaiting: u64| {
        let n = rev.len() as u64;
        let buyers = bought.iter().filter(|b| **b).count() as u64;
        let revenue: Decimal = rev.iter().sum();
        let per = |x: Decimal| {
            if n == 0 {
                Decimal::ZERO
            } else {
                x / Decimal::from(n)
            }
        };
        Group {
            customers: n,
            buyers,
            purchase_rate: per(Decimal::from(buyers)).round_dp(4),
            revenue: revenue.round_dp(2),
            revenue_per_customer: per(revenue).round_dp(2),
            completed,
            awaiting,
        }
    };
    let mut lines: Vec<Line> = acc
        .into_iter()
        .map(|(scope, a)| Line {
            rule: if scope.is_empty() {
                "overall".into()
            } else {
                scope
            },
            treated: group(&a.t.0, &a.t.1, a.t.2, a.t.3),
            holdout: group(&a.h.0, &a.h.1, 0, a.h.2),
            comparison: compare(&a.t.0, &a.t.1, &a.h.0, &a.h.1),
        })
        .collect();
    let overall = match lines.iter().position(|l| l.rule == "overall") {
        Some(i) => lines.remove(i),
        None => Line {
            rule: "overall".into(),
            treated: Group::default(),
            holdout: Group::default(),
            comparison: compare(&[], &[], &[], &[]),
        },
    };
    Results {
        portal: portal.to_owned(),
        as_of,
        period: period_label.to_owned(),
        window_days,
        overall,
        rules: lines,
    }
}

/// The results of a portal from its cache at `as_of`: the touches, the control groups'
/// virtual touches, and the purchases of the cached deals.
pub fn portal_results(
    store: &Store,
    portal: &PortalConfig,
    as_of: Timestamp,
    period: Option<&str>,
) -> Result<Results> {
    let mapping = crate::playbooks::mapping::parse(&portal.mapping)
        .map_err(|(k, e)| anyhow::anyhow!("portal {}: [portal.mapping] {k}: {e}", portal.id))?;
    if mapping.outcome_window_days == 0 {
        bail!(
            "portal {}: outcome_window_days must be at least 1",
            portal.id
        );
    }
    let span = period.map(parse_period).transpose()?.flatten();
    let label = match (period, span) {
        (_, None) => "all".to_owned(),
        (Some(p), Some(_)) => p.trim().to_owned(),
        (None, Some(_)) => "all".to_owned(),
    };
    let tz = &portal.time_zone;
    let (_, analysis) = crate::analyse::analyse_portal(store, portal, Some(as_of))?;
    let (facts, _) =
        crate::writeback::load_facts(store, portal, &analysis, &crate::playbooks::Rules::empty())?;
    let mut purchases: Purchases = HashMap::with_capacity(analysis.customers.len());
    for (row, f) in analysis.customers.iter().zip(&facts) {
        purchases.insert(
            row.key.to_string(),
            f.sales.iter().map(|s| (s.day, s.amount)).collect(),
        );
    }
    let touches = touches(store, tz)?;
    Ok(compute(
        &portal.id.0,
        as_of,
        as_of.to_zoned(tz.clone()).date(),
        span,
        &label,
        mapping.outcome_window_days,
        &touches,
        &purchases,
    ))
}

impl Results {
    /// The results as a table, for people.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "portal {}: results as of {} (touches of {}, outcome window {} days)",
            self.portal, self.as_of, self.period, self.window_days
        );
        let _ = writeln!(
            out,
            "{:<36} {:>8} {:>8} {:>7} {:>7} {:>11} {:>11} {:>24} {:>26}  verdict",
            "rule",
            "treated",
            "holdout",
            "rate T",
            "rate H",
            "rev/cust T",
            "rev/cust H",
            "incr. rev/cust (95%)",
            "incremental revenue (95%)"
        );
        for l in std::iter::once(&self.overall).chain(&self.rules) {
            let c = &l.comparison;
            let pct = |d: Decimal| format!("{:.1}%", d * Decimal::ONE_HUNDRED);
            let verdict = match &c.verdict {
                Verdict::Uplift => "uplift".to_owned(),
                Verdict::NoUplift => "no uplift".to_owned(),
                Verdict::Negative => "negative".to_owned(),
                Verdict::NotEnoughData {
                    treated_needed,
                    holdout_needed,
                } => match (treated_needed, holdout_needed) {
                    (Some(t), Some(h)) => {
                        format!("not enough data yet (needs {t} treated, {h} holdout)")
                    }
                    _ => "not enough data yet".to_owned(),
                },
            };
            let _ = writeln!(
                out,
                "{:<36} {:>8} {:>8} {:>7} {:>7} {:>11} {:>11} {:>24} {:>26}  {}",
                l.rule,
                l.treated.customers,
                l.holdout.customers,
                pct(l.treated.purchase_rate),
                pct(l.holdout.purchase_rate),
                l.treated.revenue_per_customer,
                l.holdout.revenue_per_customer,
                format!(
                    "{} [{}; {}]",
                    c.revenue_diff, c.revenue_interval.0, c.revenue_interval.1
                ),
                format!(
                    "{} [{}; {}]",
                    c.incremental_revenue, c.incremental_interval.0, c.incremental_interval.1
                ),
                verdict
            );
        }
        let awaiting = self.overall.treated.awaiting + self.overall.holdout.awaiting;
        if awaiting > 0 {
            let _ = writeln!(
                out,
                "{awaiting} customer-month(s) still inside their outcome window are not counted yet"
            );
        }
        let _ = writeln!(
            out,
            "tasks completed by managers: {} of {} treated",
            self.overall.treated.completed, self.overall.treated.customers
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use rust_decimal_macros::dec;

    fn d(xs: &[i64]) -> Vec<Decimal> {
        xs.iter().map(|x| Decimal::from(*x)).collect()
    }

    #[test]
    fn welch_matches_the_hand_computation() {
        // Treated 2, 4, 6: mean 4, variance 4. Holdout 1, 3: mean 2, variance 2.
        // SE = sqrt(4/3 + 2/2) = sqrt(7/3) = 1.527525; interval 2 -+ 1.96 x 1.527525.
        let t = d(&[2, 4, 6]);
        let h = d(&[1, 3]);
        let c = compare(&t, &[true; 3], &h, &[true; 2]);
        assert_eq!(c.revenue_diff, dec!(2));
        assert_eq!(c.standard_error, dec!(1.53));
        assert_eq!(c.revenue_interval, (dec!(-0.99), dec!(4.99)));
        // Incremental revenue over the 3 treated: 6 [-2.98; 14.98].
        assert_eq!(c.incremental_revenue, dec!(6));
        assert_eq!(c.incremental_interval, (dec!(-2.98), dec!(14.98)));
        assert!(matches!(c.verdict, Verdict::NotEnoughData { .. }));
    }

    #[test]
    fn a_clear_difference_is_an_uplift_and_none_is_no_uplift() {
        // 100 treated: 60 bought for 1,000. 100 held out: 20 bought for 1,000.
        let t: Vec<Decimal> = (0..100)
            .map(|i| if i < 60 { dec!(1000) } else { dec!(0) })
            .collect();
        let h: Vec<Decimal> = (0..100)
            .map(|i| if i < 20 { dec!(1000) } else { dec!(0) })
            .collect();
        let tb: Vec<bool> = t.iter().map(|x| *x > dec!(0)).collect();
        let hb: Vec<bool> = h.iter().map(|x| *x > dec!(0)).collect();
        let c = compare(&t, &tb, &h, &hb);
        // diff 400; var_t = 100*0.6*0.4*1e6/99, var_h = 100*0.2*0.8*1e6/99:
        // SE = sqrt((242424.24 + 161616.16)/100) = 63.56.
        assert_eq!(c.revenue_diff, dec!(400));
        assert_eq!(c.standard_error, dec!(63.56));
        assert_eq!(c.rate_diff, dec!(0.4));
        assert_eq!(c.verdict, Verdict::Uplift);
        assert_eq!(c.incremental_revenue, dec!(40000));
        // The same outcomes on both sides: no uplift, the interval is symmetric around 0.
        let c = compare(&h, &hb, &h, &hb);
        assert_eq!(c.revenue_diff, dec!(0));
        assert_eq!(c.revenue_interval.0, -c.revenue_interval.1);
        // Power for 10% of 200 = 20 per customer: (1.96+0.8416)^2 x (2 x 161616) / 400 =
        // 6343 per group; 100 are too few.
        assert_eq!(
            c.verdict,
            Verdict::NotEnoughData {
                treated_needed: Some(6343),
                holdout_needed: Some(6343)
            }
        );
        // Fewer treated than the minimum: not enough data, whatever the means.
        let c = compare(&t[..10], &tb[..10], &h, &hb);
        assert!(matches!(c.verdict, Verdict::NotEnoughData { .. }));
    }

    #[test]
    fn periods_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_period("2026-11").unwrap(),
            Some((date(2026, 11, 1), date(2026, 12, 1)))
        );
        assert_eq!(
            parse_period("2026-Q4").unwrap(),
            Some((date(2026, 10, 1), date(2027, 1, 1)))
        );
        assert_eq!(
            parse_period("2026").unwrap(),
            Some((date(2026, 1, 1), date(2027, 1, 1)))
        );
        assert_eq!(parse_period("all").unwrap(), None);
        for bad in ["2026-13", "2026-Q5", "last month", "26"] {
            let e = parse_period(bad).unwrap_err().to_string();
            assert!(e.contains("--period") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn outcomes_count_purchases_in_the_window_from_the_first_touch_of_the_month() {
        let touch = |rule: &str, c: &str, day: Date, treated: bool| Touch {
            rule: rule.into(),
            customer: c.into(),
            day,
            treated,
            global: !treated,
            completed: treated,
        };
        let touches = vec![
            touch("pb.a", "contact:1", date(2026, 3, 2), true),
            // A second touch of the month: the window still opens on the first.
            touch("pb.b", "contact:1", date(2026, 3, 20), true),
            touch("pb.a", "contact:2", date(2026, 3, 2), false),
            // Window not closed at the results date: awaiting.
            touch("pb.a", "contact:3", date(2026, 4, 20), true),
        ];
        let mut purchases = Purchases::new();
        // Inside contact 1's window (day 29 of 30) and one after it.
        purchases.insert(
            "contact:1".into(),
            vec![
                (date(2026, 3, 31), dec!(1500)),
                (date(2026, 4, 1), dec!(900)),
            ],
        );
        // Before contact 2's touch: not its outcome.
        purchases.insert("contact:2".into(), vec![(date(2026, 3, 1), dec!(700))]);
        let r = compute(
            "shop",
            Timestamp::UNIX_EPOCH,
            date(2026, 5, 1),
            None,
            "all",
            30,
            &touches,
            &purchases,
        );
        assert_eq!(r.overall.treated.customers, 1);
        assert_eq!(r.overall.treated.awaiting, 1);
        assert_eq!(r.overall.treated.revenue, dec!(1500));
        assert_eq!(r.overall.treated.completed, 1);
        assert_eq!(r.overall.holdout.customers, 1);
        assert_eq!(r.overall.holdout.buyers, 0);
        let b = r.rules.iter().find(|l| l.rule == "pb.b").unwrap();
        // pb.b's own window (03-20 .. 04-19) holds both purchases.
        assert_eq!(b.treated.revenue, dec!(2400));
        // A period filter keeps April's touches only.
        let r = compute(
            "shop",
            Timestamp::UNIX_EPOCH,
            date(2026, 6, 1),
            parse_period("2026-04").unwrap(),
            "2026-04",
            30,
            &touches,
            &purchases,
        );
        assert_eq!(r.overall.treated.customers, 1);
        assert_eq!(r.overall.holdout.customers, 0);
    }
}
