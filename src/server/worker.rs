//! Processing the inbox: each committed webhook is turned into cache updates. Bitrix24 sends
//! only ids and amoCRM's hook fields are not the API's model, so the entity is fetched from the
//! API and stored as the sync would store it; deletions are applied directly.
//!
//! Processing is at-least-once (an event leaves the inbox only after its effects are
//! committed) and the effects are idempotent (upserts and deletes by id), so a crash between
//! the two repeats work but never loses or doubles it.
use super::PortalRuntime;
use crate::inbox::InboxEvent;
use crate::store::Store;
use rebuy_core::{Connector, ConnectorError, ContactId, DealId, EntityKind};
use std::sync::Arc;

/// What one event asks of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Fetch this record and store it.
    Upsert(EntityKind, u64),
    /// Remove this record.
    Delete(EntityKind, u64),
    /// The Bitrix24 app was installed (or updated): bind the handlers. Its tokens are not taken
    /// from the event here: the webhook endpoint verified and stored them before answering.
    Install,
    /// The Bitrix24 app was removed: the portal needs a new install.
    Uninstall,
}

/// The events rebuy binds on a Bitrix24 portal at install.
pub const B24_EVENTS: [&str; 8] = [
    "ONCRMDEALADD",
    "ONCRMDEALUPDATE",
    "ONCRMDEALDELETE",
    "ONCRMDEALMOVETOCATEGORY",
    "ONCRMCONTACTADD",
    "ONCRMCONTACTUPDATE",
    "ONCRMCONTACTDELETE",
    "ONAPPUNINSTALL",
];

fn b24_changes(event: &InboxEvent) -> Result<Vec<Change>, ProcessError> {
    use rebuy_bitrix24::events::EventKind as K;
    let ct = (!event.content_type.is_empty()).then_some(event.content_type.as_str());
    let ev = rebuy_bitrix24::events::parse(&event.body, ct).map_err(|e| ProcessError::Parse {
        seq: event.seq,
        message: e.to_string(),
    })?;
    let id = ev.entity_id;
    let one = |c: Option<Change>| Ok(c.into_iter().collect());
    match ev.kind {
        K::DealAdd | K::DealUpdate | K::DealMoveToCategory { .. } => {
            one(id.map(|i| Change::Upsert(EntityKind::Deals, i)))
        }
        K::DealDelete => one(id.map(|i| Change::Delete(EntityKind::Deals, i))),
        K::ContactAdd | K::ContactUpdate => {
            one(id.map(|i| Change::Upsert(EntityKind::Contacts, i)))
        }
        K::ContactDelete => one(id.map(|i| Change::Delete(EntityKind::Contacts, i))),
        K::CompanyAdd | K::CompanyUpdate => {
            one(id.map(|i| Change::Upsert(EntityKind::Companies, i)))
        }
        K::CompanyDelete => one(id.map(|i| Change::Delete(EntityKind::Companies, i))),
        K::AppInstall => one(Some(Change::Install)),
        K::AppUninstall => one(Some(Change::Uninstall)),
        K::Other(_) => Ok(Vec::new()),
    }
}

/// Why an event could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The body no longer parses (it did at receipt, so this is a bug or a version change).
    #[error("event {seq}: {message}")]
    Parse {
        /// Inbox sequence.
        seq: u64,
        /// Why.
        message: String,
    },
    /// The CRM failed; the event stays in the inbox and is tried again.
    #[error("fetching from the CRM: {0}")]
    Connector(#[from] ConnectorError),
    /// The cache failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Planning the reaction failed (mapping or playbooks invalid, cache not synced yet).
    #[error("planning the reaction: {0:#}")]
    Plan(anyhow::Error),
}

/// What real-time routing reads: the identity index, the analysis and the resolved playbooks
/// of the portal, rebuilt when older than [`Reactor::TTL`] (a webhook must not wait for a whole
/// analysis each time).
#[derive(Default)]
pub struct Reactor {
    cached: tokio::sync::Mutex<Option<(std::time::Instant, Arc<Prepared>)>>,
}

/// The cached inputs of real-time routing.
pub struct Prepared {
    data: crate::analytics::Dataset,
    analysis: crate::analytics::Analysis,
    rules: crate::playbooks::Rules,
}

impl Reactor {
    /// How long a prepared analysis serves webhooks.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(300);

    async fn prepared(
        &self,
        p: &PortalRuntime,
        ctx: &WorkerCtx,
    ) -> Result<Arc<Prepared>, ProcessError> {
        let mut guard = self.cached.lock().await;
        if let Some((at, prep)) = guard.as_ref()
            && at.elapsed() < Self::TTL
        {
            return Ok(prep.clone());
        }
        let rules = crate::writeback::resolve_rules(&p.cfg, &p.store, Some(ctx.conn.as_ref()))
            .await
            .map_err(ProcessError::Plan)?;
        let (store, cfg) = (p.store.clone(), p.cfg.clone());
        let (data, analysis) =
            tokio::task::spawn_blocking(move || crate::analyse::analyse_portal(&store, &cfg, None))
                .await
                .map_err(|e| ProcessError::Plan(e.into()))?
                .map_err(ProcessError::Plan)?;
        let prep = Arc::new(Prepared {
            data,
            analysis,
            rules,
        });
        *guard = Some((std::time::Instant::now(), prep.clone()));
        Ok(prep)
    }
}

/// Routes one open deal as it arrives: a repeat sale goes to the repeat pipeline with a task,
/// through the outbox, at once, when the mapping names `repeat_pipeline` and keeps
/// `route_repeat_leads` on (its default). Our own writes echo back as events; they find the deal already
/// in the repeat pipeline (nothing planned) and the idempotency keys stop any repeat.
async fn react_to_deal(
    p: &PortalRuntime,
    ctx: &WorkerCtx,
    deal: &rebuy_core::Deal,
) -> Result<(), ProcessError> {
    if deal.state != rebuy_core::DealState::Open
        || !crate::playbooks::mapping::write_switches(&p.cfg.mapping).1
    {
        return Ok(());
    }
    let prep = ctx.reactor.prepared(p, ctx).await?;
    let class = crate::analytics::classify_deal(&prep.data, &p.cfg.analytics, deal);
    let open = crate::plan::OpenDeal {
        id: deal.id,
        name: deal.name.clone(),
        customer: class.customer,
        class: class.class,
        pipeline: deal.pipeline_id,
        stage: deal.stage_id.clone(),
        responsible: deal.responsible_user_id,
        created_at: deal.created_at,
    };
    let customer = class
        .customer
        .and_then(|k| crate::plan::find_customer(&prep.analysis.customers, k));
    let actions = crate::plan::plan_for_deal(
        &p.cfg.id.0,
        jiff::Timestamp::now(),
        &p.cfg.time_zone,
        &prep.rules,
        &open,
        customer,
    );
    if actions.is_empty() {
        return Ok(());
    }
    tracing::info!(portal = %p.cfg.id, deal = %deal.id, actions = actions.len(), "Routing a repeat deal.");
    let n = actions.len();
    let added = p.store.blocking(move |s| s.outbox_enqueue(actions)).await?;
    if added.added > 0 {
        crate::outbox::drain(
            ctx.conn.as_ref(),
            &p.store,
            &crate::outbox::DrainOptions::default(),
        )
        .await?;
    }
    metrics::counter!("rebuy_routed_actions_total", "portal" => p.cfg.id.0.clone())
        .increment(n as u64);
    Ok(())
}

/// The cache changes an event asks for.
pub fn changes(event: &InboxEvent) -> Result<Vec<Change>, ProcessError> {
    match event.crm.as_str() {
        "amocrm" => {
            let payload =
                rebuy_amocrm::webhooks::parse(&event.body).map_err(|e| ProcessError::Parse {
                    seq: event.seq,
                    message: e.to_string(),
                })?;
            let mut out = Vec::new();
            for e in &payload.events {
                let (Some(kind), Some(id)) = (e.entity.kind(), e.id) else {
                    continue;
                };
                let change = if e.action == "delete" {
                    Change::Delete(kind, id)
                } else {
                    Change::Upsert(kind, id)
                };
                if !out.contains(&change) {
                    out.push(change);
                }
            }
            Ok(out)
        }
        "bitrix24" => b24_changes(event),
        other => Err(ProcessError::Parse {
            seq: event.seq,
            message: format!("events of an unknown CRM {other:?}"),
        }),
    }
}

/// What the worker of one portal works with.
#[derive(Clone)]
pub struct WorkerCtx {
    /// The portal's connector.
    pub conn: Arc<dyn Connector>,
    /// Its token manager.
    pub tokens: Arc<rebuy_core::TokenManager>,
    /// This portal's Bitrix24 event handler URL (`{public_url}/hooks/bitrix24/{portal}`), when
    /// the server knows its public URL.
    pub handler_url: Option<String>,
    /// Real-time routing state.
    pub reactor: Arc<Reactor>,
    /// Set when a deal was won: the scheduler re-plans the portal's touches within seconds
    /// (debounced), so after-purchase schedules do not wait for the daily run.
    pub replan: Arc<std::sync::atomic::AtomicBool>,
    /// Failures after which an event moves to the dead-letter table.
    pub inbox_max_attempts: u32,
}

/// Applies changes to the cache, fetching upserted records from the CRM.
pub async fn apply_changes(
    p: &PortalRuntime,
    ctx: &WorkerCtx,
    changes: &[Change],
) -> Result<(), ProcessError> {
    let store = &p.store;
    let conn = ctx.conn.as_ref();
    for c in changes {
        match c {
            Change::Install => {
                // Only a portal whose tokens the endpoint verified and stored binds handlers
                // (an install event stored by an older version carried unverified tokens:
                // they are never used).
                let connected = store
                    .blocking(|s| Ok(s.load_tokens()?.is_some() && s.needs_reauth()?.is_none()))
                    .await?;
                if !connected {
                    tracing::warn!(portal = %p.cfg.id, "An install event for a portal without verified tokens: no handlers bound.");
                    continue;
                }
                match &ctx.handler_url {
                    Some(url) => conn.subscribe(url, &B24_EVENTS).await?,
                    None => tracing::warn!(
                        "No [server] public_url: Bitrix24 event handlers were not bound."
                    ),
                }
            }
            Change::Uninstall => {
                store
                    .blocking(|s| s.set_needs_reauth("the Bitrix24 app was uninstalled"))
                    .await?;
            }
            Change::Upsert(EntityKind::Deals, id) => match conn.deal(DealId(*id)).await? {
                Some(deal) => {
                    if deal.state == rebuy_core::DealState::Won {
                        ctx.replan.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    put_deal(store, conn, deal.clone()).await?;
                    // A reaction that cannot be planned (no mapping yet, cache never synced)
                    // must not hold the inbox: the cache update above is the event's effect.
                    if let Err(e) = react_to_deal(p, ctx, &deal).await {
                        tracing::warn!(portal = %p.cfg.id, deal = %deal.id, error = %e, "No real-time routing for this deal.");
                    }
                }
                None => store.blocking(remover(EntityKind::Deals, *id)).await?,
            },
            Change::Upsert(EntityKind::Contacts, id) => match conn.contact(ContactId(*id)).await? {
                Some(c) => {
                    store
                        .blocking(move |s| s.write(|w| w.put_all(&[c])))
                        .await?
                }
                None => store.blocking(remover(EntityKind::Contacts, *id)).await?,
            },
            // Companies, users and pipelines change rarely: the scheduled sync picks them up.
            Change::Upsert(_, _) => {}
            // A delete leaves the cache only when the CRM confirms the record is gone: an
            // event is not proof (a forged or stale one must not erase customers).
            Change::Delete(EntityKind::Deals, id) => match conn.deal(DealId(*id)).await? {
                Some(deal) => {
                    tracing::warn!(portal = %p.cfg.id, deal = id, "A delete event for a deal the CRM still has: kept.");
                    put_deal(store, conn, deal).await?;
                }
                None => store.blocking(remover(EntityKind::Deals, *id)).await?,
            },
            Change::Delete(EntityKind::Contacts, id) => match conn.contact(ContactId(*id)).await? {
                Some(c) => {
                    tracing::warn!(portal = %p.cfg.id, contact = id, "A delete event for a contact the CRM still has: kept.");
                    store
                        .blocking(move |s| s.write(|w| w.put_all(&[c])))
                        .await?
                }
                None => store.blocking(remover(EntityKind::Contacts, *id)).await?,
            },
            // Companies have no single-record read in the connector: their deletes apply as
            // sent, and the next full sync or reconciliation restores a wrong one.
            Change::Delete(kind, id) => store.blocking(remover(*kind, *id)).await?,
        }
    }
    Ok(())
}

/// Stores a deal as fetched; it carries its current product rows (see `Connector::deal`),
/// which replace the cached ones where the CRM lists rows on their own.
async fn put_deal(
    store: &Store,
    conn: &dyn Connector,
    deal: rebuy_core::Deal,
) -> Result<(), crate::store::StoreError> {
    let drop_rows = conn.lists_product_rows();
    store
        .blocking(move |s| {
            s.write(|w| {
                if drop_rows {
                    w.drop_product_rows_of(&[deal.id.0])?;
                }
                w.put_all(&[deal])
            })
        })
        .await
}

fn remover(
    kind: EntityKind,
    id: u64,
) -> impl FnOnce(&Store) -> Result<(), crate::store::StoreError> + Send + 'static {
    move |s| s.write(|w| w.remove(kind, &[id]).map(|_| ()))
}

/// Whether a failure is about the whole account or connection (the queue waits and no event
/// is blamed) rather than about this event (it is retried later, then dead-lettered, and the
/// events behind it go on).
fn blames_the_account(e: &ProcessError) -> bool {
    match e {
        ProcessError::Connector(c) => matches!(
            c,
            ConnectorError::RateLimited { .. }
                | ConnectorError::Blocked { .. }
                | ConnectorError::Auth { .. }
                | ConnectorError::NeedsReauth { .. }
                | ConnectorError::Store { .. }
        ),
        ProcessError::Store(_) => true,
        ProcessError::Parse { .. } | ProcessError::Plan(_) => false,
    }
}

/// Processes what is due in a portal's inbox now; returns how many events were done (or
/// given up). An event that fails for its own reasons (the CRM rejects its record, a
/// transient fault, a body that no longer parses) is retried after a growing delay while the
/// events behind it go on, and after `max_attempts` failures moves to the dead-letter table;
/// a failure of the whole account (rate limit, block, authorisation, the cache) stops the
/// round without blaming the event.
pub async fn process_once(p: &PortalRuntime, ctx: &WorkerCtx) -> Result<usize, ProcessError> {
    let store = p.store.clone();
    let now = jiff::Timestamp::now();
    let events = store.blocking(move |s| s.inbox_due(256, Some(now))).await?;
    let mut done = Vec::new();
    let mut gave_up = 0;
    let mut result = Ok(());
    for ev in &events {
        let outcome = match changes(ev) {
            Ok(ch) => apply_changes(p, ctx, &ch).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {
                let lag = jiff::Timestamp::now()
                    .duration_since(ev.received_at)
                    .as_secs_f64();
                metrics::histogram!("rebuy_webhook_processing_lag_seconds", "portal" => p.cfg.id.0.clone()).record(lag);
                done.push(ev.seq);
            }
            Err(e) if blames_the_account(&e) => {
                result = Err(e);
                break;
            }
            Err(e) => {
                let (seq, msg, max) = (ev.seq, e.to_string(), ctx.inbox_max_attempts);
                let transient = matches!(
                    &e,
                    ProcessError::Connector(ConnectorError::Transient { .. })
                );
                let failed = store
                    .blocking(move |s| s.inbox_failed(seq, &msg, max, jiff::Timestamp::now()))
                    .await?;
                match failed {
                    crate::inbox::Failed::Dead => {
                        gave_up += 1;
                        metrics::counter!("rebuy_inbox_dead_letters_total", "portal" => p.cfg.id.0.clone()).increment(1);
                        tracing::error!(portal = %p.cfg.id, seq, error = %e, "A webhook failed {max} times: moved to the dead-letter table (rebuy inbox replay puts it back).");
                    }
                    crate::inbox::Failed::Retry(at) => {
                        tracing::warn!(portal = %p.cfg.id, seq, error = %e, retry_at = %at, "A webhook failed; it is retried later and the events behind it go on.");
                    }
                }
                // A transient fault may be the CRM's, not the event's: pause the round (the
                // loop backs off) rather than burn every event's attempts in one outage.
                if transient {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    let n = done.len() + gave_up;
    if !done.is_empty() {
        store.blocking(move |s| s.inbox_done(&done)).await?;
    }
    result.map(|()| n)
}
