//! The durable webhook inbox: every accepted webhook is committed to the portal's redb file
//! before the CRM gets its 2xx, deduplicated, and processed later.
//!
//! amoCRM gives a hook 2 seconds and Bitrix24 never redelivers, so the answer must be fast and
//! must not lie. One fsync per webhook would cap ingest at the disk's sync rate, so writes are
//! group-committed: a writer thread per portal takes every event waiting in its channel,
//! commits them in one transaction, and only then acknowledges each request.
//!
//! An event whose processing fails is retried with a growing delay while the events behind it
//! go on (no head-of-line blocking); after `[server] inbox_max_attempts` failures it moves to
//! the dead-letter table, shown by `rebuy status`, the dashboard and `/metrics`, and put back
//! by `rebuy inbox replay`. Dedup keys are pruned after `[server] inbox_dedupe_days`; events
//! are stored in the compact store codec (JSON rows of older versions are still read).
use crate::store::tables::{INBOX, INBOX_DEAD, INBOX_RETRY, INBOX_SEEN, INBOX_SEEN_AT};
use crate::store::{Store, StoreError};
use jiff::Timestamp;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// The failed attempts of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Failed attempts so far.
    pub attempts: u32,
    /// The last failure.
    pub last_error: String,
    /// Not tried again before this.
    pub retry_at: Timestamp,
}

/// An event moved out of the inbox after too many failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadEvent {
    /// The event as received.
    pub event: InboxEvent,
    /// How often it failed.
    pub attempts: u32,
    /// The last failure.
    pub last_error: String,
    /// When it was given up.
    pub dead_at: Timestamp,
}

/// What a recorded failure did with its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// It stays in the inbox and is tried again from this time.
    Retry(Timestamp),
    /// It moved to the dead-letter table.
    Dead,
}

/// The delay before the next attempt after `attempts` failures: 2, 4, 8 s ... capped at an
/// hour, so ten attempts span about two hours (a CRM hiccup passes; a broken event does not).
pub fn retry_delay(attempts: u32) -> std::time::Duration {
    std::time::Duration::from_secs(2u64.saturating_pow(attempts.min(12)).min(3600))
}

/// A row in the store codec (a version byte, then postcard).
fn encoded<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    crate::store::codec::encode(v, &mut buf)?;
    Ok(buf)
}

/// Encodes an event row: the store codec, the body as bytes.
fn encode_event(ev: &InboxEvent) -> Result<Vec<u8>, String> {
    encoded(ev)
}

/// Decodes an event row: the codec, or the JSON rows of versions before it.
fn decode_event(bytes: &[u8]) -> Result<InboxEvent, String> {
    if bytes.first() == Some(&b'{') {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    } else {
        crate::store::codec::decode(bytes)
    }
}

/// A webhook as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEvent {
    /// Arrival sequence (set by the inbox).
    pub seq: u64,
    /// Which CRM sent it (`amocrm`, `bitrix24`).
    pub crm: String,
    /// When it arrived.
    pub received_at: Timestamp,
    /// Content type of the body.
    pub content_type: String,
    /// The raw body.
    pub body: Vec<u8>,
    /// Dedup key (a hash of the body).
    pub dedup_key: String,
}

/// What happened to a submitted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Stored as new.
    Stored(u64),
    /// Seen before: not stored again.
    Duplicate(u64),
}

/// The dedup key of a body: FNV-1a 128 folded to hex (stable, no extra dependency).
pub fn dedup_key(crm: &str, body: &[u8]) -> String {
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    for byte in crm.as_bytes().iter().chain([0u8].iter()).chain(body) {
        a ^= u64::from(*byte);
        a = a.wrapping_mul(0x0100_0000_01b3);
        b = b.rotate_left(5) ^ u64::from(*byte);
        b = b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    format!("{a:016x}{b:016x}")
}

impl Store {
    /// Stores events in one transaction (skipping duplicates) and returns what happened to each.
    pub fn inbox_store(&self, events: &mut [InboxEvent]) -> Result<Vec<Accepted>, StoreError> {
        self.write(|w| {
            let txn = w.txn();
            let mut inbox = txn.open_table(INBOX).map_err(|e| self.err(e))?;
            let mut seen = txn.open_table(INBOX_SEEN).map_err(|e| self.err(e))?;
            let mut seen_at = txn.open_table(INBOX_SEEN_AT).map_err(|e| self.err(e))?;
            let mut next: u64 = w.get_meta::<u64>("inbox_seq")?.unwrap_or(0);
            let mut out = Vec::with_capacity(events.len());
            for ev in events.iter_mut() {
                if let Some(prev) = seen.get(ev.dedup_key.as_str()).map_err(|e| self.err(e))? {
                    out.push(Accepted::Duplicate(prev.value()));
                    continue;
                }
                ev.seq = next;
                next += 1;
                let bytes = encode_event(ev).map_err(|e| self.err(e))?;
                inbox
                    .insert(ev.seq, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
                seen.insert(ev.dedup_key.as_str(), ev.seq)
                    .map_err(|e| self.err(e))?;
                seen_at
                    .insert((ev.received_at.as_second(), ev.seq), ev.dedup_key.as_str())
                    .map_err(|e| self.err(e))?;
                out.push(Accepted::Stored(ev.seq));
            }
            drop(inbox);
            drop(seen);
            drop(seen_at);
            w.set_meta("inbox_seq", &next)?;
            Ok(out)
        })
    }

    /// Up to `limit` unprocessed events, oldest first (every one, waiting for a retry or not).
    pub fn inbox_pending(&self, limit: usize) -> Result<Vec<InboxEvent>, StoreError> {
        self.inbox_due(limit, None)
    }

    /// Up to `limit` unprocessed events, oldest first, without those waiting for a retry
    /// after `now` (`None`: all).
    pub fn inbox_due(
        &self,
        limit: usize,
        now: Option<Timestamp>,
    ) -> Result<Vec<InboxEvent>, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let inbox = txn.open_table(INBOX).map_err(|e| self.err(e))?;
        let retry = txn.open_table(INBOX_RETRY).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in inbox.iter().map_err(|e| self.err(e))? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(|e| self.err(e))?;
            if let Some(now) = now
                && let Some(r) = retry.get(k.value()).map_err(|e| self.err(e))?
            {
                let r: Retry = crate::store::codec::decode(r.value())
                    .map_err(|e| self.err(format!("inbox_retry[{}]: {e}", k.value())))?;
                if r.retry_at > now {
                    continue;
                }
            }
            out.push(
                decode_event(v.value())
                    .map_err(|e| self.err(format!("inbox[{}]: {e}", k.value())))?,
            );
        }
        Ok(out)
    }

    /// Records a failed attempt of event `seq`: it waits [`retry_delay`] before the next, or,
    /// at `max_attempts`, moves to the dead-letter table.
    pub fn inbox_failed(
        &self,
        seq: u64,
        error: &str,
        max_attempts: u32,
        now: Timestamp,
    ) -> Result<Failed, StoreError> {
        self.write(|w| {
            let txn = w.txn();
            let mut inbox = txn.open_table(INBOX).map_err(|e| self.err(e))?;
            let mut retry = txn.open_table(INBOX_RETRY).map_err(|e| self.err(e))?;
            let attempts = match retry.get(seq).map_err(|e| self.err(e))? {
                Some(r) => {
                    crate::store::codec::decode::<Retry>(r.value())
                        .map_err(|e| self.err(e))?
                        .attempts
                }
                None => 0,
            } + 1;
            if attempts >= max_attempts.max(1) {
                let Some(row) = inbox.remove(seq).map_err(|e| self.err(e))? else {
                    return Ok(Failed::Dead);
                };
                let event = decode_event(row.value()).map_err(|e| self.err(e))?;
                drop(row);
                retry.remove(seq).map_err(|e| self.err(e))?;
                let dead = DeadEvent {
                    event,
                    attempts,
                    last_error: error.to_owned(),
                    dead_at: now,
                };
                let buf = encoded(&dead).map_err(|e| self.err(e))?;
                txn.open_table(INBOX_DEAD)
                    .map_err(|e| self.err(e))?
                    .insert(seq, buf.as_slice())
                    .map_err(|e| self.err(e))?;
                return Ok(Failed::Dead);
            }
            let retry_at = now.checked_add(retry_delay(attempts)).unwrap_or(now);
            let r = Retry {
                attempts,
                last_error: error.to_owned(),
                retry_at,
            };
            let buf = encoded(&r).map_err(|e| self.err(e))?;
            retry.insert(seq, buf.as_slice()).map_err(|e| self.err(e))?;
            Ok(Failed::Retry(retry_at))
        })
    }

    /// The dead-letter table, oldest first.
    pub fn inbox_dead(&self) -> Result<Vec<DeadEvent>, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let Ok(dead) = txn.open_table(INBOX_DEAD) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for row in dead.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(
                crate::store::codec::decode(v.value())
                    .map_err(|e| self.err(format!("inbox_dead[{}]: {e}", k.value())))?,
            );
        }
        Ok(out)
    }

    /// How many events are in the dead-letter table.
    pub fn inbox_dead_count(&self) -> Result<u64, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        match txn.open_table(INBOX_DEAD) {
            Ok(t) => t.len().map_err(|e| self.err(e)),
            Err(_) => Ok(0),
        }
    }

    /// Puts dead events back into the inbox with no failed attempts (`seqs` empty: all of
    /// them); returns how many went back.
    pub fn inbox_replay(&self, seqs: &[u64]) -> Result<usize, StoreError> {
        self.write(|w| {
            let txn = w.txn();
            let mut dead = txn.open_table(INBOX_DEAD).map_err(|e| self.err(e))?;
            let mut inbox = txn.open_table(INBOX).map_err(|e| self.err(e))?;
            let wanted: Vec<u64> = if seqs.is_empty() {
                let mut all = Vec::new();
                for row in dead.iter().map_err(|e| self.err(e))? {
                    all.push(row.map_err(|e| self.err(e))?.0.value());
                }
                all
            } else {
                seqs.to_vec()
            };
            let mut n = 0;
            for seq in wanted {
                let Some(row) = dead.remove(seq).map_err(|e| self.err(e))? else {
                    continue;
                };
                let d: DeadEvent =
                    crate::store::codec::decode(row.value()).map_err(|e| self.err(e))?;
                drop(row);
                let bytes = encode_event(&d.event).map_err(|e| self.err(e))?;
                inbox
                    .insert(seq, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// Forgets dedup keys stored before `cutoff` (a redelivery older than that is processed
    /// again, harmlessly: processing is idempotent); returns how many went.
    pub fn inbox_prune_seen(&self, cutoff: Timestamp) -> Result<usize, StoreError> {
        self.write(|w| {
            let txn = w.txn();
            let mut seen = txn.open_table(INBOX_SEEN).map_err(|e| self.err(e))?;
            let mut seen_at = txn.open_table(INBOX_SEEN_AT).map_err(|e| self.err(e))?;
            let mut old = Vec::new();
            for row in seen_at
                .range(..(cutoff.as_second(), 0))
                .map_err(|e| self.err(e))?
            {
                let (k, v) = row.map_err(|e| self.err(e))?;
                old.push((k.value(), v.value().to_owned()));
            }
            for (k, key) in &old {
                seen_at.remove(*k).map_err(|e| self.err(e))?;
                // A key stored again later (a redelivery after a replay) is not removed.
                if seen
                    .get(key.as_str())
                    .map_err(|e| self.err(e))?
                    .map(|v| v.value())
                    == Some(k.1)
                {
                    seen.remove(key.as_str()).map_err(|e| self.err(e))?;
                }
            }
            Ok(old.len())
        })
    }

    /// How many dedup keys are kept.
    pub fn inbox_seen_count(&self) -> Result<u64, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let seen = txn.open_table(INBOX_SEEN).map_err(|e| self.err(e))?;
        seen.len().map_err(|e| self.err(e))
    }

    /// Unprocessed events.
    pub fn inbox_depth(&self) -> Result<u64, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let inbox = txn.open_table(INBOX).map_err(|e| self.err(e))?;
        inbox.len().map_err(|e| self.err(e))
    }

    /// Removes processed events and their failure records (their dedup keys stay, so
    /// redeliveries stay ignored).
    pub fn inbox_done(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.write(|w| {
            let txn = w.txn();
            let mut inbox = txn.open_table(INBOX).map_err(|e| self.err(e))?;
            let mut retry = txn.open_table(INBOX_RETRY).map_err(|e| self.err(e))?;
            for s in seqs {
                inbox.remove(*s).map_err(|e| self.err(e))?;
                retry.remove(*s).map_err(|e| self.err(e))?;
            }
            Ok(())
        })
    }
}

/// A request to store one event; answered once it is committed.
struct Submit {
    event: InboxEvent,
    reply: oneshot::Sender<Result<Accepted, String>>,
}

/// The group-committing writer of one portal's inbox.
#[derive(Clone)]
pub struct InboxWriter {
    tx: mpsc::Sender<Submit>,
}

impl InboxWriter {
    /// Starts the writer thread of `store`. `durable = false` skips the write (benchmark upper
    /// bound only).
    pub fn start(store: Store, durable: bool, notify: std::sync::Arc<tokio::sync::Notify>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Submit>(4096);
        std::thread::Builder::new()
            .name(format!("inbox-{}", store.portal()))
            .spawn(move || {
                let mut batch = Vec::with_capacity(256);
                while let Some(first) = rx.blocking_recv() {
                    batch.push(first);
                    while batch.len() < 1024 {
                        match rx.try_recv() {
                            Ok(s) => batch.push(s),
                            Err(_) => break,
                        }
                    }
                    let mut events: Vec<InboxEvent> =
                        batch.iter().map(|s| s.event.clone()).collect();
                    let result = if durable {
                        store.inbox_store(&mut events)
                    } else {
                        Ok(events.iter().map(|_| Accepted::Stored(0)).collect())
                    };
                    match result {
                        Ok(accepted) => {
                            for (s, a) in batch.drain(..).zip(accepted) {
                                let _ = s.reply.send(Ok(a));
                            }
                            notify.notify_one();
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            for s in batch.drain(..) {
                                let _ = s.reply.send(Err(msg.clone()));
                            }
                        }
                    }
                }
            })
            .map(|_| ())
            .unwrap_or_else(
                |e| tracing::error!(error = %e, "Cannot start the inbox writer thread."),
            );
        Self { tx }
    }

    /// Stores an event; returns once it is committed.
    pub async fn submit(&self, event: InboxEvent) -> Result<Accepted, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Submit { event, reply })
            .await
            .map_err(|_| "inbox writer stopped".to_owned())?;
        rx.await.map_err(|_| "inbox writer stopped".to_owned())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rebuy_core::PortalId;

    fn event(body: &str, at: Timestamp) -> InboxEvent {
        InboxEvent {
            seq: 0,
            crm: "amocrm".into(),
            received_at: at,
            content_type: "application/x-www-form-urlencoded".into(),
            body: body.as_bytes().to_vec(),
            dedup_key: dedup_key("amocrm", body.as_bytes()),
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), &PortalId("p".into())).unwrap();
        (dir, s)
    }

    #[test]
    fn failures_wait_then_go_to_the_dead_letters_and_come_back() {
        let (_d, s) = store();
        let now = Timestamp::now();
        let mut evs = vec![event("a=1", now), event("b=2", now)];
        s.inbox_store(&mut evs).unwrap();
        assert_eq!(
            s.inbox_failed(0, "boom", 3, now).unwrap(),
            Failed::Retry(now + retry_delay(1))
        );
        // Waiting: not due now, the one behind it is.
        let due: Vec<u64> = s
            .inbox_due(10, Some(now))
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(due, vec![1]);
        let later = now + std::time::Duration::from_secs(3);
        assert_eq!(s.inbox_due(10, Some(later)).unwrap().len(), 2);
        assert!(matches!(
            s.inbox_failed(0, "boom", 3, later).unwrap(),
            Failed::Retry(_)
        ));
        assert_eq!(
            s.inbox_failed(0, "still boom", 3, later).unwrap(),
            Failed::Dead
        );
        assert_eq!(s.inbox_depth().unwrap(), 1);
        let dead = s.inbox_dead().unwrap();
        assert_eq!((dead.len(), dead[0].attempts), (1, 3));
        assert_eq!(dead[0].last_error, "still boom");
        assert_eq!(dead[0].event.body, b"a=1");
        // Its dedup key stays: a redelivery is still a duplicate.
        let mut again = vec![event("a=1", later)];
        assert_eq!(
            s.inbox_store(&mut again).unwrap(),
            vec![Accepted::Duplicate(0)]
        );
        // Replay: back with no attempts, due at once.
        assert_eq!(s.inbox_replay(&[]).unwrap(), 1);
        assert_eq!(s.inbox_dead_count().unwrap(), 0);
        assert_eq!(s.inbox_due(10, Some(now)).unwrap().len(), 2);
        s.inbox_done(&[0, 1]).unwrap();
        assert_eq!(s.inbox_depth().unwrap(), 0);
    }

    #[test]
    fn rows_are_compact_and_old_json_rows_still_read() {
        let body = "leads[update][0][id]=123456&leads[update][0][name]=%D0%97%D0%B0%D0%BA%D0%B0%D0%B7&account[id]=31000001&account[subdomain]=shop".repeat(4);
        let ev = event(&body, Timestamp::now());
        let row = encode_event(&ev).unwrap();
        assert!(
            row.len() < body.len() + 128,
            "{} bytes for a {}-byte body",
            row.len(),
            body.len()
        );
        assert_eq!(decode_event(&row).unwrap(), ev);
        let json = serde_json::to_vec(&ev).unwrap();
        assert!(
            json.len() > 3 * body.len(),
            "the old form was the bloated one"
        );
        assert_eq!(decode_event(&json).unwrap(), ev);
    }

    #[test]
    fn dedup_keys_are_pruned_after_the_window() {
        let (_d, s) = store();
        let old = Timestamp::now() - std::time::Duration::from_secs(10 * 86_400);
        let new = Timestamp::now();
        let mut evs = vec![event("old=1", old), event("new=1", new)];
        s.inbox_store(&mut evs).unwrap();
        assert_eq!(s.inbox_seen_count().unwrap(), 2);
        let cutoff = new - std::time::Duration::from_secs(7 * 86_400);
        assert_eq!(s.inbox_prune_seen(cutoff).unwrap(), 1);
        assert_eq!(s.inbox_seen_count().unwrap(), 1);
        let mut again = vec![event("new=1", new), event("old=1", new)];
        let got = s.inbox_store(&mut again).unwrap();
        assert_eq!(got[0], Accepted::Duplicate(1));
        assert!(
            matches!(got[1], Accepted::Stored(_)),
            "a forgotten key is new again"
        );
    }
}
