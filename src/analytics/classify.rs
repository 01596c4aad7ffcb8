//! Repeat detection and the per-customer pass. Every deal is classified *new* (unknown customer
//! or a contact created with the inquiry), *repeat* (the customer had a sale before this deal
//! was created) or *returning inquiry* (a known customer who never bought). For open deals this
//! is the routing decision the write-back acts on; [`classify_deal`] makes it for one incoming
//! deal using the identity index, without running the whole analysis.
//!
//! A sale in another currency without a rate still makes its customer a repeat customer (it is
//! a real purchase); it is only left out of the money figures.
use super::dataset::{CustomerKey, Dataset, DealRec, NONE};
use super::figures::{self, Period};
use super::settings::{PurchaseTime, Settings};
use super::{Core, abc_xyz, local_day};
use jiff::tz::TimeZone;
use rebuy_core::{Deal, DealId};
use rust_decimal::Decimal;
use serde::Serialize;

/// The routing class of a deal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DealClass {
    /// A new customer: route to the new-sales funnel.
    New,
    /// The customer bought before this deal was created: route to the repeat-sales funnel.
    Repeat,
    /// A known customer (earlier deal, or contact older than the inquiry) who never bought.
    ReturningInquiry,
}

impl DealClass {
    /// snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DealClass::New => "new",
            DealClass::Repeat => "repeat",
            DealClass::ReturningInquiry => "returning_inquiry",
        }
    }
}

/// A deal's class and customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DealClassification {
    /// The deal.
    pub deal_id: DealId,
    /// Its customer; `None` when the deal has neither contact nor company.
    pub customer: Option<CustomerKey>,
    /// The class.
    pub class: DealClass,
}

/// Settings resolved against a dataset (sale rule, currency, rates).
pub(crate) struct Ctx {
    pub currency: String,
    won: bool,
    /// Per interned pipeline: counts as a sales pipeline (all true without `sale_pipelines`).
    sale_pipeline: Vec<bool>,
    sale_stage: Vec<bool>,
    purchase_time: PurchaseTime,
    /// Per interned currency: the multiplier to the portal currency, `None` = no rate.
    rates: Vec<Option<Decimal>>,
    known_age_s: i64,
}

impl Ctx {
    pub(super) fn new(data: &Dataset, s: &Settings, warnings: &mut Vec<String>) -> Ctx {
        let mut sale_stage = vec![false; data.stages.len()];
        for st in &s.sale_stages {
            match data.stage_index.get(st) {
                Some(&i) => sale_stage[i as usize] = true,
                None => warnings.push(format!("sale stage {st:?} has no deals")),
            }
        }
        let sale_pipeline = data
            .pipelines
            .iter()
            .map(|p| s.sale_pipelines.is_empty() || s.sale_pipelines.contains(p))
            .collect();
        for p in &s.sale_pipelines {
            if !data.pipelines.contains(p) {
                warnings.push(format!("sale pipeline {p} has no deals"));
            }
        }
        let mut ctx = Ctx {
            currency: String::new(),
            won: s.won_is_sale,
            sale_pipeline,
            sale_stage,
            purchase_time: s.purchase_time,
            rates: Vec::new(),
            known_age_s: s.known_contact_min_age_hours as i64 * 3600,
        };
        ctx.currency = match &s.currency {
            Some(c) => c.trim().to_ascii_uppercase(),
            None => {
                // The currency of most sales; ties to the alphabetically first code.
                let mut counts = vec![0u64; data.currencies.len()];
                for d in data
                    .deals
                    .iter()
                    .filter(|d| d.currency != NONE && ctx.is_sale(d))
                {
                    counts[d.currency as usize] += 1;
                }
                let best = (0..counts.len())
                    .filter(|&i| counts[i] > 0)
                    .max_by(|&i, &j| {
                        counts[i]
                            .cmp(&counts[j])
                            .then(data.currencies[j].cmp(&data.currencies[i]))
                    });
                best.map_or_else(
                    || "RUB".to_string(),
                    |i| data.currencies[i].to_ascii_uppercase(),
                )
            }
        };
        ctx.rates = data
            .currencies
            .iter()
            .map(|c| {
                let c = c.trim().to_ascii_uppercase();
                if c == ctx.currency {
                    Some(Decimal::ONE)
                } else {
                    s.rates
                        .iter()
                        .find(|(k, _)| k.to_ascii_uppercase() == c)
                        .map(|(_, v)| *v)
                }
            })
            .collect();
        ctx
    }

    pub(super) fn is_sale(&self, d: &DealRec) -> bool {
        super::settings::sale_rule(
            self.won,
            d.state,
            self.sale_pipeline[d.pipeline as usize],
            self.sale_stage[d.stage as usize],
        )
    }

    pub(super) fn purchase_ts(&self, d: &DealRec) -> i64 {
        match self.purchase_time {
            PurchaseTime::Closed if d.closed_at != i64::MIN => d.closed_at,
            _ => d.created_at,
        }
    }

    /// The amount in the portal currency; `Err(currency index)` when there is no rate.
    fn money(&self, d: &DealRec) -> Result<Option<Decimal>, u32> {
        let Some(a) = d.amount() else { return Ok(None) };
        if d.currency == NONE {
            return Ok(Some(a));
        }
        match self.rates[d.currency as usize] {
            Some(rate) if rate == Decimal::ONE => Ok(Some(a)),
            Some(rate) => Ok(Some((a * rate).round_dp(2))),
            None => Err(d.currency),
        }
    }
}

/// Counts for the warnings of one pass.
#[derive(Default)]
pub(crate) struct Counters {
    left_out: Vec<u64>,
    no_amount: u64,
}

impl Counters {
    fn merge(&mut self, o: Counters) {
        if self.left_out.len() < o.left_out.len() {
            self.left_out.resize(o.left_out.len(), 0);
        }
        for (i, v) in o.left_out.into_iter().enumerate() {
            self.left_out[i] += v;
        }
        self.no_amount += o.no_amount;
    }

    pub(super) fn warn(&self, data: &Dataset, warnings: &mut Vec<String>) {
        let mut by_code: Vec<(String, u64)> = Vec::new();
        for (i, &n) in self.left_out.iter().enumerate() {
            if n > 0 {
                by_code.push((data.currencies[i].clone(), n));
            }
        }
        by_code.sort();
        warnings.extend(
            by_code
                .into_iter()
                .map(|(c, n)| format!("{n} deals in {c} left out: no rate configured")),
        );
        if self.no_amount > 0 {
            warnings.push(format!(
                "{} sales have no amount: counted as purchases with 0 revenue",
                self.no_amount
            ));
        }
    }
}

/// One pass over every customer (in parallel chunks of customers).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pass(
    data: &Dataset,
    settings: &Settings,
    ctx: &Ctx,
    as_of: i64,
    as_of_day: i64,
    tz: &TimeZone,
    period: &Period,
    keep_days: bool,
) -> (Vec<Core>, Vec<DealClassification>, Counters) {
    let groups = data.groups.len() as u32;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8) as u32;
    let threads = if groups < 10_000 { 1 } else { threads };
    let chunk = groups.div_ceil(threads).max(1);
    let results: Vec<(Vec<Core>, Vec<DealClassification>, Counters)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (a, b) = (t * chunk, ((t + 1) * chunk).min(groups));
                s.spawn(move || {
                    let mut w = Worker::new(data, settings, ctx, as_of, as_of_day, tz, period);
                    w.keep_days = keep_days;
                    for g in a..b {
                        w.customer(g);
                    }
                    (w.cores, w.classes, w.counters)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("analytics worker panicked"))
            .collect()
    });
    let mut cores = Vec::new();
    let mut classes = Vec::new();
    let mut counters = Counters::default();
    for (c, d, k) in results {
        cores.extend(c);
        classes.extend(d);
        counters.merge(k);
    }
    // Deals without contact and company: new, no customer.
    for d in data
        .deals
        .iter()
        .filter(|d| d.group == NONE && d.created_at <= as_of)
    {
        classes.push(DealClassification {
            deal_id: DealId(d.id),
            customer: None,
            class: DealClass::New,
        });
    }
    (cores, classes, counters)
}

struct Worker<'a> {
    data: &'a Dataset,
    settings: &'a Settings,
    ctx: &'a Ctx,
    as_of: i64,
    as_of_day: i64,
    tz: &'a TimeZone,
    period: &'a Period,
    cores: Vec<Core>,
    classes: Vec<DealClassification>,
    counters: Counters,
    purchases: Vec<(i64, i64, Decimal, u32)>,
    days: Vec<(i64, Decimal)>,
    gaps: Vec<f64>,
    /// Keep each customer's purchase days in its [`Core`] (the backtest needs them).
    keep_days: bool,
}

impl<'a> Worker<'a> {
    fn new(
        data: &'a Dataset,
        settings: &'a Settings,
        ctx: &'a Ctx,
        as_of: i64,
        as_of_day: i64,
        tz: &'a TimeZone,
        period: &'a Period,
    ) -> Self {
        Worker {
            data,
            settings,
            ctx,
            as_of,
            as_of_day,
            tz,
            period,
            cores: Vec::new(),
            classes: Vec::new(),
            counters: Counters {
                left_out: vec![0; data.currencies.len()],
                no_amount: 0,
            },
            purchases: Vec::new(),
            days: Vec::new(),
            gaps: Vec::new(),
            keep_days: false,
        }
    }

    fn customer(&mut self, g: u32) {
        let data = self.data;
        let group = &data.groups[g as usize];
        let deals = data.group_deals(g);
        if deals.is_empty() {
            return;
        }
        // Classification: the two earliest sales (a deal must not count itself).
        let mut min1 = (i64::MAX, u64::MAX);
        let mut min2 = (i64::MAX, u64::MAX);
        for d in deals.iter().filter(|d| self.ctx.is_sale(d)) {
            let k = (self.ctx.purchase_ts(d), d.id);
            if k < min1 {
                min2 = min1;
                min1 = k;
            } else if k < min2 {
                min2 = k;
            }
        }
        let first = &deals[0];
        for d in deals.iter().take_while(|d| d.created_at <= self.as_of) {
            let prior = if min1.1 == d.id { min2 } else { min1 };
            let known = (first.id != d.id && first.created_at < d.created_at)
                || group.first_seen.saturating_add(self.ctx.known_age_s) <= d.created_at;
            let class = if prior.0 < d.created_at {
                DealClass::Repeat
            } else if known {
                DealClass::ReturningInquiry
            } else {
                DealClass::New
            };
            self.classes.push(DealClassification {
                deal_id: DealId(d.id),
                customer: Some(group.key),
                class,
            });
        }
        // Purchases up to the analysis instant.
        self.purchases.clear();
        for (i, d) in deals.iter().enumerate() {
            if !self.ctx.is_sale(d) {
                continue;
            }
            let ts = self.ctx.purchase_ts(d);
            if ts > self.as_of {
                continue;
            }
            match self.ctx.money(d) {
                Ok(a) => {
                    if a.is_none() {
                        self.counters.no_amount += 1;
                    }
                    self.purchases.push((
                        ts,
                        local_day(ts, self.tz),
                        a.unwrap_or_default(),
                        i as u32,
                    ));
                }
                Err(c) => self.counters.left_out[c as usize] += 1,
            }
        }
        if self.purchases.is_empty() {
            return;
        }
        self.purchases
            .sort_unstable_by_key(|p| (p.0, deals[p.3 as usize].id));
        self.days.clear();
        for &(_, day, amount, _) in &self.purchases {
            match self.days.last_mut() {
                Some(last) if last.0 == day => last.1 += amount,
                _ => self.days.push((day, amount)),
            }
        }
        // Same-day purchases are one purchase, but the sort is by instant: days may repeat
        // out of order only across a DST change at midnight; merge defensively.
        self.days.sort_by_key(|d| d.0);
        self.days.dedup_by(|b, a| {
            if a.0 == b.0 {
                a.1 += b.1;
                true
            } else {
                false
            }
        });
        let first_day = self.days[0].0;
        let last_day = self.days[self.days.len() - 1].0;
        let revenue: Decimal = self.days.iter().map(|d| d.1).sum();
        self.gaps.clear();
        self.gaps
            .extend(self.days.windows(2).map(|w| (w[1].0 - w[0].0) as f64));
        let interval_cv = (self.gaps.len() >= 2).then(|| abc_xyz::cv(&self.gaps));
        let median_gap = (!self.gaps.is_empty()).then(|| abc_xyz::median(&mut self.gaps));
        let window_start = self.as_of_day - self.settings.xyz_window_days as i64;
        let window_purchases = self.days.iter().filter(|d| d.0 > window_start).count() as u32;
        // Consumption rules on the last purchase day: per rule, quantity x days per unit; the
        // earliest running-out product decides.
        let mut consumption_days: Option<f64> = None;
        let mut per_rule: Vec<(u16, f64)> = Vec::new();
        for &(_, day, _, i) in &self.purchases {
            let d = &deals[i as usize];
            if day != last_day || d.consumption == NONE {
                continue;
            }
            for &(rule, qty) in &data.consumption[d.consumption as usize] {
                let days = qty.to_string().parse::<f64>().unwrap_or(0.0)
                    * self
                        .settings
                        .consumption
                        .get(rule as usize)
                        .map_or(0.0, |r| r.days_per_unit);
                match per_rule.iter_mut().find(|r| r.0 == rule) {
                    Some(r) => r.1 += days,
                    None => per_rule.push((rule, days)),
                }
            }
        }
        for (_, days) in per_rule {
            if days > 0.0 {
                consumption_days = Some(consumption_days.map_or(days, |c: f64| c.min(days)));
            }
        }
        let fig = figures::customer(&self.purchases, &self.days, self.period, self.settings);
        self.cores.push(Core {
            group: g,
            first_day,
            last_day,
            n_days: self.days.len() as u32,
            deals: self.purchases.len() as u32,
            revenue,
            repeat_revenue: revenue - self.days[0].1,
            window_purchases,
            interval_cv,
            median_gap,
            consumption_days,
            litt: self.gaps.iter().map(|g| g.ln()).sum(),
            fig,
            days: if self.keep_days {
                self.days.iter().map(|d| d.0).collect()
            } else {
                Vec::new()
            },
        });
    }
}

/// Classifies one deal (typically an incoming one, maybe not yet in the dataset) against the
/// dataset: its customer is found through the identity index (main contact, else the first
/// linked contact; the company first in B2B), and only that customer's deals are read.
pub fn classify_deal(data: &Dataset, settings: &Settings, deal: &Deal) -> DealClassification {
    let mut sink = Vec::new();
    let ctx = Ctx::new_quiet(data, settings, &mut sink);
    let contact = deal
        .main_contact_id
        .or_else(|| deal.contact_ids.first().copied());
    let created = deal.created_at.as_second();
    let Some(g) = data.group_of(contact, deal.company_id) else {
        return DealClassification {
            deal_id: deal.id,
            customer: None,
            class: DealClass::New,
        };
    };
    let group = &data.groups[g as usize];
    let mut class = if group.first_seen.saturating_add(ctx.known_age_s) <= created {
        DealClass::ReturningInquiry
    } else {
        DealClass::New
    };
    for d in data.group_deals(g).iter().filter(|d| d.id != deal.id.0) {
        if ctx.is_sale(d) && ctx.purchase_ts(d) < created {
            class = DealClass::Repeat;
            break;
        }
        if d.created_at < created {
            class = DealClass::ReturningInquiry;
        }
    }
    DealClassification {
        deal_id: deal.id,
        customer: Some(group.key),
        class,
    }
}

impl Ctx {
    /// Like [`Ctx::new`] without the currency detection pass over all deals (a single deal's
    /// class does not depend on the currency).
    fn new_quiet(data: &Dataset, s: &Settings, warnings: &mut Vec<String>) -> Ctx {
        let settings = Settings {
            currency: Some(s.currency.clone().unwrap_or_else(|| "RUB".into())),
            ..s.clone()
        };
        Ctx::new(data, &settings, warnings)
    }
}
