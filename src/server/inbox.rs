//! The durable webhook inbox: every accepted webhook is committed to the portal's redb file
//! before the CRM gets its 2xx, deduplicated, and processed later.
//!
//! amoCRM gives a hook 2 seconds and Bitrix24 never redelivers, so the answer must be fast and
//! must not lie. One fsync per webhook would cap ingest at the disk's sync rate, so writes are
//! group-committed: a writer thread per portal takes every event waiting in its channel,
//! commits them in one transaction, and only then acknowledges each request.
use crate::store::{Store, StoreError};
use jiff::Timestamp;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// Events to process, by arrival sequence.
pub(crate) const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox");
/// Dedup keys of events seen (key -> sequence), so a redelivered webhook has one effect.
pub(crate) const INBOX_SEEN: TableDefinition<&str, u64> = TableDefinition::new("inbox_seen");

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
            let mut next: u64 = w.get_meta::<u64>("inbox_seq")?.unwrap_or(0);
            let mut out = Vec::with_capacity(events.len());
            for ev in events.iter_mut() {
                if let Some(prev) = seen.get(ev.dedup_key.as_str()).map_err(|e| self.err(e))? {
                    out.push(Accepted::Duplicate(prev.value()));
                    continue;
                }
                ev.seq = next;
                next += 1;
                let bytes = serde_json::to_vec(&*ev).map_err(|e| self.err(e))?;
                inbox
                    .insert(ev.seq, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
                seen.insert(ev.dedup_key.as_str(), ev.seq)
                    .map_err(|e| self.err(e))?;
                out.push(Accepted::Stored(ev.seq));
            }
            drop(inbox);
            drop(seen);
            w.set_meta("inbox_seq", &next)?;
            Ok(out)
        })
    }

    /// Up to `limit` unprocessed events, oldest first.
    pub fn inbox_pending(&self, limit: usize) -> Result<Vec<InboxEvent>, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let inbox = txn.open_table(INBOX).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in inbox.iter().map_err(|e| self.err(e))?.take(limit) {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(
                serde_json::from_slice(v.value())
                    .map_err(|e| self.err(format!("inbox[{}]: {e}", k.value())))?,
            );
        }
        Ok(out)
    }

    /// Unprocessed events.
    pub fn inbox_depth(&self) -> Result<u64, StoreError> {
        let txn = self.db().begin_read().map_err(|e| self.err(e))?;
        let inbox = txn.open_table(INBOX).map_err(|e| self.err(e))?;
        inbox.len().map_err(|e| self.err(e))
    }

    /// Removes processed events (their dedup keys stay, so redeliveries stay ignored).
    pub fn inbox_done(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.write(|w| {
            let mut inbox = w.txn().open_table(INBOX).map_err(|e| self.err(e))?;
            for s in seqs {
                inbox.remove(*s).map_err(|e| self.err(e))?;
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
