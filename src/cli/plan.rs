//! `rebuy plan`, `apply`, `mapping` and the outbox lines of `status`: the terminal side of the
//! write-back (`rebuy::writeback` plans and sends; this prints).
use anyhow::Result;
use jiff::Timestamp;
use rebuy::config::Config;
use rebuy::outbox::ActionState;
use rebuy::plan::Plan;
use rebuy::playbooks;
use rebuy::store::Store;
use rebuy::writeback::{
    ApplyReport, apply_portal, mapping_needs_crm, mapping_report, parse_plan_as_of, plan_prepared,
    prepare,
};
use std::time::Duration;

/// Prints a plan.
pub fn print_plan(plan: &Plan, format: crate::cli::OutputFormat) -> Result<()> {
    match format {
        crate::cli::OutputFormat::Json => {
            println!("{}", serde_json::to_string_pretty(plan)?);
        }
        crate::cli::OutputFormat::Table => {
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

/// `rebuy plan`: prints the planned actions; writes nothing (the CRM is only read for the
/// custom-field list when the mapping names fields).
pub async fn cmd_plan(
    cfg: &Config,
    portal: &str,
    as_of: Option<&str>,
    format: crate::cli::OutputFormat,
) -> Result<()> {
    let (p, store) = crate::cli::portal_store(cfg, portal)?;
    let as_of = match as_of {
        Some(s) => parse_plan_as_of(s, p)?,
        None => Timestamp::now(),
    };
    let conn = if mapping_needs_crm(&p.mapping) {
        Some(rebuy::portal::open(p, store.clone())?.connector)
    } else {
        None
    };
    let prep = prepare(p, &store, conn.as_deref(), as_of).await?;
    let plan = plan_prepared(p, &prep, as_of);
    print_plan(&plan, format)?;
    if format == crate::cli::OutputFormat::Table {
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
pub async fn cmd_apply(cfg: &Config, portal: &str, as_of: Option<&str>) -> Result<bool> {
    let (p, store) = crate::cli::portal_store(cfg, portal)?;
    let as_of = match as_of {
        Some(s) => parse_plan_as_of(s, p)?,
        None => Timestamp::now(),
    };
    let handle = rebuy::portal::open(p, store.clone())?;
    let (_, fields, report) = apply_portal(
        p,
        &store,
        handle.connector.as_ref(),
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

/// `rebuy mapping`: lists the CRM's pipelines, stages, users and fields, and checks the
/// portal's mapping and playbooks against them, naming every problem ([`mapping_report`]).
/// Returns whether all is well.
pub async fn cmd_mapping(cfg: &Config, portal: &str) -> Result<bool> {
    let (p, store) = crate::cli::portal_store(cfg, portal)?;
    let handle = rebuy::portal::open(p, store.clone())?;
    let r = mapping_report(p, &store, handle.connector.as_ref(), None).await?;
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
                rebuy_core::FieldKind::Numeric => "numeric".to_owned(),
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
