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
            reactor: Arc::default(),
            replan: Arc::default(),
            inbox_max_attempts: settings.inbox_max_attempts,
        };
        let replan = ctx.replan.clone();
        let dedupe = Duration::from_secs(u64::from(settings.inbox_dedupe_days) * 86_400);
        tracker.spawn(inbox_loop(p.clone(), ctx, dedupe, cancel.clone()));
        tracker.spawn(schedule_loop(
            p.clone(),
            handle.connector,
            handle.tokens,
            replan,
            settings.clone(),
            cancel.clone(),
        ));
    }
    tracker.close();
    tracker
}

async fn inbox_loop(
    p: PortalRuntime,
    ctx: worker::WorkerCtx,
    dedupe: Duration,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let mut pruned_at: Option<std::time::Instant> = None;
    loop {
        // Dedup keys older than the retention window go, hourly.
        if pruned_at.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
            pruned_at = Some(std::time::Instant::now());
            let cutoff = jiff::Timestamp::now()
                .checked_sub(dedupe)
                .unwrap_or(jiff::Timestamp::MIN);
            match p.store.blocking(move |s| s.inbox_prune_seen(cutoff)).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(portal = %p.cfg.id, pruned = n, "Forgot old webhook dedup keys.")
                }
                Err(e) => {
                    tracing::warn!(portal = %p.cfg.id, error = %e, "Pruning webhook dedup keys failed.")
                }
            }
        }
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
/// Meta key: the first local date whose daily run writes (set by the first run that sees
/// `auto_apply = true`, to the day after; removed by a run that sees it off).
const KEY_AUTO_SINCE: &str = "auto_apply_since";

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

/// What the daily run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DailyRun {
    /// Not due: before `daily_hour`, already run today, or no mapping.
    NotDue,
    /// Planned only (`auto_apply` off, or on since today: it writes from the next day's run);
    /// the plan waits in the dashboard for Apply. Nothing was written.
    Planned {
        /// Actions in the plan.
        actions: usize,
    },
    /// Planned and committed to the outbox (the scheduler sends it).
    Applied {
        /// New actions in the outbox.
        added: u64,
        /// The lookback used: never back before the first writing day.
        lookback_days: u32,
    },
}

/// The daily run at `daily_hour` local time, once per local day. Returns whether it ran.
/// See [`daily_planning_at`].
pub async fn daily_planning(
    p: &PortalRuntime,
    conn: &dyn Connector,
    s: &ServerSettings,
) -> anyhow::Result<bool> {
    let r = daily_planning_at(p, conn, s, jiff::Timestamp::now()).await?;
    Ok(r != DailyRun::NotDue)
}

/// The daily run at `now`: plans the playbooks (funnel moves, touches, segment fields, repeat
/// routing of open deals). Without `[portal.mapping] auto_apply = true` it only plans: the plan
/// is kept for the dashboard's Apply and nothing is written. With it, the first run that sees
/// it on still only plans and records the next local day as the first writing day; from that
/// day on each run commits its plan to the outbox, looking back at most to that day (so turning
/// auto-apply on never sends a backlog of the days before).
pub async fn daily_planning_at(
    p: &PortalRuntime,
    conn: &dyn Connector,
    s: &ServerSettings,
    now: jiff::Timestamp,
) -> anyhow::Result<DailyRun> {
    if p.cfg.mapping.is_null() {
        return Ok(DailyRun::NotDue);
    }
    let local = now.to_zoned(p.cfg.time_zone.clone());
    if local.hour() < i8::try_from(s.daily_hour).unwrap_or(9) {
        return Ok(DailyRun::NotDue);
    }
    let today = local.date();
    let last: Option<String> = p.store.meta(KEY_DAILY_PLANNED)?;
    if last.as_deref() == Some(today.to_string().as_str()) {
        return Ok(DailyRun::NotDue);
    }
    let (auto, _) = crate::playbooks::mapping::write_switches(&p.cfg.mapping);
    let since = auto_apply_since(p, auto, today)?;
    let run = match auto_apply_lookback(p, now) {
        Some(lookback_days) => {
            let added = replan_now(p, conn, now, Some(lookback_days)).await?;
            tracing::info!(portal = %p.cfg.id, new = added, lookback_days, "Daily run: planned and committed to the outbox (auto_apply).");
            DailyRun::Applied {
                added,
                lookback_days,
            }
        }
        _ => {
            let plan = crate::writeback::plan_portal(&p.cfg, &p.store, Some(conn), now).await?;
            let actions = plan.actions.len();
            p.set_waiting_plan(crate::server::DryRun {
                id: crate::server::request::random_token(),
                plan: Ok(plan),
                computed_at: jiff::Timestamp::now(),
                by_daily_run: true,
            });
            match since {
                Some(since) => {
                    tracing::info!(portal = %p.cfg.id, actions, first_writing_day = %since, "Daily run: planned only; auto_apply writes from the next day's run.")
                }
                None => {
                    tracing::info!(portal = %p.cfg.id, actions, "Daily run: planned only (auto_apply is off); the plan waits in the dashboard for Apply.")
                }
            }
            DailyRun::Planned { actions }
        }
    };
    p.store.set_meta(KEY_DAILY_PLANNED, &today.to_string())?;
    Ok(run)
}

/// The first local day whose daily run writes, when `auto_apply` is on: recorded as the day
/// after the first run that sees it on; forgotten when a run sees it off.
fn auto_apply_since(
    p: &PortalRuntime,
    auto: bool,
    today: jiff::civil::Date,
) -> anyhow::Result<Option<jiff::civil::Date>> {
    let stored: Option<String> = p.store.meta(KEY_AUTO_SINCE)?;
    if !auto {
        if stored.is_some() {
            p.store.write(|w| w.remove_meta(KEY_AUTO_SINCE))?;
        }
        return Ok(None);
    }
    if let Some(d) = stored.and_then(|s| s.parse::<jiff::civil::Date>().ok()) {
        return Ok(Some(d));
    }
    let first = today.tomorrow()?;
    p.store.set_meta(KEY_AUTO_SINCE, &first.to_string())?;
    Ok(Some(first))
}

/// When the portal's planned writes go out without a person now (`auto_apply` is on and its
/// first writing day has come): the lookback its runs use, the mapping's `lookback_days` but
/// never back before that first day. `None`: only a person's Apply writes.
pub fn auto_apply_lookback(p: &PortalRuntime, now: jiff::Timestamp) -> Option<u32> {
    let (auto, _) = crate::playbooks::mapping::write_switches(&p.cfg.mapping);
    if !auto {
        return None;
    }
    let today = now.to_zoned(p.cfg.time_zone.clone()).date();
    let since = p
        .store
        .meta::<String>(KEY_AUTO_SINCE)
        .ok()
        .flatten()?
        .parse::<jiff::civil::Date>()
        .ok()?;
    if since > today {
        return None;
    }
    let configured = crate::playbooks::mapping::parse(&p.cfg.mapping)
        .map(|m| m.lookback_days)
        .unwrap_or(0);
    let since_days = u32::try_from((today - since).get_days().max(0)).unwrap_or(0);
    Some(configured.min(since_days))
}

/// Plans the portal at `now` and commits the actions to the outbox (the scheduler drains it);
/// `lookback_days` overrides the mapping's. Only for a portal whose writes go out without a
/// person ([`auto_apply_active`]).
pub async fn replan_now(
    p: &PortalRuntime,
    conn: &dyn Connector,
    now: jiff::Timestamp,
    lookback_days: Option<u32>,
) -> anyhow::Result<u64> {
    let mut cfg = p.cfg.clone();
    if let (Some(n), Some(m)) = (lookback_days, cfg.mapping.as_object_mut()) {
        m.insert("lookback_days".into(), serde_json::json!(n));
    }
    // Segment fields the mapping allows to create exist before anything is planned into them.
    let fields = crate::writeback::create_missing_fields(&cfg, &p.store, conn).await?;
    for f in &fields.failed {
        tracing::warn!(portal = %p.cfg.id, field = %f, "Could not create a segment field.");
    }
    let plan = crate::writeback::plan_portal(&cfg, &p.store, Some(conn), now).await?;
    let added = crate::writeback::enqueue_plan(&p.store, &plan).await?;
    Ok(added.added)
}

async fn schedule_loop(
    p: PortalRuntime,
    conn: Arc<dyn Connector>,
    tokens: Arc<rebuy_core::TokenManager>,
    replan: Arc<std::sync::atomic::AtomicBool>,
    s: ServerSettings,
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
        // A won deal arrived by webhook: schedule its touches now (at most once a minute), when
        // the portal's writes go out without a person (auto_apply); else the next daily run
        // plans them and they wait for Apply.
        if !p.cfg.mapping.is_null()
            && last_replan
                .is_none_or(|t: tokio::time::Instant| t.elapsed() >= Duration::from_secs(60))
            && replan.swap(false, std::sync::atomic::Ordering::SeqCst)
            && let Some(lookback) = auto_apply_lookback(&p, jiff::Timestamp::now())
        {
            last_replan = Some(tokio::time::Instant::now());
            match replan_now(&p, conn.as_ref(), jiff::Timestamp::now(), Some(lookback)).await {
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
            if let Err(e) = daily_planning(&p, conn.as_ref(), &s).await {
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
