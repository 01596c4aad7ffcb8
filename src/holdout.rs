//! Control groups: who gets no touch, so `rebuy results` can show what the touches brought.
//!
//! - The **global holdout** (`[portal.mapping] holdout_percent`, default 5, 0 = off): these
//!   customers get no playbook touch and no funnel move. Repeat-lead routing is not held out:
//!   a repeat lead is the customer's own request, and leaving it unanswered would measure a
//!   lost sale, not the value of a touch. Segment fields are written for everyone (they
//!   describe the customer; they are not a contact).
//! - A rule's **own holdout** (`holdout_percent` on a playbook rule): these customers get no
//!   touch of that rule, and every other touch.
//!
//! Who is held out is a salted hash of portal, scope (`global` or the rule), period and
//! customer: deterministic, nothing to lose. The draw is **stratified by RFM cell**: within
//! each (R, F, M) cell the customers are ranked by the hash and the first `n x percent / 100`
//! are held out (the fraction rounded up or down by a hash of the cell), so every cell, from
//! champions to the lost, holds out its share and the groups compare like with like.
//!
//! The groups are **re-drawn** every period of `holdout_redraw` (monthly by default: the salt
//! holds the period, `2026-12`), so no customer stays untouched for long. A period's draw is
//! kept in the cache when a plan is committed (the history of who was in which group), and
//! reused for the rest of the period, so the groups do not shift as cells change day by day;
//! a customer whose first purchase came after the draw is assigned by the hash alone.
//!
//! A held-out customer gets a **virtual touch** where the touch would have been (the same
//! idempotency key, its day), kept in the cache with the committed plan: `rebuy results`
//! measures the holdout's purchases from the same day a treated customer's are measured.
use crate::analytics::CustomerRow;
use crate::store::tables::{HOLDOUT_DRAWS, VIRTUAL_TOUCHES};
use crate::store::{Store, StoreError};
use jiff::civil::Date;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How often the control groups are drawn anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Redraw {
    /// One draw for ever.
    Never,
    /// Every calendar month (as Mindbox does).
    #[default]
    Monthly,
    /// Every calendar quarter.
    Quarterly,
    /// Every calendar year.
    Yearly,
}

/// The period of a local date under a schedule: `all`, `2026-12`, `2026-Q4`, `2026`.
pub fn period_of(date: Date, redraw: Redraw) -> String {
    match redraw {
        Redraw::Never => "all".into(),
        Redraw::Monthly => format!("{:04}-{:02}", date.year(), date.month()),
        Redraw::Quarterly => format!("{:04}-Q{}", date.year(), (date.month() - 1) / 3 + 1),
        Redraw::Yearly => format!("{:04}", date.year()),
    }
}

/// The control groups a portal asks for (resolved from the mapping and the playbooks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldoutSpec {
    /// Global holdout, percent of the customers (0 = off).
    pub percent: u32,
    /// Re-draw schedule.
    pub redraw: Redraw,
    /// Rules (`playbook.rule`) with their own holdout, percent.
    pub rules: BTreeMap<String, u32>,
}

impl Default for HoldoutSpec {
    fn default() -> Self {
        Self {
            percent: 5,
            redraw: Redraw::Monthly,
            rules: BTreeMap::new(),
        }
    }
}

impl HoldoutSpec {
    /// No control group at all.
    pub fn off() -> Self {
        Self {
            percent: 0,
            redraw: Redraw::Monthly,
            rules: BTreeMap::new(),
        }
    }

    /// Whether any group is asked for.
    pub fn active(&self) -> bool {
        self.percent > 0 || !self.rules.is_empty()
    }
}

/// One period's control groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draw {
    /// Portal (part of the salt).
    pub portal: String,
    /// Period (`2026-12`).
    pub period: String,
    /// Local date of the draw: customers who first bought later are assigned by hash alone.
    pub drawn_on: Date,
    /// Global holdout percent the draw was made with.
    pub percent: u32,
    /// Customers held out of every touch.
    pub global: BTreeSet<String>,
    /// Per-rule percents the draw was made with.
    pub rule_percent: BTreeMap<String, u32>,
    /// Customers held out of one rule, by rule.
    pub rules: BTreeMap<String, BTreeSet<String>>,
}

/// FNV-1a over the parts (separated), then the splitmix64 finaliser: stable across runs and
/// platforms, and well spread in every bit (FNV alone is not, for near-identical keys).
fn salted_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.as_bytes().iter().chain(std::iter::once(&0x1f)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether the hash alone puts a customer in a `percent` group (customers newer than the draw).
fn by_hash(portal: &str, scope: &str, period: &str, customer: &str, percent: u32) -> bool {
    salted_hash(&[portal, scope, period, customer]) % 10_000 < u64::from(percent) * 100
}

/// The stratified draw of one scope: per RFM cell, the `n x percent / 100` customers with the
/// smallest hash (the fraction rounded by the cell's own hash, so small cells hold out their
/// share on average).
fn draw_scope(
    portal: &str,
    scope: &str,
    period: &str,
    customers: &[(String, (u8, u8, u8))],
    percent: u32,
) -> BTreeSet<String> {
    let mut cells: BTreeMap<(u8, u8, u8), Vec<(u64, &str)>> = BTreeMap::new();
    for (c, cell) in customers {
        cells
            .entry(*cell)
            .or_default()
            .push((salted_hash(&[portal, scope, period, c]), c.as_str()));
    }
    let mut out = BTreeSet::new();
    for ((r, f, m), mut list) in cells {
        list.sort_unstable();
        let scaled = list.len() as u64 * u64::from(percent.min(100));
        let (whole, rest) = (scaled / 100, scaled % 100);
        let cell = format!("cell:{r}{f}{m}");
        let extra = u64::from(salted_hash(&[portal, scope, period, &cell]) % 100 < rest);
        out.extend(
            list.iter()
                .take((whole + extra) as usize)
                .map(|(_, c)| (*c).to_owned()),
        );
    }
    out
}

impl Draw {
    /// Draws the groups of `period` over `customers` (the analysis rows at the draw).
    pub fn new(
        portal: &str,
        spec: &HoldoutSpec,
        period: &str,
        drawn_on: Date,
        customers: &[CustomerRow],
    ) -> Self {
        let keyed: Vec<(String, (u8, u8, u8))> = customers
            .iter()
            .filter(|c| c.first_purchase <= drawn_on)
            .map(|c| (c.key.to_string(), (c.r, c.f, c.m)))
            .collect();
        let global = if spec.percent > 0 {
            draw_scope(portal, "global", period, &keyed, spec.percent)
        } else {
            BTreeSet::new()
        };
        let rules = spec
            .rules
            .iter()
            .map(|(rule, p)| (rule.clone(), draw_scope(portal, rule, period, &keyed, *p)))
            .collect();
        Self {
            portal: portal.to_owned(),
            period: period.to_owned(),
            drawn_on,
            percent: spec.percent,
            global,
            rule_percent: spec.rules.clone(),
            rules,
        }
    }

    /// Whether this draw was made for `period` with the percents of `spec` (a changed config
    /// draws anew).
    pub fn fits(&self, spec: &HoldoutSpec, portal: &str, period: &str) -> bool {
        self.portal == portal
            && self.period == period
            && self.percent == spec.percent
            && self.rule_percent == spec.rules
    }

    /// Whether the customer (key text, first purchase day) is in the global holdout.
    pub fn global_held(&self, customer: &str, first_purchase: Date) -> bool {
        if self.percent == 0 {
            return false;
        }
        if first_purchase > self.drawn_on {
            return by_hash(&self.portal, "global", &self.period, customer, self.percent);
        }
        self.global.contains(customer)
    }

    /// Whether the customer is in `rule`'s own holdout.
    pub fn rule_held(&self, rule: &str, customer: &str, first_purchase: Date) -> bool {
        let Some(p) = self.rule_percent.get(rule) else {
            return false;
        };
        if first_purchase > self.drawn_on {
            return by_hash(&self.portal, rule, &self.period, customer, *p);
        }
        self.rules.get(rule).is_some_and(|s| s.contains(customer))
    }
}

/// A touch not made because its customer is held out: when and what it would have been.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualTouch {
    /// The key the touch would have had.
    pub key: String,
    /// Its rule (`playbook.rule`).
    pub rule: String,
    /// The customer.
    pub customer: String,
    /// The local day it would have been due.
    pub day: Date,
    /// Held out by the global holdout (else by the rule's own).
    pub global: bool,
    /// The draw's period.
    pub period: String,
}

/// How many a plan held out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeldOut {
    /// The draw's period (empty when no control group is configured).
    pub period: String,
    /// Customers of the base in the global holdout.
    pub customers: u64,
    /// Touches not planned because their customer is held out (globally or by the rule).
    pub touches: u64,
    /// Distinct customers who lost at least one touch to a holdout in this plan.
    pub touched_customers: u64,
    /// Funnel moves and creations not planned for globally held-out customers.
    pub funnel: u64,
    /// Touches held out per rule.
    pub by_rule: BTreeMap<String, u64>,
}

impl HeldOut {
    /// What the control groups held out, for people (empty when no group is configured).
    pub fn lines(&self) -> Vec<String> {
        if self.period.is_empty() {
            return Vec::new();
        }
        let mut out = vec![format!(
            "held out ({}): {} customer(s) in the control group; {} touch(es) of {} customer(s) not planned{}",
            self.period,
            self.customers,
            self.touches,
            self.touched_customers,
            if self.funnel > 0 {
                format!(", {} funnel deal(s) left alone", self.funnel)
            } else {
                String::new()
            }
        )];
        for (rule, n) in &self.by_rule {
            out.push(format!("  {rule:<40} {n:>7}"));
        }
        out
    }
}

impl Store {
    /// The stored draw of `period`, if a committed plan made one.
    pub fn holdout_draw(&self, period: &str) -> Result<Option<Draw>, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(HOLDOUT_DRAWS).map_err(|e| self.err(e))?;
        match t.get(period).map_err(|e| self.err(e))? {
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| self.err(format!("holdout draw {period}: {e}"))),
            None => Ok(None),
        }
    }

    /// Every stored draw, oldest period first (the history of the groups).
    pub fn holdout_draws(&self) -> Result<Vec<Draw>, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(HOLDOUT_DRAWS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = r.map_err(|e| self.err(e))?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    /// Keeps a plan's draw (when its period has none with the same percents yet) and its
    /// virtual touches (the first record of a key stays, as in the outbox), in one
    /// transaction.
    pub fn holdout_record(
        &self,
        draw: Option<&Draw>,
        touches: &[VirtualTouch],
    ) -> Result<(), StoreError> {
        let txn = self.db().begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = txn.open_table(HOLDOUT_DRAWS).map_err(|e| self.err(e))?;
            if let Some(d) = draw {
                let keep = match t.get(d.period.as_str()).map_err(|e| self.err(e))? {
                    Some(v) => serde_json::from_slice::<Draw>(v.value())
                        .map(|old| old != *d)
                        .unwrap_or(true),
                    None => true,
                };
                if keep {
                    let bytes = serde_json::to_vec(d).map_err(|e| self.err(e))?;
                    t.insert(d.period.as_str(), bytes.as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            let mut v = txn.open_table(VIRTUAL_TOUCHES).map_err(|e| self.err(e))?;
            for vt in touches {
                if v.get(vt.key.as_str()).map_err(|e| self.err(e))?.is_some() {
                    continue;
                }
                let bytes = serde_json::to_vec(vt).map_err(|e| self.err(e))?;
                v.insert(vt.key.as_str(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Every recorded virtual touch.
    pub fn virtual_touches(&self) -> Result<Vec<VirtualTouch>, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(VIRTUAL_TOUCHES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = r.map_err(|e| self.err(e))?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| self.err(e))?);
        }
        Ok(out)
    }
}

/// The draw a plan at `as_of_date` uses: the stored one of its period when it was made with
/// the same percents, else a fresh one over `customers`. `None` when no group is configured.
pub fn draw_for(
    store: &Store,
    portal: &str,
    spec: &HoldoutSpec,
    as_of_date: Date,
    customers: &[CustomerRow],
) -> Result<Option<Draw>, StoreError> {
    if !spec.active() {
        return Ok(None);
    }
    let period = period_of(as_of_date, spec.redraw);
    if let Some(d) = store.holdout_draw(&period)?
        && d.fits(spec, portal, &period)
    {
        return Ok(Some(d));
    }
    Ok(Some(Draw::new(
        portal, spec, &period, as_of_date, customers,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::CustomerKey;
    use jiff::civil::date;

    fn row(id: u64, cell: (u8, u8, u8), first: Date) -> CustomerRow {
        let mut r = crate::plan::tests::row(id, &[first], None);
        (r.r, r.f, r.m) = cell;
        r
    }

    #[test]
    fn periods_follow_the_schedule() {
        let d = date(2026, 11, 30);
        assert_eq!(period_of(d, Redraw::Monthly), "2026-11");
        assert_eq!(period_of(d, Redraw::Quarterly), "2026-Q4");
        assert_eq!(period_of(date(2026, 3, 31), Redraw::Quarterly), "2026-Q1");
        assert_eq!(period_of(d, Redraw::Yearly), "2026");
        assert_eq!(period_of(d, Redraw::Never), "all");
    }

    #[test]
    fn the_draw_is_deterministic_stratified_and_redrawn_by_period() {
        let first = date(2025, 1, 1);
        // Two cells: 1,000 champions-like (5,5,5) and 200 lost-like (1,1,1).
        let rows: Vec<CustomerRow> = (0..1200)
            .map(|i| row(i, if i < 1000 { (5, 5, 5) } else { (1, 1, 1) }, first))
            .collect();
        let spec = HoldoutSpec::default();
        let on = date(2026, 11, 2);
        let a = Draw::new("shop", &spec, "2026-11", on, &rows);
        let b = Draw::new("shop", &spec, "2026-11", on, &rows);
        assert_eq!(a, b, "same inputs, same groups");
        // Each cell holds out exactly its 5%: 50 of 1,000 and 10 of 200.
        let held = |d: &Draw, lo: u64, hi: u64| {
            (lo..hi)
                .filter(|i| {
                    d.global
                        .contains(&CustomerKey::Contact(rebuy_core::ContactId(*i)).to_string())
                })
                .count()
        };
        assert_eq!(held(&a, 0, 1000), 50);
        assert_eq!(held(&a, 1000, 1200), 10);
        // Another month draws other customers (same shares).
        let c = Draw::new("shop", &spec, "2026-12", on, &rows);
        assert_eq!(c.global.len(), 60);
        let overlap = c.global.intersection(&a.global).count();
        assert!(overlap < 15, "a re-draw is a new sample, overlap {overlap}");
        // Another portal too.
        assert_ne!(
            Draw::new("other", &spec, "2026-11", on, &rows).global,
            a.global
        );
        // A customer newer than the draw is assigned by hash: about 5% of them.
        let newer = (5000..25_000)
            .filter(|i| {
                a.global_held(
                    &CustomerKey::Contact(rebuy_core::ContactId(*i)).to_string(),
                    date(2026, 11, 20),
                )
            })
            .count();
        assert!((800..1200).contains(&newer), "{newer} of 20,000");
        // 0 switches it off.
        let off = Draw::new("shop", &HoldoutSpec::off(), "2026-11", on, &rows);
        assert!(off.global.is_empty());
        assert!(!off.global_held("contact:1", first));
    }

    #[test]
    fn small_cells_hold_out_their_share_on_average() {
        let first = date(2025, 1, 1);
        // 125 cells of 4 customers: 5% of 4 is 0.2, so about a fifth of the cells hold out one.
        let mut rows = Vec::new();
        let mut id = 0;
        for r in 1..=5 {
            for f in 1..=5 {
                for m in 1..=5 {
                    for _ in 0..4 {
                        id += 1;
                        rows.push(row(id, (r, f, m), first));
                    }
                }
            }
        }
        let spec = HoldoutSpec::default();
        let total: usize = (0..20)
            .map(|k| {
                Draw::new("shop", &spec, &format!("p{k}"), date(2026, 1, 1), &rows)
                    .global
                    .len()
            })
            .sum();
        // 20 draws of 500 customers at 5%: 500 expected.
        assert!((400..600).contains(&total), "{total}");
    }

    #[test]
    fn a_rule_holdout_is_its_own_draw() {
        let first = date(2025, 1, 1);
        let rows: Vec<CustomerRow> = (0..400).map(|i| row(i, (3, 3, 3), first)).collect();
        let mut spec = HoldoutSpec::off();
        spec.rules.insert("pb.r".into(), 25);
        let d = Draw::new("shop", &spec, "2026-11", date(2026, 11, 1), &rows);
        assert!(d.global.is_empty());
        let held = d.rules["pb.r"].len();
        assert_eq!(held, 100);
        let k = d.rules["pb.r"].iter().next().unwrap().clone();
        assert!(d.rule_held("pb.r", &k, first));
        assert!(!d.rule_held("pb.other", &k, first));
        assert!(!d.global_held(&k, first));
    }
}
