//! Whether the managers completed the touch tasks rebuy sent, read back from the CRM on every
//! sync and kept in the cache (table `task_states`) for `rebuy results`.
use crate::outbox::ActionState;
use crate::store::tables::TASK_STATES;
use crate::store::{Store, StoreError};
use anyhow::{Context, Result};
use jiff::Timestamp;
use rebuy_core::{Connector, WriteOp};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A sent task's state, as last read from the CRM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutcome {
    /// The CRM's task id.
    pub crm_id: u64,
    /// Whether it is completed.
    pub completed: bool,
    /// When the CRM last changed it.
    pub updated_at: Option<Timestamp>,
    /// When rebuy read it.
    pub checked_at: Timestamp,
    /// Whether the CRM no longer has it (deleted).
    pub missing: bool,
}

impl Store {
    /// Every recorded task state, by outbox key.
    pub fn task_outcomes(&self) -> Result<HashMap<String, TaskOutcome>, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(TASK_STATES).map_err(|e| self.err(e))?;
        let mut out = HashMap::new();
        for r in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = r.map_err(|e| self.err(e))?;
            out.insert(
                k.value().to_owned(),
                serde_json::from_slice(v.value()).map_err(|e| self.err(e))?,
            );
        }
        Ok(out)
    }

    fn put_task_outcomes(&self, rows: &[(String, TaskOutcome)]) -> Result<(), StoreError> {
        let txn = self.db().begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = txn.open_table(TASK_STATES).map_err(|e| self.err(e))?;
            for (k, o) in rows {
                let bytes = serde_json::to_vec(o).map_err(|e| self.err(e))?;
                t.insert(k.as_str(), bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

/// Tasks older than this (by due time) whose state is known are not read again.
const STATE_MAX_AGE_DAYS: i64 = 120;
/// At most this many task states are read per sync (20 requests): a large backlog of open
/// tasks is spread over several syncs, the least recently read first, instead of slowing
/// every sync down.
const STATES_PER_SYNC: usize = 1000;

/// Reads back from the CRM whether the sent touch tasks were completed: the done playbook
/// tasks not known completed (nor deleted), due within the last 120 days, never read first,
/// then the least recently read, at most 1,000 per call, 50 per request. Returns how many were
/// read.
pub async fn refresh_task_states(conn: &dyn Connector, store: &Store) -> Result<u64> {
    let (entries, known) = store
        .blocking(|s| Ok((s.outbox_all()?, s.task_outcomes()?)))
        .await?;
    let horizon = Timestamp::now() - jiff::SignedDuration::from_hours(24 * STATE_MAX_AGE_DAYS);
    let mut wanted: Vec<(Option<Timestamp>, u64, String)> = Vec::new();
    for e in entries {
        let ActionState::Done {
            crm_id: Some(id), ..
        } = e.state
        else {
            continue;
        };
        let WriteOp::CreateTask { due, .. } = &e.action.op else {
            continue;
        };
        if !is_touch_rule(&e.action.rule) {
            continue;
        }
        match known.get(&e.action.key) {
            Some(k) if k.completed || k.missing => continue,
            Some(_) if *due < horizon => continue,
            _ => {}
        }
        let last = known.get(&e.action.key).map(|k| k.checked_at);
        wanted.push((last, id, e.action.key));
    }
    if wanted.is_empty() {
        return Ok(0);
    }
    // `None` (never read) sorts first.
    wanted.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    wanted.truncate(STATES_PER_SYNC);
    let ids: Vec<u64> = wanted.iter().map(|(_, id, _)| *id).collect();
    let states = conn
        .task_states(&ids)
        .await
        .context("reading the touch tasks' states")?;
    let by_id: HashMap<u64, &rebuy_core::TaskState> = states.iter().map(|s| (s.id, s)).collect();
    let now = Timestamp::now();
    let rows: Vec<(String, TaskOutcome)> = wanted
        .into_iter()
        .map(|(_, id, key)| {
            let s = by_id.get(&id);
            (
                key,
                TaskOutcome {
                    crm_id: id,
                    completed: s.is_some_and(|s| s.completed),
                    updated_at: s.and_then(|s| s.updated_at),
                    checked_at: now,
                    missing: s.is_none(),
                },
            )
        })
        .collect();
    let n = rows.len() as u64;
    store.blocking(move |s| s.put_task_outcomes(&rows)).await?;
    Ok(n)
}

/// Whether a rule name is a playbook touch (`playbook.rule`), not routing, funnel or fields.
pub fn is_touch_rule(rule: &str) -> bool {
    rule.contains('.')
}
