//! The typed `[portal.mapping]`: how a portal's CRM is laid out for the playbooks (which
//! pipeline is the repeat funnel, which stages are the customer funnel's time windows, which
//! users form a team, which custom fields receive the segments), read strictly.
//!
//! ```toml
//! [portal.mapping]
//! playbooks = ["car_dealer", "reactivation"]   # built-in names, or paths to .toml files
//! # playbooks_dir = "config/playbooks"         # where names are looked up first
//! repeat_pipeline = "Повторные продажи"         # name or id; routing is off without it
//! # repeat_stage = "Напомнить о покупке"        # default: the first open stage
//! repeat_max_age_days = 30                     # only route deals created this recently
//! # repeat_task_text = "..."                   # template of the repeat-lead task
//! default_responsible = "Анна Смирнова"         # when a deal has no manager
//! horizon_days = 7                             # plan touches due up to this many days ahead
//! lookback_days = 3                            # ... and this many days back (missed runs)
//! auto_apply = false                           # `rebuy serve`'s daily run writes (else it plans)
//! route_repeat_leads = true                    # `rebuy serve` routes repeat leads by webhook
//! max_tasks_per_manager_per_day = 40           # capacity (default: no cap); the rest waits
//! max_touches_per_customer_per_day = 1         # competing touches merge into one task
//! reminder_quiet_days = 7                      # no "runs out" reminder this soon after a purchase
//! holdout_percent = 5                          # control group (stratified by RFM cell); 0 = off
//! holdout_redraw = "monthly"                   # never | monthly | quarterly | yearly
//! outcome_window_days = 30                     # a purchase this soon after a touch is its outcome
//! holidays = ["2027-01-01", "2027-01-07"]
//! [portal.mapping.business_hours]
//! start = "10:00"
//! end = "18:00"
//! days = ["mon", "tue", "wed", "thu", "fri"]
//! [portal.mapping.teams]
//! service = ["Иван Петров", 6100005]
//! [portal.mapping.max_tasks_per_team_per_day]  # a team's cap, over all its members
//! service = 60
//! [portal.mapping.funnel]                       # the cyclic customer funnel
//! # entity = "leads"                           # leads (a lead pipeline / deal category) | customers
//! pipeline = "Цикл клиента"                     # leads only
//! stages = ["Больше 30 дней", "30 дней", "7 дней", "Пора покупать"]
//! windows_days = [30, 7, 0]                    # days left: > 30 | <= 30 | <= 7 | <= 0
//! [portal.mapping.fields]                       # segment fields (names or ids)
//! entity = "contacts"                          # contacts | deals (the last won deal)
//! rfm_segment = "Сегмент"
//! next_purchase = "Дата следующей покупки"
//! # abc = "ABC", xyz = "XYZ"
//! # p_alive = "Вероятность активности"        # predicted fields (numbers; churn_band: low |
//! # expected_purchases_90d = "Покупок за 90 дней" # medium | high), refreshed by each plan
//! # clv_12m = "CLV 12 мес", churn_band = "Риск оттока"
//! # create_missing = false                     # create fields named here that the CRM lacks
//! ```
//!
//! `funnel.entity = "customers"` keeps the funnel on amoCRM's customers entity (periodic
//! purchases): `stages` then name customer statuses and `pipeline` is not given. It needs the
//! account's customers mode set to `periodicity`. The choice is explicit, never detected: a
//! funnel that silently moved between leads and customers when someone toggled the mode would
//! leave every customer twice in the CRM.
use serde::Deserialize;
use std::collections::BTreeMap;

/// A CRM object named by its id or its name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum NameOrId {
    /// Numeric id.
    Id(u64),
    /// Name (or an id written as text).
    Name(String),
}

impl std::fmt::Display for NameOrId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NameOrId::Id(i) => write!(f, "{i}"),
            NameOrId::Name(s) => write!(f, "{s:?}"),
        }
    }
}

impl NameOrId {
    /// Whether this names an object with `id` and `name` (ids compare as text, names
    /// case-insensitively and trimmed).
    pub fn matches(&self, id: &str, name: &str) -> bool {
        match self {
            NameOrId::Id(i) => i.to_string() == id,
            NameOrId::Name(s) => {
                let s = s.trim();
                s == id || s.to_lowercase() == name.trim().to_lowercase()
            }
        }
    }
}

fn d30() -> u32 {
    30
}
fn d7() -> u32 {
    7
}
fn d3() -> u32 {
    3
}

/// `[portal.mapping]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// Playbooks in force: built-in names or `.toml` paths.
    #[serde(default)]
    pub playbooks: Vec<String>,
    /// Directory searched for playbook names before the built-in ones.
    pub playbooks_dir: Option<String>,
    /// The repeat-sales pipeline (routing is off without it).
    pub repeat_pipeline: Option<NameOrId>,
    /// Its stage for routed deals (default: the first open stage).
    pub repeat_stage: Option<NameOrId>,
    /// Only deals created at most this many days before the plan date are routed.
    #[serde(default = "d30")]
    pub repeat_max_age_days: u32,
    /// Template of the task for a routed repeat lead.
    pub repeat_task_text: Option<String>,
    /// Who gets a task when the deal has no manager.
    pub default_responsible: Option<NameOrId>,
    /// Teams for round-robin (`team:<name>`).
    #[serde(default)]
    pub teams: BTreeMap<String, Vec<NameOrId>>,
    /// Working hours.
    #[serde(default)]
    pub business_hours: BusinessHours,
    /// Non-working dates.
    #[serde(default)]
    pub holidays: Vec<jiff::civil::Date>,
    /// The cyclic customer funnel on a lead pipeline.
    pub funnel: Option<FunnelMapping>,
    /// Custom fields receiving the segments.
    pub fields: Option<FieldsMapping>,
    /// Plan touches due up to this many days after the plan date.
    #[serde(default = "d7")]
    pub horizon_days: u32,
    /// ... and this many days before it (touches missed by runs that did not happen).
    #[serde(default = "d3")]
    pub lookback_days: u32,
    /// Whether `rebuy serve`'s daily run (and its re-plan after a won deal) writes its plan to
    /// the CRM. Off by default: the server then only plans, and the plan waits in the
    /// dashboard for Apply. Turning it on takes effect with the next local day's run, which
    /// never catches up on days before it (see [`crate::server::runtime`]).
    #[serde(default)]
    pub auto_apply: bool,
    /// Whether `rebuy serve` routes a repeat lead to `repeat_pipeline` (move, flag, task) as
    /// its webhook arrives. Default true: naming `repeat_pipeline` is the request to route, a
    /// routed lead is one write for one new inquiry (never a backlog), and a repeat customer
    /// waiting for the next Apply would wait for nothing. False leaves repeat deals to
    /// `rebuy apply` / the dashboard's Apply (and to the daily run with `auto_apply`).
    #[serde(default = "yes")]
    pub route_repeat_leads: bool,
    /// At most this many tasks per manager and local day (default: no cap). The planner moves
    /// what does not fit to the manager's next business days, by priority (see
    /// [`crate::plan`]); tasks already in the outbox for a day count against it.
    pub max_tasks_per_manager_per_day: Option<u32>,
    /// At most this many tasks per team (of `teams`) and local day, over all its members.
    #[serde(default)]
    pub max_tasks_per_team_per_day: BTreeMap<String, u32>,
    /// At most this many tasks per customer and local day (default 1): more competing touches
    /// merge into the most important one, whose text lists the others.
    #[serde(default = "one")]
    pub max_touches_per_customer_per_day: u32,
    /// A `before_next_purchase` touch ("water runs out") is not planned when the customer
    /// bought, or opened a deal, within this many days before the touch's day (default 7:
    /// shorter than a typical consumption cycle, so the reminders of a normal cycle stay).
    #[serde(default = "d7")]
    pub reminder_quiet_days: u32,
    /// The global control group: this percent of the customers (stratified by RFM cell) gets
    /// no touch and no funnel move, so `rebuy results` can compare (default 5; 0 = off). See
    /// [`crate::holdout`].
    #[serde(default = "d5")]
    pub holdout_percent: u32,
    /// How often the control groups are drawn anew (default monthly).
    #[serde(default)]
    pub holdout_redraw: crate::holdout::Redraw,
    /// A purchase within this many days of a touch (or of a held-out customer's virtual
    /// touch) is its outcome (default 30).
    #[serde(default = "d30")]
    pub outcome_window_days: u32,
}

fn d5() -> u32 {
    5
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// The write switches of a raw `[portal.mapping]`: `(auto_apply, route_repeat_leads)`. A
/// mapping that does not parse writes nothing (`(false, false)`); its problems are reported
/// by `rebuy config check` and `rebuy mapping`.
pub fn write_switches(value: &serde_json::Value) -> (bool, bool) {
    if value.is_null() {
        return (false, false);
    }
    match parse(value) {
        Ok(m) => (
            m.auto_apply,
            m.route_repeat_leads && m.repeat_pipeline.is_some(),
        ),
        Err(_) => (false, false),
    }
}

impl Default for Mapping {
    fn default() -> Self {
        Self {
            playbooks: Vec::new(),
            playbooks_dir: None,
            repeat_pipeline: None,
            repeat_stage: None,
            repeat_max_age_days: 30,
            repeat_task_text: None,
            default_responsible: None,
            teams: BTreeMap::new(),
            business_hours: BusinessHours::default(),
            holidays: Vec::new(),
            funnel: None,
            fields: None,
            horizon_days: 7,
            lookback_days: 3,
            auto_apply: false,
            route_repeat_leads: true,
            max_tasks_per_manager_per_day: None,
            max_tasks_per_team_per_day: BTreeMap::new(),
            max_touches_per_customer_per_day: 1,
            reminder_quiet_days: 7,
            holdout_percent: 5,
            holdout_redraw: crate::holdout::Redraw::default(),
            outcome_window_days: 30,
        }
    }
}

/// `[portal.mapping.business_hours]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    /// Start, `HH:MM`.
    #[serde(default = "default_start")]
    pub start: String,
    /// End, `HH:MM`.
    #[serde(default = "default_end")]
    pub end: String,
    /// Working weekdays (`mon`..`sun`).
    #[serde(default = "default_days")]
    pub days: Vec<String>,
}

fn default_start() -> String {
    "10:00".into()
}
fn default_end() -> String {
    "18:00".into()
}
fn default_days() -> Vec<String> {
    ["mon", "tue", "wed", "thu", "fri"]
        .map(String::from)
        .to_vec()
}

impl Default for BusinessHours {
    fn default() -> Self {
        Self {
            start: default_start(),
            end: default_end(),
            days: default_days(),
        }
    }
}

/// Which CRM entity carries the funnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunnelEntity {
    /// Open deals in a lead pipeline (amoCRM) or deal category (Bitrix24).
    #[default]
    Leads,
    /// amoCRM customers (periodicity mode).
    Customers,
}

/// The funnel: a pipeline (or amoCRM's customer statuses) whose stages are time windows
/// before the next purchase (in the mapping, or in one playbook).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelMapping {
    /// Where the funnel lives.
    #[serde(default)]
    pub entity: FunnelEntity,
    /// The pipeline (leads only).
    pub pipeline: Option<NameOrId>,
    /// Its stages, farthest window first, "due / overdue" last.
    pub stages: Vec<NameOrId>,
    /// Descending day thresholds between the stages (one fewer than the stages); default
    /// `[30, 7, 0]`: more than 30 days left, at most 30, at most 7, due or overdue.
    pub windows_days: Option<Vec<i64>>,
}

/// Where segment fields are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldEntity {
    /// The customer's contact; a company customer (B2B) gets the fields of the same names on
    /// its company, when the companies have them (or `create_missing` creates them).
    #[default]
    Contacts,
    /// The customer's last won deal.
    Deals,
}

/// `[portal.mapping.fields]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsMapping {
    /// Where.
    #[serde(default)]
    pub entity: FieldEntity,
    /// RFM segment (text).
    pub rfm_segment: Option<NameOrId>,
    /// ABC class (text).
    pub abc: Option<NameOrId>,
    /// XYZ class (text).
    pub xyz: Option<NameOrId>,
    /// Expected next purchase (date).
    pub next_purchase: Option<NameOrId>,
    /// The driving model's probability that the customer is still buying (number 0..1, two
    /// decimals).
    pub p_alive: Option<NameOrId>,
    /// The driving model's expected purchases in the next 90 days (number, two decimals).
    pub expected_purchases_90d: Option<NameOrId>,
    /// Predicted CLV over the analysis' `clv_horizon_days` (default 365), whole currency
    /// units (number).
    pub clv_12m: Option<NameOrId>,
    /// Churn band from P(alive): `low` (>= 0.7), `medium` (>= 0.3), `high` (text).
    pub churn_band: Option<NameOrId>,
    /// Create the fields named here that the CRM does not have (amoCRM: select for the
    /// segments and the churn band, date for the next purchase, numeric for the predicted
    /// numbers; Bitrix24: string, date and double user fields).
    #[serde(default)]
    pub create_missing: bool,
}

/// Reads the raw `[portal.mapping]` value (JSON `null` = every default); the error names the
/// failing key path.
pub fn parse(value: &serde_json::Value) -> Result<Mapping, (String, String)> {
    if value.is_null() {
        return Ok(Mapping::default());
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (
            if path == "." { String::new() } else { path },
            e.into_inner().to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn null_is_the_default_and_unknown_keys_are_refused() {
        let m = parse(&serde_json::Value::Null).unwrap();
        assert_eq!((m.horizon_days, m.lookback_days), (7, 3));
        assert!(!m.auto_apply, "the server writes nothing unless asked");
        let (key, reason) =
            parse(&json!({"funnel": {"pipeline": 1, "stages": [], "colour": 1}})).unwrap_err();
        assert_eq!(key, "funnel.colour");
        assert!(reason.contains("colour"), "{reason}");
    }

    #[test]
    fn write_switches_default_to_planning_only_and_routing_when_a_pipeline_is_named() {
        assert_eq!(write_switches(&serde_json::Value::Null), (false, false));
        assert_eq!(
            write_switches(&json!({"playbooks": ["water_delivery"]})),
            (false, false)
        );
        assert_eq!(
            write_switches(&json!({"repeat_pipeline": "R"})),
            (false, true)
        );
        assert_eq!(
            write_switches(
                &json!({"repeat_pipeline": "R", "route_repeat_leads": false, "auto_apply": true})
            ),
            (true, false)
        );
        // A mapping that does not parse writes nothing.
        assert_eq!(
            write_switches(&json!({"auto_apply": true, "colour": 1})),
            (false, false)
        );
    }

    #[test]
    fn names_and_ids_match() {
        assert!(NameOrId::Id(5).matches("5", "x"));
        assert!(NameOrId::Name(" повторные Продажи ".into()).matches("9", "Повторные продажи"));
        assert!(NameOrId::Name("9".into()).matches("9", "x"));
    }
}
