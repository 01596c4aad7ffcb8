//! Processing the inbox: each committed webhook is turned into cache updates. Bitrix24 sends
//! only ids and amoCRM's hook fields are not the API's model, so the entity is fetched from the
//! API and stored as the sync would store it; deletions are applied directly.
//!
//! Processing is at-least-once (an event leaves the inbox only after its effects are
//! committed) and the effects are idempotent (upserts and deletes by id), so a crash between
//! the two repeats work but never loses or doubles it.
use super::PortalRuntime;
use super::inbox::InboxEvent;
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
        other => Err(ProcessError::Parse {
            seq: event.seq,
            message: format!("no parser for {other} events yet"),
        }),
    }
}

/// Applies changes to the cache, fetching upserted records from the CRM.
pub async fn apply_changes(
    conn: &dyn Connector,
    store: &Store,
    changes: &[Change],
) -> Result<(), ProcessError> {
    for c in changes {
        match c {
            Change::Upsert(EntityKind::Deals, id) => match conn.deal(DealId(*id)).await? {
                Some(deal) => blocking(store, move |s| s.write(|w| w.put_all(&[deal]))).await?,
                None => blocking(store, remover(EntityKind::Deals, *id)).await?,
            },
            Change::Upsert(EntityKind::Contacts, id) => match conn.contact(ContactId(*id)).await? {
                Some(c) => blocking(store, move |s| s.write(|w| w.put_all(&[c]))).await?,
                None => blocking(store, remover(EntityKind::Contacts, *id)).await?,
            },
            // Companies, users and pipelines change rarely: the scheduled sync picks them up.
            Change::Upsert(_, _) => {}
            Change::Delete(kind, id) => blocking(store, remover(*kind, *id)).await?,
        }
    }
    Ok(())
}

fn remover(
    kind: EntityKind,
    id: u64,
) -> impl FnOnce(&Store) -> Result<(), crate::store::StoreError> + Send + 'static {
    move |s| s.write(|w| w.remove(kind, &[id]).map(|_| ()))
}

async fn blocking<R: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<R, crate::store::StoreError> + Send + 'static,
) -> Result<R, crate::store::StoreError> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| store.err(e))?
}

/// Processes what is in a portal's inbox now; returns how many events were done. Events whose
/// CRM fetch fails stay for the next round; events that cannot be parsed are dropped with an
/// error log (they would fail forever).
pub async fn process_once(
    p: &PortalRuntime,
    conn: &Arc<dyn Connector>,
) -> Result<usize, ProcessError> {
    let store = p.store.clone();
    let events = blocking(&store, |s| s.inbox_pending(256)).await?;
    let mut done = Vec::new();
    let mut result = Ok(());
    for ev in &events {
        match changes(ev) {
            Ok(ch) => {
                if let Err(e) = apply_changes(conn.as_ref(), &store, &ch).await {
                    result = Err(e);
                    break;
                }
                let lag = jiff::Timestamp::now()
                    .duration_since(ev.received_at)
                    .as_secs_f64();
                metrics::histogram!("rebuy_webhook_processing_lag_seconds", "portal" => p.cfg.id.0.clone()).record(lag);
            }
            Err(e) => {
                tracing::error!(portal = %p.cfg.id, seq = ev.seq, error = %e, "Dropping an unprocessable webhook.")
            }
        }
        done.push(ev.seq);
    }
    let n = done.len();
    if !done.is_empty() {
        blocking(&store, move |s| s.inbox_done(&done)).await?;
    }
    result.map(|()| n)
}
