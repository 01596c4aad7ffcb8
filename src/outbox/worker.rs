//! Sending the outbox: due entries are marked in flight, packed into the connector's bulk
//! requests, and their outcomes committed. The retry decision is the pure
//! [`rebuy_core::retry::decide`].
use super::queue::{ActionState, Entry};
use crate::failpoint;
use crate::store::{Store, StoreError};
use jiff::{SignedDuration, Timestamp};
use rebuy_core::retry::{Decision, RetryPolicy, decide};
use rebuy_core::{Connector, ConnectorError, WriteOp};

/// How to drain.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// Retry policy of one action (attempts across drains).
    pub retry: RetryPolicy,
    /// Requests' worth of actions taken per round.
    pub requests_per_round: usize,
    /// Stop after this many actions (None = all due).
    pub max_actions: Option<usize>,
}

impl Default for DrainOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy {
                max_attempts: 5,
                ..RetryPolicy::default()
            },
            requests_per_round: 4,
            max_actions: None,
        }
    }
}

/// What a drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Actions done.
    pub done: u64,
    /// Actions found already done in the CRM after a crash (not sent again).
    pub reconciled: u64,
    /// Actions failed permanently.
    pub failed: u64,
    /// Actions put back for a later retry.
    pub retried: u64,
    /// Sends whose outcome is unknown (the connection dropped after the request left): kept
    /// in flight, so the next round looks in the CRM before sending anything again.
    pub unconfirmed: u64,
    /// Rounds (each one or more bulk requests).
    pub rounds: u64,
}

fn blocking_err(store: &Store, e: tokio::task::JoinError) -> StoreError {
    store.err(format!("outbox writer task failed: {e}"))
}

async fn update(store: &Store, entries: Vec<Entry>) -> Result<(), StoreError> {
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.outbox_update(&entries))
        .await
        .map_err(|e| blocking_err(store, e))?
}

/// Sends every due entry; returns when none is due (entries waiting on backoff stay).
pub async fn drain(
    conn: &dyn Connector,
    store: &Store,
    opts: &DrainOptions,
) -> Result<DrainReport, StoreError> {
    let mut report = DrainReport::default();
    let per_request = conn.max_writes_per_request().max(1);
    let mut sent_total = 0usize;
    loop {
        let mut limit = per_request * opts.requests_per_round.max(1);
        if let Some(max) = opts.max_actions {
            limit = limit.min(max.saturating_sub(sent_total));
            if limit == 0 {
                break;
            }
        }
        let s = store.clone();
        let now = Timestamp::now();
        let due = tokio::task::spawn_blocking(move || s.outbox_due(now, limit))
            .await
            .map_err(|e| blocking_err(store, e))??;
        if due.is_empty() {
            break;
        }
        report.rounds += 1;
        sent_total += due.len();

        // Entries found in flight were sent by a run that died before recording the outcome.
        // What they create may exist already: look for it instead of creating it again.
        let mut to_send = Vec::with_capacity(due.len());
        let mut settled = Vec::new();
        for mut e in due {
            if matches!(e.state, ActionState::InFlight { .. })
                && let Some(found) = find_created(conn, &e.action).await
            {
                match found {
                    Ok(Some(id)) => {
                        e.state = ActionState::Done {
                            crm_id: Some(id),
                            at: Timestamp::now(),
                        };
                        report.reconciled += 1;
                        settled.push(e);
                        continue;
                    }
                    Ok(None) => {}
                    Err(err) if err.is_retryable() => {
                        e.last_error = Some(err.to_string());
                        e.not_before = Some(Timestamp::now() + SignedDuration::from_secs(5));
                        report.retried += 1;
                        settled.push(e);
                        continue;
                    }
                    // Unsupported or refused: sending again is the only way forward.
                    Err(_) => {}
                }
            }
            e.state = ActionState::InFlight {
                since: Timestamp::now(),
            };
            e.attempts += 1;
            to_send.push(e);
        }
        if !settled.is_empty() {
            update(store, settled).await?;
        }
        if to_send.is_empty() {
            continue;
        }
        // Committed before the send: a crash from here on leaves them in flight.
        update(store, to_send.clone()).await?;
        failpoint::hit("outbox.before_send");

        let mut outcomes = Vec::with_capacity(to_send.len());
        for chunk in to_send.chunks(per_request) {
            let ops: Vec<WriteOp> = chunk.iter().map(|e| e.action.op.clone()).collect();
            let results = conn.apply(&ops).await;
            failpoint::hit("outbox.after_send");
            for (e, r) in chunk.iter().cloned().zip(results) {
                outcomes.push((e, r));
            }
        }
        let now = Timestamp::now();
        let mut finished = Vec::with_capacity(outcomes.len());
        for (mut e, r) in outcomes {
            match r {
                Ok(out) => {
                    e.state = ActionState::Done {
                        crm_id: out.created_id,
                        at: now,
                    };
                    e.last_error = None;
                    report.done += 1;
                }
                Err(ConnectorError::Unconfirmed { message })
                    if e.attempts < opts.retry.max_attempts =>
                {
                    // It may have been applied: never send it blindly again. It stays in
                    // flight, and the next round asks the CRM (find_created) first.
                    let pause = match decide(
                        &ConnectorError::transient(""),
                        e.attempts,
                        &opts.retry,
                        rand::random::<f64>(),
                    ) {
                        Decision::Retry(d) => d,
                        Decision::GiveUp => opts.retry.cap,
                    };
                    e.last_error = Some(format!("outcome unknown: {message}"));
                    e.not_before = Some(
                        now + SignedDuration::try_from(pause)
                            .unwrap_or(SignedDuration::from_secs(1)),
                    );
                    report.unconfirmed += 1;
                }
                Err(err) => match decide(&err, e.attempts, &opts.retry, rand::random::<f64>()) {
                    Decision::Retry(after) => {
                        e.state = ActionState::Pending;
                        e.last_error = Some(err.to_string());
                        e.not_before = Some(
                            now + SignedDuration::try_from(after)
                                .unwrap_or(SignedDuration::from_secs(1)),
                        );
                        report.retried += 1;
                    }
                    Decision::GiveUp => {
                        e.state = failed(&err, now);
                        report.failed += 1;
                    }
                },
            }
            finished.push(e);
        }
        update(store, finished).await?;
    }
    Ok(report)
}

/// For an action that creates something, asks the CRM whether a run that died after sending
/// it created it already: tasks by the marker in their text, amoCRM customers by their
/// contact's linked customer, funnel deals by name, pipeline and contact, fields by name in the
/// field list. `None` for other actions
/// (they set a state and are simply sent again).
async fn find_created(
    conn: &dyn Connector,
    action: &super::Action,
) -> Option<Result<Option<u64>, ConnectorError>> {
    match &action.op {
        WriteOp::CreateTask { entity, .. } => Some(
            conn.find_task(*entity, &super::marker_for(&action.key))
                .await,
        ),
        WriteOp::CreateCustomer { contact, .. } => Some(conn.find_customer(*contact).await),
        WriteOp::CreateDeal {
            name,
            pipeline,
            contact,
            company,
            ..
        } => Some(conn.find_deal(name, *pipeline, *contact, *company).await),
        WriteOp::CreateField {
            entity, name, code, ..
        } => Some(conn.custom_fields().await.map(|fields| {
            let kind = match entity {
                rebuy_core::FieldEntityKind::Contacts => rebuy_core::EntityKind::Contacts,
                rebuy_core::FieldEntityKind::Companies => rebuy_core::EntityKind::Companies,
                rebuy_core::FieldEntityKind::Deals => rebuy_core::EntityKind::Deals,
                // Customer fields are not in the listing: send again.
                rebuy_core::FieldEntityKind::Customers => return None,
            };
            let uf = code.as_ref().map(|c| format!("UF_CRM_{c}"));
            fields
                .iter()
                .find(|f| {
                    f.entity == kind && (f.name.trim() == name.trim() || Some(&f.id) == uf.as_ref())
                })
                // Bitrix24 field ids are names (`UF_CRM_...`): no numeric id to record.
                .map(|f| f.id.parse().unwrap_or(0))
        })),
        _ => None,
    }
}

fn failed(err: &ConnectorError, at: Timestamp) -> ActionState {
    ActionState::Failed {
        code: err.code().to_owned(),
        message: err.to_string(),
        at,
    }
}
