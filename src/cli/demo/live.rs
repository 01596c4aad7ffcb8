//! The live part of `rebuy demo`: the server runs against both emulated CRMs, each emulator
//! delivers its webhooks to it, a new lead of an existing customer is created in each CRM, and
//! the demo shows it routed to the repeat funnel with a manager task, with the time it took.
use anyhow::{Context, Result, bail};
use rebuy::config::{Config, PortalConfig, ServerSettings};
use rebuy::server::{AppState, runtime};
use rebuy::store::Store;
use rebuy_emulator::amocrm::AmoEmulator;
use rebuy_emulator::bitrix24::B24Emulator;
use secrecy::SecretString;
use std::time::{Duration, Instant};

/// The repeat pipeline (amoCRM) / category (Bitrix24) of the emulators' generated accounts.
const REPEAT: &str = "Повторные продажи";

async fn wait_for(
    what: &str,
    mut done: impl FnMut() -> Option<String>,
) -> Result<(Duration, String)> {
    let started = Instant::now();
    loop {
        if let Some(detail) = done() {
            return Ok((started.elapsed(), detail));
        }
        // Generous: right after the full sync the CRM's rate limit may still be spent (the
        // Bitrix24 bucket drains 2 requests/s), and a loaded machine slows everything down.
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{what}: not routed within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the server on loopback over the demo's two portals and routes one repeat lead in each.
pub async fn live_routing(
    amo_portal: &PortalConfig,
    amo_store: &Store,
    amo: &AmoEmulator,
    b24_portal: &PortalConfig,
    b24_store: &Store,
    b24: &B24Emulator,
) -> Result<()> {
    println!("\n== rebuy serve: webhooks and real-time repeat routing ==");
    let secret = rebuy::portal::random_state();
    let mut amo_cfg = amo_portal.clone();
    amo_cfg.mapping = serde_json::json!({"repeat_pipeline": REPEAT});
    amo_cfg.webhook_secret = Some(SecretString::from(secret.clone()));
    let mut b24_cfg = b24_portal.clone();
    b24_cfg.mapping = serde_json::json!({"repeat_pipeline": REPEAT});
    b24_cfg.application_token = Some(SecretString::from(b24.config().application_token.clone()));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = ServerSettings {
        public_url: Some(url.clone()),
        ..ServerSettings::default()
    };
    let cfg = Config {
        data_dir: Default::default(),
        portals: vec![amo_cfg.clone(), b24_cfg.clone()],
        server,
    };
    let state = AppState::from_stores(
        vec![
            (amo_cfg.clone(), amo_store.clone()),
            (b24_cfg.clone(), b24_store.clone()),
        ],
        true,
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let tasks = runtime::spawn_all(&state, &cfg.server, cancel.clone());
    let c = cancel.clone();
    let st = state.clone();
    tokio::spawn(async move {
        rebuy::server::serve(
            listener,
            st.clone(),
            Some(rebuy::ui::router_from_config(st)),
            c.cancelled_owned(),
        )
        .await
    });
    println!("  server at {url}");

    // Subscriptions, as an integrator sets them up: amoCRM webhooks to the secret URL, the
    // Bitrix24 app's event handlers bound with event.bind.
    amo.register_webhook(
        &format!("{url}/hooks/amocrm/{}/{secret}", amo_cfg.id),
        &["add_lead", "update_lead", "status_lead"],
    );
    let b24_conn = rebuy::portal::open(&b24_cfg, b24_store.clone())?.connector;
    b24_conn
        .subscribe(
            &format!("{url}/hooks/bitrix24/{}", b24_cfg.id),
            &rebuy::server::worker::B24_EVENTS,
        )
        .await
        .context("binding the Bitrix24 event handlers")?;
    println!("  amoCRM webhook registered; Bitrix24 handlers bound with event.bind");

    // amoCRM: a past buyer writes again; a new lead appears in the main pipeline.
    let (buyer, pipeline, status, repeat_id) = amo
        .with_data(|d| {
            // The buyer with the highest contact id: the write-back part of the demo routed
            // a lead of the lowest one today, and a customer gets one repeat-lead task a day.
            let won = d
                .leads
                .values()
                .filter(|l| l.status_id == 142 && !l.contacts.is_empty())
                .max_by_key(|l| l.contacts[0].id);
            let main = d.pipelines.values().find(|p| p.name != REPEAT);
            let repeat = d.pipelines.values().find(|p| p.name == REPEAT);
            match (won, main, repeat) {
                (Some(w), Some(m), Some(r)) => {
                    let first = m
                        .statuses
                        .iter()
                        .find(|s| s.id != 142 && s.id != 143)
                        .map(|s| s.id);
                    first.map(|f| (w.contacts[0].id, m.id, f, r.id))
                }
                _ => None,
            }
        })
        .context("the amoCRM account has no past buyer")?;
    let lead = amo
        .add_lead(buyer, 15_000, pipeline, status)
        .context("creating the amoCRM lead")?;
    let (took, task) = wait_for("amoCRM lead", || {
        let w = amo.writes();
        let moved = w
            .lead_moves
            .iter()
            .any(|m| m.lead_id == lead && m.to_pipeline_id == repeat_id);
        let task = w.tasks_created.iter().find(|t| t.entity_id == Some(lead))?;
        moved.then(|| task.text.lines().next().unwrap_or_default().to_owned())
    })
    .await?;
    println!(
        "  amoCRM: new lead {lead} of contact {buyer} (a past buyer) -> moved to \"{REPEAT}\" with a task in {:.2} s",
        took.as_secs_f64()
    );
    println!("    task: {task}");

    // Bitrix24: the same with a deal.
    let (buyer, main, repeat_id) = b24
        .with_data(|d| {
            let won = d
                .deals
                .values()
                .filter(|x| x.stage_semantic_id == "S" && x.contact_id.is_some())
                .max_by_key(|x| x.contact_id)?;
            let repeat = d.categories.values().find(|c| c.name == REPEAT)?.id;
            let main = d.categories.values().find(|c| c.name != REPEAT)?.id;
            Some((won.contact_id?, main, repeat))
        })
        .context("the Bitrix24 portal has no past buyer")?;
    let deal = b24
        .add_deal(buyer, 15_000, main)
        .context("creating the Bitrix24 deal")?;
    let (took, title) = wait_for("Bitrix24 deal", || {
        let moved = b24.with_data(|d| {
            d.deals
                .get(&deal)
                .is_some_and(|x| x.category_id == repeat_id)
        });
        let todo = b24.writes().into_iter().find(|w| {
            w.method == "crm.activity.todo.add" && w.params.to_string().contains(&deal.to_string())
        })?;
        let title = todo
            .params
            .pointer("/fields/title")
            .or_else(|| todo.params.get("title"))
            .and_then(|v| v.as_str())
            .unwrap_or("to-do")
            .to_owned();
        moved.then_some(title)
    })
    .await?;
    println!(
        "  Bitrix24: new deal {deal} of contact {buyer} (a past buyer) -> moved to \"{REPEAT}\", IS_RETURN_CUSTOMER=Y, with a to-do in {:.2} s",
        took.as_secs_f64()
    );
    println!("    to-do: {title}");
    cancel.cancel();
    tasks.wait().await;
    Ok(())
}
