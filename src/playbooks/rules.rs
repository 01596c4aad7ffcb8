//! The playbook file format: `config/playbooks/*.toml`, read strictly (`deny_unknown_fields`,
//! so a misspelt key is an error, not a silently ignored rule).
//!
//! A playbook is a set of touch rules. Every rule has an `id` (unique in the playbook; the
//! idempotency key uses `{playbook}.{id}`), a `goal` (what the contact is for), a `task`
//! kind (`call`, `meeting`, `letter`), a `responsible` (`deal_manager`, `user:<name or id>`,
//! `team:<name>` for round-robin over a team of the mapping), an optional preferred local
//! `time` (`"11:00"`, clamped into business hours) and an optional `text` template
//! (minijinja, Russian by default; see [`super::templates`]).
//!
//! Rule kinds:
//! - `[[after_purchase]]`: `days` after the customer's last purchase;
//! - `[[before_next_purchase]]`: `days_before` the expected next purchase (consumption cycles
//!   included: the analytics compute the date);
//! - `[[seasonal]]`: every year on `date = "MM-DD"` (minus `days_before`); holidays are
//!   seasonal rules too;
//! - `[[product_chain]]`: a purchase whose products match `bought` gets a touch about `offer`
//!   `after_days` later;
//! - `[[reactivation]]`: staged soft touches (`[[reactivation.steps]]`) for `one_time` or
//!   `sleeping` customers, stopping as soon as they buy;
//! - `[[reward]]`: `frequent` buyers (at least `min_purchases` purchase days within
//!   `window_days`) or `high_spender`s (at least `min_revenue` within `window_days`).
//!
//! Most rules take the filters `segments` (RFM segment names) and `products` (substrings of
//! product names the customer bought, case-insensitive).
//!
//! Every rule may take `holdout_percent`: its own control group, that share of the customers it
//! would touch gets no touch of this rule (see [`crate::holdout`]).
use rebuy_core::TaskKind;
use rust_decimal::Decimal;
use serde::Deserialize;

fn default_task() -> TaskKind {
    TaskKind::Call
}

fn default_responsible() -> String {
    "deal_manager".into()
}

/// One playbook file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// Name (defaults to the file stem).
    #[serde(default)]
    pub name: String,
    /// What the playbook is for.
    #[serde(default)]
    pub description: String,
    /// Touches after a purchase.
    #[serde(default)]
    pub after_purchase: Vec<AfterPurchase>,
    /// Reminders before the expected next purchase.
    #[serde(default)]
    pub before_next_purchase: Vec<BeforeNext>,
    /// Yearly dates (seasons, holidays).
    #[serde(default)]
    pub seasonal: Vec<Seasonal>,
    /// Bought X -> touch about Y after N days.
    #[serde(default)]
    pub product_chain: Vec<ProductChain>,
    /// Staged reactivation of one-time and sleeping customers.
    #[serde(default)]
    pub reactivation: Vec<Reactivation>,
    /// Rewards for frequent buyers and high spenders.
    #[serde(default)]
    pub reward: Vec<Reward>,
    /// Example cases checked by `cargo test` (see [`PlaybookTest`]).
    #[serde(default, rename = "test")]
    pub tests: Vec<PlaybookTest>,
}

/// What every touch rule says about its task.
#[derive(Debug, Clone, Copy)]
pub struct TaskSpec<'a> {
    /// Rule id.
    pub id: &'a str,
    /// The goal of the contact.
    pub goal: &'a str,
    /// Task kind.
    pub task: TaskKind,
    /// Who does it (`deal_manager`, `user:..`, `team:..`).
    pub responsible: &'a str,
    /// Preferred local time.
    pub time: Option<&'a str>,
    /// Text template (the default one when `None`).
    pub text: Option<&'a str>,
    /// This rule's own control group, percent of the customers it would touch (see
    /// [`crate::holdout`]); `None`: only the mapping's global holdout.
    pub holdout_percent: Option<u32>,
}

macro_rules! task_spec {
    ($t:ty) => {
        impl $t {
            /// The task part of the rule.
            pub fn spec(&self) -> TaskSpec<'_> {
                TaskSpec {
                    id: &self.id,
                    goal: &self.goal,
                    task: self.task,
                    responsible: &self.responsible,
                    time: self.time.as_deref(),
                    text: self.text.as_deref(),
                    holdout_percent: self.holdout_percent,
                }
            }
        }
    };
}

/// `[[after_purchase]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterPurchase {
    /// Rule id.
    pub id: String,
    /// Days after the last purchase.
    pub days: u32,
    /// Goal.
    pub goal: String,
    /// Task kind.
    #[serde(default = "default_task")]
    pub task: TaskKind,
    /// Responsible.
    #[serde(default = "default_responsible")]
    pub responsible: String,
    /// Preferred local time `HH:MM`.
    pub time: Option<String>,
    /// Text template.
    pub text: Option<String>,
    /// Only these RFM segments.
    #[serde(default)]
    pub segments: Vec<String>,
    /// Only when the purchase had a product matching one of these.
    #[serde(default)]
    pub products: Vec<String>,
    /// This rule's own control group: percent of customers held out of it (0-100).
    pub holdout_percent: Option<u32>,
}
task_spec!(AfterPurchase);

/// `[[before_next_purchase]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BeforeNext {
    /// Rule id.
    pub id: String,
    /// Days before the expected next purchase (0 = on the day).
    pub days_before: u32,
    /// Goal.
    pub goal: String,
    /// Task kind.
    #[serde(default = "default_task")]
    pub task: TaskKind,
    /// Responsible.
    #[serde(default = "default_responsible")]
    pub responsible: String,
    /// Preferred local time.
    pub time: Option<String>,
    /// Text template.
    pub text: Option<String>,
    /// Only these RFM segments.
    #[serde(default)]
    pub segments: Vec<String>,
    /// Only customers who bought a matching product.
    #[serde(default)]
    pub products: Vec<String>,
    /// This rule's own control group: percent of customers held out of it (0-100).
    pub holdout_percent: Option<u32>,
}
task_spec!(BeforeNext);

/// `[[seasonal]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seasonal {
    /// Rule id.
    pub id: String,
    /// Month and day, `MM-DD`.
    pub date: String,
    /// Days before the date.
    #[serde(default)]
    pub days_before: u32,
    /// Goal.
    pub goal: String,
    /// Task kind.
    #[serde(default = "default_task")]
    pub task: TaskKind,
    /// Responsible.
    #[serde(default = "default_responsible")]
    pub responsible: String,
    /// Preferred local time.
    pub time: Option<String>,
    /// Text template.
    pub text: Option<String>,
    /// Only these RFM segments.
    #[serde(default)]
    pub segments: Vec<String>,
    /// Only customers who bought a matching product.
    #[serde(default)]
    pub products: Vec<String>,
    /// This rule's own control group: percent of customers held out of it (0-100).
    pub holdout_percent: Option<u32>,
}
task_spec!(Seasonal);

/// `[[product_chain]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductChain {
    /// Rule id.
    pub id: String,
    /// A purchase with a product matching this (substring, case-insensitive) starts the chain.
    pub bought: String,
    /// Days after that purchase.
    pub after_days: u32,
    /// What to offer (the template's `offer`).
    pub offer: String,
    /// Goal.
    pub goal: String,
    /// Task kind.
    #[serde(default = "default_task")]
    pub task: TaskKind,
    /// Responsible.
    #[serde(default = "default_responsible")]
    pub responsible: String,
    /// Preferred local time.
    pub time: Option<String>,
    /// Text template.
    pub text: Option<String>,
    /// This rule's own control group: percent of customers held out of it (0-100).
    pub holdout_percent: Option<u32>,
}
task_spec!(ProductChain);

/// Who a reactivation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReactivationTarget {
    /// Bought once, `start_after_days` ago or more.
    OneTime,
    /// Bought more than once, nothing for `start_after_days` or more.
    Sleeping,
}

/// `[[reactivation]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reactivation {
    /// Rule id.
    pub id: String,
    /// One-time or sleeping customers.
    pub who: ReactivationTarget,
    /// The chain starts this many days after the last purchase.
    pub start_after_days: u32,
    /// Customers whose chain would have started before this date (the existing base) start
    /// on it instead, spread over `spread_days` so managers are not flooded on one day.
    /// Without it, only customers who become eligible from now on get a chain.
    pub campaign_start: Option<jiff::civil::Date>,
    /// Days over which the existing base is spread (default 30).
    #[serde(default = "default_spread")]
    pub spread_days: u32,
    /// Only these RFM segments.
    #[serde(default)]
    pub segments: Vec<String>,
    /// The soft touches, in order.
    pub steps: Vec<ReactivationStep>,
    /// This chain's own control group: percent of customers held out of every step (0-100).
    pub holdout_percent: Option<u32>,
}

fn default_spread() -> u32 {
    30
}

/// `[[reactivation.steps]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactivationStep {
    /// Days after the start of the chain.
    pub after_days: u32,
    /// Goal.
    pub goal: String,
    /// Task kind.
    #[serde(default = "default_task")]
    pub task: TaskKind,
    /// Responsible.
    #[serde(default = "default_responsible")]
    pub responsible: String,
    /// Preferred local time.
    pub time: Option<String>,
    /// Text template.
    pub text: Option<String>,
}

/// Which reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// At least `min_purchases` purchase days within `window_days`.
    Frequent,
    /// At least `min_revenue` within `window_days`.
    HighSpender,
}

/// `[[reward]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reward {
    /// Rule id.
    pub id: String,
    /// Frequent buyer or high spender.
    pub kind: RewardKind,
    /// The window, days back from the plan date.
    pub window_days: u32,
    /// Frequent: purchase days needed.
    pub min_purchases: Option<u32>,
    /// High spender: revenue needed (portal currency).
    pub min_revenue: Option<Decimal>,
    /// Goal.
    pub goal: String,
    /// Task kind.
    #[serde(default = "default_task")]
    pub task: TaskKind,
    /// Responsible.
    #[serde(default = "default_responsible")]
    pub responsible: String,
    /// Preferred local time.
    pub time: Option<String>,
    /// Text template.
    pub text: Option<String>,
    /// This rule's own control group: percent of customers held out of it (0-100).
    pub holdout_percent: Option<u32>,
}
task_spec!(Reward);

/// A `[[test]]` case: one customer's purchases and the touches expected on a plan date.
/// `cargo test` runs every ready playbook's cases through the planner.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaybookTest {
    /// What the case shows.
    pub name: String,
    /// Purchase days, oldest first (`YYYY-MM-DD`).
    pub purchases: Vec<jiff::civil::Date>,
    /// Products of the last purchase.
    #[serde(default)]
    pub products: Vec<String>,
    /// The expected next purchase, if the case needs one.
    pub next_purchase: Option<jiff::civil::Date>,
    /// The plan date.
    pub as_of: jiff::civil::Date,
    /// Expected `rule due-date` pairs (`"satisfaction 2026-03-09"`), in any order; the plan
    /// must hold exactly these tasks. A touch merged into another task of the same day (one
    /// touch per customer a day) is written `"order_day 2026-03-16 merged"`.
    pub expect: Vec<String>,
}
