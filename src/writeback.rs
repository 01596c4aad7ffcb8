//! Write-back glue: cache + analysis + playbooks -> [`plan`] -> outbox -> CRM, and the
//! `rebuy plan`, `rebuy apply` and `rebuy mapping` commands.
//!
//! Flow position: analyse -> **plan -> outbox -> CRM**. [`prepare`] reads the portal's cache
//! (deals, pipelines, users), runs the analytics at the plan instant and resolves the mapping
//! and playbooks against the CRM (the custom-field list is read from the CRM when the mapping
//! names fields); [`plan_portal`] calls the pure planner; [`apply_plan`] commits the actions to
//! the outbox before anything is sent and drains it under the connector's rate limit.
use crate::analytics::{self, Analysis, DealClass, Settings};
use crate::config::PortalConfig;
use crate::outbox::{self, ActionState, DrainOptions, DrainReport, EnqueueReport};
use crate::plan::{self, CustomerFacts, OpenDeal, Plan, PlanInput, Sale};
use crate::playbooks::{self, CrmFacts, Rules};
use crate::store::Store;
use anyhow::{Context, Result, bail};
use jiff::Timestamp;
use rebuy_core::{Connector, Deal, DealState, FieldDef, Pipeline, User};
use std::path::Path;
use std::time::Duration;

/// Everything the planner reads, loaded for one portal.
#[derive(Debug)]
pub struct Prepared {
    /// The analysis at the plan instant.
    pub analysis: Analysis,
    /// Facts per customer, parallel to `analysis.customers`.
    pub facts: Vec<CustomerFacts>,
    /// Open deals outside the funnel pipeline.
    pub open_deals: Vec<OpenDeal>,
    /// The resolved mapping and playbooks.
    pub rules: Rules,
    /// The tasks already in the outbox (caps and customer-days count them).
    pub booked: plan::Booked,
    /// The control groups of the plan's period (stored, or drawn now).
    pub draw: Option<crate::holdout::Draw>,
}

/// Parses `--as-of` for planning: an RFC 3339 instant, or a date meaning the start of that day
/// in the portal's zone (so that day's touches are still ahead).
pub fn parse_plan_as_of(s: &str, portal: &PortalConfig) -> Result<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let date: jiff::civil::Date = s.parse().with_context(|| {
        format!("--as-of {s:?}: expected a date (2026-11-23) or an RFC 3339 instant")
    })?;
    Ok(date
        .to_zoned(portal.time_zone.clone())
        .with_context(|| format!("--as-of {s:?}"))?
        .timestamp())
}

fn mapping_names_fields(mapping: &serde_json::Value) -> bool {
    mapping.get("fields").is_some_and(|f| !f.is_null())
}

/// Whether the mapping keeps the funnel on amoCRM customers (`funnel.entity = "customers"`).
fn mapping_uses_customers(mapping: &serde_json::Value) -> bool {
    mapping
        .get("funnel")
        .and_then(|f| f.get("entity"))
        .and_then(|e| e.as_str())
        == Some("customers")
}

/// Whether planning must read the CRM (field list, customers).
pub fn mapping_needs_crm(mapping: &serde_json::Value) -> bool {
    mapping_names_fields(mapping) || mapping_uses_customers(mapping)
}

/// Resolves a portal's mapping and playbooks against its cached pipelines and users (and the
/// CRM's field list when the mapping names fields and a connector is given).
pub async fn resolve_rules(
    portal: &PortalConfig,
    store: &Store,
    conn: Option<&dyn Connector>,
) -> Result<Rules> {
    let pipelines: Vec<Pipeline> = store.all()?;
    let users: Vec<User> = store.all()?;
    let fields: Option<Vec<FieldDef>> = match conn {
        Some(c) if mapping_names_fields(&portal.mapping) => match c.custom_fields().await {
            Ok(f) => Some(f),
            // A connector without the listing: fields must then be given by id.
            Err(rebuy_core::ConnectorError::Unsupported { .. }) => None,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("portal {}: listing custom fields", portal.id));
            }
        },
        _ => None,
    };
    let customers: Option<rebuy_core::CustomersFunnel> = match conn {
        Some(c) if mapping_uses_customers(&portal.mapping) => match c.customers_funnel().await {
            Ok(f) => Some(f),
            Err(rebuy_core::ConnectorError::Unsupported { .. }) => None,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "portal {}: reading the customers mode and statuses",
                        portal.id
                    )
                });
            }
        },
        _ => None,
    };
    let b2b = portal.analytics.mode == analytics::Mode::B2b;
    if pipelines.is_empty() {
        bail!(
            "portal {}: the cache has no pipelines; run `rebuy sync --portal {}` first",
            portal.id,
            portal.id
        );
    }
    playbooks::resolve(
        &portal.id.0,
        &portal.mapping,
        portal.playbooks_dir.as_deref(),
        CrmFacts {
            crm: portal.kind,
            pipelines: &pipelines,
            users: &users,
            fields: fields.as_deref(),
            customers: customers.as_ref(),
            company_customers: b2b,
        },
    )
    .map_err(|p| {
        anyhow::anyhow!(
            "portal {}: the mapping or playbooks have {} problem(s):\n{}",
            portal.id,
            p.len(),
            playbooks::format_problems(&p).trim_end()
        )
    })
}

fn is_sale(s: &Settings, d: &Deal) -> bool {
    s.is_sale(d.state, d.pipeline_id.0, &d.stage_id.0)
}

/// Builds the per-customer facts and the open deals from the cache, against an analysis.
pub fn load_facts(
    store: &Store,
    portal: &PortalConfig,
    analysis: &Analysis,
    rules: &Rules,
) -> Result<(Vec<CustomerFacts>, Vec<OpenDeal>)> {
    let settings = &portal.analytics;
    let tz = &portal.time_zone;
    let mut facts = vec![CustomerFacts::default(); analysis.customers.len()];
    let mut open = Vec::new();
    let funnel_pipeline = rules.funnel.as_ref().and_then(|f| f.pipeline());
    store.for_each::<Deal>(|d| {
        let Ok(ci) = analysis.deals.binary_search_by(|c| c.deal_id.cmp(&d.id)) else {
            return; // created after the plan instant
        };
        let class = analysis.deals[ci];
        let idx = class
            .customer
            .and_then(|k| analysis.customers.binary_search_by(|r| r.key.cmp(&k)).ok());
        if is_sale(settings, &d) {
            let Some(i) = idx else { return };
            let at = match settings.purchase_time {
                analytics::PurchaseTime::Closed => d.closed_at.unwrap_or(d.created_at),
                analytics::PurchaseTime::Created => d.created_at,
            };
            if at > analysis.as_of {
                return;
            }
            facts[i].sales.push(Sale {
                day: at.to_zoned(tz.clone()).date(),
                amount: d.amount.as_ref().map(|m| m.amount).unwrap_or_default(),
                deal: d.id,
                manager: d.responsible_user_id,
                products: d.products.iter().map(|p| p.name.to_lowercase()).collect(),
            });
        } else if d.state == DealState::Open {
            if Some(d.pipeline_id) == funnel_pipeline {
                if let Some(i) = idx {
                    // The newest open funnel deal represents the customer.
                    let newer = facts[i]
                        .funnel_deal
                        .as_ref()
                        .is_none_or(|(id, _, _)| *id < d.id);
                    if newer {
                        facts[i].funnel_deal =
                            Some((d.id, d.stage_id.clone(), d.responsible_user_id));
                    }
                }
            } else if class.class != DealClass::New {
                open.push(OpenDeal {
                    id: d.id,
                    name: d.name.clone(),
                    customer: class.customer,
                    class: class.class,
                    pipeline: d.pipeline_id,
                    stage: d.stage_id.clone(),
                    responsible: d.responsible_user_id,
                    created_at: d.created_at,
                });
            }
        }
    })?;
    for f in &mut facts {
        f.sales.sort_by_key(|s| (s.day, s.deal));
    }
    open.sort_by_key(|d| d.id);
    Ok((facts, open))
}

/// Reads every customer of the CRM's customers entity and gives each analysed customer the
/// one linked to its contact (a company customer: to its first contact). The CRM, not a local
/// record, says which customers exist: one created by a run that died before recording it is
/// found here and never created twice. One request per 250 customers.
pub async fn attach_crm_customers(
    conn: &dyn Connector,
    portal: &PortalConfig,
    analysis: &Analysis,
    facts: &mut [CustomerFacts],
) -> Result<()> {
    let mut by_contact: std::collections::HashMap<u64, rebuy_core::CrmCustomer> =
        std::collections::HashMap::new();
    let mut cursor = None;
    loop {
        let page = conn
            .customers(cursor.as_ref())
            .await
            .with_context(|| format!("portal {}: listing amoCRM customers", portal.id))?;
        for c in page.items {
            if let Some(contact) = c.contact {
                // The oldest customer of a contact represents it.
                let keep = by_contact.get(&contact.0).is_none_or(|x| x.id > c.id);
                if keep {
                    by_contact.insert(contact.0, c);
                }
            }
        }
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    for (row, f) in analysis.customers.iter().zip(facts.iter_mut()) {
        let contact = match row.key {
            analytics::CustomerKey::Contact(c) => Some(c),
            analytics::CustomerKey::Company(_) => row.contact_ids.first().copied(),
        };
        f.crm_customer = contact.and_then(|c| by_contact.get(&c.0).cloned());
    }
    Ok(())
}

/// What [`create_missing_fields`] did.
#[derive(Debug, Clone, Default)]
pub struct FieldsReport {
    /// Fields created now (`contacts "Сегмент RFM"`).
    pub created: Vec<String>,
    /// Fields whose creation failed, with the CRM's message.
    pub failed: Vec<String>,
}

/// Creates the segment fields the mapping names, the CRM lacks and the mapping allows to
/// create (`fields.create_missing = true`), through the outbox (key
/// `{portal}/field_create/{entity}/{name}`: once), before anything is planned into them. A
/// second run finds the fields in the CRM's list and creates nothing.
pub async fn create_missing_fields(
    portal: &PortalConfig,
    store: &Store,
    conn: &dyn Connector,
) -> Result<FieldsReport> {
    let mut report = FieldsReport::default();
    if !mapping_names_fields(&portal.mapping) {
        return Ok(report);
    }
    let rules = resolve_rules(portal, store, Some(conn)).await?;
    let actions: Vec<outbox::Action> = rules
        .missing_fields
        .iter()
        .filter(|m| m.create)
        .map(|m| outbox::Action {
            merged: Vec::new(),
            key: format!(
                "{}/field_create/{}/{}",
                portal.id,
                m.entity.as_str(),
                m.name
            ),
            op: rebuy_core::WriteOp::CreateField {
                entity: m.entity,
                name: m.name.clone(),
                code: Some(m.code.clone()),
                kind: m.kind.clone(),
            },
            rule: "field_create".into(),
            customer: String::new(),
            summary: format!(
                "create {} field {:?} ({})",
                m.entity.as_str(),
                m.name,
                m.key
            ),
        })
        .collect();
    if actions.is_empty() {
        return Ok(report);
    }
    let keys: Vec<String> = actions.iter().map(|a| a.key.clone()).collect();
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.outbox_enqueue(actions))
        .await
        .context("outbox writer task failed")??;
    drain_all(
        conn,
        store,
        &DrainOptions::default(),
        Duration::from_secs(30),
    )
    .await?;
    for k in keys {
        match store.outbox_get(&k)?.map(|e| e.state) {
            Some(ActionState::Done { .. }) => report.created.push(k),
            Some(ActionState::Failed { message, .. }) => {
                report.failed.push(format!("{k}: {message}"))
            }
            _ => {}
        }
    }
    Ok(report)
}

/// Everything `rebuy apply` does for a portal: creates missing segment fields (when allowed),
/// plans at `as_of`, commits the plan to the outbox and sends it.
pub async fn apply_portal(
    portal: &PortalConfig,
    store: &Store,
    conn: &dyn Connector,
    as_of: Timestamp,
    max_wait: Duration,
) -> Result<(Plan, FieldsReport, ApplyReport)> {
    let fields = create_missing_fields(portal, store, conn).await?;
    let plan = plan_portal(portal, store, Some(conn), as_of).await?;
    let report = apply_plan(conn, store, &plan, &DrainOptions::default(), max_wait).await?;
    Ok((plan, fields, report))
}

/// Loads everything the planner needs for a portal at `as_of`.
pub async fn prepare(
    portal: &PortalConfig,
    store: &Store,
    conn: Option<&dyn Connector>,
    as_of: Timestamp,
) -> Result<Prepared> {
    let rules = resolve_rules(portal, store, conn).await?;
    let (_, analysis) = crate::analyse::analyse_portal(store, portal, Some(as_of))?;
    let (mut facts, open_deals) = load_facts(store, portal, &analysis, &rules)
        .with_context(|| format!("portal {}: reading the cache", portal.id))?;
    let on_customers = rules
        .funnel
        .as_ref()
        .is_some_and(|f| f.entity == playbooks::mapping::FunnelEntity::Customers);
    if on_customers && let Some(conn) = conn {
        attach_crm_customers(conn, portal, &analysis, &mut facts).await?;
    }
    let tz = portal.time_zone.clone();
    let booked = store
        .blocking(move |s| -> Result<plan::Booked, crate::store::StoreError> {
            Ok(booked_tasks(&s.outbox_all()?, &tz))
        })
        .await
        .with_context(|| format!("portal {}: reading the outbox", portal.id))?;
    let as_of_date = as_of.to_zoned(portal.time_zone.clone()).date();
    let draw = crate::holdout::draw_for(
        store,
        &portal.id.0,
        &rules.holdout,
        as_of_date,
        &analysis.customers,
    )
    .with_context(|| format!("portal {}: reading the control groups", portal.id))?;
    Ok(Prepared {
        analysis,
        facts,
        open_deals,
        rules,
        booked,
        draw,
    })
}

/// The tasks of the outbox that exist or will: pending, in flight or done (a failed one was
/// never created, so it takes no room).
pub fn booked_tasks(entries: &[outbox::Entry], tz: &jiff::tz::TimeZone) -> plan::Booked {
    let mut b = plan::Booked::default();
    for e in entries {
        if !matches!(e.state, ActionState::Failed { .. }) {
            b.add(&e.action, tz);
        }
    }
    b
}

/// The plan of a prepared portal.
pub fn plan_prepared(portal: &PortalConfig, prep: &Prepared, as_of: Timestamp) -> Plan {
    plan::plan(&PlanInput {
        portal: &portal.id.0,
        crm: portal.kind,
        as_of,
        tz: &portal.time_zone,
        rules: &prep.rules,
        customers: &prep.analysis.customers,
        facts: &prep.facts,
        open_deals: &prep.open_deals,
        booked: &prep.booked,
        holdout: prep.draw.as_ref(),
    })
}

/// Loads, resolves and plans a portal at `as_of`.
pub async fn plan_portal(
    portal: &PortalConfig,
    store: &Store,
    conn: Option<&dyn Connector>,
    as_of: Timestamp,
) -> Result<Plan> {
    let prep = prepare(portal, store, conn, as_of).await?;
    Ok(plan_prepared(portal, &prep, as_of))
}

/// What an apply did.
#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    /// Actions planned.
    pub planned: usize,
    /// What the enqueue did (new vs already known keys).
    pub enqueued: EnqueueReport,
    /// What the drains did.
    pub drain: DrainReport,
    /// Wall time of the sending.
    pub elapsed: Duration,
    /// HTTP requests the connector made while sending.
    pub requests: u64,
}

/// Commits a plan's actions to the outbox (known keys are skipped), then sends everything due,
/// waiting for short backoffs (at most `max_wait` in total) so one run usually finishes.
pub async fn apply_plan(
    conn: &dyn Connector,
    store: &Store,
    plan: &Plan,
    opts: &DrainOptions,
    max_wait: Duration,
) -> Result<ApplyReport> {
    let enqueued = enqueue_plan(store, plan).await?;
    let mut report = drain_all(conn, store, opts, max_wait).await?;
    report.planned = plan.actions.len();
    report.enqueued = enqueued;
    Ok(report)
}

/// Commits a plan's actions to the outbox (known keys are skipped): the first half of
/// [`apply_plan`], alone for callers whose outbox another task drains (the dashboard's apply
/// button wakes the server's drainer).
/// The plan's control groups and virtual touches are kept in the cache first (for `rebuy
/// results`).
pub async fn enqueue_plan(store: &Store, plan: &Plan) -> Result<EnqueueReport> {
    let actions = plan.actions.clone();
    let draw = plan.draw.clone();
    let touches = plan.virtual_touches.clone();
    Ok(store
        .blocking(move |s| {
            s.holdout_record(draw.as_ref(), &touches)?;
            s.outbox_enqueue(actions)
        })
        .await?)
}

/// Drains the outbox, waiting for backoffs up to `max_wait`.
pub async fn drain_all(
    conn: &dyn Connector,
    store: &Store,
    opts: &DrainOptions,
    max_wait: Duration,
) -> Result<ApplyReport> {
    let started = std::time::Instant::now();
    let before = conn.stats().requests;
    let mut total = DrainReport::default();
    let deadline = started + max_wait;
    loop {
        let r = outbox::drain(conn, store, opts).await?;
        total.done += r.done;
        total.reconciled += r.reconciled;
        total.failed += r.failed;
        total.retried += r.retried;
        total.unconfirmed += r.unconfirmed;
        total.rounds += r.rounds;
        let Some(next) = store.outbox_next_due()? else {
            break;
        };
        let wait = next.duration_since(Timestamp::now());
        let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
        if std::time::Instant::now() + wait > deadline {
            break;
        }
        tokio::time::sleep(wait).await;
    }
    Ok(ApplyReport {
        drain: total,
        elapsed: started.elapsed(),
        requests: conn.stats().requests - before,
        ..ApplyReport::default()
    })
}

/// What a portal's mapping check found: the CRM's pipelines, users and fields, and every
/// problem of the mapping and playbooks against them. Built by [`mapping_report`] for both
/// `rebuy mapping` and the dashboard's mapping page.
#[derive(Debug)]
pub struct MappingReport {
    /// Pipelines (amoCRM) or deal categories (Bitrix24) with their stages.
    pub pipelines: Vec<Pipeline>,
    /// Users.
    pub users: Vec<User>,
    /// Custom fields; `None` when the connector does not list them (or the CRM was not
    /// reached).
    pub fields: Option<Vec<FieldDef>>,
    /// amoCRM customers mode and statuses; `None` when the CRM has no customers entity (or
    /// was not reached).
    pub customers: Option<rebuy_core::CustomersFunnel>,
    /// `Some(why)` when the CRM could not be reached and the lists are the cache's (pipelines
    /// and users from the last sync, no fields).
    pub offline: Option<String>,
    /// Problems of the mapping and playbooks; empty = they resolve.
    pub problems: Vec<playbooks::Problem>,
    /// The resolved rules, when there is no problem.
    pub rules: Option<Rules>,
    /// The playbooks' own `[[test]]` cases run with these rules, and the failures
    /// (`file: [[test]] ...`).
    pub test_cases: usize,
    /// Failed test cases.
    pub test_failures: Vec<String>,
    /// Managers who still own customers (the manager of a customer's last won deal in the
    /// cache) but are inactive or gone from the CRM: their customers' tasks go to
    /// `default_responsible` (or are skipped without one).
    pub unusable_owners: Vec<UnusableOwner>,
}

/// A manager who owns customers but cannot be given work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnusableOwner {
    /// The user.
    pub user: rebuy_core::UserId,
    /// Its name, when the CRM still lists it.
    pub name: Option<String>,
    /// Inactive (listed) or missing (not listed).
    pub inactive: bool,
    /// Customers whose last won deal is theirs.
    pub customers: u64,
}

impl UnusableOwner {
    /// One line: `user 7 "Name" is inactive: 12 customer(s) affected`.
    pub fn describe(&self) -> String {
        format!(
            "user {}{} {}: {} customer(s) affected (their tasks go to default_responsible; without it they are skipped)",
            self.user.0,
            self.name
                .as_deref()
                .map(|n| format!(" {n:?}"))
                .unwrap_or_default(),
            if self.inactive {
                "is inactive in the CRM"
            } else {
                "is no longer in the CRM"
            },
            self.customers
        )
    }
}

/// The managers of customers' last won deals (from the cache) who are inactive or missing
/// among `users`, with how many customers each owns. A customer is the deal's company on a
/// B2B portal, else its main contact.
pub fn unusable_owners(
    store: &Store,
    p: &PortalConfig,
    users: &[User],
) -> Result<Vec<UnusableOwner>> {
    use std::collections::{BTreeMap, HashMap};
    let deals: Vec<Deal> = store.all()?;
    let b2b = p.analytics.mode == analytics::Mode::B2b;
    // Customer -> (closed or created, manager) of its last won deal.
    let mut last: HashMap<(u8, u64), (Timestamp, Option<rebuy_core::UserId>)> = HashMap::new();
    for d in deals.iter().filter(|d| d.state == DealState::Won) {
        let key = match (
            b2b,
            d.company_id,
            d.main_contact_id.or(d.contact_ids.first().copied()),
        ) {
            (true, Some(c), _) => (1, c.0),
            (_, _, Some(c)) => (0, c.0),
            (_, Some(c), None) => (1, c.0),
            _ => continue,
        };
        let at = d.closed_at.unwrap_or(d.created_at);
        let e = last.entry(key).or_insert((at, d.responsible_user_id));
        if at >= e.0 {
            *e = (at, d.responsible_user_id);
        }
    }
    let known: HashMap<rebuy_core::UserId, &User> = users.iter().map(|u| (u.id, u)).collect();
    let mut counts: BTreeMap<rebuy_core::UserId, u64> = BTreeMap::new();
    for (_, m) in last.values() {
        if let Some(m) = m
            && known.get(m).is_none_or(|u| !u.active)
        {
            *counts.entry(*m).or_default() += 1;
        }
    }
    Ok(counts
        .into_iter()
        .map(|(user, customers)| UnusableOwner {
            user,
            name: known.get(&user).map(|u| u.name.clone()),
            inactive: known.contains_key(&user),
            customers,
        })
        .collect())
}

impl MappingReport {
    /// Whether all is well: no problem and no failed playbook test.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.test_failures.is_empty()
    }
}

/// Lists the CRM's pipelines, users and custom fields and checks the portal's mapping and
/// playbooks against them (problems, then the playbooks' `[[test]]` cases). With
/// `cached_after = Some(limit)`, a CRM that fails or has not answered within `limit` (the
/// connector retries transient errors for up to half a minute) is not an error: the cache's
/// pipelines and users stand in and [`MappingReport::offline`] says why. `None` waits for
/// the CRM and returns its error.
pub async fn mapping_report(
    p: &PortalConfig,
    store: &Store,
    conn: &dyn Connector,
    cached_after: Option<Duration>,
) -> Result<MappingReport> {
    type Live = (
        Vec<Pipeline>,
        Vec<User>,
        Option<Vec<FieldDef>>,
        Option<rebuy_core::CustomersFunnel>,
    );
    async fn live(p: &PortalConfig, conn: &dyn Connector) -> Result<Live> {
        let pipelines = conn
            .pipelines()
            .await
            .with_context(|| format!("portal {}: listing pipelines", p.id))?;
        let users = conn
            .users()
            .await
            .with_context(|| format!("portal {}: listing users", p.id))?;
        let fields = match conn.custom_fields().await {
            Ok(f) => Some(f),
            Err(rebuy_core::ConnectorError::Unsupported { .. }) => None,
            Err(e) => return Err(e).with_context(|| format!("portal {}: listing fields", p.id)),
        };
        let customers = match conn.customers_funnel().await {
            Ok(c) => Some(c),
            Err(rebuy_core::ConnectorError::Unsupported { .. }) => None,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("portal {}: reading the customers mode", p.id));
            }
        };
        Ok((pipelines, users, fields, customers))
    }
    let listed = match cached_after {
        Some(limit) => match tokio::time::timeout(limit, live(p, conn)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!(
                "portal {}: the CRM did not answer within {} s",
                p.id,
                limit.as_secs_f64()
            )),
        },
        None => live(p, conn).await,
    };
    let (pipelines, users, fields, customers, offline) = match listed {
        Ok((pl, u, f, c)) => (pl, u, f, c, None),
        Err(e) if cached_after.is_some() => {
            let (pl, u) = store
                .blocking(|s| Ok((s.all::<Pipeline>()?, s.all::<User>()?)))
                .await?;
            (pl, u, None, None, Some(format!("{e:#}")))
        }
        Err(e) => return Err(e),
    };
    let facts = CrmFacts {
        crm: p.kind,
        pipelines: &pipelines,
        users: &users,
        fields: fields.as_deref(),
        customers: customers.as_ref(),
        company_customers: p.analytics.mode == analytics::Mode::B2b,
    };
    let mut report = MappingReport {
        pipelines: Vec::new(),
        users: Vec::new(),
        fields: None,
        customers: None,
        offline,
        problems: Vec::new(),
        rules: None,
        test_cases: 0,
        test_failures: Vec::new(),
        unusable_owners: Vec::new(),
    };
    match playbooks::resolve(&p.id.0, &p.mapping, p.playbooks_dir.as_deref(), facts) {
        Err(problems) => report.problems = problems,
        Ok(rules) => {
            // The playbooks' own [[test]] cases, with this portal's rules.
            let mapping = playbooks::mapping::parse(&p.mapping).unwrap_or_default();
            let dir = mapping
                .playbooks_dir
                .as_deref()
                .map(std::path::PathBuf::from)
                .or(p.playbooks_dir.clone());
            for name in &mapping.playbooks {
                let Ok(src) = playbooks::find_playbook(name, dir.as_deref()) else {
                    continue;
                };
                let Ok((mut pb, _)) = playbooks::parse_playbook(&src) else {
                    continue;
                };
                if pb.name.is_empty() {
                    pb.name = Path::new(name)
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| name.clone());
                }
                report.test_cases += pb.tests.len();
                for f in plan::run_playbook_tests(&rules, &pb, &p.time_zone) {
                    report
                        .test_failures
                        .push(format!("{}: [[test]] {f}", src.file));
                }
            }
            report.rules = Some(rules);
        }
    }
    if !users.is_empty() {
        report.unusable_owners = unusable_owners(store, p, &users)?;
    }
    report.pipelines = pipelines;
    report.users = users;
    report.fields = fields;
    report.customers = customers;
    Ok(report)
}

/// Routes one incoming deal (the server's webhook path): classifies it against the dataset
/// ([`analytics::classify_deal`], only that customer's deals are read) and plans its repeat
/// routing with [`plan::plan_for_deal`], using the customer's row of the last analysis for the
/// task text. Enqueue the actions and drain the outbox to carry them out.
pub fn route_deal(
    portal: &PortalConfig,
    rules: &Rules,
    data: &analytics::Dataset,
    analysis: &Analysis,
    deal: &Deal,
    now: Timestamp,
) -> (analytics::DealClassification, Vec<outbox::Action>) {
    let class = analytics::classify_deal(data, &portal.analytics, deal);
    let open = OpenDeal {
        id: deal.id,
        name: deal.name.clone(),
        customer: class.customer,
        class: class.class,
        pipeline: deal.pipeline_id,
        stage: deal.stage_id.clone(),
        responsible: deal.responsible_user_id,
        created_at: deal.created_at,
    };
    let row = class
        .customer
        .and_then(|k| plan::find_customer(&analysis.customers, k));
    let actions = plan::plan_for_deal(&portal.id.0, now, &portal.time_zone, rules, &open, row);
    (class, actions)
}
