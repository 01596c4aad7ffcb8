//! Write-back glue: cache + analysis + playbooks -> [`plan`] -> outbox -> CRM, and the
//! `rebuy plan`, `rebuy apply` and `rebuy mapping` commands.
//!
//! Flow position: analyse -> **plan -> outbox -> CRM**. [`prepare`] reads the portal's cache
//! (deals, pipelines, users), runs the analytics at the plan instant and resolves the mapping
//! and playbooks against the CRM (the custom-field list is read from the CRM when the mapping
//! names fields); [`plan_portal`] calls the pure planner; [`apply_plan`] commits the actions to
//! the outbox before anything is sent and drains it under the connector's rate limit.
use crate::analytics::{self, Analysis, DealClass, Settings};
use crate::config::{Config, PortalConfig};
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
fn mapping_needs_crm(mapping: &serde_json::Value) -> bool {
    mapping_names_fields(mapping) || mapping_uses_customers(mapping)
}

/// Resolves a portal's mapping and playbooks against its cached pipelines and users (and the
/// CRM's field list when the mapping names fields and a connector is given).
pub async fn resolve_rules(
    portal: &PortalConfig,
    store: &Store,
    conn: Option<&dyn Connector>,
    playbooks_dir: Option<&Path>,
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
        playbooks_dir,
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
    playbooks_dir: Option<&Path>,
) -> Result<FieldsReport> {
    let mut report = FieldsReport::default();
    if !mapping_names_fields(&portal.mapping) {
        return Ok(report);
    }
    let rules = resolve_rules(portal, store, Some(conn), playbooks_dir).await?;
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
    playbooks_dir: Option<&Path>,
    as_of: Timestamp,
    max_wait: Duration,
) -> Result<(Plan, FieldsReport, ApplyReport)> {
    let fields = create_missing_fields(portal, store, conn, playbooks_dir).await?;
    let plan = plan_portal(portal, store, Some(conn), playbooks_dir, as_of).await?;
    let report = apply_plan(conn, store, &plan, &DrainOptions::default(), max_wait).await?;
    Ok((plan, fields, report))
}

/// Loads everything the planner needs for a portal at `as_of`.
pub async fn prepare(
    portal: &PortalConfig,
    store: &Store,
    conn: Option<&dyn Connector>,
    playbooks_dir: Option<&Path>,
    as_of: Timestamp,
) -> Result<Prepared> {
    let rules = resolve_rules(portal, store, conn, playbooks_dir).await?;
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
    playbooks_dir: Option<&Path>,
    as_of: Timestamp,
) -> Result<Plan> {
    let prep = prepare(portal, store, conn, playbooks_dir, as_of).await?;
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

/// Output format of `rebuy plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    /// One line per action.
    Table,
    /// The plan as JSON.
    Json,
}

/// Prints a plan.
pub fn print_plan(plan: &Plan, format: PlanFormat) -> Result<()> {
    match format {
        PlanFormat::Json => {
            println!("{}", serde_json::to_string_pretty(plan)?);
        }
        PlanFormat::Table => {
            println!(
                "portal {}: plan as of {} ({}): {} action(s), nothing written",
                plan.portal,
                plan.as_of,
                plan.as_of_date,
                plan.actions.len()
            );
            for (rule, n) in plan.counts() {
                println!("  {rule:<40} {n:>7}");
            }
            if !plan.actions.is_empty() {
                println!();
            }
            for a in &plan.actions {
                println!("{:<72} {}", a.key, a.summary);
            }
            for line in pacing_lines(plan) {
                println!("\n{line}");
            }
            for line in plan.held_out.lines() {
                println!("\n{line}");
            }
            if plan.funnel_without_deal > 0 {
                println!(
                    "\nfunnel: {} customer(s) with a next purchase had no open deal in the funnel pipeline: one is created for each",
                    plan.funnel_without_deal
                );
            }
            if !plan.skipped.is_empty() {
                println!("\nskipped ({}):", plan.skipped.len());
                for s in plan.skipped.iter().take(50) {
                    println!("  {} {}: {}", s.rule, s.customer, s.reason);
                }
                if plan.skipped.len() > 50 {
                    println!("  ... and {} more", plan.skipped.len() - 50);
                }
            }
        }
    }
    Ok(())
}

/// What the pacing rules did to a plan, for people: merged, suppressed and deferred touches
/// (nothing waits or disappears without a line here).
pub fn pacing_lines(plan: &Plan) -> Vec<String> {
    let p = &plan.pacing;
    let mut out = Vec::new();
    if p.merged > 0 || p.merged_before > 0 || p.repeat_leads_merged > 0 {
        out.push(format!(
            "one touch per customer a day: {} touch(es) merged into another task of the same customer and day (listed in its text){}{}",
            p.merged,
            if p.merged_before > 0 {
                format!(", {} merged earlier into a task already sent", p.merged_before)
            } else {
                String::new()
            },
            if p.repeat_leads_merged > 0 {
                format!(
                    ", {} more repeat lead(s) of a customer with one repeat-lead task",
                    p.repeat_leads_merged
                )
            } else {
                String::new()
            }
        ));
    }
    if p.suppressed > 0 {
        out.push(format!(
            "quiet days: {} \"runs out\" reminder(s) not planned (a purchase or an open deal within reminder_quiet_days)",
            p.suppressed
        ));
    }
    if let Some(until) = p.deferred_until {
        let mut line = format!(
            "deferred by the cap: {} task(s), spread until {until}",
            p.deferred
        );
        for (u, n, last) in &p.deferred_by_manager {
            line.push_str(&format!("\n  user {}: {n} task(s), until {last}", u.0));
        }
        out.push(line);
    }
    out
}

/// The playbooks directory of a config file: `playbooks/` beside it, when it exists.
pub fn playbooks_dir(config_path: &Path) -> Option<std::path::PathBuf> {
    let dir = config_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("playbooks");
    dir.is_dir().then_some(dir)
}

/// `rebuy plan`: prints the planned actions; writes nothing (the CRM is only read for the
/// custom-field list when the mapping names fields).
pub async fn cmd_plan(
    cfg: &Config,
    config_path: &Path,
    portal: &str,
    as_of: Option<&str>,
    format: PlanFormat,
) -> Result<()> {
    let (p, store) = crate::cli::portal_store(cfg, portal)?;
    let as_of = match as_of {
        Some(s) => parse_plan_as_of(s, p)?,
        None => Timestamp::now(),
    };
    let conn = if mapping_needs_crm(&p.mapping) {
        Some(crate::portal::open(p, store.clone())?.connector)
    } else {
        None
    };
    let prep = prepare(
        p,
        &store,
        conn.as_deref(),
        playbooks_dir(config_path).as_deref(),
        as_of,
    )
    .await?;
    let plan = plan_prepared(p, &prep, as_of);
    print_plan(&plan, format)?;
    if format == PlanFormat::Table {
        for m in prep.rules.missing_fields.iter().filter(|m| m.create) {
            println!(
                "\nfield {} {:?} ({}) is missing: `rebuy apply` creates it first, then writes it",
                m.entity.as_str(),
                m.name,
                m.key
            );
        }
    }
    Ok(())
}

/// `rebuy apply`: plans, commits the actions to the outbox and sends them.
pub async fn cmd_apply(
    cfg: &Config,
    config_path: &Path,
    portal: &str,
    as_of: Option<&str>,
) -> Result<bool> {
    let (p, store) = crate::cli::portal_store(cfg, portal)?;
    let as_of = match as_of {
        Some(s) => parse_plan_as_of(s, p)?,
        None => Timestamp::now(),
    };
    let handle = crate::portal::open(p, store.clone())?;
    let (_, fields, report) = apply_portal(
        p,
        &store,
        handle.connector.as_ref(),
        playbooks_dir(config_path).as_deref(),
        as_of,
        Duration::from_secs(60),
    )
    .await?;
    for f in &fields.created {
        println!("portal {}: created field {f}", p.id);
    }
    for f in &fields.failed {
        println!("portal {}: could not create field {f}", p.id);
    }
    print_apply_report(&p.id.0, &report);
    let failed = print_failures(&store, 20)?;
    Ok(failed == 0)
}

/// Prints an apply report.
pub fn print_apply_report(portal: &str, r: &ApplyReport) {
    let secs = r.elapsed.as_secs_f64().max(1e-3);
    let sent = r.drain.done + r.drain.failed;
    println!(
        "portal {portal}: {} action(s) planned, {} new in the outbox, {} already there (planned before)",
        r.planned, r.enqueued.added, r.enqueued.already
    );
    println!(
        "  sent: {} done, {} found already done in the CRM, {} failed, {} waiting to retry, {} looked up after an unanswered send; {} request(s) in {:.1} s ({:.1} actions/request, {:.0} actions/s)",
        r.drain.done,
        r.drain.reconciled,
        r.drain.failed,
        r.drain.retried,
        r.drain.unconfirmed,
        r.requests,
        secs,
        if r.requests > 0 {
            sent as f64 / r.requests as f64
        } else {
            0.0
        },
        sent as f64 / secs
    );
}

/// Prints up to `limit` failed actions with the CRM's message; returns how many failed.
pub fn print_failures(store: &Store, limit: usize) -> Result<usize> {
    let failed: Vec<_> = store
        .outbox_all()?
        .into_iter()
        .filter(|e| matches!(e.state, ActionState::Failed { .. }))
        .collect();
    if !failed.is_empty() {
        println!("  failed actions ({}):", failed.len());
    }
    for e in failed.iter().take(limit) {
        if let ActionState::Failed { code, message, at } = &e.state {
            println!("    {} [{code}] {message} ({at})", e.action.key);
        }
    }
    if failed.len() > limit {
        println!("    ... and {} more", failed.len() - limit);
    }
    Ok(failed.len())
}

/// The outbox lines of `rebuy status`.
pub fn print_outbox_status(store: &Store) -> Result<()> {
    let c = store.outbox_counts()?;
    println!(
        "  outbox: {} pending, {} in flight, {} done, {} failed",
        c.pending, c.in_flight, c.done, c.failed
    );
    if c.failed > 0 {
        print_failures(store, 10)?;
    }
    Ok(())
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
    playbooks_dir: Option<&Path>,
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
    match playbooks::resolve(&p.id.0, &p.mapping, playbooks_dir, facts) {
        Err(problems) => report.problems = problems,
        Ok(rules) => {
            // The playbooks' own [[test]] cases, with this portal's rules.
            let mapping = playbooks::mapping::parse(&p.mapping).unwrap_or_default();
            let dir = mapping
                .playbooks_dir
                .as_deref()
                .map(std::path::PathBuf::from)
                .or(playbooks_dir.map(Path::to_path_buf));
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

/// `rebuy mapping`: lists the CRM's pipelines, stages, users and fields, and checks the
/// portal's mapping and playbooks against them, naming every problem ([`mapping_report`]).
/// Returns whether all is well.
pub async fn cmd_mapping(cfg: &Config, config_path: &Path, portal: &str) -> Result<bool> {
    let (p, store) = crate::cli::portal_store(cfg, portal)?;
    let handle = crate::portal::open(p, store.clone())?;
    let r = mapping_report(
        p,
        &store,
        handle.connector.as_ref(),
        playbooks_dir(config_path).as_deref(),
        None,
    )
    .await?;
    println!("portal {} ({})", p.id, p.kind.as_str());
    println!("pipelines:");
    for pl in &r.pipelines {
        println!(
            "  {} ({}){}",
            pl.name,
            pl.id.0,
            if pl.is_main { " [main]" } else { "" }
        );
        for s in &pl.stages {
            println!("    {:<40} {:>12} {:?}", s.name, s.id.0, s.kind);
        }
    }
    if let Some(c) = &r.customers {
        println!("customers mode: {}", c.mode);
        for s in &c.statuses {
            println!("    {:<40} {:>12} customer status", s.name, s.id.0);
        }
    }
    println!("users:");
    for u in &r.users {
        println!(
            "  {:<40} {:>12}{}",
            u.name,
            u.id.0,
            if u.active { "" } else { " (inactive)" }
        );
    }
    match &r.fields {
        Some(fields) => {
            println!("custom fields:");
            for f in fields {
                println!(
                    "  {:<9} {:<40} {:>12} {}{}",
                    f.entity.as_str(),
                    f.name,
                    f.id,
                    f.field_type,
                    f.code
                        .as_deref()
                        .map(|c| format!(" [{c}]"))
                        .unwrap_or_default()
                );
            }
        }
        None => println!("custom fields: not listed by this CRM connector"),
    }
    for o in &r.unusable_owners {
        println!("warning: {}", o.describe());
    }
    if !r.problems.is_empty() {
        println!("\nmapping and playbooks: {} problem(s):", r.problems.len());
        print!("{}", playbooks::format_problems(&r.problems));
        return Ok(false);
    }
    for m in r.rules.iter().flat_map(|r| &r.missing_fields) {
        println!(
            "missing field: {} {:?} ({}, {}): will be created by `rebuy apply` (create_missing = true)",
            m.entity.as_str(),
            m.name,
            m.key,
            match &m.kind {
                rebuy_core::FieldKind::Text => "text".to_owned(),
                rebuy_core::FieldKind::Date => "date".to_owned(),
                rebuy_core::FieldKind::Select(v) => format!("select of {}", v.len()),
            }
        );
    }
    for f in &r.test_failures {
        println!("  {f}");
    }
    if !r.test_failures.is_empty() {
        println!(
            "\nmapping and playbooks: {} of {} playbook test case(s) failed",
            r.test_failures.len(),
            r.test_cases
        );
        return Ok(false);
    }
    println!(
        "\nmapping and playbooks: ok ({} playbook test case(s) pass)",
        r.test_cases
    );
    Ok(true)
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

/// The demo mapping of the emulated amoCRM account: every ready playbook, repeat routing to
/// "Повторные продажи", the cyclic funnel on amoCRM customers (the demo account has customers
/// mode "periodicity"), segment fields on contacts (the ABC class in a field rebuy creates).
pub fn demo_mapping() -> serde_json::Value {
    let names: Vec<&str> = playbooks::BUILT_IN.iter().map(|(n, _)| *n).collect();
    serde_json::json!({
        "playbooks": names,
        "repeat_pipeline": "Повторные продажи",
        "funnel": {"entity": "customers", "stages": [
            "Больше 30 дней", "30 дней до покупки", "7 дней до покупки", "Ожидается покупка"]},
        "fields": {"entity": "contacts", "rfm_segment": "Сегмент", "abc": "ABC-класс",
                   "next_purchase": "Дата следующей покупки", "create_missing": true},
    })
}

/// The demo's write-back part on the emulated amoCRM account: plan and apply the playbooks as
/// of the end of the generated history, then route a repeat lead that arrives "now" the way the
/// server does on a webhook ([`plan::plan_for_deal`]), and print what landed in the CRM.
pub async fn demo_amocrm(
    portal: &PortalConfig,
    store: &Store,
    emulator: &rebuy_emulator::amocrm::AmoEmulator,
    as_of: Timestamp,
) -> Result<()> {
    let mut p = portal.clone();
    p.mapping = demo_mapping();
    let handle = crate::portal::open(&p, store.clone())?;
    let conn = handle.connector.as_ref();
    let started = std::time::Instant::now();
    let fields = create_missing_fields(&p, store, conn, None).await?;
    for f in fields.created.iter().chain(&fields.failed) {
        println!("  field: {f}");
    }
    let prep = prepare(&p, store, Some(conn), None, as_of).await?;
    let plan = plan_prepared(&p, &prep, as_of);
    println!(
        "\nplaybooks {} as of {}: {} action(s) planned in {:.2} s",
        prep.rules.playbooks.join(", "),
        plan.as_of_date,
        plan.actions.len(),
        started.elapsed().as_secs_f64()
    );
    for (rule, n) in plan.counts() {
        println!("  {rule:<40} {n:>6}");
    }
    let report = apply_plan(
        conn,
        store,
        &plan,
        &DrainOptions::default(),
        Duration::from_secs(30),
    )
    .await?;
    print_apply_report(&p.id.0, &report);
    print_failures(store, 5)?;

    // A known buyer writes again: the new lead is routed as the server would on its webhook.
    let buyer = prep.analysis.customers.iter().find_map(|r| match r.key {
        analytics::CustomerKey::Contact(c) if r.purchases >= 2 => Some(c),
        _ => None,
    });
    if let Some(buyer) = buyer {
        let first_open = emulator.with_data(|d| {
            d.pipelines
                .values()
                .find(|pl| pl.is_main)
                .and_then(|pl| pl.statuses.get(1).map(|s| (pl.id, s.id)))
        });
        if let Some((pipeline, status)) = first_open
            && let Some(id) = emulator.add_lead(buyer.0, 4_500, pipeline, status)
            && let Some(deal) = conn.deal(rebuy_core::DealId(id)).await?
        {
            let data = crate::analyse::load_dataset(store, &p)?;
            let t = std::time::Instant::now();
            let (class, actions) = route_deal(
                &p,
                &prep.rules,
                &data,
                &prep.analysis,
                &deal,
                Timestamp::now(),
            );
            let s = store.clone();
            let n = actions.len();
            tokio::task::spawn_blocking(move || s.outbox_enqueue(actions)).await??;
            drain_all(
                conn,
                store,
                &DrainOptions::default(),
                Duration::from_secs(10),
            )
            .await?;
            println!(
                "\nnew lead {} from a known buyer: classified {}, {} action(s) routed in {:.2} s",
                id,
                class.class.as_str(),
                n,
                t.elapsed().as_secs_f64()
            );
        }
    }

    let w = emulator.writes();
    println!(
        "\nwhat landed in the emulated amoCRM: {} task(s), {} field write(s), {} field(s) created, {} lead move(s), {} tag update(s), {} customer(s) created, {} customer update(s), {} write request(s) ({} rejected)",
        w.tasks_created.len(),
        w.field_updates.len(),
        w.fields_created.len(),
        w.lead_moves.len(),
        w.tag_updates.len(),
        w.customers_created.len(),
        w.customers_updated.len(),
        w.requests_applied,
        w.requests_rejected
    );
    let tz = &p.time_zone;
    for t in w.tasks_created.iter().rev().take(4).rev() {
        let due = Timestamp::from_second(t.complete_till)
            .map(|x| {
                x.to_zoned(tz.clone())
                    .strftime("%Y-%m-%d %H:%M %Z")
                    .to_string()
            })
            .unwrap_or_default();
        println!(
            "  task {} on {} {} for user {}, due {}: {}",
            t.id,
            t.entity_type.as_deref().unwrap_or("-"),
            t.entity_id.unwrap_or(0),
            t.responsible_user_id,
            due,
            t.text.lines().next().unwrap_or("")
        );
    }
    let status_name = |id: u64| {
        emulator.with_data(|d| {
            d.customer_statuses
                .iter()
                .find(|s| s.id == id)
                .map(|s| s.name.clone())
                .unwrap_or_default()
        })
    };
    for c in w.customers_created.iter().take(3) {
        let next = Timestamp::from_second(c.next_date)
            .map(|x| x.to_zoned(tz.clone()).date().to_string())
            .unwrap_or_default();
        println!(
            "  customer {} of contact {} in {:?}, next purchase {}, {} ₽",
            c.id,
            c.contact_id.unwrap_or(0),
            status_name(c.status_id),
            next,
            c.next_price
        );
    }
    for m in w.lead_moves.iter().take(3) {
        println!(
            "  lead {} moved from pipeline {} stage {} to pipeline {} stage {}",
            m.lead_id, m.from_pipeline_id, m.from_status_id, m.to_pipeline_id, m.to_status_id
        );
    }
    Ok(())
}

/// `rebuy bench plan`: the planner on a synthetic base of `customers` customers (all ready
/// playbooks, a funnel and segment fields), timed alone. Target: 1M customers in <= 5 s.
pub fn bench_plan(customers: usize) -> Result<String> {
    use crate::analytics::{Abc, CustomerKey, CustomerRow, RfmSegment, Tier, Xyz};
    use rebuy_core::{ContactId, DealId, PipelineId, Stage, StageId, StageKind, UserId};
    use rust_decimal::Decimal;
    let tz = jiff::tz::TimeZone::get("Europe/Moscow")?;
    let as_of: Timestamp = "2026-03-02T05:00:00Z".parse()?;
    let today = as_of.to_zoned(tz.clone()).date();
    let stage = |id: u64, name: &str, sort| Stage {
        id: StageId(id.to_string()),
        name: name.into(),
        sort,
        kind: StageKind::Open,
    };
    let pipelines = vec![rebuy_core::Pipeline {
        id: PipelineId(3),
        name: "Цикл клиента".into(),
        is_main: false,
        sort: 1,
        stages: vec![
            stage(31, "> 30", 10),
            stage(32, "<= 30", 20),
            stage(33, "<= 7", 30),
            stage(34, "due", 40),
        ],
    }];
    let users: Vec<User> = (0..8)
        .map(|i| User {
            id: UserId(100 + i),
            name: format!("Менеджер {i}"),
            email: None,
            active: true,
        })
        .collect();
    let names: Vec<&str> = playbooks::BUILT_IN.iter().map(|(n, _)| *n).collect();
    let mapping = serde_json::json!({
        "playbooks": names,
        "funnel": {"pipeline": 3, "stages": ["31", "32", "33", "34"]},
        "fields": {"rfm_segment": 1, "abc": 2, "xyz": 3, "next_purchase": 4},
        "default_responsible": 100,
    });
    let rules = playbooks::resolve(
        "bench",
        &mapping,
        None,
        CrmFacts {
            crm: rebuy_core::CrmKind::Amocrm,
            pipelines: &pipelines,
            users: &users,
            fields: None,
            customers: None,
            company_customers: false,
        },
    )
    .map_err(|p| anyhow::anyhow!("{}", playbooks::format_problems(&p)))?;

    let gen_started = std::time::Instant::now();
    let mut rng: u64 = 42;
    let mut next = move || {
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    const PRODUCTS: [&str; 6] = [
        "вода 19 л",
        "бетон для фундамента",
        "кирпич",
        "запчасти",
        "шины",
        "кулер",
    ];
    let t0 = plan::day_number(today);
    let mut rows = Vec::with_capacity(customers);
    let mut facts = Vec::with_capacity(customers);
    for i in 0..customers as u64 {
        let k = 1 + (next() % 6) as i64;
        let last = t0 - (next() % 720) as i64;
        let gap = 20 + (next() % 60) as i64;
        let sales: Vec<Sale> = (0..k)
            .map(|j| Sale {
                day: plan::from_day_number(last - (k - 1 - j) * gap),
                amount: Decimal::from(500 + next() % 20_000),
                deal: DealId(i * 8 + j as u64),
                manager: Some(UserId(100 + next() % 8)),
                products: vec![PRODUCTS[(next() % 6) as usize].to_owned()],
            })
            .collect();
        let revenue = sales.iter().map(|s| s.amount).sum();
        rows.push(CustomerRow {
            key: CustomerKey::Contact(ContactId(i + 1)),
            contact_ids: vec![ContactId(i + 1)],
            company_ids: vec![],
            name: format!("Клиент {}", i + 1),
            phones: vec![],
            emails: vec![],
            first_purchase: sales[0].day,
            last_purchase: plan::from_day_number(last),
            purchases: k as u32,
            deals: k as u32,
            revenue,
            recency_days: t0 - last,
            // Spread over the 125 RFM cells, which the control group's draw is stratified by.
            r: 1 + (i % 5) as u8,
            f: 1 + (i / 5 % 5) as u8,
            m: 1 + (i / 25 % 5) as u8,
            rfm_segment: RfmSegment::ALL[(next() % 11) as usize],
            abc: [Abc::A, Abc::B, Abc::C][(next() % 3) as usize],
            xyz: [Xyz::X, Xyz::Y, Xyz::Z][(next() % 3) as usize],
            tier: Tier::Medium,
            cycle_days: (k > 1).then_some(gap as f64),
            next_purchase: (k > 1).then(|| plan::from_day_number(last + gap)),
            cycle_status: None,
            one_time: k == 1,
            sleeping: t0 - last > 180,
            p_alive: None,
            expected_purchases_90d: None,
            next_purchase_forecast: None,
            expected_order_value: None,
            clv: None,
        });
        let funnel_deal = (next() % 10 < 3).then(|| {
            (
                DealId(10_000_000_000 + i),
                StageId((31 + next() % 4).to_string()),
                Some(UserId(100)),
            )
        });
        facts.push(CustomerFacts {
            sales,
            funnel_deal,
            crm_customer: None,
        });
    }
    let gen_secs = gen_started.elapsed().as_secs_f64();
    // The default control group (5%, stratified by RFM cell), drawn as `prepare` does.
    let draw_started = std::time::Instant::now();
    let draw = crate::holdout::Draw::new(
        "bench",
        &rules.holdout,
        &crate::holdout::period_of(today, rules.holdout.redraw),
        today,
        &rows,
    );
    let draw_secs = draw_started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let plan = plan::plan(&PlanInput {
        portal: "bench",
        crm: rebuy_core::CrmKind::Amocrm,
        as_of,
        tz: &tz,
        rules: &rules,
        customers: &rows,
        facts: &facts,
        open_deals: &[],
        booked: &plan::Booked::default(),
        holdout: Some(&draw),
    });
    let secs = started.elapsed().as_secs_f64();
    let mut out = format!(
        "bench plan: {customers} customers (synthetic, generated in {gen_secs:.1} s), playbooks {}, funnel and segment fields\n",
        rules.playbooks.join(", ")
    );
    out.push_str(&format!(
        "  plan time        {secs:.2} s on {} thread(s) (target <= 5 s for 1M customers)\n  actions          {}\n  skipped          {} (+ {} without a funnel deal)\n",
        std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1),
        plan.actions.len(),
        plan.skipped.len(),
        plan.funnel_without_deal
    ));
    for (rule, n) in plan.counts() {
        out.push_str(&format!("    {rule:<40} {n:>9}\n"));
    }
    out.push_str(&format!(
        "  holdout draw     {draw_secs:.2} s: {} customer(s) in the control group ({}%), {} touch(es) held out\n",
        plan.held_out.customers, rules.holdout.percent, plan.held_out.touches
    ));
    if let Some(rss) = crate::bench::peak_rss_bytes() {
        out.push_str(&format!("  peak RSS         {:.0} MB\n", rss as f64 / 1e6));
    }
    Ok(out)
}

/// `rebuy bench apply`: `actions` tasks through the outbox into the amoCRM emulator at its
/// limit of `rate` requests/s: actions per request and per second against the ceiling
/// (`rate` x 50 actions/s).
pub async fn bench_apply(actions: usize, rate: u32) -> Result<String> {
    use rebuy_emulator::amocrm::{AmoConfig, AmoEmulator};
    let mut cfg = AmoConfig::default();
    cfg.seed.contacts = 1_000;
    cfg.seed.deals = 3_000;
    cfg.rate_limit_per_sec = rate;
    let emu = AmoEmulator::spawn(cfg.clone()).await?;
    let p = crate::demo::emulator_portal(
        "bench",
        &emu.base_url,
        &cfg.client_id,
        &cfg.redirect_uri,
        rate,
    )?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), &p.id)?;
    crate::demo::authorize_automatically(&p, &store).await?;
    let handle = crate::portal::open(&p, store.clone())?;
    let conn = handle.connector.as_ref();
    let leads: Vec<(u64, u64)> = emu.emulator.with_data(|d| {
        d.leads
            .values()
            .map(|l| (l.id, l.responsible_user_id))
            .collect()
    });
    let due = Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let list: Vec<outbox::Action> = (0..actions)
        .map(|i| {
            let (lead, user) = leads[i % leads.len()];
            outbox::Action {
                merged: Vec::new(),
                key: format!("bench/bench.touch/lead:{lead}/{i}"),
                op: rebuy_core::WriteOp::CreateTask {
                    entity: rebuy_core::EntityRef::Deal(rebuy_core::DealId(lead)),
                    responsible: rebuy_core::UserId(user),
                    text: format!("Касание {i}"),
                    due,
                    kind: rebuy_core::TaskKind::Call,
                },
                rule: "bench.touch".into(),
                customer: format!("lead:{lead}"),
                summary: String::new(),
            }
        })
        .collect();
    let s = store.clone();
    let enq_started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || s.outbox_enqueue(list)).await??;
    let enq_secs = enq_started.elapsed().as_secs_f64();
    let r = drain_all(
        conn,
        &store,
        &DrainOptions::default(),
        Duration::from_secs(60),
    )
    .await?;
    let secs = r.elapsed.as_secs_f64().max(1e-3);
    let sent = r.drain.done + r.drain.failed;
    let per_req = sent as f64 / r.requests.max(1) as f64;
    let per_sec = sent as f64 / secs;
    let ceiling = f64::from(rate) * 50.0;
    let landed = emu.emulator.writes().tasks_created.len();
    Ok(format!(
        "bench apply: {actions} tasks through the outbox into the amoCRM emulator at {rate} req/s\n  \
         enqueue          {enq_secs:.2} s (one redb transaction)\n  \
         send             {secs:.1} s, {} done, {} failed, {landed} landed in the emulator\n  \
         requests         {} ({:.2}/s, 429s seen {})\n  \
         actions/request  {per_req:.1} (bulk arrays of up to 50)\n  \
         actions/s        {per_sec:.0}\n  \
         ceiling          {ceiling:.0} actions/s ({rate} x 50)\n  \
         efficiency       {:.3}\n",
        r.drain.done,
        r.drain.failed,
        r.requests,
        r.requests as f64 / secs,
        conn.stats().rate_limited,
        per_sec / ceiling
    ))
}
