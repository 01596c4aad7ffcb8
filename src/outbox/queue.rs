//! The outbox tables and their transactions.
use crate::store::tables::{OUTBOX, OUTBOX_PENDING};
use crate::store::{Store, StoreError};
use jiff::Timestamp;
use rebuy_core::WriteOp;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

// Entries are JSON: `WriteOp` is an internally tagged enum (readable in `plan --format json`),
// which a non-self-describing codec cannot read back.
fn encode<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), String> {
    serde_json::to_writer(buf, value).map_err(|e| e.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// One planned write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// Idempotency key: portal, rule, customer and due window (`shop/after_purchase_7/c:123/2026-11-30`).
    pub key: String,
    /// The write.
    pub op: WriteOp,
    /// The playbook rule that planned it.
    pub rule: String,
    /// The customer it is about.
    pub customer: String,
    /// One line for people (`plan` output, dashboard).
    pub summary: String,
    /// Keys of the touches merged into this task (one touch per customer a day): they are
    /// done when this one is, and never planned as tasks of their own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<String>,
}

/// Where an entry stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionState {
    /// Waiting to be sent.
    Pending,
    /// Handed to the CRM; the outcome is not recorded yet.
    InFlight {
        /// Since when.
        since: Timestamp,
    },
    /// Done; `crm_id` is the id of what the CRM created, if it created something.
    Done {
        /// Created id.
        crm_id: Option<u64>,
        /// When.
        at: Timestamp,
    },
    /// Failed permanently (or out of attempts).
    Failed {
        /// Stable error code (`rejected`, `not_found`, ...).
        code: String,
        /// What the CRM said.
        message: String,
        /// When.
        at: Timestamp,
    },
}

/// An outbox entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The action.
    pub action: Action,
    /// Its state.
    pub state: ActionState,
    /// Send attempts so far.
    pub attempts: u32,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// Not before this instant (backoff).
    pub not_before: Option<Timestamp>,
    /// The last retryable error, for operators.
    pub last_error: Option<String>,
    /// Enqueue sequence number.
    pub seq: u64,
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnqueueReport {
    /// New entries.
    pub added: u64,
    /// Keys already in the outbox (planned before): skipped.
    pub already: u64,
}

/// What [`Store::outbox_retry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// The failed entry is pending again.
    Requeued,
    /// The entry is not failed (pending, in flight or done): nothing changed.
    NotFailed,
    /// No entry has that key.
    Missing,
}

/// Entries by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutboxCounts {
    /// Waiting.
    pub pending: u64,
    /// Sent, outcome unknown.
    pub in_flight: u64,
    /// Done.
    pub done: u64,
    /// Failed.
    pub failed: u64,
}

/// The marker a task text carries so a task can be found again after a crash.
pub fn marker_for(key: &str) -> String {
    // FNV-1a, 64 bits: stable across versions and platforms (unlike std's hasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("#rebuy:{h:016x}")
}

fn with_marker(mut action: Action) -> Action {
    if let WriteOp::CreateTask { text, .. } = &mut action.op {
        let marker = marker_for(&action.key);
        if !text.contains(&marker) {
            text.push_str("\n\n");
            text.push_str(&marker);
        }
    }
    action
}

impl Store {
    /// Enqueues actions; keys already present (in any state) are skipped.
    pub fn outbox_enqueue(&self, actions: Vec<Action>) -> Result<EnqueueReport, StoreError> {
        let now = Timestamp::now();
        self.write(|w| {
            let txn = w.txn();
            let mut entries = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
            let mut pending = txn.open_table(OUTBOX_PENDING).map_err(|e| self.err(e))?;
            let mut seq = pending
                .last()
                .map_err(|e| self.err(e))?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(0);
            // The pending table may be empty while done entries exist: never reuse a sequence.
            let meta_seq: u64 = w.get_meta::<u64>("outbox_seq")?.unwrap_or(0);
            seq = seq.max(meta_seq);
            let mut report = EnqueueReport::default();
            let mut buf = Vec::new();
            for action in actions {
                if entries
                    .get(action.key.as_str())
                    .map_err(|e| self.err(e))?
                    .is_some()
                {
                    report.already += 1;
                    continue;
                }
                let action = with_marker(action);
                let entry = Entry {
                    state: ActionState::Pending,
                    attempts: 0,
                    created_at: now,
                    not_before: None,
                    last_error: None,
                    seq,
                    action,
                };
                buf.clear();
                encode(&entry, &mut buf).map_err(|e| self.err(e))?;
                entries
                    .insert(entry.action.key.as_str(), buf.as_slice())
                    .map_err(|e| self.err(e))?;
                pending
                    .insert(seq, entry.action.key.as_str())
                    .map_err(|e| self.err(e))?;
                seq += 1;
                report.added += 1;
            }
            drop(entries);
            drop(pending);
            w.set_meta("outbox_seq", &seq)?;
            Ok(report)
        })
    }

    /// Up to `limit` entries still to send, oldest first, due at `now`.
    pub fn outbox_due(&self, now: Timestamp, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let entries = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
        let pending = txn.open_table(OUTBOX_PENDING).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in pending.iter().map_err(|e| self.err(e))? {
            let (_, key) = row.map_err(|e| self.err(e))?;
            let Some(v) = entries.get(key.value()).map_err(|e| self.err(e))? else {
                continue;
            };
            let entry: Entry =
                decode(v.value()).map_err(|m| self.err(format!("outbox[{}]: {m}", key.value())))?;
            if entry.not_before.is_some_and(|t| t > now) {
                continue;
            }
            out.push(entry);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The earliest `not_before` among entries still to send, if any are waiting on backoff.
    pub fn outbox_next_due(&self) -> Result<Option<Timestamp>, StoreError> {
        let mut next: Option<Timestamp> = None;
        for e in self.outbox_due(Timestamp::MAX, usize::MAX)? {
            let t = e.not_before.unwrap_or(Timestamp::MIN);
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        Ok(next)
    }

    /// Commits new states for entries; entries that reach `Done` or `Failed` leave the pending
    /// index in the same transaction.
    pub fn outbox_update(&self, updated: &[Entry]) -> Result<(), StoreError> {
        self.write(|w| {
            let txn = w.txn();
            let mut entries = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
            let mut pending = txn.open_table(OUTBOX_PENDING).map_err(|e| self.err(e))?;
            let mut buf = Vec::new();
            for e in updated {
                buf.clear();
                encode(e, &mut buf).map_err(|x| self.err(x))?;
                entries
                    .insert(e.action.key.as_str(), buf.as_slice())
                    .map_err(|x| self.err(x))?;
                if matches!(
                    e.state,
                    ActionState::Done { .. } | ActionState::Failed { .. }
                ) {
                    pending.remove(e.seq).map_err(|x| self.err(x))?;
                }
            }
            Ok(())
        })
    }

    /// One entry by key.
    pub fn outbox_get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let entries = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
        match entries.get(key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(
                decode(v.value()).map_err(|m| self.err(format!("outbox[{key}]: {m}")))?,
            )),
            None => Ok(None),
        }
    }

    /// Puts a failed entry back in the queue (an operator's retry): pending again, due now,
    /// with a fresh attempt budget; the CRM's last message is kept in `last_error`. Entries in
    /// any other state are left alone.
    pub fn outbox_retry(&self, key: &str) -> Result<RetryOutcome, StoreError> {
        self.write(|w| {
            let txn = w.txn();
            let mut entries = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
            let mut pending = txn.open_table(OUTBOX_PENDING).map_err(|e| self.err(e))?;
            let mut entry: Entry = match entries.get(key).map_err(|e| self.err(e))? {
                Some(v) => {
                    decode(v.value()).map_err(|m| self.err(format!("outbox[{key}]: {m}")))?
                }
                None => return Ok(RetryOutcome::Missing),
            };
            let ActionState::Failed { code, message, .. } = &entry.state else {
                return Ok(RetryOutcome::NotFailed);
            };
            entry.last_error = Some(format!("{code}: {message}"));
            entry.state = ActionState::Pending;
            entry.attempts = 0;
            entry.not_before = None;
            let mut buf = Vec::new();
            encode(&entry, &mut buf).map_err(|e| self.err(e))?;
            entries
                .insert(key, buf.as_slice())
                .map_err(|e| self.err(e))?;
            pending.insert(entry.seq, key).map_err(|e| self.err(e))?;
            Ok(RetryOutcome::Requeued)
        })
    }

    /// Every entry (for status and tests), in key order.
    pub fn outbox_all(&self) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let entries = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in entries.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(
                decode(v.value()).map_err(|m| self.err(format!("outbox[{}]: {m}", k.value())))?,
            );
        }
        Ok(out)
    }

    /// Entries by state.
    pub fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let mut c = OutboxCounts::default();
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let entries = txn.open_table(OUTBOX).map_err(|e| self.err(e))?;
        if entries.len().map_err(|e| self.err(e))? == 0 {
            return Ok(c);
        }
        for row in entries.iter().map_err(|e| self.err(e))? {
            let (_, v) = row.map_err(|e| self.err(e))?;
            let e: Entry = decode(v.value()).map_err(|m| self.err(m))?;
            match e.state {
                ActionState::Pending => c.pending += 1,
                ActionState::InFlight { .. } => c.in_flight += 1,
                ActionState::Done { .. } => c.done += 1,
                ActionState::Failed { .. } => c.failed += 1,
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rebuy_core::{DealId, EntityRef, TaskKind, UserId};

    fn task(key: &str) -> Action {
        Action {
            merged: Vec::new(),
            key: key.to_owned(),
            op: WriteOp::CreateTask {
                entity: EntityRef::Deal(DealId(1)),
                responsible: UserId(2),
                text: "Позвонить".into(),
                due: Timestamp::from_second(1_800_000_000).unwrap(),
                kind: TaskKind::Call,
            },
            rule: "r".into(),
            customer: "c:1".into(),
            summary: "call".into(),
        }
    }

    #[test]
    fn a_failed_entry_is_requeued_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &rebuy_core::PortalId("t".into())).unwrap();
        store.outbox_enqueue(vec![task("k1"), task("k2")]).unwrap();
        assert_eq!(store.outbox_retry("k1").unwrap(), RetryOutcome::NotFailed);
        assert_eq!(store.outbox_retry("nope").unwrap(), RetryOutcome::Missing);
        let mut e = store.outbox_get("k1").unwrap().unwrap();
        e.attempts = 5;
        e.state = ActionState::Failed {
            code: "rejected".into(),
            message: "closed stage".into(),
            at: Timestamp::now(),
        };
        store.outbox_update(&[e]).unwrap();
        assert_eq!(store.outbox_due(Timestamp::now(), 10).unwrap().len(), 1);
        assert_eq!(store.outbox_retry("k1").unwrap(), RetryOutcome::Requeued);
        let e = store.outbox_get("k1").unwrap().unwrap();
        assert_eq!((e.state.clone(), e.attempts), (ActionState::Pending, 0));
        assert_eq!(e.last_error.as_deref(), Some("rejected: closed stage"));
        let due: Vec<String> = store
            .outbox_due(Timestamp::now(), 10)
            .unwrap()
            .into_iter()
            .map(|e| e.action.key)
            .collect();
        assert_eq!(due, ["k1", "k2"], "back in its place, oldest first");
        assert_eq!(store.outbox_retry("k1").unwrap(), RetryOutcome::NotFailed);
    }

    #[test]
    fn enqueue_is_idempotent_and_ordered_and_done_leaves_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &"p".into()).unwrap();
        let r = store
            .outbox_enqueue(vec![task("a"), task("b"), task("a")])
            .unwrap();
        assert_eq!((r.added, r.already), (2, 1));
        let r = store.outbox_enqueue(vec![task("b"), task("c")]).unwrap();
        assert_eq!((r.added, r.already), (1, 1));
        let due = store.outbox_due(Timestamp::now(), 10).unwrap();
        let keys: Vec<_> = due.iter().map(|e| e.action.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        // The marker is in the task text.
        let WriteOp::CreateTask { text, .. } = &due[0].action.op else {
            unreachable!()
        };
        assert!(text.ends_with(&marker_for("a")));
        let mut done = due[0].clone();
        done.state = ActionState::Done {
            crm_id: Some(9),
            at: Timestamp::now(),
        };
        store.outbox_update(&[done]).unwrap();
        assert_eq!(store.outbox_due(Timestamp::now(), 10).unwrap().len(), 2);
        // Re-planning a done action does not bring it back.
        assert_eq!(store.outbox_enqueue(vec![task("a")]).unwrap().already, 1);
        let c = store.outbox_counts().unwrap();
        assert_eq!((c.pending, c.done), (2, 1));
        // Sequence numbers are never reused after the pending index empties.
        let mut rest = store.outbox_due(Timestamp::now(), 10).unwrap();
        for e in &mut rest {
            e.state = ActionState::Failed {
                code: "x".into(),
                message: "y".into(),
                at: Timestamp::now(),
            };
        }
        store.outbox_update(&rest).unwrap();
        store.outbox_enqueue(vec![task("d")]).unwrap();
        let d = store.outbox_get("d").unwrap().unwrap();
        assert_eq!(d.seq, 3);
    }

    #[test]
    fn backoff_hides_entries_until_due() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &"p".into()).unwrap();
        store.outbox_enqueue(vec![task("a")]).unwrap();
        let mut e = store.outbox_get("a").unwrap().unwrap();
        let later = Timestamp::now() + jiff::SignedDuration::from_secs(60);
        e.not_before = Some(later);
        store.outbox_update(&[e]).unwrap();
        assert!(store.outbox_due(Timestamp::now(), 10).unwrap().is_empty());
        assert_eq!(store.outbox_due(later, 10).unwrap().len(), 1);
        assert_eq!(store.outbox_next_due().unwrap(), Some(later));
    }
}
