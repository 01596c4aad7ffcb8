//! The demo's write-back part on the emulated amoCRM account.
use crate::cli::plan::{print_apply_report, print_failures};
use anyhow::Result;
use jiff::Timestamp;
use rebuy::analytics;
use rebuy::config::PortalConfig;
use rebuy::emulated::demo_mapping;
use rebuy::outbox::DrainOptions;
use rebuy::store::Store;
use rebuy::writeback::{
    apply_plan, create_missing_fields, drain_all, plan_prepared, prepare, route_deal,
};
use std::time::Duration;

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
    let handle = rebuy::portal::open(&p, store.clone())?;
    let conn = handle.connector.as_ref();
    let started = std::time::Instant::now();
    let fields = create_missing_fields(&p, store, conn).await?;
    for f in fields.created.iter().chain(&fields.failed) {
        println!("  field: {f}");
    }
    let prep = prepare(&p, store, Some(conn), as_of).await?;
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
            let data = rebuy::analyse::load_dataset(store, &p)?;
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
