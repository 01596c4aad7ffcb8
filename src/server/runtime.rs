//! The background work of `rebuy serve`, per portal and isolated: a failing portal logs and
//! retries on its own schedule, never stalling another.
//! - the inbox worker: woken by each committed webhook, processes the inbox;
//! - the scheduler: incremental sync every `sync_interval_mins` (jittered, so hundreds of
//!   portals do not all start at once) and outbox drains every `outbox_interval_secs`.
use super::{AppState, PortalRuntime, worker};
use crate::config::ServerSettings;
use crate::sync::NoProgress;
use rebuy_core::Connector;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Starts every portal's background tasks; they stop when `cancel` fires.
pub fn spawn_all(
    state: &AppState,
    settings: &ServerSettings,
    playbooks_dir: Option<std::path::PathBuf>,
    cancel: CancellationToken,
) -> TaskTracker {
    let tracker = TaskTracker::new();
    for p in state.portals.values() {
        let handle = match p.handle() {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(portal = %p.cfg.id, error = %e, "Portal cannot start; its webhooks are still stored.");
                continue;
            }
        };
        let ctx = worker::WorkerCtx {
            conn: handle.connector.clone(),
            tokens: handle.tokens.clone(),
            handler_url: settings
                .public_url
                .as_ref()
                .map(|u| format!("{}/hooks/bitrix24/{}", u.trim_end_matches('/'), p.cfg.id)),
            playbooks_dir: playbooks_dir.clone(),
            reactor: Arc::default(),
            replan: Arc::default(),
        };
        let replan = ctx.replan.clone();
        tracker.spawn(inbox_loop(p.clone(), ctx, cancel.clone()));
        tracker.spawn(schedule_loop(
            p.clone(),
            handle.connector,
            handle.tokens,
            replan,
            settings.clone(),
            playbooks_dir.clone(),
            cancel.clone(),
        ));
    }
    tracker.close();
    tracker
}

async fn inbox_loop(p: PortalRuntime, ctx: worker::WorkerCtx, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match worker::process_once(&p, &ctx).await {
            Ok(0) => {
                backoff = Duration::from_millis(200);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = p.notify.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
            Ok(_) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(portal = %p.cfg.id, error = %e, "Inbox processing failed; will retry.");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
        if cancel.is_cancelled() {
            return;
        }
    }
}

fn jitter(base: Duration) -> Duration {
    base.mul_f64(0.8 + 0.4 * rand::random::<f64>())
}

/// Meta key: the local date of the last daily planning run.
const KEY_DAILY_PLANNED: &str = "daily_planned_on";

/// Publishes the connector's traffic counters and token refreshes as metrics.
fn export_metrics(p: &PortalRuntime, conn: &dyn Connector, tokens: &rebuy_core::TokenManager) {
    let id = p.cfg.id.0.clone();
    let st = conn.stats();
    metrics::gauge!("rebuy_crm_requests", "portal" => id.clone()).set(st.requests as f64);
    metrics::gauge!("rebuy_crm_rate_limited", "portal" => id.clone()).set(st.rate_limited as f64);
    metrics::gauge!("rebuy_crm_transient_failures", "portal" => id.clone())
        .set(st.transient as f64);
    metrics::gauge!("rebuy_crm_retries", "portal" => id.clone()).set(st.retries as f64);
    metrics::gauge!("rebuy_token_refreshes", "portal" => id).set(tokens.refreshes() as f64);
}

/// The daily run at `daily_hour` local time: plan the playbooks (funnel moves, touches,
/// segment fields) and commit them to the outbox, once per local day. Returns whether it ran.
pub async fn daily_planning(
    p: &PortalRuntime,
    conn: &dyn Connector,
    s: &ServerSettings,
    playbooks_dir: Option<&std::path::Path>,
) -> anyhow::Result<bool> {
    if p.cfg.mapping.is_null() {
        return Ok(false);
    }
    let now = jiff::Timestamp::now();
    let local = now.to_zoned(p.cfg.time_zone.clone());
    if local.hour() < i8::try_from(s.daily_hour).unwrap_or(9) {
        return Ok(false);
    }
    let today = local.date().to_string();
    let last: Option<String> = p.store.meta(KEY_DAILY_PLANNED)?;
    if last.as_deref() == Some(today.as_str()) {
        return Ok(false);
    }
    let added = replan_now(p, conn, playbooks_dir).await?;
    p.store.set_meta(KEY_DAILY_PLANNED, &today)?;
    tracing::info!(portal = %p.cfg.id, new = added, "Daily planning done.");
    Ok(true)
}

/// Plans the portal now and commits the actions to the outbox (the scheduler drains it).
pub async fn replan_now(
    p: &PortalRuntime,
    conn: &dyn Connector,
    playbooks_dir: Option<&std::path::Path>,
) -> anyhow::Result<u64> {
    // Segment fields the mapping allows to create exist before anything is planned into them.
    let fields =
        crate::writeback::create_missing_fields(&p.cfg, &p.store, conn, playbooks_dir).await?;
    for f in &fields.failed {
        tracing::warn!(portal = %p.cfg.id, field = %f, "Could not create a segment field.");
    }
    let plan = crate::writeback::plan_portal(
        &p.cfg,
        &p.store,
        Some(conn),
        playbooks_dir,
        jiff::Timestamp::now(),
    )
    .await?;
    let added = p
        .store
        .blocking(move |s| s.outbox_enqueue(plan.actions))
        .await?;
    Ok(added.added)
}

async fn schedule_loop(
    p: PortalRuntime,
    conn: Arc<dyn Connector>,
    tokens: Arc<rebuy_core::TokenManager>,
    replan: Arc<std::sync::atomic::AtomicBool>,
    s: ServerSettings,
    playbooks_dir: Option<std::path::PathBuf>,
    cancel: CancellationToken,
) {
    let sync_every = Duration::from_secs(s.sync_interval_mins.max(1) * 60);
    let drain_every = Duration::from_secs(s.outbox_interval_secs.max(1));
    // First sync soon after start, spread over a minute.
    let mut next_sync = tokio::time::Instant::now() + jitter(Duration::from_secs(30));
    let mut synced_once = false;
    let mut last_replan: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(drain_every) => {}
            () = p.drain_now.notified() => {}
        }
        let report = crate::outbox::drain(
            conn.as_ref(),
            &p.store,
            &crate::outbox::DrainOptions::default(),
        )
        .await;
        if let Err(e) = report {
            tracing::warn!(portal = %p.cfg.id, error = %e, "Outbox drain failed.");
        }
        export_metrics(&p, conn.as_ref(), &tokens);
        // A won deal arrived by webhook: schedule its touches now (at most once a minute).
        if !p.cfg.mapping.is_null()
            && last_replan
                .is_none_or(|t: tokio::time::Instant| t.elapsed() >= Duration::from_secs(60))
            && replan.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            last_replan = Some(tokio::time::Instant::now());
            match replan_now(&p, conn.as_ref(), playbooks_dir.as_deref()).await {
                Ok(n) => {
                    tracing::info!(portal = %p.cfg.id, new = n, "Re-planned after a won deal.")
                }
                Err(e) => {
                    tracing::warn!(portal = %p.cfg.id, error = %format!("{e:#}"), "Re-planning failed.")
                }
            }
        }
        // The daily planning follows a sync of this process, so it plans on fresh data.
        if synced_once {
            if let Err(e) = daily_planning(&p, conn.as_ref(), &s, playbooks_dir.as_deref()).await {
                tracing::warn!(portal = %p.cfg.id, error = %format!("{e:#}"), "Daily planning failed.");
            }
        }
        if tokio::time::Instant::now() >= next_sync {
            let opts = crate::portal::sync_options(&p.cfg, false);
            let started = std::time::Instant::now();
            match crate::sync::sync_portal(
                conn.clone(),
                p.store.clone(),
                &opts,
                Arc::new(NoProgress),
            )
            .await
            {
                Ok(r) => {
                    synced_once = true;
                    metrics::histogram!("rebuy_sync_duration_seconds", "portal" => p.cfg.id.0.clone())
                        .record(started.elapsed().as_secs_f64());
                    tracing::info!(portal = %p.cfg.id, records = r.records(), "Incremental sync done.");
                }
                Err(e) => tracing::warn!(portal = %p.cfg.id, error = %e, "Scheduled sync failed."),
            }
            next_sync = tokio::time::Instant::now() + jitter(sync_every);
        }
    }
}
