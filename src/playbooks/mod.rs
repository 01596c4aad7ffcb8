//! Playbooks: the sales practice as configuration. A portal's `[portal.mapping]` names the
//! playbooks in force (built-in ones from `config/playbooks/`, or files of its own) and maps
//! their words onto the CRM: pipelines, stages, users, teams, custom fields.
//!
//! [`resolve`] reads the mapping and the playbooks, checks them against the CRM's pipelines,
//! users and fields, and returns either the [`Rules`] the planner runs, or every problem found
//! at once ([`Problem`]: file, key, reason), so `rebuy mapping` and `rebuy plan` refuse a
//! playbook that names an unknown stage, pipeline, user or field with one complete list.
//!
//! Flow position: pull -> cache -> analyse -> **plan** (the rules) -> outbox -> CRM.
//!
//! # Layout
//! - [`mapping`]: the typed `[portal.mapping]`.
//! - [`rules`]: the playbook file format.
//! - [`templates`]: minijinja task texts (Russian defaults).
//! - [`schedule`]: business hours and time zones.
pub mod mapping;
pub mod rules;
pub mod schedule;
pub mod templates;

use crate::analytics::RfmSegment;
use jiff::civil::{Date, Time};
use mapping::{FieldEntity, FunnelEntity, FunnelMapping, Mapping, NameOrId};
use rebuy_core::{
    CrmKind, CustomersFunnel, EntityKind, FieldDef, FieldEntityKind, FieldKind, PipelineId,
    StageId, StageKind, TaskKind, UserId,
};
use rules::{Playbook, ReactivationTarget, RewardKind, TaskSpec};
use rust_decimal::Decimal;
use schedule::Hours;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use templates::Templates;

/// The ready playbooks shipped with rebuy (`config/playbooks/*.toml`), by name.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "water_delivery",
        include_str!("../../config/playbooks/water_delivery.toml"),
    ),
    (
        "car_dealer",
        include_str!("../../config/playbooks/car_dealer.toml"),
    ),
    (
        "building_materials",
        include_str!("../../config/playbooks/building_materials.toml"),
    ),
    (
        "agri_seasons",
        include_str!("../../config/playbooks/agri_seasons.toml"),
    ),
    (
        "reactivation",
        include_str!("../../config/playbooks/reactivation.toml"),
    ),
];

/// One problem of a mapping or playbook.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Problem {
    /// The file (a playbook path, `built-in playbook car_dealer`, or `portal shop mapping`).
    pub file: String,
    /// The key (`after_purchase[1].responsible`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.reason)
        }
    }
}

/// Formats problems one per line.
pub fn format_problems(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  {p}\n")).collect()
}

/// Who does a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Responsible {
    /// The manager of the deal the task is attached to (else the mapping's default).
    DealManager,
    /// A named user.
    User(UserId),
    /// Round-robin over a team.
    Team {
        /// Team name.
        name: String,
        /// Members (active users), in mapping order.
        members: Vec<UserId>,
    },
}

/// The task part of a compiled rule.
#[derive(Debug, Clone)]
pub struct TaskRule {
    /// `{playbook}.{id}`: the rule part of the idempotency key.
    pub rule: String,
    /// Playbook name.
    pub playbook: String,
    /// Goal.
    pub goal: String,
    /// Task kind.
    pub kind: TaskKind,
    /// Who.
    pub responsible: Responsible,
    /// Preferred local time.
    pub time: Option<Time>,
    /// Name of the compiled template.
    pub template: String,
}

/// What triggers a rule.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// `days` after the last purchase.
    AfterPurchase {
        /// Offset.
        days: u32,
        /// Segment filter (empty = all).
        segments: Vec<RfmSegment>,
        /// Product filter on the last purchase (lower-case substrings; empty = all).
        products: Vec<String>,
    },
    /// `days_before` the expected next purchase.
    BeforeNext {
        /// Offset.
        days_before: u32,
        /// Segment filter.
        segments: Vec<RfmSegment>,
        /// Product filter on any purchase.
        products: Vec<String>,
    },
    /// Every year on a month/day.
    Seasonal {
        /// Month.
        month: i8,
        /// Day.
        day: i8,
        /// Days before.
        days_before: u32,
        /// Segment filter.
        segments: Vec<RfmSegment>,
        /// Product filter on any purchase.
        products: Vec<String>,
    },
    /// Bought X -> touch about Y after N days.
    ProductChain {
        /// Lower-case substring of a product name.
        bought: String,
        /// Offset.
        after_days: u32,
        /// What to offer.
        offer: String,
    },
    /// One step of a staged reactivation.
    Reactivation {
        /// Target.
        who: ReactivationTarget,
        /// Chain start after the last purchase.
        start_after_days: u32,
        /// Campaign start for the existing base.
        campaign_start: Option<Date>,
        /// Spread of the existing base.
        spread_days: u32,
        /// Segment filter.
        segments: Vec<RfmSegment>,
        /// Step number, 1-based.
        step: u32,
        /// Days after the chain start.
        after_days: u32,
    },
    /// A reward.
    Reward {
        /// Which.
        kind: RewardKind,
        /// Window in days.
        window_days: u32,
        /// Frequent: purchase days needed.
        min_purchases: u32,
        /// High spender: revenue needed.
        min_revenue: Decimal,
    },
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The task.
    pub task: TaskRule,
    /// The trigger.
    pub trigger: Trigger,
}

/// Repeat routing, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeatRouting {
    /// Target pipeline.
    pub pipeline: PipelineId,
    /// Target stage.
    pub stage: StageId,
    /// Only deals created at most this many days before the plan date.
    pub max_age_days: u32,
}

/// The funnel, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Funnel {
    /// Leads (a pipeline's open deals) or amoCRM customers.
    pub entity: FunnelEntity,
    /// Pipeline (leads; `PipelineId(0)` for customers, see [`Funnel::pipeline`]).
    pub pipeline: PipelineId,
    /// Stages (id, name), farthest window first.
    pub stages: Vec<(StageId, String)>,
    /// Descending thresholds, one fewer than the stages.
    pub windows_days: Vec<i64>,
}

impl Funnel {
    /// The lead pipeline of the funnel; `None` when it lives on amoCRM customers.
    pub fn pipeline(&self) -> Option<PipelineId> {
        (self.entity == FunnelEntity::Leads).then_some(self.pipeline)
    }

    /// The stage index for `days_left` until the next purchase.
    pub fn stage_for(&self, days_left: i64) -> usize {
        self.windows_days
            .iter()
            .filter(|&&w| days_left <= w)
            .count()
    }
}

/// How a date is written to a CRM field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateFormat {
    /// Unix seconds of local midnight (amoCRM `date` fields).
    UnixSeconds,
    /// `YYYY-MM-DD` (Bitrix24).
    Iso,
}

/// Segment fields, resolved to field ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFields {
    /// Where.
    pub entity: FieldEntity,
    /// RFM segment field id.
    pub rfm_segment: Option<String>,
    /// ABC field id.
    pub abc: Option<String>,
    /// XYZ field id.
    pub xyz: Option<String>,
    /// Next purchase field id and its format.
    pub next_purchase: Option<(String, DateFormat)>,
    /// P(alive) field id.
    pub p_alive: Option<String>,
    /// Expected purchases in 90 days field id.
    pub expected_purchases_90d: Option<String>,
    /// CLV field id.
    pub clv_12m: Option<String>,
    /// Churn band field id.
    pub churn_band: Option<String>,
    /// The same fields on companies, for company customers (B2B) when the mapping names the
    /// fields on contacts: found by name, or created with `create_missing`.
    pub companies: Option<Box<SegmentFields>>,
}

/// A segment field the mapping names and the CRM lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingField {
    /// Mapping key (`fields.rfm_segment`).
    pub key: String,
    /// Where it belongs.
    pub entity: FieldEntityKind,
    /// The name the mapping gives (the new field's name / label).
    pub name: String,
    /// Bitrix24 `FIELD_NAME` to create (`UF_CRM_` is added by the CRM).
    pub code: String,
    /// Its type.
    pub kind: FieldKind,
    /// Whether the mapping allows creating it (`create_missing = true`).
    pub create: bool,
}

/// Everything the planner needs of a portal's mapping and playbooks, resolved to CRM ids.
#[derive(Debug)]
pub struct Rules {
    /// Touch rules, in playbook order.
    pub rules: Vec<Rule>,
    /// Compiled templates (rule templates and `repeat_lead`).
    pub templates: Templates,
    /// Repeat routing, when configured.
    pub repeat: Option<RepeatRouting>,
    /// The cyclic funnel, when configured.
    pub funnel: Option<Funnel>,
    /// Segment fields, when configured.
    pub fields: Option<SegmentFields>,
    /// Segment fields named in the mapping that the CRM does not have.
    pub missing_fields: Vec<MissingField>,
    /// Business hours.
    pub hours: Hours,
    /// Fallback responsible.
    pub default_responsible: Option<UserId>,
    /// User names for templates (every user the CRM lists, active or not).
    pub user_names: BTreeMap<UserId, String>,
    /// Users the CRM lists as inactive: never given a task or a deal.
    pub inactive_users: std::collections::BTreeSet<UserId>,
    /// Plan horizon.
    pub horizon_days: u32,
    /// Plan lookback.
    pub lookback_days: u32,
    /// Playbooks in force.
    pub playbooks: Vec<String>,
    /// Tasks per manager and local day (`None`: no cap).
    pub manager_cap: Option<u32>,
    /// Team caps: (team, tasks per local day over its members, members).
    pub team_caps: Vec<(String, u32, Vec<UserId>)>,
    /// Tasks per customer and local day; more merge into one.
    pub touches_per_customer_day: u32,
    /// No `before_next_purchase` touch within this many days of a purchase or an open deal.
    pub reminder_quiet_days: u32,
    /// The control groups: the global holdout, the rules' own, the re-draw schedule.
    pub holdout: crate::holdout::HoldoutSpec,
    /// Days after a touch in which a purchase counts as its outcome (`rebuy results`).
    pub outcome_window_days: u32,
}

impl Rules {
    /// Whether `u` may be given work: not inactive, and listed by the CRM (when the CRM's
    /// users are known at all; a user missing from the list was deleted).
    pub fn usable(&self, u: UserId) -> bool {
        !self.inactive_users.contains(&u)
            && (self.user_names.is_empty() || self.user_names.contains_key(&u))
    }

    /// The responsible chain for work attached to a deal: its manager when usable, else the
    /// mapping's `default_responsible` (checked active when resolved).
    pub fn deal_responsible(&self, manager: Option<UserId>) -> Option<UserId> {
        manager
            .filter(|u| self.usable(*u))
            .or(self.default_responsible)
    }

    /// No playbooks, no routing: plans nothing (used by tests and as a base).
    pub fn empty() -> Self {
        let mut templates = Templates::new();
        let _ = templates.add("repeat_lead", templates::REPEAT_LEAD);
        Self {
            rules: Vec::new(),
            templates,
            repeat: None,
            funnel: None,
            fields: None,
            missing_fields: Vec::new(),
            hours: Hours::default(),
            default_responsible: None,
            user_names: BTreeMap::new(),
            inactive_users: std::collections::BTreeSet::new(),
            horizon_days: 7,
            lookback_days: 3,
            playbooks: Vec::new(),
            manager_cap: None,
            team_caps: Vec::new(),
            touches_per_customer_day: 1,
            reminder_quiet_days: 7,
            holdout: crate::holdout::HoldoutSpec::default(),
            outcome_window_days: 30,
        }
    }
}

/// What the CRM has, for checking names against.
#[derive(Debug, Clone, Copy)]
pub struct CrmFacts<'a> {
    /// Which CRM (field date format).
    pub crm: CrmKind,
    /// Pipelines with stages.
    pub pipelines: &'a [rebuy_core::Pipeline],
    /// Users.
    pub users: &'a [rebuy_core::User],
    /// Custom fields; `None` when not listed (then fields must be given by id).
    pub fields: Option<&'a [FieldDef]>,
    /// amoCRM's customers entity (mode and statuses); `None` when not read.
    pub customers: Option<&'a CustomersFunnel>,
    /// Customers are companies (analytics mode `b2b`): segment fields named for contacts are
    /// also looked up (or created) on companies.
    pub company_customers: bool,
}

/// A playbook's text and where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// File label for problems.
    pub file: String,
    /// TOML text.
    pub text: String,
}

/// Finds a playbook by name or path: a value ending in `.toml` or containing `/` is a path
/// (relative to `dir` when given); otherwise `{dir}/{name}.toml` when it exists, else the
/// built-in playbook of that name.
pub fn find_playbook(name: &str, dir: Option<&Path>) -> Result<Source, String> {
    let is_path = name.ends_with(".toml") || name.contains('/');
    let read = |p: PathBuf| {
        std::fs::read_to_string(&p)
            .map(|text| Source {
                file: p.display().to_string(),
                text,
            })
            .map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    if is_path {
        let p = match dir {
            Some(d) if Path::new(name).is_relative() => d.join(name),
            _ => PathBuf::from(name),
        };
        return read(p);
    }
    if let Some(d) = dir {
        let p = d.join(format!("{name}.toml"));
        if p.exists() {
            return read(p);
        }
    }
    BUILT_IN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, text)| Source {
            file: format!("built-in playbook {n}"),
            text: (*text).to_owned(),
        })
        .ok_or_else(|| {
            let known: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
            format!(
                "unknown playbook {name:?}: not a file{} and not built in (built in: {})",
                dir.map(|d| format!(" in {}", d.display()))
                    .unwrap_or_default(),
                known.join(", ")
            )
        })
}

/// Parses a playbook's TOML strictly; the error names the key path.
pub fn parse_playbook(src: &Source) -> Result<(Playbook, Option<FunnelMapping>), Vec<Problem>> {
    use figment::providers::Format;
    let problem = |key: String, reason: String| Problem {
        file: src.file.clone(),
        key,
        reason,
    };
    let mut value: serde_json::Value =
        figment::Figment::from(figment::providers::Toml::string(&src.text))
            .extract()
            .map_err(|e| vec![problem(e.path.join("."), e.kind.to_string())])?;
    // `[funnel]` in a playbook: the same table as `[portal.mapping.funnel]`.
    let funnel = match value.as_object_mut().and_then(|o| o.remove("funnel")) {
        Some(f) => Some(
            serde_path_to_error::deserialize::<_, FunnelMapping>(f).map_err(|e| {
                vec![problem(
                    format!("funnel.{}", e.path()),
                    e.into_inner().to_string(),
                )]
            })?,
        ),
        None => None,
    };
    let pb: Playbook = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        vec![problem(
            if path == "." { String::new() } else { path },
            e.into_inner().to_string(),
        )]
    })?;
    Ok((pb, funnel))
}

/// Checks a portal's mapping and playbooks against the CRM; every problem, none = fine.
pub fn check(
    portal: &str,
    mapping: &serde_json::Value,
    playbooks_dir: Option<&Path>,
    crm: CrmFacts<'_>,
) -> Vec<Problem> {
    match resolve(portal, mapping, playbooks_dir, crm) {
        Ok(_) => Vec::new(),
        Err(p) => p,
    }
}

/// Resolves a portal's mapping and playbooks against the CRM into [`Rules`], or lists every
/// problem. `playbooks_dir` is used when the mapping has no `playbooks_dir` of its own.
pub fn resolve(
    portal: &str,
    mapping: &serde_json::Value,
    playbooks_dir: Option<&Path>,
    crm: CrmFacts<'_>,
) -> Result<Rules, Vec<Problem>> {
    let mfile = format!("portal {portal} mapping");
    let m: Mapping = mapping::parse(mapping).map_err(|(key, reason)| {
        vec![Problem {
            file: mfile.clone(),
            key,
            reason,
        }]
    })?;
    let mut r = Resolver {
        problems: Vec::new(),
        crm,
        rules: Rules::empty(),
        teams: BTreeMap::new(),
        create_missing: false,
        on_companies: false,
    };
    r.rules.user_names = crm.users.iter().map(|u| (u.id, u.name.clone())).collect();
    r.rules.inactive_users = crm
        .users
        .iter()
        .filter(|u| !u.active)
        .map(|u| u.id)
        .collect();
    r.rules.horizon_days = m.horizon_days;
    r.rules.lookback_days = m.lookback_days;
    r.hours(&mfile, &m);
    if let Some(u) = &m.default_responsible {
        r.rules.default_responsible = r.user(&mfile, "default_responsible", u);
    }
    for (team, members) in &m.teams {
        let key = format!("teams.{team}");
        let ids: Vec<UserId> = members
            .iter()
            .enumerate()
            .filter_map(|(i, u)| r.user(&mfile, &format!("{key}[{i}]"), u))
            .collect();
        if members.is_empty() {
            r.problem(&mfile, &key, "a team needs at least one member".into());
        }
        r.teams.insert(team.clone(), ids);
    }
    r.capacity(&mfile, &m);
    if let Some(p) = &m.repeat_pipeline {
        r.repeat(&mfile, &m, p);
    } else if m.repeat_stage.is_some() {
        r.problem(&mfile, "repeat_stage", "set without repeat_pipeline".into());
    }
    let text = m
        .repeat_task_text
        .as_deref()
        .unwrap_or(templates::REPEAT_LEAD);
    if let Err(e) = r.rules.templates.add("repeat_lead", text) {
        r.problem(&mfile, "repeat_task_text", e);
    }
    if let Some(f) = &m.funnel {
        r.rules.funnel = r.funnel(&mfile, "funnel", f);
    }
    if let Some(f) = &m.fields {
        r.fields(&mfile, f);
    }

    let dir = m
        .playbooks_dir
        .as_deref()
        .map(PathBuf::from)
        .or_else(|| playbooks_dir.map(Path::to_path_buf));
    let mut seen = BTreeSet::new();
    for (i, name) in m.playbooks.iter().enumerate() {
        let src = match find_playbook(name, dir.as_deref()) {
            Ok(s) => s,
            Err(e) => {
                r.problem(&mfile, &format!("playbooks[{i}]"), e);
                continue;
            }
        };
        match parse_playbook(&src) {
            Err(p) => r.problems.extend(p),
            Ok((mut pb, funnel)) => {
                if pb.name.is_empty() {
                    pb.name = Path::new(name)
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| name.clone());
                }
                if !seen.insert(pb.name.clone()) {
                    r.problem(
                        &src.file,
                        "name",
                        format!("playbook {:?} is listed twice", pb.name),
                    );
                    continue;
                }
                if let Some(f) = funnel {
                    if r.rules.funnel.is_some() || m.funnel.is_some() {
                        r.problem(
                            &src.file,
                            "funnel",
                            "a funnel is already defined (in the mapping or another playbook); keep one".into(),
                        );
                    } else {
                        r.rules.funnel = r.funnel(&src.file, "funnel", &f);
                    }
                }
                r.playbook(&src.file, &pb);
                r.rules.playbooks.push(pb.name.clone());
            }
        }
    }
    if r.problems.is_empty() {
        Ok(r.rules)
    } else {
        r.problems.sort();
        r.problems.dedup();
        Err(r.problems)
    }
}

struct Resolver<'a> {
    problems: Vec<Problem>,
    crm: CrmFacts<'a>,
    rules: Rules,
    teams: BTreeMap<String, Vec<UserId>>,
    /// `fields.create_missing` of the mapping.
    create_missing: bool,
    /// Resolving the company variants of the segment fields.
    on_companies: bool,
}

impl Resolver<'_> {
    fn problem(&mut self, file: &str, key: &str, reason: String) {
        self.problems.push(Problem {
            file: file.to_owned(),
            key: key.to_owned(),
            reason,
        });
    }

    fn user(&mut self, file: &str, key: &str, u: &NameOrId) -> Option<UserId> {
        let found: Vec<&rebuy_core::User> = self
            .crm
            .users
            .iter()
            .filter(|x| u.matches(&x.id.0.to_string(), &x.name))
            .collect();
        match found.as_slice() {
            [one] if one.active => Some(one.id),
            [one] => {
                self.problem(
                    file,
                    key,
                    format!("user {u} ({}) is deactivated in the CRM", one.id.0),
                );
                None
            }
            [] => {
                let known: Vec<String> = self
                    .crm
                    .users
                    .iter()
                    .filter(|x| x.active)
                    .map(|x| format!("{} ({})", x.name, x.id.0))
                    .collect();
                self.problem(
                    file,
                    key,
                    format!("unknown user {u}; active users: {}", known.join(", ")),
                );
                None
            }
            _ => {
                self.problem(file, key, format!("user name {u} is ambiguous: use the id"));
                None
            }
        }
    }

    /// The capacity keys: caps of at least 1, team caps of teams the mapping defines.
    fn capacity(&mut self, file: &str, m: &Mapping) {
        if m.max_tasks_per_manager_per_day == Some(0) {
            self.problem(
                file,
                "max_tasks_per_manager_per_day",
                "0 would plan nothing: give at least 1, or leave the key out for no cap".into(),
            );
        }
        self.rules.manager_cap = m.max_tasks_per_manager_per_day.filter(|c| *c > 0);
        for (team, cap) in &m.max_tasks_per_team_per_day {
            let key = format!("max_tasks_per_team_per_day.{team}");
            if *cap == 0 {
                self.problem(file, &key, "0 would plan nothing: give at least 1".into());
                continue;
            }
            match self.teams.get(team) {
                Some(members) => self
                    .rules
                    .team_caps
                    .push((team.clone(), *cap, members.clone())),
                None => {
                    let known: Vec<&str> = self.teams.keys().map(String::as_str).collect();
                    self.problem(
                        file,
                        &key,
                        format!(
                            "no team {team:?} in [portal.mapping.teams] (teams: {})",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                }
            }
        }
        if m.max_touches_per_customer_per_day == 0 {
            self.problem(
                file,
                "max_touches_per_customer_per_day",
                "0 would plan no touch: give at least 1".into(),
            );
        }
        self.rules.touches_per_customer_day = m.max_touches_per_customer_per_day.max(1);
        self.rules.reminder_quiet_days = m.reminder_quiet_days;
        if m.holdout_percent > 100 {
            self.problem(
                file,
                "holdout_percent",
                format!("{}: a share of customers is at most 100", m.holdout_percent),
            );
        }
        self.rules.holdout.percent = m.holdout_percent.min(100);
        self.rules.holdout.redraw = m.holdout_redraw;
        if m.outcome_window_days == 0 {
            self.problem(
                file,
                "outcome_window_days",
                "0 would count no purchase as an outcome: give at least 1".into(),
            );
        }
        self.rules.outcome_window_days = m.outcome_window_days.max(1);
    }

    fn hours(&mut self, file: &str, m: &Mapping) {
        let bh = &m.business_hours;
        let mut h = Hours::default();
        match schedule::parse_time(&bh.start) {
            Some(t) => h.start = t,
            None => self.problem(
                file,
                "business_hours.start",
                format!("{:?} is not a time (HH:MM)", bh.start),
            ),
        }
        match schedule::parse_time(&bh.end) {
            Some(t) => h.end = t,
            None => self.problem(
                file,
                "business_hours.end",
                format!("{:?} is not a time (HH:MM)", bh.end),
            ),
        }
        if h.end <= h.start {
            self.problem(file, "business_hours", "end must be after start".into());
        }
        let mut days = [false; 7];
        for (i, d) in bh.days.iter().enumerate() {
            match schedule::parse_weekday(d) {
                Some(w) => days[w] = true,
                None => self.problem(
                    file,
                    &format!("business_hours.days[{i}]"),
                    format!("{d:?} is not a weekday (mon..sun)"),
                ),
            }
        }
        if !days.iter().any(|d| *d) {
            self.problem(file, "business_hours.days", "no working day".into());
        }
        h.days = days;
        h.holidays = m.holidays.iter().copied().collect();
        self.rules.hours = h;
    }

    fn pipeline(
        &mut self,
        file: &str,
        key: &str,
        p: &NameOrId,
    ) -> Option<&'_ rebuy_core::Pipeline> {
        let crm = self.crm;
        let found = crm
            .pipelines
            .iter()
            .find(|x| p.matches(&x.id.0.to_string(), &x.name));
        if found.is_none() {
            let known: Vec<String> = crm
                .pipelines
                .iter()
                .map(|x| format!("{} ({})", x.name, x.id.0))
                .collect();
            self.problem(
                file,
                key,
                format!("unknown pipeline {p}; the CRM has: {}", known.join(", ")),
            );
        }
        found
    }

    fn stage(
        &mut self,
        file: &str,
        key: &str,
        pipeline: &rebuy_core::Pipeline,
        s: &NameOrId,
    ) -> Option<(StageId, String)> {
        match pipeline.stages.iter().find(|x| s.matches(&x.id.0, &x.name)) {
            Some(st) if st.kind == StageKind::Open => Some((st.id.clone(), st.name.clone())),
            Some(st) => {
                self.problem(
                    file,
                    key,
                    format!(
                        "stage {s} of pipeline {:?} is a closed (won/lost) stage; deals cannot wait there",
                        pipeline.name
                    ),
                );
                let _ = st;
                None
            }
            None => {
                let known: Vec<String> = pipeline
                    .stages
                    .iter()
                    .filter(|x| x.kind == StageKind::Open)
                    .map(|x| format!("{} ({})", x.name, x.id.0))
                    .collect();
                self.problem(
                    file,
                    key,
                    format!(
                        "unknown stage {s} in pipeline {:?}; its open stages: {}",
                        pipeline.name,
                        known.join(", ")
                    ),
                );
                None
            }
        }
    }

    fn repeat(&mut self, file: &str, m: &Mapping, p: &NameOrId) {
        let Some(pipeline) = self.pipeline(file, "repeat_pipeline", p).cloned() else {
            return;
        };
        let stage = match &m.repeat_stage {
            Some(s) => self.stage(file, "repeat_stage", &pipeline, s).map(|x| x.0),
            None => {
                // The first open stage that is not amoCRM's "unsorted" (sort 10, id-less name
                // varies), i.e. the first open stage after the lowest sort when there are two.
                let open: Vec<&rebuy_core::Stage> = pipeline
                    .stages
                    .iter()
                    .filter(|s| s.kind == StageKind::Open)
                    .collect();
                let first = if open.len() > 1 && is_unsorted(open[0]) {
                    open.get(1)
                } else {
                    open.first()
                };
                match first {
                    Some(s) => Some(s.id.clone()),
                    None => {
                        self.problem(
                            file,
                            "repeat_pipeline",
                            format!("pipeline {:?} has no open stage", pipeline.name),
                        );
                        None
                    }
                }
            }
        };
        if let Some(stage) = stage {
            self.rules.repeat = Some(RepeatRouting {
                pipeline: pipeline.id,
                stage,
                max_age_days: m.repeat_max_age_days,
            });
        }
    }

    fn funnel(&mut self, file: &str, key: &str, f: &FunnelMapping) -> Option<Funnel> {
        let mut stages = Vec::new();
        let pipeline = match f.entity {
            FunnelEntity::Leads => {
                let Some(p) = &f.pipeline else {
                    self.problem(
                        file,
                        &format!("{key}.pipeline"),
                        "a funnel on leads needs its pipeline (or set entity = \"customers\" for amoCRM customers)".into(),
                    );
                    return None;
                };
                let pipeline = self
                    .pipeline(file, &format!("{key}.pipeline"), p)
                    .cloned()?;
                for (i, s) in f.stages.iter().enumerate() {
                    if let Some(x) = self.stage(file, &format!("{key}.stages[{i}]"), &pipeline, s) {
                        stages.push(x);
                    }
                }
                pipeline.id
            }
            FunnelEntity::Customers => {
                self.customer_stages(file, key, f, &mut stages)?;
                PipelineId(0)
            }
        };
        let windows = f.windows_days.clone().unwrap_or_else(|| vec![30, 7, 0]);
        let mut ok = stages.len() == f.stages.len();
        if f.stages.len() < 2 {
            self.problem(
                file,
                &format!("{key}.stages"),
                "a funnel needs at least two stages".into(),
            );
            ok = false;
        } else if windows.len() + 1 != f.stages.len() {
            self.problem(
                file,
                &format!("{key}.windows_days"),
                format!(
                    "{} stages need {} thresholds, got {}",
                    f.stages.len(),
                    f.stages.len() - 1,
                    windows.len()
                ),
            );
            ok = false;
        }
        if windows.windows(2).any(|w| w[0] <= w[1]) {
            self.problem(
                file,
                &format!("{key}.windows_days"),
                "thresholds must be strictly descending (e.g. [30, 7, 0])".into(),
            );
            ok = false;
        }
        let distinct: BTreeSet<&StageId> = stages.iter().map(|s| &s.0).collect();
        if distinct.len() != stages.len() {
            self.problem(
                file,
                &format!("{key}.stages"),
                "a stage is listed twice".into(),
            );
            ok = false;
        }
        ok.then_some(Funnel {
            entity: f.entity,
            pipeline,
            stages,
            windows_days: windows,
        })
    }

    /// The statuses of a funnel on amoCRM customers; `None` (with the problem) when the CRM
    /// has no customers in periodicity mode.
    fn customer_stages(
        &mut self,
        file: &str,
        key: &str,
        f: &FunnelMapping,
        stages: &mut Vec<(StageId, String)>,
    ) -> Option<()> {
        if f.pipeline.is_some() {
            self.problem(
                file,
                &format!("{key}.pipeline"),
                "a funnel on customers has no pipeline: its stages are customer statuses".into(),
            );
        }
        if self.crm.crm != CrmKind::Amocrm {
            self.problem(
                file,
                &format!("{key}.entity"),
                format!(
                    "the customers entity exists only in amoCRM; on {} keep the funnel on a deal category (entity = \"leads\")",
                    self.crm.crm.as_str()
                ),
            );
            return None;
        }
        let Some(c) = self.crm.customers else {
            self.problem(
                file,
                &format!("{key}.entity"),
                "the CRM's customers mode and statuses could not be read (plan with a connection to the CRM)".into(),
            );
            return None;
        };
        if c.mode != "periodicity" {
            self.problem(
                file,
                &format!("{key}.entity"),
                format!(
                    "the account's customers mode is {:?}: the funnel on customers needs \"periodicity\" (amoCRM: Settings > Customers, or PATCH /api/v4/customers/mode); or keep it on a lead pipeline",
                    c.mode
                ),
            );
            return None;
        }
        for (i, s) in f.stages.iter().enumerate() {
            match c.statuses.iter().find(|x| s.matches(&x.id.0, &x.name)) {
                Some(st) => stages.push((st.id.clone(), st.name.clone())),
                None => {
                    let known: Vec<String> = c
                        .statuses
                        .iter()
                        .map(|x| format!("{} ({})", x.name, x.id.0))
                        .collect();
                    self.problem(
                        file,
                        &format!("{key}.stages[{i}]"),
                        format!(
                            "unknown customer status {s}; the customers funnel has: {}",
                            known.join(", ")
                        ),
                    );
                }
            }
        }
        Some(())
    }

    fn field(
        &mut self,
        file: &str,
        key: &str,
        entity: FieldEntity,
        f: &NameOrId,
    ) -> Option<(String, String)> {
        let kind = match entity {
            _ if self.on_companies => EntityKind::Companies,
            FieldEntity::Contacts => EntityKind::Contacts,
            FieldEntity::Deals => EntityKind::Deals,
        };
        let Some(defs) = self.crm.fields else {
            return match f {
                NameOrId::Id(i) => Some((i.to_string(), String::new())),
                // Numeric ids (amoCRM) and Bitrix24 user-field names are ids.
                NameOrId::Name(s)
                    if s.chars().all(|c| c.is_ascii_digit()) || s.starts_with("UF_") =>
                {
                    Some((s.clone(), String::new()))
                }
                NameOrId::Name(_) => {
                    self.problem(
                        file,
                        key,
                        format!("field {f} is given by name, but the CRM's field list is not available; give its id"),
                    );
                    None
                }
            };
        };
        match defs
            .iter()
            .find(|d| d.entity == kind && f.matches(&d.id, &d.name))
        {
            Some(d) => Some((d.id.clone(), d.field_type.clone())),
            // A field named (not numbered) may be created, when the mapping allows it.
            None if matches!(f, NameOrId::Name(n) if !n.chars().all(|c| c.is_ascii_digit())) => {
                let NameOrId::Name(n) = f else { return None };
                let n = n.trim();
                let slot = key.trim_start_matches("fields.");
                // Bitrix24 user fields are named UF_CRM_<code>; a name already in that form
                // keeps its code, any other gets REBUY_<mapping key>.
                let code = n
                    .strip_prefix("UF_CRM_")
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("REBUY_{}", slot.to_ascii_uppercase()));
                let kind_of = match slot {
                    "next_purchase" => FieldKind::Date,
                    "p_alive" | "expected_purchases_90d" | "clv_12m" => FieldKind::Numeric,
                    "churn_band" => FieldKind::Select(
                        crate::analytics::ChurnBand::ALL
                            .iter()
                            .map(|b| b.as_str().to_owned())
                            .collect(),
                    ),
                    "abc" => FieldKind::Select(vec!["A".into(), "B".into(), "C".into()]),
                    "xyz" => FieldKind::Select(vec!["X".into(), "Y".into(), "Z".into()]),
                    _ => FieldKind::Select(
                        RfmSegment::ALL
                            .iter()
                            .map(|s| s.as_str().to_owned())
                            .collect(),
                    ),
                };
                let entity_kind = match entity {
                    _ if self.on_companies => FieldEntityKind::Companies,
                    FieldEntity::Contacts => FieldEntityKind::Contacts,
                    FieldEntity::Deals => FieldEntityKind::Deals,
                };
                if self.create_missing {
                    self.rules.missing_fields.push(MissingField {
                        key: key.to_owned(),
                        entity: entity_kind,
                        name: n.to_owned(),
                        code,
                        kind: kind_of,
                        create: true,
                    });
                    return None;
                }
                if self.on_companies {
                    // Optional: company customers then get no segment fields (the plan says so).
                    return None;
                }
                let known: Vec<String> = defs
                    .iter()
                    .filter(|d| d.entity == kind && d.code.is_none())
                    .map(|d| format!("{} ({})", d.name, d.id))
                    .collect();
                self.problem(
                    file,
                    key,
                    format!(
                        "unknown {} field {f}; its custom fields: {} (set create_missing = true in [portal.mapping.fields] to have rebuy create it)",
                        kind.as_str(),
                        known.join(", ")
                    ),
                );
                None
            }
            None => {
                let known: Vec<String> = defs
                    .iter()
                    .filter(|d| d.entity == kind && d.code.is_none())
                    .map(|d| format!("{} ({})", d.name, d.id))
                    .collect();
                self.problem(
                    file,
                    key,
                    format!(
                        "unknown {} field {f}; its custom fields: {} (a field given by id cannot be created: name it instead)",
                        kind.as_str(),
                        known.join(", ")
                    ),
                );
                None
            }
        }
    }

    fn fields(&mut self, file: &str, f: &mapping::FieldsMapping) {
        self.create_missing = f.create_missing;
        // Company customers (B2B): the same fields, by name, on their company's card.
        let companies = if f.entity == FieldEntity::Contacts && self.crm.company_customers {
            let by_name = |x: &Option<NameOrId>| match x {
                Some(NameOrId::Name(n)) if !n.chars().all(|c| c.is_ascii_digit()) => x.clone(),
                _ => None,
            };
            let named = mapping::FieldsMapping {
                entity: f.entity,
                rfm_segment: by_name(&f.rfm_segment),
                abc: by_name(&f.abc),
                xyz: by_name(&f.xyz),
                next_purchase: by_name(&f.next_purchase),
                p_alive: by_name(&f.p_alive),
                expected_purchases_90d: by_name(&f.expected_purchases_90d),
                clv_12m: by_name(&f.clv_12m),
                churn_band: by_name(&f.churn_band),
                create_missing: f.create_missing,
            };
            self.on_companies = true;
            let s = self.segment_fields(file, &named);
            self.on_companies = false;
            s.map(Box::new)
        } else {
            None
        };
        let missing_before = self.rules.missing_fields.len();
        let own = self.segment_fields(file, f);
        let all_missing = self.rules.missing_fields.len() > missing_before;
        match own {
            Some(mut s) => {
                s.companies = companies;
                self.rules.fields = Some(s);
            }
            None if companies.is_some() => {
                self.rules.fields = Some(SegmentFields {
                    entity: f.entity,
                    rfm_segment: None,
                    abc: None,
                    xyz: None,
                    next_purchase: None,
                    p_alive: None,
                    expected_purchases_90d: None,
                    clv_12m: None,
                    churn_band: None,
                    companies,
                });
            }
            None => {
                let none_named = f.rfm_segment.is_none()
                    && f.abc.is_none()
                    && f.xyz.is_none()
                    && f.next_purchase.is_none()
                    && f.p_alive.is_none()
                    && f.expected_purchases_90d.is_none()
                    && f.clv_12m.is_none()
                    && f.churn_band.is_none();
                // Every field still to be created is not a problem.
                if none_named && !all_missing {
                    self.problem(file, "fields", "no field named".into());
                }
            }
        }
    }

    /// The field ids of one entity's segment fields; `None` when none resolved.
    fn segment_fields(&mut self, file: &str, f: &mapping::FieldsMapping) -> Option<SegmentFields> {
        let e = f.entity;
        let rfm = f
            .rfm_segment
            .as_ref()
            .and_then(|x| self.field(file, "fields.rfm_segment", e, x).map(|v| v.0));
        let abc = f
            .abc
            .as_ref()
            .and_then(|x| self.field(file, "fields.abc", e, x).map(|v| v.0));
        let xyz = f
            .xyz
            .as_ref()
            .and_then(|x| self.field(file, "fields.xyz", e, x).map(|v| v.0));
        let crm = self.crm.crm;
        let next = f.next_purchase.as_ref().and_then(|x| {
            self.field(file, "fields.next_purchase", e, x)
                .map(|(id, ty)| {
                    let fmt = match crm {
                        CrmKind::Bitrix24 => DateFormat::Iso,
                        CrmKind::Amocrm if ty.is_empty() || ty.contains("date") => {
                            DateFormat::UnixSeconds
                        }
                        // A text field gets a readable date.
                        CrmKind::Amocrm => DateFormat::Iso,
                    };
                    (id, fmt)
                })
        });
        let mut plain = |key: &str, x: &Option<NameOrId>| {
            x.as_ref()
                .and_then(|x| self.field(file, key, e, x).map(|v| v.0))
        };
        let p_alive = plain("fields.p_alive", &f.p_alive);
        let expected = plain("fields.expected_purchases_90d", &f.expected_purchases_90d);
        let clv = plain("fields.clv_12m", &f.clv_12m);
        let churn = plain("fields.churn_band", &f.churn_band);
        if rfm.is_none()
            && abc.is_none()
            && xyz.is_none()
            && next.is_none()
            && p_alive.is_none()
            && expected.is_none()
            && clv.is_none()
            && churn.is_none()
        {
            return None;
        }
        Some(SegmentFields {
            entity: e,
            rfm_segment: rfm,
            abc,
            xyz,
            next_purchase: next,
            p_alive,
            expected_purchases_90d: expected,
            clv_12m: clv,
            churn_band: churn,
            companies: None,
        })
    }

    fn responsible(&mut self, file: &str, key: &str, s: &str) -> Option<Responsible> {
        let s = s.trim();
        if s == "deal_manager" {
            return Some(Responsible::DealManager);
        }
        if let Some(u) = s.strip_prefix("user:") {
            let u = u.trim();
            let n = match u.parse::<u64>() {
                Ok(id) => NameOrId::Id(id),
                Err(_) => NameOrId::Name(u.to_owned()),
            };
            return self.user(file, key, &n).map(Responsible::User);
        }
        if let Some(t) = s.strip_prefix("team:") {
            let t = t.trim();
            return match self.teams.get(t) {
                Some(m) if !m.is_empty() => Some(Responsible::Team {
                    name: t.to_owned(),
                    members: m.clone(),
                }),
                Some(_) => None, // the team's own problem is reported already
                None => {
                    let known: Vec<&String> = self.teams.keys().collect();
                    self.problem(
                        file,
                        key,
                        format!(
                            "unknown team {t:?}: define it in [portal.mapping.teams] (teams: {})",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known
                                    .iter()
                                    .map(|k| k.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            }
                        ),
                    );
                    None
                }
            };
        }
        self.problem(
            file,
            key,
            format!("{s:?}: expected deal_manager, user:<name or id> or team:<name>"),
        );
        None
    }

    fn segments(&mut self, file: &str, key: &str, v: &[String]) -> Vec<RfmSegment> {
        let mut out = Vec::new();
        for (i, s) in v.iter().enumerate() {
            match RfmSegment::parse(s) {
                Some(x) => out.push(x),
                None => {
                    let known: Vec<&str> = RfmSegment::ALL.iter().map(|x| x.as_str()).collect();
                    self.problem(
                        file,
                        &format!("{key}.segments[{i}]"),
                        format!("unknown RFM segment {s:?}; known: {}", known.join(", ")),
                    );
                }
            }
        }
        out
    }

    fn task(
        &mut self,
        file: &str,
        key: &str,
        pb: &Playbook,
        spec: TaskSpec<'_>,
        default_text: &str,
        template_suffix: &str,
    ) -> Option<TaskRule> {
        let responsible = self.responsible(file, &format!("{key}.responsible"), spec.responsible);
        let time = match spec.time {
            None => None,
            Some(t) => match schedule::parse_time(t) {
                Some(x) => Some(x),
                None => {
                    self.problem(
                        file,
                        &format!("{key}.time"),
                        format!("{t:?} is not a time (HH:MM)"),
                    );
                    None
                }
            },
        };
        if spec.goal.trim().is_empty() {
            self.problem(file, &format!("{key}.goal"), "empty goal".into());
        }
        let rule = format!("{}.{}", pb.name, spec.id);
        if let Some(p) = spec.holdout_percent {
            if p > 100 {
                self.problem(
                    file,
                    &format!("{key}.holdout_percent"),
                    format!("{p}: a share of customers is at most 100"),
                );
            }
            if p > 0 {
                self.rules.holdout.rules.insert(rule.clone(), p.min(100));
            }
        }
        let template = format!("{rule}{template_suffix}");
        if let Err(e) = self
            .rules
            .templates
            .add(&template, spec.text.unwrap_or(default_text))
        {
            self.problem(file, &format!("{key}.text"), e);
        }
        Some(TaskRule {
            rule,
            playbook: pb.name.clone(),
            goal: spec.goal.to_owned(),
            kind: spec.task,
            responsible: responsible?,
            time,
            template,
        })
    }

    fn playbook(&mut self, file: &str, pb: &Playbook) {
        let mut ids = BTreeSet::new();
        let mut id_ok = |r: &mut Self, key: &str, id: &str| {
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            {
                r.problem(
                    file,
                    &format!("{key}.id"),
                    format!("{id:?}: ids are letters, digits, '_' and '-'"),
                );
            }
            if !ids.insert(id.to_owned()) {
                r.problem(
                    file,
                    &format!("{key}.id"),
                    format!("rule id {id:?} is used twice in this playbook"),
                );
            }
        };
        let lower = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|s| s.trim().to_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        };
        for (i, x) in pb.after_purchase.iter().enumerate() {
            let key = format!("after_purchase[{i}]");
            id_ok(self, &key, &x.id);
            if x.days == 0 {
                self.problem(file, &format!("{key}.days"), "must be at least 1".into());
            }
            let segments = self.segments(file, &key, &x.segments);
            if let Some(task) = self.task(file, &key, pb, x.spec(), templates::AFTER_PURCHASE, "") {
                self.rules.rules.push(Rule {
                    task,
                    trigger: Trigger::AfterPurchase {
                        days: x.days,
                        segments,
                        products: lower(&x.products),
                    },
                });
            }
        }
        for (i, x) in pb.before_next_purchase.iter().enumerate() {
            let key = format!("before_next_purchase[{i}]");
            id_ok(self, &key, &x.id);
            let segments = self.segments(file, &key, &x.segments);
            if let Some(task) = self.task(file, &key, pb, x.spec(), templates::BEFORE_NEXT, "") {
                self.rules.rules.push(Rule {
                    task,
                    trigger: Trigger::BeforeNext {
                        days_before: x.days_before,
                        segments,
                        products: lower(&x.products),
                    },
                });
            }
        }
        for (i, x) in pb.seasonal.iter().enumerate() {
            let key = format!("seasonal[{i}]");
            id_ok(self, &key, &x.id);
            let segments = self.segments(file, &key, &x.segments);
            let md = parse_month_day(&x.date);
            if md.is_none() {
                self.problem(
                    file,
                    &format!("{key}.date"),
                    format!("{:?} is not a month and day (MM-DD)", x.date),
                );
            }
            if x.days_before > 180 {
                self.problem(
                    file,
                    &format!("{key}.days_before"),
                    "at most 180 days".into(),
                );
            }
            if let (Some(task), Some((month, day))) = (
                self.task(file, &key, pb, x.spec(), templates::SEASONAL, ""),
                md,
            ) {
                self.rules.rules.push(Rule {
                    task,
                    trigger: Trigger::Seasonal {
                        month,
                        day,
                        days_before: x.days_before,
                        segments,
                        products: lower(&x.products),
                    },
                });
            }
        }
        for (i, x) in pb.product_chain.iter().enumerate() {
            let key = format!("product_chain[{i}]");
            id_ok(self, &key, &x.id);
            if x.bought.trim().is_empty() {
                self.problem(file, &format!("{key}.bought"), "empty".into());
            }
            if let Some(task) = self.task(file, &key, pb, x.spec(), templates::PRODUCT_CHAIN, "") {
                self.rules.rules.push(Rule {
                    task,
                    trigger: Trigger::ProductChain {
                        bought: x.bought.trim().to_lowercase(),
                        after_days: x.after_days,
                        offer: x.offer.clone(),
                    },
                });
            }
        }
        for (i, x) in pb.reactivation.iter().enumerate() {
            let key = format!("reactivation[{i}]");
            id_ok(self, &key, &x.id);
            let segments = self.segments(file, &key, &x.segments);
            if x.steps.is_empty() {
                self.problem(file, &format!("{key}.steps"), "no steps".into());
            }
            if x.steps
                .windows(2)
                .any(|w| w[0].after_days >= w[1].after_days)
            {
                self.problem(
                    file,
                    &format!("{key}.steps"),
                    "after_days must grow from step to step".into(),
                );
            }
            if x.spread_days == 0 {
                self.problem(
                    file,
                    &format!("{key}.spread_days"),
                    "must be at least 1".into(),
                );
            }
            for (j, s) in x.steps.iter().enumerate() {
                let skey = format!("{key}.steps[{j}]");
                let spec = TaskSpec {
                    id: &x.id,
                    goal: &s.goal,
                    task: s.task,
                    responsible: &s.responsible,
                    time: s.time.as_deref(),
                    text: s.text.as_deref(),
                    holdout_percent: x.holdout_percent,
                };
                if let Some(task) = self.task(
                    file,
                    &skey,
                    pb,
                    spec,
                    templates::REACTIVATION,
                    &format!("#{}", j + 1),
                ) {
                    self.rules.rules.push(Rule {
                        task,
                        trigger: Trigger::Reactivation {
                            who: x.who,
                            start_after_days: x.start_after_days,
                            campaign_start: x.campaign_start,
                            spread_days: x.spread_days.max(1),
                            segments: segments.clone(),
                            step: j as u32 + 1,
                            after_days: s.after_days,
                        },
                    });
                }
            }
        }
        for (i, x) in pb.reward.iter().enumerate() {
            let key = format!("reward[{i}]");
            id_ok(self, &key, &x.id);
            if x.window_days == 0 {
                self.problem(
                    file,
                    &format!("{key}.window_days"),
                    "must be at least 1".into(),
                );
            }
            let (min_p, min_r) = match x.kind {
                RewardKind::Frequent => match x.min_purchases {
                    Some(n) if n > 0 => (n, Decimal::ZERO),
                    _ => {
                        self.problem(
                            file,
                            &format!("{key}.min_purchases"),
                            "a frequent-buyer reward needs min_purchases >= 1".into(),
                        );
                        (0, Decimal::ZERO)
                    }
                },
                RewardKind::HighSpender => match x.min_revenue {
                    Some(v) if v > Decimal::ZERO => (0, v),
                    _ => {
                        self.problem(
                            file,
                            &format!("{key}.min_revenue"),
                            "a high-spender reward needs min_revenue > 0".into(),
                        );
                        (0, Decimal::ZERO)
                    }
                },
            };
            if let Some(task) = self.task(file, &key, pb, x.spec(), templates::REWARD, "") {
                self.rules.rules.push(Rule {
                    task,
                    trigger: Trigger::Reward {
                        kind: x.kind,
                        window_days: x.window_days,
                        min_purchases: min_p,
                        min_revenue: min_r,
                    },
                });
            }
        }
    }
}

/// amoCRM's "Неразобранное" (unsorted) stage: an open stage no deal should be routed to.
fn is_unsorted(s: &rebuy_core::Stage) -> bool {
    let n = s.name.to_lowercase();
    n.contains("неразобран") || n.contains("unsorted") || n.contains("incoming")
}

/// `MM-DD` (Feb 29 allowed: it falls on Feb 28 in other years).
pub fn parse_month_day(s: &str) -> Option<(i8, i8)> {
    let (m, d) = s.trim().split_once('-')?;
    let (m, d): (i8, i8) = (m.parse().ok()?, d.parse().ok()?);
    Date::new(2024, m, d).ok().map(|_| (m, d))
}

#[cfg(test)]
mod tests;
