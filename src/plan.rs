//! The planner: a pure function from (analysis, CRM facts, rules, plan instant) to the list of
//! CRM writes, each with its idempotency key.
//!
//! Flow position: pull -> cache -> analyse -> **plan** -> outbox -> CRM. [`plan`] never reads
//! a clock, a database or the network: the instant is an input (`--as-of`), so the same inputs
//! always give the same [`Plan`], sorted by key. `rebuy plan` prints it; `rebuy apply` and the
//! server's daily run enqueue it into the outbox, where the key makes every action happen once
//! however often it is planned.
//!
//! # What is planned
//! - **Repeat routing** ([`plan_for_deal`]): an open deal of a customer who bought before is
//!   moved to the repeat pipeline's stage, flagged as a repeat sale, and its manager gets a task
//!   with the customer's history. A known non-buyer's new inquiry (returning inquiry) stays
//!   where it is, on its existing contact: the sidecar never creates contacts.
//! - **The cyclic funnel**: the customer's open deal in the funnel pipeline is moved to the
//!   stage of the time left until the next purchase; a purchase resets the date and the stage.
//! - **Touches** as tasks: after-purchase offsets, reminders before the next purchase,
//!   seasonal dates, product chains, staged reactivation, rewards. A touch is planned when its
//!   day falls in `[plan date - lookback_days, plan date + horizon_days]`; its due time is the
//!   business-hours slot of that day in the portal's zone (or the next open slot when the day
//!   is past).
//! - **Segment fields**: RFM segment, ABC, XYZ, next purchase date; the predicted P(alive),
//!   expected purchases in 90 days, CLV and churn band.
//!
//! # Idempotency keys
//! `"{portal}/{rule}/{customer}/{window}"`, where the window is: the due day for after-purchase
//! touches (purchase + offset) and product chains; the next-purchase date for reminders; the
//! year for seasonal touches and rewards; `s{step}-{last purchase}` for reactivation (a new
//! purchase starts a new chain); `{stage}-{next purchase}` for funnel moves; `deal:{id}` for
//! repeat routing; the written values for segment fields.
use crate::analytics::{CustomerKey, CustomerRow, DealClass};
use crate::outbox::Action;
use crate::playbooks::rules::{ReactivationTarget, RewardKind};
use crate::playbooks::templates::{self, TaskContext};
use crate::playbooks::{DateFormat, Responsible, Rules, TaskRule, Trigger, mapping::FieldEntity};
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use rebuy_core::{
    CrmCustomer, CrmKind, DealId, EntityRef, FieldWrite, PipelineId, StageId, TaskKind, UserId,
    WriteOp,
};
use rust_decimal::Decimal;
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// One won deal of a customer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sale {
    /// Local purchase day.
    pub day: Date,
    /// Amount in the portal currency.
    pub amount: Decimal,
    /// The deal.
    pub deal: DealId,
    /// Its manager.
    pub manager: Option<UserId>,
    /// Product names, lower-case.
    pub products: Vec<String>,
}

/// What the planner needs of a customer beyond its analysis row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerFacts {
    /// Won deals, oldest first.
    pub sales: Vec<Sale>,
    /// The customer's open deal in the funnel pipeline: (deal, stage, manager).
    pub funnel_deal: Option<(DealId, StageId, Option<UserId>)>,
    /// The customer's amoCRM customer (funnel on customers): the one linked to its contact.
    pub crm_customer: Option<CrmCustomer>,
}

/// An open deal, for repeat routing.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenDeal {
    /// Id.
    pub id: DealId,
    /// Title.
    pub name: String,
    /// Customer, when the deal has a contact or company.
    pub customer: Option<CustomerKey>,
    /// New / repeat / returning inquiry.
    pub class: DealClass,
    /// Pipeline.
    pub pipeline: PipelineId,
    /// Stage.
    pub stage: StageId,
    /// Manager.
    pub responsible: Option<UserId>,
    /// Created.
    pub created_at: Timestamp,
}

/// The tasks already in the outbox (pending, in flight or done), as far as the planner must
/// respect them: their days count against the caps, their customer-days are taken, and the
/// touches merged into them are not planned again. Built by [`Booked::add`] from the outbox
/// entries; empty for a plan that ignores the outbox (tests, a fresh store).
#[derive(Debug, Clone, Default)]
pub struct Booked {
    /// Keys of the tasks, with their due times.
    pub tasks: HashMap<String, Timestamp>,
    /// Keys merged into one of them.
    pub merged: HashSet<String>,
    /// Tasks per (responsible, local day number of the due time).
    pub load: HashMap<(UserId, i64), u32>,
    /// Tasks per (customer, local day number).
    pub busy: HashMap<(String, i64), u32>,
}

impl Booked {
    /// Records one outbox action (only tasks matter; a failed one was never created and is
    /// left out by the caller).
    pub fn add(&mut self, action: &Action, tz: &TimeZone) {
        let WriteOp::CreateTask {
            responsible, due, ..
        } = &action.op
        else {
            return;
        };
        let day = day_number(due.to_zoned(tz.clone()).date());
        self.tasks.insert(action.key.clone(), *due);
        self.merged.extend(action.merged.iter().cloned());
        *self.load.entry((*responsible, day)).or_default() += 1;
        *self.busy.entry((action.customer.clone(), day)).or_default() += 1;
    }
}

/// What the pacing rules did to a plan's tasks: one touch per customer a day, the quiet days
/// after a purchase, the caps. Nothing is dropped silently: every touch not sent as planned is
/// counted here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pacing {
    /// Touches merged into another task of the same customer and day (listed in its text).
    pub merged: u64,
    /// Touches merged by an earlier plan into a task already in the outbox.
    pub merged_before: u64,
    /// Repeat leads of a customer that already has a repeat-lead task in this plan (one task
    /// per customer, listing the other leads).
    pub repeat_leads_merged: u64,
    /// "Runs out" reminders not planned: a purchase or an open deal within
    /// `reminder_quiet_days` of the touch.
    pub suppressed: u64,
    /// Tasks moved to a later business day by a cap (or a customer's full day).
    pub deferred: u64,
    /// The last day a deferred task was moved to.
    pub deferred_until: Option<Date>,
    /// Deferred tasks per responsible: (user, count, last day).
    pub deferred_by_manager: Vec<(UserId, u64, Date)>,
}

/// Everything [`plan`] reads.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// Portal id (first part of every key).
    pub portal: &'a str,
    /// Which CRM (date formats).
    pub crm: CrmKind,
    /// The plan instant.
    pub as_of: Timestamp,
    /// The portal's time zone.
    pub tz: &'a TimeZone,
    /// Resolved mapping and playbooks.
    pub rules: &'a Rules,
    /// Customers (analysis rows), in key order.
    pub customers: &'a [CustomerRow],
    /// Their facts, parallel to `customers`.
    pub facts: &'a [CustomerFacts],
    /// Open deals (repeat routing).
    pub open_deals: &'a [OpenDeal],
    /// Tasks already in the outbox.
    pub booked: &'a Booked,
    /// The period's control groups ([`crate::holdout`]); `None`: nobody is held out.
    pub holdout: Option<&'a crate::holdout::Draw>,
}

/// Something the planner wanted to do and could not, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Rule.
    pub rule: String,
    /// Customer.
    pub customer: String,
    /// Why.
    pub reason: String,
}

/// A plan: the actions, sorted by key, and what was skipped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Portal.
    pub portal: String,
    /// The plan instant.
    pub as_of: Timestamp,
    /// Its local date.
    pub as_of_date: Date,
    /// The actions, sorted by key, keys unique.
    pub actions: Vec<Action>,
    /// What could not be planned.
    pub skipped: Vec<Skipped>,
    /// Customers with a next purchase but no open deal in the funnel pipeline yet (each gets a
    /// `funnel_create` action).
    pub funnel_without_deal: u64,
    /// What the pacing rules merged, suppressed and deferred.
    pub pacing: Pacing,
    /// How many customers and touches the control groups held out.
    pub held_out: crate::holdout::HeldOut,
    /// The touches held-out customers would have had (kept with the committed plan, for
    /// `rebuy results`), sorted by key.
    #[serde(skip)]
    pub virtual_touches: Vec<crate::holdout::VirtualTouch>,
    /// The draw the plan used (kept in the cache with the committed plan).
    #[serde(skip)]
    pub draw: Option<crate::holdout::Draw>,
}

impl Plan {
    /// Actions per rule.
    pub fn counts(&self) -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for a in &self.actions {
            *m.entry(a.rule.as_str()).or_default() += 1;
        }
        m
    }
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian; Howard Hinnant's algorithm):
/// the planner compares days as integers, which is much cheaper than calendar arithmetic.
pub fn day_number(d: Date) -> i64 {
    let (y, m, dd) = (d.year() as i64, d.month() as i64, d.day() as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
pub fn from_day_number(z: i64) -> Date {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    Date::new(y as i16, m as i8, d as i8).unwrap_or(Date::MIN)
}

/// Customers per parallel chunk. Fixed, so the work split (and nothing else) depends on the
/// machine: the plan is the same on any number of cores.
const CHUNK: usize = 32_768;

/// Plans every action of a portal at `input.as_of`.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let as_of_date = input.as_of.to_zoned(input.tz.clone()).date();
    let today = day_number(as_of_date);
    let mut pacing = Pacing::default();
    let (mut actions, mut metas) = plan_repeat_deals(input, today, &mut pacing);
    // The newest open deal of each customer: a customer who is ordering right now gets no
    // "runs out" reminder.
    let mut open_since: HashMap<CustomerKey, i64> = HashMap::new();
    for d in input.open_deals {
        if let Some(k) = d.customer {
            let day = day_number(d.created_at.to_zoned(input.tz.clone()).date());
            let e = open_since.entry(k).or_insert(day);
            *e = (*e).max(day);
        }
    }
    // Customers in fixed chunks, on as many threads as there are cores. Each customer's
    // actions depend only on the customer (round-robin uses its position), so chunks are
    // independent.
    let n = input.customers.len().min(input.facts.len());
    let chunks: Vec<(usize, usize)> = (0..n)
        .step_by(CHUNK)
        .map(|start| (start, (start + CHUNK).min(n)))
        .collect();
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .min(chunks.len())
        .max(1);
    let run = |range: (usize, usize)| {
        let mut p = Planner {
            input,
            today,
            actions: Vec::new(),
            skipped: Vec::new(),
            funnel_without_deal: 0,
            cust: String::new(),
            metas: Vec::new(),
            suppressed: 0,
            open_since: &open_since,
            held: Held::default(),
            global_held: false,
            lost_touch: false,
        };
        for i in range.0..range.1 {
            p.customer(i, &input.customers[i], &input.facts[i]);
        }
        // Sorted here, on the worker thread; the final sort only merges the sorted runs.
        p.actions.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        ChunkResult {
            actions: p.actions,
            skipped: p.skipped,
            funnel_without_deal: p.funnel_without_deal,
            metas: p.metas,
            suppressed: p.suppressed,
            held: p.held,
        }
    };
    let results: Vec<ChunkResult> = if threads <= 1 {
        chunks.iter().map(|c| run(*c)).collect()
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut slots: Vec<Option<ChunkResult>> = (0..chunks.len()).map(|_| None).collect();
        let done = std::sync::Mutex::new(&mut slots);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(c) = chunks.get(i) else { break };
                        let r = run(*c);
                        done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                    }
                });
            }
        });
        slots.into_iter().flatten().collect()
    };
    let mut skipped = Vec::new();
    let mut funnel_without_deal = 0;
    let mut held = Held::default();
    // Keys are unique by construction (one action per rule, customer and window). Every run
    // is sorted (the routing actions here, the chunks on their threads): one k-way merge moves
    // each action once, where a sort of the concatenation would merge the runs level by level.
    actions.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let mut runs = vec![actions];
    for r in results {
        runs.push(r.actions);
        skipped.extend(r.skipped);
        funnel_without_deal += r.funnel_without_deal;
        metas.extend(r.metas);
        pacing.suppressed += r.suppressed;
        held.add(r.held);
    }
    let mut actions = merge_sorted_runs(runs);
    actions.dedup_by(|a, b| a.key == b.key);
    pace(input, today, &mut actions, metas, &mut pacing, &mut skipped);
    skipped.sort_by(|a, b| (&a.rule, &a.customer).cmp(&(&b.rule, &b.customer)));
    held.touches.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Plan {
        portal: input.portal.to_owned(),
        as_of: input.as_of,
        as_of_date,
        actions,
        skipped,
        funnel_without_deal,
        pacing,
        held_out: held.summary(input.holdout),
        virtual_touches: held.touches,
        draw: input.holdout.cloned(),
    }
}

/// What a chunk's control groups held out.
#[derive(Default)]
struct Held {
    /// Customers of the base in the global holdout.
    customers: u64,
    /// Customers who lost at least one touch.
    touched_customers: u64,
    /// Customers whose funnel was left alone.
    funnel: u64,
    /// The virtual touches.
    touches: Vec<crate::holdout::VirtualTouch>,
}

impl Held {
    fn add(&mut self, o: Held) {
        self.customers += o.customers;
        self.touched_customers += o.touched_customers;
        self.funnel += o.funnel;
        self.touches.extend(o.touches);
    }

    fn summary(&self, draw: Option<&crate::holdout::Draw>) -> crate::holdout::HeldOut {
        let mut by_rule: BTreeMap<String, u64> = BTreeMap::new();
        for t in &self.touches {
            *by_rule.entry(t.rule.clone()).or_default() += 1;
        }
        crate::holdout::HeldOut {
            period: draw.map(|d| d.period.clone()).unwrap_or_default(),
            customers: self.customers,
            touches: self.touches.len() as u64,
            touched_customers: self.touched_customers,
            funnel: self.funnel,
            by_rule,
        }
    }
}

/// Repeat routing of the open repeat deals, in deal order, with one repeat-lead task per
/// customer however many of its leads are open: the task of its newest lead, listing the
/// others; their own task keys are recorded as merged into it, so no later plan sends them.
fn plan_repeat_deals(
    input: &PlanInput<'_>,
    today: i64,
    pacing: &mut Pacing,
) -> (Vec<Action>, Vec<TaskMeta>) {
    let mut actions = Vec::new();
    // Customer -> (index of its repeat task in `actions`, its deal's creation, its label).
    let mut task_of: HashMap<CustomerKey, (usize, Timestamp, String)> = HashMap::new();
    let mut others: HashMap<CustomerKey, Vec<(String, String)>> = HashMap::new();
    for d in input.open_deals {
        let Some(key) = d.customer else { continue };
        if d.class != DealClass::Repeat {
            continue;
        }
        let row = find_customer(input.customers, key);
        for a in plan_for_deal(input.portal, input.as_of, input.tz, input.rules, d, row) {
            if a.rule != "repeat_task" {
                actions.push(a);
                continue;
            }
            let label = format!("«{}» (сделка {})", d.name, d.id.0);
            match task_of.get_mut(&key) {
                None => {
                    task_of.insert(key, (actions.len(), d.created_at, label));
                    actions.push(a);
                }
                Some((i, at, carried)) => {
                    pacing.repeat_leads_merged += 1;
                    if d.created_at > *at {
                        // The newer lead carries the task; the older one is listed.
                        let old = std::mem::replace(&mut actions[*i], a);
                        let old_label = std::mem::replace(carried, label);
                        *at = d.created_at;
                        others.entry(key).or_default().push((old.key, old_label));
                    } else {
                        others.entry(key).or_default().push((a.key, label));
                    }
                }
            }
        }
    }
    let mut metas = Vec::new();
    for (key, (i, _, _)) in task_of {
        let a = &mut actions[i];
        let row = find_customer(input.customers, key);
        if let Some(list) = others.remove(&key) {
            let names: Vec<&str> = list.iter().map(|(_, n)| n.as_str()).collect();
            if let WriteOp::CreateTask { text, .. } = &mut a.op {
                text.push_str("\n\n");
                text.push_str(templates::OTHER_LEADS);
                text.push(' ');
                text.push_str(&names.join(", "));
            }
            for (k, _) in list {
                if k != a.key && !a.merged.contains(&k) {
                    a.merged.push(k);
                }
            }
        }
        metas.push(TaskMeta {
            key: key_hash(&a.key),
            rank: u32::MAX,
            value: row.map(customer_value).unwrap_or_default(),
            deadline: today,
            time: None,
        });
    }
    (actions, metas)
}

/// What a chunk of customers planned.
struct ChunkResult {
    actions: Vec<Action>,
    skipped: Vec<Skipped>,
    funnel_without_deal: u64,
    metas: Vec<TaskMeta>,
    suppressed: u64,
    held: Held,
}

/// What the pacing pass needs to know of a planned task beyond its action. Plain data (no
/// allocation per task): a planned portal has millions of tasks, and freeing millions of
/// small strings costs the sequential pass more than the work itself.
#[derive(Debug, Clone, Copy)]
struct TaskMeta {
    /// [`key_hash`] of the action's key (a 64-bit collision only mis-ranks one task).
    key: u64,
    /// Importance when touches compete for one customer-day: the higher wins the task.
    rank: u32,
    /// Expected value of the customer (CLV, else revenue so far): capacity goes to the
    /// valuable customers first.
    value: Decimal,
    /// Local day number when the touch's window closes (the expected purchase for a reminder,
    /// the touch's own day otherwise): the sooner, the more urgent.
    deadline: i64,
    /// The rule's preferred local time (for a task moved to another day).
    time: Option<jiff::civil::Time>,
}

/// The hash a [`TaskMeta`] is found by.
fn key_hash(key: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(key)
}

/// The value a customer's touches are ranked by: CLV when the model gives one, else revenue.
fn customer_value(row: &CustomerRow) -> Decimal {
    row.clv.unwrap_or(row.revenue)
}

/// Importance of a trigger kind when touches of one customer compete for a day: a live
/// purchase moment first (reminders, product offers), care after a purchase, then the
/// calendar, rewards and soft reactivation.
fn trigger_rank(t: &Trigger) -> u32 {
    match t {
        Trigger::BeforeNext { .. } => 6,
        Trigger::ProductChain { .. } => 5,
        Trigger::AfterPurchase { .. } => 4,
        Trigger::Seasonal { .. } => 3,
        Trigger::Reward { .. } => 2,
        Trigger::Reactivation { .. } => 1,
    }
}

/// A candidate of the capacity pass.
struct Slot {
    /// Index into the plan's actions.
    idx: usize,
    user: UserId,
    desired: i64,
    deadline: i64,
    value: Decimal,
    repeat: bool,
    time: Option<jiff::civil::Time>,
}

/// The pacing pass over a sorted plan: drops touches merged into a task already in the
/// outbox, merges competing touches of one customer-day into the most important one (its
/// text lists the others' goals), then gives every new task a business day within the caps
/// and the customer's one-touch day, moving what does not fit to the next business days by
/// priority. Tasks already in the outbox keep their day (the outbox skips them).
fn pace(
    input: &PlanInput<'_>,
    today: i64,
    actions: &mut Vec<Action>,
    metas: Vec<TaskMeta>,
    pacing: &mut Pacing,
    skipped: &mut Vec<Skipped>,
) {
    let rules = input.rules;
    let booked = input.booked;
    let tz = input.tz;
    // Sequential over every task of the portal: no key copies, a fast hasher, and each
    // instant turned into a local day once (due times repeat: business-hour slots).
    let meta: FxHashMap<u64, TaskMeta> = metas.iter().map(|m| (m.key, *m)).collect();
    std::mem::drop(metas);
    // A merged touch's goal, listed in the text of the task it joins.
    let goal_of_rule: FxHashMap<&str, &str> = rules
        .rules
        .iter()
        .map(|r| (r.task.rule.as_str(), r.task.goal.as_str()))
        .collect();
    let mut day_cache: FxHashMap<Timestamp, i64> = FxHashMap::default();
    let mut local_day = |t: Timestamp| {
        *day_cache
            .entry(t)
            .or_insert_with(|| day_number(t.to_zoned(tz.clone()).date()))
    };
    let mut drop = vec![false; actions.len()];
    // 1. Tasks in the outbox keep the day they were given there (the outbox will not send
    // them again); touches an earlier plan merged into one of them are not planned.
    for (i, a) in actions.iter_mut().enumerate() {
        let WriteOp::CreateTask {
            due,
            responsible,
            text,
            kind,
            ..
        } = &mut a.op
        else {
            continue;
        };
        if let Some(at) = booked.tasks.get(&a.key) {
            if at != due {
                *due = *at;
                let z = at.to_zoned(tz.clone());
                a.summary = task_summary(*kind, &z, &user_label(rules, *responsible), text);
            }
        } else if booked.merged.contains(&a.key) {
            drop[i] = true;
            pacing.merged_before += 1;
        }
    }
    // 2. Competing new touches of one customer and day. Most customer-days hold one task:
    // count first, and list the indices only of the crowded ones.
    let mut task_day: Vec<i64> = vec![i64::MIN; actions.len()];
    let mut counts: FxHashMap<(&str, i64), u32> = FxHashMap::default();
    for (i, a) in actions.iter().enumerate() {
        if drop[i] || booked.tasks.contains_key(&a.key) {
            continue;
        }
        if let WriteOp::CreateTask { due, .. } = &a.op {
            let d = local_day(*due);
            task_day[i] = d;
            *counts.entry((a.customer.as_str(), d)).or_default() += 1;
        }
    }
    let mut groups: FxHashMap<(&str, i64), Vec<usize>> = FxHashMap::default();
    for (i, a) in actions.iter().enumerate() {
        if task_day[i] != i64::MIN
            && counts
                .get(&(a.customer.as_str(), task_day[i]))
                .is_some_and(|n| *n as usize > rules.touches_per_customer_day.max(1) as usize)
        {
            groups
                .entry((a.customer.as_str(), task_day[i]))
                .or_default()
                .push(i);
        }
    }
    std::mem::drop(counts);
    let max = rules.touches_per_customer_day.max(1) as usize;
    let rank = |i: usize| {
        meta.get(&key_hash(&actions[i].key))
            .map(|m| m.rank)
            .unwrap_or(0)
    };
    let mut merges: Vec<(usize, Vec<usize>)> = Vec::new();
    for (_, mut idx) in groups {
        if idx.len() <= max {
            continue;
        }
        idx.sort_by(|a, b| rank(*b).cmp(&rank(*a)).then(a.cmp(b)));
        merges.push((idx[0], idx[max..].to_vec()));
    }
    merges.sort_unstable();
    for (primary, rest) in merges {
        let mut goals = Vec::new();
        let mut keys = Vec::new();
        for j in rest {
            drop[j] = true;
            pacing.merged += 1;
            let a = &actions[j];
            goals.push(
                if meta
                    .get(&key_hash(&a.key))
                    .is_some_and(|m| m.rank == u32::MAX)
                {
                    templates::REPEAT_GOAL.to_owned()
                } else {
                    goal_of_rule
                        .get(a.rule.as_str())
                        .map_or_else(|| a.rule.clone(), |g| (*g).to_owned())
                },
            );
            keys.push(a.key.clone());
            keys.extend(a.merged.iter().cloned());
        }
        let p = &mut actions[primary];
        if let WriteOp::CreateTask { text, .. } = &mut p.op {
            text.push_str("\n\n");
            text.push_str(templates::ALSO_DISCUSS);
            for g in &goals {
                text.push_str("\n— ");
                text.push_str(g);
            }
        }
        p.summary.push_str(&format!(" (+{} merged)", goals.len()));
        p.merged.extend(keys);
    }
    // 3. Days within the caps and the customer's touches a day.
    let mut slots: Vec<Slot> = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        if drop[i] || booked.tasks.contains_key(&a.key) {
            continue;
        }
        if let WriteOp::CreateTask {
            due, responsible, ..
        } = &a.op
        {
            let m = meta.get(&key_hash(&a.key)).copied();
            let desired = if task_day[i] != i64::MIN {
                task_day[i]
            } else {
                local_day(*due)
            };
            slots.push(Slot {
                idx: i,
                user: *responsible,
                desired,
                deadline: m.map(|m| m.deadline).unwrap_or(desired),
                value: m.map(|m| m.value).unwrap_or_default(),
                repeat: m.is_some_and(|m| m.rank == u32::MAX),
                time: m.and_then(|m| m.time),
            });
        }
    }
    slots.sort_by_key(|s| (s.desired, s.idx));
    let mut load: FxHashMap<(UserId, i64), u32> = FxHashMap::default();
    let mut busy: FxHashMap<(usize, i64), u32> = FxHashMap::default();
    // Customers by index of their first action, so the busy map needs no string per task.
    let mut cust_id: FxHashMap<&str, usize> = FxHashMap::default();
    for s in &slots {
        let n = cust_id.len();
        cust_id.entry(actions[s.idx].customer.as_str()).or_insert(n);
    }
    for ((c, d), n) in &booked.busy {
        if let Some(id) = cust_id.get(c.as_str()) {
            *busy.entry((*id, *d)).or_default() += n;
        }
    }
    let user_load = |load: &FxHashMap<(UserId, i64), u32>, u: UserId, day: i64| {
        load.get(&(u, day)).copied().unwrap_or(0) + booked.load.get(&(u, day)).copied().unwrap_or(0)
    };
    let fits = |load: &FxHashMap<(UserId, i64), u32>,
                busy: &FxHashMap<(usize, i64), u32>,
                s: &Slot,
                cust: usize,
                day: i64|
     -> bool {
        if busy.get(&(cust, day)).copied().unwrap_or(0) as usize >= max {
            return false;
        }
        if let Some(cap) = rules.manager_cap
            && user_load(load, s.user, day) >= cap
        {
            return false;
        }
        rules.team_caps.iter().all(|(_, cap, members)| {
            !members.contains(&s.user)
                || members
                    .iter()
                    .map(|m| user_load(load, *m, day))
                    .sum::<u32>()
                    < *cap
        })
    };
    // A task that finds no day within ten years has a calendar or caps that cannot work:
    // it is reported, not planned.
    const MAX_DAYS: i64 = 3660;
    let mut placed: Vec<(usize, i64)> = Vec::with_capacity(slots.len());
    let mut pool: Vec<usize> = Vec::new();
    let mut next = 0;
    let mut day = slots.first().map(|s| s.desired).unwrap_or(today);
    let start = day;
    loop {
        while next < slots.len() && slots[next].desired <= day {
            pool.push(next);
            next += 1;
        }
        if pool.is_empty() {
            if next == slots.len() {
                break;
            }
            day = slots[next].desired;
            continue;
        }
        // Priority: repeat leads, then tasks whose window has closed by this day, then by
        // the customer's value, the window's end and the key.
        pool.sort_by(|&a, &b| {
            let (x, y) = (&slots[a], &slots[b]);
            let class = |s: &Slot| {
                if s.repeat {
                    0
                } else if s.deadline <= day {
                    1
                } else {
                    2
                }
            };
            class(x)
                .cmp(&class(y))
                .then(y.value.cmp(&x.value))
                .then(x.deadline.cmp(&y.deadline))
                .then(actions[x.idx].key.cmp(&actions[y.idx].key))
        });
        let mut rest = Vec::new();
        for &c in &pool {
            let s = &slots[c];
            let cust = cust_id[actions[s.idx].customer.as_str()];
            if fits(&load, &busy, s, cust, day) {
                *load.entry((s.user, day)).or_default() += 1;
                *busy.entry((cust, day)).or_default() += 1;
                placed.push((c, day));
            } else {
                rest.push(c);
            }
        }
        pool = rest;
        if pool.is_empty() {
            continue;
        }
        let following = from_day_number(day + 1);
        day = day_number(rules.hours.working_day_from(following)).max(day + 1);
        if day - start > MAX_DAYS {
            for &c in &pool {
                let a = &actions[slots[c].idx];
                skipped.push(Skipped {
                    rule: a.rule.clone(),
                    customer: a.customer.clone(),
                    reason: format!(
                        "no business day within {MAX_DAYS} days has room under the caps"
                    ),
                });
                drop[slots[c].idx] = true;
            }
            break;
        }
    }
    // Move the deferred tasks to their day.
    let mut by_manager: BTreeMap<UserId, (u64, Date)> = BTreeMap::new();
    for (c, day) in placed {
        let s = &slots[c];
        if day == s.desired {
            continue;
        }
        let date = from_day_number(day);
        let due = rules.hours.slot(date, s.time, tz);
        let a = &mut actions[s.idx];
        if let WriteOp::CreateTask {
            due: d,
            responsible,
            text,
            kind,
            ..
        } = &mut a.op
        {
            *d = due.timestamp();
            a.summary = task_summary(*kind, &due, &user_label(rules, *responsible), text);
            if !a.merged.is_empty() {
                a.summary
                    .push_str(&format!(" (+{} merged)", a.merged.len()));
            }
            a.summary.push_str(&format!(
                " (deferred from {} by the cap)",
                from_day_number(s.desired)
            ));
        }
        pacing.deferred += 1;
        pacing.deferred_until = Some(pacing.deferred_until.map_or(date, |d| d.max(date)));
        let e = by_manager.entry(s.user).or_insert((0, date));
        e.0 += 1;
        e.1 = e.1.max(date);
    }
    pacing.deferred_by_manager = by_manager
        .into_iter()
        .map(|(u, (n, d))| (u, n, d))
        .collect();
    if drop.iter().any(|d| *d) {
        let mut i = 0;
        actions.retain(|_| {
            let keep = !drop[i];
            i += 1;
            keep
        });
    }
}

/// The one-line summary of a touch task.
fn task_summary(kind: TaskKind, due: &jiff::Zoned, label: &str, text: &str) -> String {
    format!(
        "{} {} {:02}:{:02} {} {}: {}",
        kind_str(kind),
        due.date(),
        due.hour(),
        due.minute(),
        due.offset(),
        label,
        first_line(text)
    )
}

/// Merges runs of actions each sorted by key into one sorted list. The heap holds each run's
/// head key (moved out of its action, so sifting moves a `String`, not an action).
fn merge_sorted_runs(runs: Vec<Vec<Action>>) -> Vec<Action> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    struct Runs {
        iters: Vec<std::vec::IntoIter<Action>>,
        heads: Vec<Option<Action>>,
        heap: BinaryHeap<Reverse<(String, usize)>>,
    }
    impl Runs {
        fn advance(&mut self, i: usize) {
            if let Some(mut next) = self.iters[i].next() {
                self.heap.push(Reverse((std::mem::take(&mut next.key), i)));
                self.heads[i] = Some(next);
            }
        }
    }
    let total = runs.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total);
    let mut r = Runs {
        heads: runs.iter().map(|_| None).collect(),
        heap: BinaryHeap::with_capacity(runs.len()),
        iters: runs.into_iter().map(Vec::into_iter).collect(),
    };
    for i in 0..r.iters.len() {
        r.advance(i);
    }
    while let Some(Reverse((key, i))) = r.heap.pop() {
        if let Some(mut a) = r.heads[i].take() {
            a.key = key;
            out.push(a);
        }
        r.advance(i);
    }
    out
}

/// The analysis row of a customer (rows are sorted by key).
pub fn find_customer(rows: &[CustomerRow], key: CustomerKey) -> Option<&CustomerRow> {
    rows.binary_search_by(|r| r.key.cmp(&key))
        .ok()
        .map(|i| &rows[i])
}

/// How far a deal's creation time may lie ahead of the planning instant and still be routed:
/// the CRM's clock and ours differ by seconds, sometimes minutes.
pub const CLOCK_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);

/// Routes one open deal, for the server's webhook path and for [`plan`]: a repeat deal (the
/// customer bought before it was created) not yet in the repeat pipeline is moved to the
/// repeat stage, flagged, and its manager gets a task with the customer's history, due at the
/// next business-hours slot. New deals and returning inquiries (known non-buyers) get nothing:
/// they stay in their pipeline on their existing contact. Deals older than
/// `repeat_max_age_days` are left alone. Keys: `{portal}/repeat_route|repeat_flag/
/// {customer}/deal:{id}` and `{portal}/repeat_task/{customer}/{local day the deal was
/// created}` (one repeat-lead task per customer and day).
pub fn plan_for_deal(
    portal: &str,
    as_of: Timestamp,
    tz: &TimeZone,
    rules: &Rules,
    deal: &OpenDeal,
    customer: Option<&CustomerRow>,
) -> Vec<Action> {
    let Some(routing) = &rules.repeat else {
        return Vec::new();
    };
    let Some(key) = deal.customer else {
        return Vec::new();
    };
    if deal.class != DealClass::Repeat
        || deal.pipeline == routing.pipeline
        || rules
            .funnel
            .as_ref()
            .is_some_and(|f| f.pipeline() == Some(deal.pipeline))
    {
        return Vec::new();
    }
    // A webhook's deal may carry the CRM's clock, a little ahead of ours: minutes of skew are
    // tolerated; a deal from further in the future (planning a past date) is not routed.
    if deal.created_at > as_of + CLOCK_SKEW {
        tracing::debug!(
            deal = deal.id.0,
            created_at = %deal.created_at,
            %as_of,
            "Not routed: created after the planning instant (beyond the clock-skew allowance)"
        );
        return Vec::new();
    }
    let today = day_number(as_of.to_zoned(tz.clone()).date());
    let created = day_number(deal.created_at.to_zoned(tz.clone()).date());
    if today - created > i64::from(routing.max_age_days) {
        tracing::debug!(
            deal = deal.id.0,
            age_days = today - created,
            max_age_days = routing.max_age_days,
            "Not routed: older than repeat_max_age_days"
        );
        return Vec::new();
    }
    let cust = key.to_string();
    let window = format!("deal:{}", deal.id.0);
    let k = |rule: &str| format!("{portal}/{rule}/{cust}/{window}");
    // The task is keyed by the customer and the lead's local day, not the deal: a customer
    // who sends three leads in a day gets one task (the outbox keeps the first), on the
    // webhook path as in a plan.
    let created_day = deal.created_at.to_zoned(tz.clone()).date();
    let mut out = vec![
        Action {
            merged: Vec::new(),
            key: k("repeat_route"),
            op: WriteOp::MoveDeal {
                deal: deal.id,
                pipeline: routing.pipeline,
                stage: routing.stage.clone(),
            },
            rule: "repeat_route".into(),
            customer: cust.clone(),
            summary: format!(
                "move repeat deal {} ({}) to the repeat pipeline {} stage {}",
                deal.id.0, deal.name, routing.pipeline.0, routing.stage.0
            ),
        },
        Action {
            merged: Vec::new(),
            key: k("repeat_flag"),
            op: WriteOp::FlagRepeat { deal: deal.id },
            rule: "repeat_flag".into(),
            customer: cust.clone(),
            summary: format!("flag deal {} as a repeat sale", deal.id.0),
        },
    ];
    let Some(responsible) = rules.deal_responsible(deal.responsible) else {
        return out;
    };
    let manager = rules
        .user_names
        .get(&responsible)
        .map(String::as_str)
        .unwrap_or("");
    let ctx = match customer {
        Some(row) => context(row, None, today, manager, "repeat", "repeat_lead"),
        None => TaskContext {
            name: &deal.name,
            last_purchase: "—".into(),
            revenue: "0".into(),
            segment: "—",
            next_purchase: "не определена".into(),
            manager,
            rule: "repeat_lead",
            ..TaskContext::default()
        },
    };
    let text = rules
        .templates
        .render("repeat_lead", &ctx)
        .unwrap_or_else(|e| format!("Повторная заявка от клиента {} ({e})", ctx.name));
    let due = rules.hours.next_open(as_of, tz);
    out.push(Action {
        merged: Vec::new(),
        key: format!("{portal}/repeat_task/{cust}/{created_day}"),
        summary: format!(
            "call {} {} for repeat deal {}: {}",
            due.strftime("%Y-%m-%d %H:%M %Z"),
            user_label(rules, responsible),
            deal.id.0,
            first_line(&text)
        ),
        op: WriteOp::CreateTask {
            entity: EntityRef::Deal(deal.id),
            responsible,
            text,
            due: due.timestamp(),
            kind: TaskKind::Call,
        },
        rule: "repeat_task".into(),
        customer: cust,
    });
    out
}

/// Who gets a created funnel deal or amoCRM customer: the last deal's manager when usable,
/// else `default_responsible`, else the CRM's default (none given).
fn input_rules_deal_responsible(rules: &Rules, facts: &CustomerFacts) -> Option<UserId> {
    rules.deal_responsible(facts.sales.last().and_then(|s| s.manager))
}

fn user_label(rules: &Rules, u: UserId) -> String {
    match rules.user_names.get(&u) {
        Some(n) => format!("{n} ({})", u.0),
        None => format!("user {}", u.0),
    }
}

fn first_line(s: &str) -> &str {
    let l = s.lines().next().unwrap_or("");
    match l.char_indices().nth(100) {
        Some((i, _)) => &l[..i],
        None => l,
    }
}

fn context<'a>(
    row: &'a CustomerRow,
    sale: Option<&Sale>,
    today: i64,
    manager: &'a str,
    playbook: &'a str,
    rule: &'a str,
) -> TaskContext<'a> {
    TaskContext {
        name: &row.name,
        purchases: row.purchases,
        deals: row.deals,
        last_purchase: templates::ru_date(row.last_purchase),
        first_purchase: templates::ru_date(row.first_purchase),
        revenue: templates::ru_money(row.revenue),
        segment: templates::segment_ru(row.rfm_segment),
        segment_code: row.rfm_segment.as_str(),
        abc: row.abc.as_str(),
        xyz: row.xyz.as_str(),
        next_purchase: row
            .next_purchase
            .map(templates::ru_date)
            .unwrap_or_else(|| "не определена".into()),
        days_left: row.next_purchase.map(|d| day_number(d) - today),
        products: sale.map(|s| s.products.join(", ")).unwrap_or_default(),
        manager,
        playbook,
        rule,
        ..TaskContext::default()
    }
}

struct Planner<'a, 'b> {
    input: &'b PlanInput<'a>,
    today: i64,
    actions: Vec<Action>,
    skipped: Vec<Skipped>,
    funnel_without_deal: u64,
    /// The current customer's key as text.
    cust: String,
    /// What the pacing pass needs of each task.
    metas: Vec<TaskMeta>,
    /// Reminders not planned for a recent purchase or open deal.
    suppressed: u64,
    /// Local day of each customer's newest open deal.
    open_since: &'b HashMap<CustomerKey, i64>,
    /// What the control groups held out.
    held: Held,
    /// Whether the current customer is in the global holdout.
    global_held: bool,
    /// Whether the current customer lost a touch to a holdout.
    lost_touch: bool,
}

/// Where and for whom a touch is.
struct Touch<'s> {
    day: i64,
    window: String,
    entity: EntityRef,
    manager: Option<UserId>,
    sale: Option<&'s Sale>,
    offer: &'s str,
    step: u32,
    /// [`TaskMeta::rank`].
    rank: u32,
    /// [`TaskMeta::deadline`].
    deadline: i64,
}

impl Planner<'_, '_> {
    fn in_window(&self, day: i64) -> bool {
        let r = self.input.rules;
        day >= self.today - i64::from(r.lookback_days)
            && day <= self.today + i64::from(r.horizon_days)
    }

    fn customer(&mut self, ordinal: usize, row: &CustomerRow, facts: &CustomerFacts) {
        use std::fmt::Write;
        self.cust.clear();
        let _ = write!(self.cust, "{}", row.key);
        let rules = self.input.rules;
        let Some(last) = facts.sales.last() else {
            return;
        };
        self.global_held = self
            .input
            .holdout
            .is_some_and(|d| d.global_held(&self.cust, row.first_purchase));
        self.lost_touch = false;
        if self.global_held {
            self.held.customers += 1;
        }
        let last_day = day_number(row.last_purchase);
        let next_day = row.next_purchase.map(day_number);
        let funnel_entity = facts
            .funnel_deal
            .as_ref()
            .map(|(d, _, m)| (EntityRef::Deal(*d), m.or(last.manager)));
        let (care_entity, care_manager) =
            funnel_entity.unwrap_or((EntityRef::Deal(last.deal), last.manager));
        let any_product = |filter: &[String]| {
            filter.is_empty()
                || facts.sales.iter().any(|s| {
                    s.products
                        .iter()
                        .any(|p| filter.iter().any(|f| p.contains(f.as_str())))
                })
        };
        for (ri, rule) in rules.rules.iter().enumerate() {
            // Kind first, then playbook order.
            let rank = trigger_rank(&rule.trigger) * 100_000 + (99_999 - ri.min(99_999) as u32);
            match &rule.trigger {
                Trigger::AfterPurchase {
                    days,
                    segments,
                    products,
                } => {
                    let day = last_day + i64::from(*days);
                    if !self.in_window(day)
                        || (!segments.is_empty() && !segments.contains(&row.rfm_segment))
                        || (!products.is_empty()
                            && !last
                                .products
                                .iter()
                                .any(|p| products.iter().any(|f| p.contains(f.as_str()))))
                    {
                        continue;
                    }
                    self.touch(
                        ordinal,
                        row,
                        &rule.task,
                        Touch {
                            day,
                            window: from_day_number(day).to_string(),
                            entity: EntityRef::Deal(last.deal),
                            manager: last.manager,
                            sale: Some(last),
                            offer: "",
                            step: 0,
                            rank,
                            deadline: day,
                        },
                    );
                }
                Trigger::BeforeNext {
                    days_before,
                    segments,
                    products,
                } => {
                    let Some(next) = next_day else { continue };
                    let day = next - i64::from(*days_before);
                    if day <= last_day
                        || !self.in_window(day)
                        || (!segments.is_empty() && !segments.contains(&row.rfm_segment))
                        || !any_product(products)
                    {
                        continue;
                    }
                    // A customer who bought, or opened a deal, just before (or since) the
                    // touch's day has what would "run out": no reminder.
                    let quiet = i64::from(rules.reminder_quiet_days);
                    if quiet > 0
                        && (day - last_day < quiet
                            || self
                                .open_since
                                .get(&row.key)
                                .is_some_and(|d| *d > day - quiet))
                    {
                        self.suppressed += 1;
                        continue;
                    }
                    self.touch(
                        ordinal,
                        row,
                        &rule.task,
                        Touch {
                            day,
                            window: from_day_number(next).to_string(),
                            entity: care_entity,
                            manager: care_manager,
                            sale: Some(last),
                            offer: "",
                            step: 0,
                            rank,
                            deadline: next,
                        },
                    );
                }
                Trigger::Seasonal {
                    month,
                    day,
                    days_before,
                    segments,
                    products,
                } => {
                    if (!segments.is_empty() && !segments.contains(&row.rfm_segment))
                        || !any_product(products)
                    {
                        continue;
                    }
                    let year = from_day_number(self.today).year();
                    for y in [year, year + 1] {
                        let Some(date) = month_day(y, *month, *day) else {
                            continue;
                        };
                        let d = day_number(date) - i64::from(*days_before);
                        if self.in_window(d) {
                            self.touch(
                                ordinal,
                                row,
                                &rule.task,
                                Touch {
                                    day: d,
                                    window: y.to_string(),
                                    entity: care_entity,
                                    manager: care_manager,
                                    sale: Some(last),
                                    offer: "",
                                    step: 0,
                                    rank,
                                    deadline: day_number(date),
                                },
                            );
                        }
                    }
                }
                Trigger::ProductChain {
                    bought,
                    after_days,
                    offer,
                } => {
                    // Newest sale first; one touch per planned day (two matching deals on one
                    // day make one touch, about the newer deal), so keys stay unique.
                    let mut planned = i64::MIN;
                    for s in facts.sales.iter().rev() {
                        let day = day_number(s.day) + i64::from(*after_days);
                        if day < self.today - i64::from(rules.lookback_days) {
                            break; // older sales are even further back
                        }
                        if day == planned
                            || !self.in_window(day)
                            || !s.products.iter().any(|p| p.contains(bought.as_str()))
                        {
                            continue;
                        }
                        planned = day;
                        self.touch(
                            ordinal,
                            row,
                            &rule.task,
                            Touch {
                                day,
                                window: from_day_number(day).to_string(),
                                entity: EntityRef::Deal(s.deal),
                                manager: s.manager,
                                sale: Some(s),
                                offer,
                                step: 0,
                                rank,
                                deadline: day,
                            },
                        );
                    }
                }
                Trigger::Reactivation {
                    who,
                    start_after_days,
                    campaign_start,
                    spread_days,
                    segments,
                    step,
                    after_days,
                } => {
                    let eligible = match who {
                        ReactivationTarget::OneTime => row.one_time,
                        ReactivationTarget::Sleeping => !row.one_time,
                    };
                    if !eligible || (!segments.is_empty() && !segments.contains(&row.rfm_segment)) {
                        continue;
                    }
                    let mut start = last_day + i64::from(*start_after_days);
                    if let Some(c) = campaign_start {
                        let c = day_number(*c);
                        if start < c {
                            start = c
                                + (stable_hash(&row.key.to_string()) % u64::from(*spread_days))
                                    as i64;
                        }
                    }
                    let day = start + i64::from(*after_days);
                    if !self.in_window(day) {
                        continue;
                    }
                    self.touch(
                        ordinal,
                        row,
                        &rule.task,
                        Touch {
                            day,
                            window: format!("s{step}-{}", row.last_purchase),
                            entity: care_entity,
                            manager: care_manager,
                            sale: Some(last),
                            offer: "",
                            step: *step,
                            rank,
                            deadline: day,
                        },
                    );
                }
                Trigger::Reward {
                    kind,
                    window_days,
                    min_purchases,
                    min_revenue,
                } => {
                    let from = self.today - i64::from(*window_days);
                    let mut days = 0u32;
                    let mut prev = i64::MIN;
                    let mut revenue = Decimal::ZERO;
                    for s in &facts.sales {
                        let d = day_number(s.day);
                        if d <= from || d > self.today {
                            continue;
                        }
                        if d != prev {
                            days += 1;
                            prev = d;
                        }
                        revenue += s.amount;
                    }
                    let ok = match kind {
                        RewardKind::Frequent => days >= *min_purchases,
                        RewardKind::HighSpender => revenue >= *min_revenue,
                    };
                    if ok {
                        self.touch(
                            ordinal,
                            row,
                            &rule.task,
                            Touch {
                                day: self.today,
                                window: from_day_number(self.today).year().to_string(),
                                entity: care_entity,
                                manager: care_manager,
                                sale: Some(last),
                                offer: "",
                                step: 0,
                                rank,
                                deadline: self.today,
                            },
                        );
                    }
                }
            }
        }
        if self.lost_touch {
            self.held.touched_customers += 1;
        }
        if self.global_held {
            // No funnel move either: a deal in "time to buy" is a prompt to call.
            if rules.funnel.is_some() && row.next_purchase.is_some() {
                self.held.funnel += 1;
            }
        } else {
            self.funnel(row, facts);
        }
        self.fields(row, facts);
    }

    /// Round-robin over a team by the customer's position (and the rule's, and the day's), so
    /// consecutive customers go to consecutive members and the answer needs no shared state.
    fn responsible(
        &self,
        r: &Responsible,
        manager: Option<UserId>,
        ordinal: usize,
        rule: &str,
    ) -> Option<UserId> {
        match r {
            Responsible::DealManager => self.input.rules.deal_responsible(manager),
            Responsible::User(u) => Some(*u),
            Responsible::Team { members, .. } => {
                let n = members.len() as u64;
                let i = (ordinal as u64 % n
                    + stable_hash(rule) % n
                    + self.today.rem_euclid(n as i64) as u64)
                    % n;
                Some(members[i as usize])
            }
        }
    }

    fn touch(&mut self, ordinal: usize, row: &CustomerRow, task: &TaskRule, t: Touch<'_>) {
        let input = self.input;
        let rules = input.rules;
        let customer = self.cust.clone();
        if let Some(draw) = input.holdout
            && (self.global_held || draw.rule_held(&task.rule, &customer, row.first_purchase))
        {
            // Held out: the touch is not made; its virtual twin marks when it would have been.
            self.lost_touch = true;
            self.held.touches.push(crate::holdout::VirtualTouch {
                key: format!("{}/{}/{}/{}", input.portal, task.rule, customer, t.window),
                rule: task.rule.clone(),
                customer,
                day: from_day_number(t.day.max(self.today)),
                global: self.global_held,
                period: draw.period.clone(),
            });
            return;
        }
        let Some(responsible) = self.responsible(&task.responsible, t.manager, ordinal, &task.rule)
        else {
            let reason = match t.manager {
                Some(m) => format!(
                    "no responsible: the deal's manager {} is inactive or gone from the CRM and the mapping has no default_responsible",
                    user_label(rules, m)
                ),
                None => "no responsible: the deal has no manager and the mapping has no default_responsible".into(),
            };
            self.skipped.push(Skipped {
                rule: task.rule.clone(),
                customer,
                reason,
            });
            return;
        };
        let manager = rules
            .user_names
            .get(&responsible)
            .map(String::as_str)
            .unwrap_or("");
        let mut ctx = context(row, t.sale, self.today, manager, &task.playbook, &task.rule);
        ctx.goal = &task.goal;
        ctx.offer = t.offer;
        ctx.step = t.step;
        let text = match rules.templates.render(&task.template, &ctx) {
            Ok(s) => s,
            Err(e) => {
                self.skipped.push(Skipped {
                    rule: task.rule.clone(),
                    customer,
                    reason: format!("task text: {e}"),
                });
                return;
            }
        };
        let mut due = rules
            .hours
            .slot(from_day_number(t.day), task.time, input.tz);
        if due.timestamp() < input.as_of {
            due = rules.hours.next_open(input.as_of, input.tz);
        }
        let key = format!("{}/{}/{}/{}", input.portal, task.rule, customer, t.window);
        self.metas.push(TaskMeta {
            key: key_hash(&key),
            rank: t.rank,
            value: customer_value(row),
            deadline: t.deadline,
            time: task.time,
        });
        self.actions.push(Action {
            merged: Vec::new(),
            summary: task_summary(task.kind, &due, &user_label(rules, responsible), &text),
            key,
            op: WriteOp::CreateTask {
                entity: t.entity,
                responsible,
                text,
                due: due.timestamp(),
                kind: task.kind,
            },
            rule: task.rule.clone(),
            customer,
        });
    }

    fn funnel(&mut self, row: &CustomerRow, facts: &CustomerFacts) {
        let Some(f) = &self.input.rules.funnel else {
            return;
        };
        let Some(next) = row.next_purchase else {
            return;
        };
        if f.entity == crate::playbooks::mapping::FunnelEntity::Customers {
            self.customer_funnel(f, row, facts, next);
            return;
        }
        let Some((deal, stage, _)) = &facts.funnel_deal else {
            // No open deal in the funnel yet: create one in the stage of its window. Keyed by
            // the next purchase date, so re-planning before the next sync creates nothing new.
            self.funnel_without_deal += 1;
            let customer = self.cust.clone();
            let target = f.stage_for(day_number(next) - self.today);
            let (target_id, target_name) = &f.stages[target];
            let (contact, company) = match row.key {
                CustomerKey::Contact(c) => (Some(c), row.company_ids.first().copied()),
                CustomerKey::Company(c) => (row.contact_ids.first().copied(), Some(c)),
            };
            self.actions.push(Action {
                merged: Vec::new(),
                key: format!("{}/funnel_create/{}/{}", self.input.portal, customer, next),
                op: WriteOp::CreateDeal {
                    name: format!("Повторная покупка: {}", row.name),
                    pipeline: f.pipeline,
                    stage: target_id.clone(),
                    contact,
                    company,
                    responsible: input_rules_deal_responsible(self.input.rules, facts),
                    price: row.expected_order_value.map(|v| v.round()),
                },
                rule: "funnel".into(),
                customer,
                summary: format!(
                    "create the funnel deal in {:?}: next purchase {} ({} days left)",
                    target_name,
                    next,
                    day_number(next) - self.today
                ),
            });
            return;
        };
        let customer = self.cust.clone();
        let target = f.stage_for(day_number(next) - self.today);
        let (target_id, target_name) = &f.stages[target];
        if stage == target_id {
            return;
        }
        if !f.stages.iter().any(|(s, _)| s == stage) {
            self.skipped.push(Skipped {
                rule: "funnel".into(),
                customer,
                reason: format!(
                    "deal {} is in stage {}, not one of the funnel's window stages: a manager works it",
                    deal.0, stage.0
                ),
            });
            return;
        }
        self.actions.push(Action {
            merged: Vec::new(),
            key: format!(
                "{}/funnel/{}/{}-{}",
                self.input.portal, customer, target_id.0, next
            ),
            op: WriteOp::MoveDeal {
                deal: *deal,
                pipeline: f.pipeline,
                stage: target_id.clone(),
            },
            rule: "funnel".into(),
            customer,
            summary: format!(
                "move funnel deal {} to {:?}: next purchase {} ({} days left)",
                deal.0,
                target_name,
                next,
                day_number(next) - self.today
            ),
        });
    }

    /// The funnel on amoCRM customers: one CRM customer per rebuy customer, linked to its main
    /// contact, created in the status of its window (key `customer_create/{customer}`: once,
    /// ever), then moved between statuses with its `next_date`/`next_price` kept current (key
    /// `customer_move/{customer}/{status}-{next purchase}`). The CRM's current state comes from
    /// `facts.crm_customer` (read from the CRM at plan time), so a customer created by a run
    /// whose outcome was lost is found, not created again.
    fn customer_funnel(
        &mut self,
        f: &crate::playbooks::Funnel,
        row: &CustomerRow,
        facts: &CustomerFacts,
        next: Date,
    ) {
        let input = self.input;
        let customer = self.cust.clone();
        let days_left = day_number(next) - self.today;
        let (status, status_name) = &f.stages[f.stage_for(days_left)];
        // amoCRM's next_date is an instant: local midnight of the expected day.
        let Ok(next_at) = next.to_zoned(input.tz.clone()).map(|z| z.timestamp()) else {
            return;
        };
        // The model's expected order value, else the customer's own average order.
        let next_price = row
            .expected_order_value
            .or_else(|| (row.purchases > 0).then(|| row.revenue / Decimal::from(row.purchases)))
            .map(|v| v.round());
        match &facts.crm_customer {
            None => {
                let contact = match row.key {
                    CustomerKey::Contact(c) => Some(c),
                    CustomerKey::Company(_) => row.contact_ids.first().copied(),
                };
                let Some(contact) = contact else {
                    self.skipped.push(Skipped {
                        rule: "funnel".into(),
                        customer,
                        reason: "a company customer without a contact: an amoCRM customer is linked to its main contact".into(),
                    });
                    return;
                };
                self.funnel_without_deal += 1;
                let company = match row.key {
                    CustomerKey::Company(c) => Some(c),
                    CustomerKey::Contact(_) => row.company_ids.first().copied(),
                };
                self.actions.push(Action {
                    merged: Vec::new(),
                    key: format!("{}/customer_create/{}", input.portal, customer),
                    op: WriteOp::CreateCustomer {
                        name: row.name.clone(),
                        contact,
                        company,
                        status: status.clone(),
                        next_date: next_at,
                        next_price,
                        responsible: input_rules_deal_responsible(self.input.rules, facts),
                    },
                    rule: "funnel".into(),
                    customer,
                    summary: format!(
                        "create the amoCRM customer in {status_name:?}: next purchase {next} ({days_left} days left)"
                    ),
                });
            }
            Some(c) => {
                let price_same = next_price.is_none_or(|p| {
                    Some(c.next_price) == rust_decimal::prelude::ToPrimitive::to_i64(&p)
                });
                if &c.status == status && c.next_date == Some(next_at) && price_same {
                    return;
                }
                if &c.status != status && !f.stages.iter().any(|(s, _)| s == &c.status) {
                    self.skipped.push(Skipped {
                        rule: "funnel".into(),
                        customer,
                        reason: format!(
                            "amoCRM customer {} is in status {}, not one of the funnel's window stages: a manager works it",
                            c.id, c.status.0
                        ),
                    });
                    return;
                }
                self.actions.push(Action {
                    merged: Vec::new(),
                    key: format!(
                        "{}/customer_move/{}/{}-{}",
                        input.portal, customer, status.0, next
                    ),
                    op: WriteOp::UpdateCustomer {
                        customer: c.id,
                        status: status.clone(),
                        next_date: next_at,
                        next_price,
                    },
                    rule: "funnel".into(),
                    customer,
                    summary: format!(
                        "move amoCRM customer {} to {status_name:?}: next purchase {next} ({days_left} days left)",
                        c.id
                    ),
                });
            }
        }
    }

    fn fields(&mut self, row: &CustomerRow, facts: &CustomerFacts) {
        let Some(f) = &self.input.rules.fields else {
            return;
        };
        let customer = self.cust.clone();
        let (entity, f) = match (f.entity, row.key) {
            (FieldEntity::Contacts, CustomerKey::Contact(c)) => (EntityRef::Contact(c), f),
            (FieldEntity::Contacts, CustomerKey::Company(c)) => match &f.companies {
                Some(on_companies) => (EntityRef::Company(c), on_companies.as_ref()),
                None => {
                    self.skipped.push(Skipped {
                        rule: "fields".into(),
                        customer,
                        reason: "a company customer: the companies have none of the segment fields (name them on companies too, or set create_missing = true)".into(),
                    });
                    return;
                }
            },
            (FieldEntity::Deals, _) => match facts.sales.last() {
                Some(s) => (EntityRef::Deal(s.deal), f),
                None => return,
            },
        };
        let mut writes = Vec::new();
        let mut window = Vec::new();
        if let Some(id) = &f.rfm_segment {
            writes.push((id, Some(row.rfm_segment.as_str().to_owned())));
            window.push(row.rfm_segment.as_str().to_owned());
        }
        if let Some(id) = &f.abc {
            writes.push((id, Some(row.abc.as_str().to_owned())));
            window.push(row.abc.as_str().to_owned());
        }
        if let Some(id) = &f.xyz {
            writes.push((id, Some(row.xyz.as_str().to_owned())));
            window.push(row.xyz.as_str().to_owned());
        }
        if let Some((id, fmt)) = &f.next_purchase {
            let v = row.next_purchase.map(|d| match fmt {
                DateFormat::Iso => d.to_string(),
                DateFormat::UnixSeconds => d
                    .to_zoned(self.input.tz.clone())
                    .map(|z| z.timestamp().as_second().to_string())
                    .unwrap_or_default(),
            });
            window.push(
                row.next_purchase
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "none".into()),
            );
            writes.push((id, v));
        }
        // Predicted fields; the action key carries every value, so an unchanged set is not
        // written again (values are rounded so that daily drift below them changes nothing).
        let predicted = crate::analytics::predicted_values(row);
        for (id, v) in [
            (&f.p_alive, predicted.p_alive),
            (&f.expected_purchases_90d, predicted.expected_purchases_90d),
            (&f.clv_12m, predicted.clv_12m),
            (&f.churn_band, predicted.churn_band),
        ] {
            if let Some(id) = id {
                window.push(v.clone().unwrap_or_else(|| "none".into()));
                writes.push((id, v));
            }
        }
        if writes.is_empty() {
            return; // the fields are still to be created
        }
        let summary = format!("write segment fields: {}", window.join(", "));
        self.actions.push(Action {
            merged: Vec::new(),
            key: format!(
                "{}/fields/{}/{}",
                self.input.portal,
                customer,
                window.join("-")
            ),
            op: WriteOp::UpdateFields {
                entity,
                fields: writes
                    .into_iter()
                    .map(|(id, value)| FieldWrite {
                        field_id: id.clone(),
                        value,
                    })
                    .collect(),
            },
            rule: "fields".into(),
            customer,
            summary,
        });
    }
}

/// Runs a playbook's `[[test]]` cases through the planner: each case is one customer with the
/// given purchase days (1,000 each, the last one with the case's products), planned at 08:00
/// local on `as_of` with the portal's rules; the tasks of this playbook's rules must be exactly
/// the expected `rule due-date` pairs (a touch merged into another task of the day, by one touch
/// per customer a day, is `rule due-date merged`). Returns one line per failing case.
pub fn run_playbook_tests(
    rules: &Rules,
    playbook: &crate::playbooks::rules::Playbook,
    tz: &TimeZone,
) -> Vec<String> {
    use crate::analytics::{Abc, RfmSegment, Tier, Xyz};
    let manager = rules
        .default_responsible
        .or_else(|| rules.user_names.keys().next().copied());
    let prefix = format!("{}.", playbook.name);
    let mut failures = Vec::new();
    for t in &playbook.tests {
        let Some(last) = t.purchases.last().copied() else {
            failures.push(format!("{}: no purchases", t.name));
            continue;
        };
        let n = t.purchases.len();
        let key = CustomerKey::Contact(rebuy_core::ContactId(1));
        let row = CustomerRow {
            key,
            contact_ids: vec![rebuy_core::ContactId(1)],
            company_ids: vec![],
            name: "Тестовый клиент".into(),
            phones: vec![],
            emails: vec![],
            first_purchase: t.purchases[0],
            last_purchase: last,
            purchases: n as u32,
            deals: n as u32,
            revenue: Decimal::from(1000 * n as i64),
            recency_days: 0,
            r: 3,
            f: 3,
            m: 3,
            rfm_segment: if n == 1 {
                RfmSegment::New
            } else {
                RfmSegment::Loyal
            },
            abc: Abc::B,
            xyz: Xyz::Y,
            tier: Tier::Medium,
            cycle_days: None,
            next_purchase: t.next_purchase,
            cycle_status: None,
            one_time: n == 1,
            sleeping: false,
            p_alive: None,
            expected_purchases_90d: None,
            next_purchase_forecast: None,
            expected_order_value: None,
            clv: None,
        };
        let facts = CustomerFacts {
            sales: t
                .purchases
                .iter()
                .enumerate()
                .map(|(i, d)| Sale {
                    day: *d,
                    amount: Decimal::from(1000),
                    deal: DealId(100 + i as u64),
                    manager,
                    products: if i + 1 == n {
                        t.products.iter().map(|p| p.to_lowercase()).collect()
                    } else {
                        vec![]
                    },
                })
                .collect(),
            funnel_deal: None,
            crm_customer: None,
        };
        let Ok(as_of) = t.as_of.at(8, 0, 0, 0).to_zoned(tz.clone()) else {
            failures.push(format!("{}: as_of is not a local time", t.name));
            continue;
        };
        let p = plan(&PlanInput {
            portal: "test",
            crm: CrmKind::Amocrm,
            as_of: as_of.timestamp(),
            tz,
            rules,
            customers: std::slice::from_ref(&row),
            facts: std::slice::from_ref(&facts),
            open_deals: &[],
            booked: &Booked::default(),
            holdout: None,
        });
        let mut got: Vec<String> = Vec::new();
        for a in &p.actions {
            let WriteOp::CreateTask { due, .. } = &a.op else {
                continue;
            };
            let day = due.to_zoned(tz.clone()).date();
            if let Some(r) = a.rule.strip_prefix(&prefix) {
                got.push(format!("{r} {day}"));
            }
            // Touches merged into this task (one touch per customer a day): `rule day merged`
            // when merged into a touch of the same playbook; merged into another playbook's
            // task, the touch still happens that day, and the case does not depend on which
            // other playbooks the portal runs.
            let own = a.rule.starts_with(&prefix);
            for k in &a.merged {
                if let Some(r) = k.split('/').nth(1).and_then(|r| r.strip_prefix(&prefix)) {
                    got.push(if own {
                        format!("{r} {day} merged")
                    } else {
                        format!("{r} {day}")
                    });
                }
            }
        }
        got.sort();
        let mut want = t.expect.clone();
        want.sort();
        if got != want {
            failures.push(format!(
                "{}: expected [{}], planned [{}]",
                t.name,
                want.join(", "),
                got.join(", ")
            ));
        }
    }
    failures
}

fn kind_str(k: TaskKind) -> &'static str {
    match k {
        TaskKind::Call => "call",
        TaskKind::Meeting => "meeting",
        TaskKind::Letter => "letter",
    }
}

/// Month/day in a year; Feb 29 falls on Feb 28 in other years.
fn month_day(year: i16, month: i8, day: i8) -> Option<Date> {
    Date::new(year, month, day)
        .ok()
        .or_else(|| Date::new(year, month, day - 1).ok())
}

/// FNV-1a: stable across runs and platforms (std's hasher is not).
fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
#[path = "plan_tests.rs"]
pub(crate) mod tests;
