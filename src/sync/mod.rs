//! Pulling a portal into its cache: full and incremental, streamed page by page, resumable.
//!
//! Flow position: **pull** -> cache -> analyse -> plan -> outbox -> CRM.
//!
//! Each entity kind is listed as a sequence of pages. A page's records are committed together
//! with the cursor of the page that follows ([`crate::store::SyncState`]), so:
//! - memory holds one page per listing (plus one being written), whatever the account's size;
//! - a process killed at any point resumes from the last committed page: no gap (the cursor was
//!   committed with the data before it) and no duplicate (records are keyed by CRM id);
//! - fetching page N+1 overlaps with committing page N, so the rate limit, not the disk, sets
//!   the pace.
//!
//! A full listing whose connector can split it runs as several segments at once
//! ([`SEGMENTS_IN_FLIGHT`]), so a CRM with a request burst (Bitrix24's leaky bucket) gets
//! several requests in flight: from the start when the connector's [`Connector::prelude`]
//! (account, users and pipelines asked together with the probes) cut it, else after its first
//! page ([`Connector::split`]). Each segment's pages are committed as above, with the cursors of
//! all open segments, so a killed sync resumes every segment after its last committed page.
//!
//! Incremental listings ask for records modified since the last cursor minus an overlap
//! (`sync.overlap_secs`): CRM timestamps have one-second resolution and clocks drift, and
//! re-reading a few records is cheap while missing one is not. Deletions come from the CRM's
//! deletion log where it has one (amoCRM `/events`).
pub mod tasks;

use crate::failpoint;
use crate::store::{InProgress, Record, Store, StoreError, SyncState};
use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use rebuy_core::connector::StatsSnapshot;
use rebuy_core::{
    Company, Connector, ConnectorError, Contact, Cursor, Deal, EntityKind, ListQuery, Page,
    Pipeline, User,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What went wrong in a sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    // The cause is part of the message and deliberately not a `source()`: printed with its
    // chain (`{:#}`), a sourced cause would appear twice.
    /// The CRM failed.
    #[error("portal {portal}: syncing {kind}: {error}")]
    Connector {
        /// Portal.
        portal: String,
        /// Entity kind.
        kind: &'static str,
        /// The connector error.
        error: ConnectorError,
    },
    /// The cache failed.
    #[error("portal {portal}: {error}")]
    Store {
        /// Portal.
        portal: String,
        /// The store error.
        error: StoreError,
    },
}

impl SyncError {
    /// The connector error, when the CRM was the cause.
    pub fn connector_error(&self) -> Option<&ConnectorError> {
        match self {
            SyncError::Connector { error, .. } => Some(error),
            SyncError::Store { .. } => None,
        }
    }
}

/// Meta key: when the deal ids were last reconciled with the CRM.
const KEY_RECONCILED_AT: &str = "deals_reconciled_at";

fn reconcile_due(store: &Store, opts: &SyncOptions) -> Result<bool, StoreError> {
    let last: Option<Timestamp> = store.meta(KEY_RECONCILED_AT)?;
    let every = SignedDuration::try_from(opts.reconcile_every).unwrap_or(SignedDuration::MAX);
    Ok(last.is_none_or(|t| Timestamp::now().duration_since(t) >= every))
}

/// Removes cached deals the CRM no longer has: the CRM's ids (ascending, page by page) are
/// merged with the cache's ids of the same range, so memory holds one page whatever the size.
async fn reconcile_deal_ids(conn: &dyn Connector, store: &Store) -> Result<u64, ListError> {
    let started = Timestamp::now();
    let mut cursor = None;
    let mut lo: u64 = 0;
    let mut removed = 0;
    loop {
        let page = conn
            .deal_ids(cursor.as_ref())
            .await
            .map_err(ListError::Connector)?;
        let mut ids: Vec<u64> = page.items.iter().map(|d| d.0).collect();
        ids.sort_unstable();
        let hi = match (&page.next, ids.last()) {
            (None, _) => u64::MAX,
            (Some(_), Some(last)) => *last,
            (Some(_), None) => lo.saturating_sub(1),
        };
        if hi >= lo {
            let n = store
                .blocking(move |s| {
                    let cached = s.ids_in_range(EntityKind::Deals, lo, hi)?;
                    let gone: Vec<u64> = cached
                        .into_iter()
                        .filter(|id| ids.binary_search(id).is_err())
                        .collect();
                    if gone.is_empty() {
                        Ok(0)
                    } else {
                        s.write(|w| w.remove(EntityKind::Deals, &gone))
                    }
                })
                .await
                .map_err(ListError::Store)?;
            removed += n;
            lo = hi.saturating_add(1);
        }
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    store
        .blocking(move |s| s.set_meta(KEY_RECONCILED_AT, &started))
        .await
        .map_err(ListError::Store)?;
    Ok(removed)
}

/// How to sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// List everything (`true`) or only what changed since the last sync.
    pub full: bool,
    /// Re-read window of incremental listings.
    pub overlap: Duration,
    /// Listings run at once (they share the connector's rate limiter).
    pub concurrency: usize,
    /// How often deal ids are reconciled with a CRM that has no deletion log.
    pub reconcile_every: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            full: false,
            overlap: Duration::from_secs(300),
            concurrency: 3,
            reconcile_every: Duration::from_secs(24 * 3600),
        }
    }
}

/// What one kind's listing did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindReport {
    /// Records written.
    pub records: u64,
    /// Pages fetched.
    pub pages: u64,
    /// Records removed because the CRM deleted them.
    pub deleted: u64,
    /// Whether this was a full listing.
    pub full: bool,
}

/// What a sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    /// Per entity kind.
    pub kinds: BTreeMap<EntityKind, KindReport>,
    /// Optional data the CRM would not give (no right, no scope, no such method): the sync
    /// went on without it. Kept in the store ([`SyncWarnings`]) for `status`, the dashboard and
    /// `/metrics`.
    pub warnings: Vec<String>,
    /// Wall time.
    pub elapsed: Duration,
    /// Connector traffic during this sync.
    pub traffic: StatsSnapshot,
    /// Sent touch tasks whose state (completed or not) was read back from the CRM.
    pub task_states: u64,
}

impl SyncReport {
    /// Records written, all kinds.
    pub fn records(&self) -> u64 {
        self.kinds.values().map(|k| k.records).sum()
    }
}

/// Receives progress as pages land (the CLI draws a bar; tests ignore it).
pub trait Progress: Send + Sync {
    /// A page of `records` records of `kind` was committed.
    fn page(&self, kind: EntityKind, records: u64);
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl Progress for NoProgress {
    fn page(&self, _: EntityKind, _: u64) {}
}

/// An entity kind that is listed page by page.
#[async_trait]
trait Listable: Record + Clone + Sync {
    async fn fetch(
        conn: &dyn Connector,
        q: &ListQuery,
        c: Option<&Cursor>,
    ) -> Result<Page<Self>, ConnectorError>;
    fn updated_at(&self) -> Timestamp;
}

#[async_trait]
impl Listable for Contact {
    async fn fetch(
        conn: &dyn Connector,
        q: &ListQuery,
        c: Option<&Cursor>,
    ) -> Result<Page<Self>, ConnectorError> {
        conn.contacts(q, c).await
    }
    fn updated_at(&self) -> Timestamp {
        self.updated_at
    }
}

#[async_trait]
impl Listable for Company {
    async fn fetch(
        conn: &dyn Connector,
        q: &ListQuery,
        c: Option<&Cursor>,
    ) -> Result<Page<Self>, ConnectorError> {
        conn.companies(q, c).await
    }
    fn updated_at(&self) -> Timestamp {
        self.updated_at
    }
}

#[async_trait]
impl Listable for Deal {
    async fn fetch(
        conn: &dyn Connector,
        q: &ListQuery,
        c: Option<&Cursor>,
    ) -> Result<Page<Self>, ConnectorError> {
        conn.deals(q, c).await
    }
    fn updated_at(&self) -> Timestamp {
        self.updated_at
    }
}

/// Syncs one portal: account, users, pipelines, then companies, contacts and deals (listed
/// concurrently), then deletions.
pub async fn sync_portal(
    conn: Arc<dyn Connector>,
    store: Store,
    opts: &SyncOptions,
    progress: Arc<dyn Progress>,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let before = conn.stats();
    let portal = store.portal().0.clone();
    let cerr = |kind: &'static str| {
        let portal = portal.clone();
        move |error| SyncError::Connector {
            portal: portal.clone(),
            kind,
            error,
        }
    };
    let serr = |error| SyncError::Store {
        portal: portal.clone(),
        error,
    };
    let mut report = SyncReport::default();

    // Contacts, deals, users and pipelines are essential: without them there is nothing to
    // analyse. Everything else (the account's details, companies, product rows, the deletion
    // log) degrades to "none, with a warning" when the CRM refuses it for rights or scope, as
    // real accounts do (an amoCRM user without rights to companies, a Bitrix24 webhook without
    // a scope, a method an API implementation does not have).
    let mut warnings = Vec::new();
    // Full listings start no later than the requests that probe them.
    let started_at = Timestamp::now();
    let mut full_kinds = Vec::new();
    for kind in [
        EntityKind::Companies,
        EntityKind::Contacts,
        EntityKind::Deals,
    ] {
        if starts_full(&store, kind, opts).map_err(serr)? {
            full_kinds.push(kind);
        }
    }
    if conn.lists_product_rows() && rows_start_full(&store, opts).map_err(serr)? {
        full_kinds.push(EntityKind::ProductRows);
    }
    let prelude = conn.prelude(&full_kinds).await;
    let mut initial = prelude.segments;
    let account =
        optional(prelude.account, "account details", &mut warnings).map_err(cerr("account"))?;
    let users = prelude.users.map_err(cerr("users"))?;
    let pipelines = prelude.pipelines.map_err(cerr("pipelines"))?;
    let (nu, np) = (users.len() as u64, pipelines.len() as u64);
    store
        .blocking(move |s| {
            s.write(|w| {
                if let Some(account) = &account {
                    w.set_meta(crate::store::tables::KEY_ACCOUNT, account)?;
                }
                w.replace_all::<User>(&users)?;
                w.replace_all::<Pipeline>(&pipelines)?;
                // Small tables are listed whole every time: each run is a full one for them.
                let now = Timestamp::now();
                let state = SyncState {
                    last_sync_at: Some(now),
                    last_full_at: Some(now),
                    ..SyncState::default()
                };
                w.set_sync_state(EntityKind::Users, &state)?;
                w.set_sync_state(EntityKind::Pipelines, &state)
            })
        })
        .await
        .map_err(serr)?;
    report.kinds.insert(
        EntityKind::Users,
        KindReport {
            records: nu,
            pages: 1,
            deleted: 0,
            full: true,
        },
    );
    report.kinds.insert(
        EntityKind::Pipelines,
        KindReport {
            records: np,
            pages: 1,
            deleted: 0,
            full: true,
        },
    );
    progress.page(EntityKind::Users, nu);
    progress.page(EntityKind::Pipelines, np);

    // The big listings run concurrently so the shared rate limiter always has a request ready.
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut start = |kind| Start {
        at: started_at,
        segments: initial.remove(&kind),
    };
    let (companies, contacts, deals, rows) = tokio::join!(
        guarded(
            &sem,
            list_kind::<Company>(
                &conn,
                &store,
                opts,
                &*progress,
                start(EntityKind::Companies)
            )
        ),
        guarded(
            &sem,
            list_kind::<Contact>(&conn, &store, opts, &*progress, start(EntityKind::Contacts))
        ),
        guarded(
            &sem,
            list_kind::<Deal>(&conn, &store, opts, &*progress, start(EntityKind::Deals))
        ),
        guarded(
            &sem,
            list_product_rows(
                &conn,
                &store,
                opts,
                &*progress,
                start(EntityKind::ProductRows)
            )
        ),
    );
    let rows = optional_list(rows, "product rows", &mut warnings);
    if let Some(rows) = rows
        .map_err(|e| e.into_sync(&portal, "product rows"))?
        .flatten()
    {
        report.kinds.insert(EntityKind::ProductRows, rows);
    }
    let companies = optional_list(companies, "companies", &mut warnings)
        .map_err(|e| e.into_sync(&portal, "companies"))?;
    report
        .kinds
        .insert(EntityKind::Companies, companies.unwrap_or_default());
    report.kinds.insert(
        EntityKind::Contacts,
        contacts.map_err(|e| e.into_sync(&portal, "contacts"))?,
    );
    let mut deals = deals.map_err(|e| e.into_sync(&portal, "deals"))?;

    if !deals.full {
        match apply_deletions(&*conn, &store, opts).await {
            Ok(counts) => {
                deals.deleted = counts.get(&EntityKind::Deals).copied().unwrap_or(0);
                for (kind, n) in counts {
                    if kind != EntityKind::Deals
                        && let Some(r) = report.kinds.get_mut(&kind)
                    {
                        r.deleted += n;
                    }
                }
            }
            // No deletion log (Bitrix24: events are not redelivered, so they cannot be
            // trusted alone; an amoCRM user without access to events): compare the CRM's deal
            // ids with the cache's, when due.
            Err(ListError::Connector(e)) if e.is_unavailable() => {
                if !matches!(e, ConnectorError::Unsupported { .. }) {
                    warnings.push(format!(
                        "deletion log: {e}; deleted deals are found by comparing ids instead"
                    ));
                }
                if reconcile_due(&store, opts).map_err(serr)? {
                    deals.deleted = reconcile_deal_ids(&*conn, &store)
                        .await
                        .map_err(|e| e.into_sync(&portal, "deal id reconciliation"))?;
                }
            }
            Err(e) => return Err(e.into_sync(&portal, "deletions")),
        }
    } else if reconcile_due(&store, opts).map_err(serr)? {
        // A full listing starts the reconciliation clock: it saw every id there is.
        let now = Timestamp::now();
        store
            .blocking(move |s| s.set_meta(KEY_RECONCILED_AT, &now))
            .await
            .map_err(serr)?;
    }
    report.kinds.insert(EntityKind::Deals, deals);
    // Whether the managers completed the touch tasks rebuy sent (for `rebuy results`): read
    // back on every sync, optional like the other extras.
    match tasks::refresh_task_states(&*conn, &store).await {
        Ok(n) => report.task_states = n,
        Err(e) => match e.downcast_ref::<ConnectorError>() {
            Some(ConnectorError::Unsupported { .. }) => {}
            _ => warnings.push(format!("touch task states: {e:#}")),
        },
    }
    let kept = SyncWarnings {
        at: Timestamp::now(),
        warnings: warnings.clone(),
    };
    store
        .blocking(move |s| s.set_meta(KEY_SYNC_WARNINGS, &kept))
        .await
        .map_err(serr)?;
    report.warnings = warnings;
    report.elapsed = started.elapsed();
    let after = conn.stats();
    report.traffic = StatsSnapshot {
        requests: after.requests - before.requests,
        rate_limited: after.rate_limited - before.rate_limited,
        retries: after.retries - before.retries,
        transient: after.transient - before.transient,
    };
    Ok(report)
}

/// How a listing that starts afresh starts: when, and the segments the connector's prelude
/// cut it into (a full listing from the start only).
struct Start {
    at: Timestamp,
    segments: Option<Vec<Cursor>>,
}

/// Whether `kind`'s listing this run is a full one from the start (no listing to resume).
fn starts_full(store: &Store, kind: EntityKind, opts: &SyncOptions) -> Result<bool, StoreError> {
    let state = store.sync_state(kind)?;
    let resumable = state.in_progress.is_some_and(|ip| ip.full || !opts.full);
    Ok(!resumable && (opts.full || state.updated_from.is_none()))
}

/// Whether the product rows are listed in full from the start this run.
fn rows_start_full(store: &Store, opts: &SyncOptions) -> Result<bool, StoreError> {
    let state = store.sync_state(EntityKind::ProductRows)?;
    Ok(state.in_progress.is_none() && (opts.full || state.last_full_at.is_none()))
}

/// Meta key of the last sync's [`SyncWarnings`].
pub const KEY_SYNC_WARNINGS: &str = "sync_warnings";

/// The optional data the last sync of a portal went without.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyncWarnings {
    /// When the sync ended.
    pub at: Timestamp,
    /// One line each.
    pub warnings: Vec<String>,
}

/// The last sync's warnings of a portal (none before its first sync).
pub fn last_warnings(store: &Store) -> Result<SyncWarnings, StoreError> {
    Ok(store
        .meta::<SyncWarnings>(KEY_SYNC_WARNINGS)?
        .unwrap_or_default())
}

/// An optional call: the CRM refusing it for rights, scope or a missing method is a warning
/// and `None`; any other failure stays an error.
fn optional<T>(
    r: Result<T, ConnectorError>,
    what: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<T>, ConnectorError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_unavailable() => {
            tracing::warn!(what, error = %e, "Optional CRM data unavailable; going on without it");
            warnings.push(format!("{what}: {e}; going on without them"));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// [`optional`] for a listing.
fn optional_list<T>(
    r: Result<T, ListError>,
    what: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<T>, ListError> {
    match r {
        Err(ListError::Connector(e)) => {
            optional(Err(e), what, warnings).map_err(ListError::Connector)
        }
        Ok(v) => Ok(Some(v)),
        Err(e) => Err(e),
    }
}

async fn guarded<T>(sem: &tokio::sync::Semaphore, fut: impl std::future::Future<Output = T>) -> T {
    let _permit = sem.acquire().await;
    fut.await
}

enum ListError {
    Connector(ConnectorError),
    Store(StoreError),
}

impl ListError {
    fn into_sync(self, portal: &str, kind: &'static str) -> SyncError {
        match self {
            ListError::Connector(error) => SyncError::Connector {
                portal: portal.to_owned(),
                kind,
                error,
            },
            ListError::Store(error) => SyncError::Store {
                portal: portal.to_owned(),
                error,
            },
        }
    }
}

fn minus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::ZERO))
        .unwrap_or(t)
}

/// Segments of one listing fetched at once (each holds one page in memory while it waits for
/// its commit, about 2.5 MB of deals): enough that a portal's answer time, not the number of
/// requests in flight, sets the pace within the burst.
pub const SEGMENTS_IN_FLIGHT: usize = 12;

/// Prefix of a listing's cursor that stands for several segments under way (see
/// [`Connector::split`]): the segments' own cursors follow as a JSON array. The connector never
/// sees it; older single cursors read as one segment.
const SEGMENTS_PREFIX: &str = "segments:";

/// The segments a listing's stored cursor stands for (one, `None` = from the start, for a
/// plain cursor).
fn segments_of(cursor: &Option<Cursor>) -> Vec<Option<Cursor>> {
    match cursor {
        Some(c) => match c
            .0
            .strip_prefix(SEGMENTS_PREFIX)
            .and_then(|rest| serde_json::from_str::<Vec<String>>(rest).ok())
        {
            Some(list) if !list.is_empty() => list.into_iter().map(|c| Some(Cursor(c))).collect(),
            _ => vec![Some(c.clone())],
        },
        None => vec![None],
    }
}

/// The stored cursor of the segments still open (`None`: all done).
fn segments_cursor(open: &[Option<Cursor>]) -> Option<Cursor> {
    let list: Vec<&str> = open.iter().flatten().map(|c| c.0.as_str()).collect();
    match list.as_slice() {
        [] => None,
        [one] => Some(Cursor((*one).to_owned())),
        _ => Some(Cursor(format!(
            "{SEGMENTS_PREFIX}{}",
            serde_json::to_string(&list).unwrap_or_default()
        ))),
    }
}

/// Marks an entity listing complete in `state`.
fn finish_listing(state: &mut SyncState, ip: &InProgress) {
    let now = Timestamp::now();
    state.updated_from = Some(if ip.full {
        ip.started_at
    } else {
        // Records modified while we listed have updated_at after started_at, so the
        // next run starts no later than that.
        match ip.max_updated {
            Some(m) => m.min(ip.started_at),
            None => state.updated_from.unwrap_or(ip.started_at),
        }
    });
    state.last_sync_at = Some(now);
    if ip.full {
        state.last_full_at = Some(now);
        state.deletions_from.get_or_insert(ip.started_at);
    }
    state.in_progress = None;
}

/// Marks the product row listing complete in `state`.
fn finish_rows(state: &mut SyncState, ip: &InProgress) {
    let now = Timestamp::now();
    state.in_progress = None;
    state.updated_from = Some(ip.started_at);
    state.last_full_at = Some(now);
    state.last_sync_at = Some(now);
}

/// Asks the connector to split the rest of a full listing; a failed split is no failure of
/// the listing, which then goes on page after page.
async fn try_split(conn: &dyn Connector, kind: EntityKind, next: &Cursor) -> Vec<Cursor> {
    match conn.split(kind, next).await {
        Ok(parts) if parts.len() >= 2 => parts,
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::warn!(kind = kind.as_str(), error = %e, "Could not split the listing; listing it page after page");
            Vec::new()
        }
    }
}

/// What a segmented listing shares between its segments.
struct SegmentsState {
    ip: InProgress,
    state: SyncState,
    open: Vec<Option<Cursor>>,
    report: KindReport,
}

/// Lists `parts` (consecutive segments of one listing) at once, at most [`SEGMENTS_IN_FLIGHT`]
/// in flight. Each page is committed with the cursors of every segment as they stand after it,
/// under one lock, so the stored cursor never runs ahead of committed data: a killed sync
/// resumes each segment after its last committed page.
#[allow(clippy::too_many_arguments)]
async fn run_segments<I, F, Fut>(
    store: &Store,
    kind: EntityKind,
    parts: Vec<Cursor>,
    ip: InProgress,
    state: SyncState,
    report: KindReport,
    progress: &dyn Progress,
    fetch: F,
    updated_at: fn(&I) -> Option<Timestamp>,
    put: fn(&mut crate::store::Writer<'_>, &[I]) -> Result<(), StoreError>,
    finish: fn(&mut SyncState, &InProgress),
) -> Result<KindReport, ListError>
where
    I: Send + Sync + 'static,
    F: Fn(Cursor) -> Fut,
    Fut: std::future::Future<Output = Result<Page<I>, ConnectorError>> + Send + 'static,
{
    use futures::{StreamExt, TryStreamExt};
    let shared = tokio::sync::Mutex::new(SegmentsState {
        ip,
        state,
        open: parts.iter().cloned().map(Some).collect(),
        report,
    });
    let shared = &shared;
    let fetch = &fetch;
    futures::stream::iter(parts.into_iter().enumerate())
        .map(|(i, first)| async move {
            let mut cur = first;
            loop {
                // A task of its own: the answers of several segments are decoded on all cores.
                let page = tokio::spawn(fetch(cur))
                    .await
                    .map_err(|e| ListError::Store(store.err(e)))?
                    .map_err(ListError::Connector)?;
                let n = page.items.len() as u64;
                let mut sh = shared.lock().await;
                sh.open[i] = page.next.clone();
                sh.ip.records += n;
                let newest = page.items.iter().filter_map(updated_at).max();
                sh.ip.max_updated = sh.ip.max_updated.max(newest);
                sh.ip.cursor = segments_cursor(&sh.open);
                let SegmentsState { ip, state, .. } = &mut *sh;
                if ip.cursor.is_none() {
                    finish(state, ip);
                } else {
                    state.in_progress = Some(ip.clone());
                }
                let st = sh.state.clone();
                let items = page.items;
                let s = store.clone();
                // Committed under the lock: each commit's cursors cover exactly the pages
                // committed before it.
                tokio::task::spawn_blocking(move || {
                    s.write(|w| {
                        put(w, &items)?;
                        w.set_sync_state(kind, &st)
                    })
                })
                .await
                .map_err(|e| ListError::Store(store.err(e)))?
                .map_err(ListError::Store)?;
                failpoint::hit("sync.after_page");
                sh.report.records += n;
                sh.report.pages += 1;
                progress.page(kind, n);
                drop(sh);
                match page.next {
                    Some(next) => cur = next,
                    None => return Ok::<(), ListError>(()),
                }
            }
        })
        .buffer_unordered(SEGMENTS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(shared.lock().await.report)
}

fn put_records<T: Record>(w: &mut crate::store::Writer<'_>, items: &[T]) -> Result<(), StoreError> {
    w.put_all(items)
}

fn put_rows(
    w: &mut crate::store::Writer<'_>,
    items: &[rebuy_core::DealProductRow],
) -> Result<(), StoreError> {
    w.put_product_rows(items)
}

async fn list_kind<T: Listable + Send + 'static>(
    conn_arc: &Arc<dyn Connector>,
    store: &Store,
    opts: &SyncOptions,
    progress: &dyn Progress,
    start: Start,
) -> Result<KindReport, ListError> {
    let mut state = store.sync_state(T::KIND).map_err(ListError::Store)?;
    // Resume a listing under way; an interrupted full listing is finished before any
    // incremental one (its records are not all there yet).
    let resumable = state.in_progress.take().filter(|ip| ip.full || !opts.full);
    let never_synced = state.updated_from.is_none();
    let fresh = resumable.is_none();
    let mut ip = resumable.unwrap_or_else(|| {
        let full = opts.full || never_synced;
        InProgress {
            full,
            started_at: start.at,
            updated_from: if full {
                None
            } else {
                state.updated_from.map(|t| minus(t, opts.overlap))
            },
            cursor: None,
            records: 0,
            max_updated: None,
        }
    });
    let mut report = KindReport {
        full: ip.full,
        ..Default::default()
    };
    let query = ListQuery {
        updated_from: ip.updated_from,
        updated_to: None,
    };
    let conn: &dyn Connector = &**conn_arc;
    let fetch = |c: Cursor| {
        let (conn, query) = (conn_arc.clone(), query.clone());
        async move { T::fetch(&*conn, &query, Some(&c)).await }
    };
    let updated_at: fn(&T) -> Option<Timestamp> = |r| Some(T::updated_at(r));
    // A full listing from the start runs in the segments the prelude cut it into; one
    // interrupted while it ran in segments resumes them all; any other full listing splits
    // after its first page, when the connector can (a small table never pays for the probe).
    let resumed = segments_of(&ip.cursor);
    let mut may_split = ip.full;
    let mut pending: Option<tokio::task::JoinHandle<Result<(), StoreError>>> = None;
    let initial = start.segments.filter(|p| fresh && ip.full && !p.is_empty());
    let segments: Option<Vec<Cursor>> = if initial.is_some() {
        initial
    } else if resumed.len() >= 2 {
        Some(resumed.into_iter().flatten().collect())
    } else {
        loop {
            let page = T::fetch(conn, &query, ip.cursor.as_ref())
                .await
                .map_err(ListError::Connector)?;
            let n = page.items.len() as u64;
            ip.records += n;
            ip.max_updated = page
                .items
                .iter()
                .map(T::updated_at)
                .max()
                .max(ip.max_updated);
            ip.cursor = page.next.clone();
            let done = page.next.is_none();
            if done {
                finish_listing(&mut state, &ip);
            } else {
                state.in_progress = Some(ip.clone());
            }
            // Commit in order: wait for the previous page's write, then hand this one over
            // and fetch the next page while it is written.
            committed(store, pending.take()).await?;
            let items = page.items;
            let st = state.clone();
            let s = store.clone();
            // Deals of an incremental listing carry their current product rows: the
            // separately listed ones they replace go in the same transaction.
            let drop_rows = T::KIND == EntityKind::Deals && !ip.full && conn.lists_product_rows();
            pending = Some(tokio::task::spawn_blocking(move || {
                s.write(|w| {
                    if drop_rows {
                        let ids: Vec<u64> = items.iter().map(Record::key).collect();
                        w.drop_product_rows_of(&ids)?;
                    }
                    w.put_all(&items)?;
                    w.set_sync_state(T::KIND, &st)
                })
            }));
            report.records += n;
            report.pages += 1;
            progress.page(T::KIND, n);
            if done {
                break None;
            }
            if std::mem::take(&mut may_split)
                && let Some(next) = &page.next
            {
                let parts = try_split(conn, T::KIND, next).await;
                if !parts.is_empty() {
                    break Some(parts);
                }
            }
        }
    };
    committed(store, pending.take()).await?;
    let Some(parts) = segments else {
        return Ok(report);
    };
    run_segments(
        store,
        T::KIND,
        parts,
        ip,
        state,
        report,
        progress,
        fetch,
        updated_at,
        put_records::<T>,
        finish_listing,
    )
    .await
}

/// Waits for the write of the previous page: pages commit in order.
async fn committed(
    store: &Store,
    pending: Option<tokio::task::JoinHandle<Result<(), StoreError>>>,
) -> Result<(), ListError> {
    if let Some(prev) = pending {
        prev.await
            .map_err(|e| ListError::Store(store.err(e)))?
            .map_err(ListError::Store)?;
        failpoint::hit("sync.after_page");
    }
    Ok(())
}

/// The product rows of a CRM that lists them on their own ([`Connector::lists_product_rows`]):
/// a full listing, resumable like the others, when the deals are listed in full (first sync,
/// `--full`) or an earlier one was interrupted; `None` when there is nothing to do (incremental
/// deal pages bring the rows of the deals that changed).
async fn list_product_rows(
    conn_arc: &Arc<dyn Connector>,
    store: &Store,
    opts: &SyncOptions,
    progress: &dyn Progress,
    start: Start,
) -> Result<Option<KindReport>, ListError> {
    let conn: &dyn Connector = &**conn_arc;
    if !conn.lists_product_rows() {
        return Ok(None);
    }
    let kind = EntityKind::ProductRows;
    let mut state = store.sync_state(kind).map_err(ListError::Store)?;
    let mut ip = match state.in_progress.take() {
        Some(ip) => ip,
        None if opts.full || state.last_full_at.is_none() => InProgress {
            full: true,
            started_at: start.at,
            updated_from: None,
            cursor: None,
            records: 0,
            max_updated: None,
        },
        None => return Ok(None),
    };
    let mut report = KindReport {
        full: true,
        ..Default::default()
    };
    let fetch = |c: Cursor| {
        let conn = conn_arc.clone();
        async move { conn.product_rows(Some(&c)).await }
    };
    // A listing from the start replaces the table: rows deleted in the CRM go with it.
    let mut clear = ip.cursor.is_none();
    let mut may_split = true;
    let resumed = segments_of(&ip.cursor);
    let initial = start.segments.filter(|p| clear && !p.is_empty());
    let segments: Option<Vec<Cursor>> = if let Some(parts) = initial {
        // The table is replaced: emptied together with the segments' cursor, so a sync killed
        // before their first page resumes them instead of starting over.
        let mut st = state.clone();
        let mut under_way = ip.clone();
        under_way.cursor = segments_cursor(&parts.iter().cloned().map(Some).collect::<Vec<_>>());
        st.in_progress = Some(under_way);
        store
            .blocking(move |s| {
                s.write(|w| {
                    w.clear_product_rows()?;
                    w.set_sync_state(kind, &st)
                })
            })
            .await
            .map_err(ListError::Store)?;
        Some(parts)
    } else if resumed.len() >= 2 {
        Some(resumed.into_iter().flatten().collect())
    } else {
        loop {
            let page = conn
                .product_rows(ip.cursor.as_ref())
                .await
                .map_err(ListError::Connector)?;
            let n = page.items.len() as u64;
            ip.records += n;
            ip.cursor = page.next.clone();
            let done = page.next.is_none();
            if done {
                finish_rows(&mut state, &ip);
            } else {
                state.in_progress = Some(ip.clone());
            }
            let st = state.clone();
            let first = std::mem::take(&mut clear);
            let items = page.items;
            store
                .blocking(move |s| {
                    s.write(|w| {
                        if first {
                            w.clear_product_rows()?;
                        }
                        w.put_product_rows(&items)?;
                        w.set_sync_state(kind, &st)
                    })
                })
                .await
                .map_err(ListError::Store)?;
            failpoint::hit("sync.after_page");
            report.records += n;
            report.pages += 1;
            progress.page(kind, n);
            if done {
                break None;
            }
            if std::mem::take(&mut may_split)
                && let Some(next) = &page.next
            {
                let parts = try_split(conn, kind, next).await;
                if !parts.is_empty() {
                    break Some(parts);
                }
            }
        }
    };
    let Some(parts) = segments else {
        return Ok(Some(report));
    };
    run_segments(
        store,
        kind,
        parts,
        ip,
        state,
        report,
        progress,
        fetch,
        |_| None,
        put_rows,
        finish_rows,
    )
    .await
    .map(Some)
}

async fn apply_deletions(
    conn: &dyn Connector,
    store: &Store,
    opts: &SyncOptions,
) -> Result<BTreeMap<EntityKind, u64>, ListError> {
    let state = store
        .sync_state(EntityKind::Deals)
        .map_err(ListError::Store)?;
    let started = Timestamp::now();
    let since = minus(state.deletions_from.unwrap_or(started), opts.overlap);
    let mut cursor = None;
    let mut counts = BTreeMap::new();
    loop {
        let page = conn
            .deletions(since, cursor.as_ref())
            .await
            .map_err(ListError::Connector)?;
        let mut by_kind: BTreeMap<EntityKind, Vec<u64>> = BTreeMap::new();
        for d in &page.items {
            by_kind.entry(d.entity).or_default().push(d.id);
        }
        let removed = store
            .blocking(move |s| {
                s.write(|w| {
                    let mut out = BTreeMap::new();
                    for (kind, ids) in &by_kind {
                        out.insert(*kind, w.remove(*kind, ids)?);
                    }
                    Ok(out)
                })
            })
            .await
            .map_err(ListError::Store)?;
        for (k, n) in removed {
            *counts.entry(k).or_insert(0) += n;
        }
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    let mut st = store
        .sync_state(EntityKind::Deals)
        .map_err(ListError::Store)?;
    st.deletions_from = Some(started);
    store
        .blocking(move |s| s.write(|w| w.set_sync_state(EntityKind::Deals, &st)))
        .await
        .map_err(ListError::Store)?;
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_cursors_survive_the_store() {
        let open = vec![
            Some(Cursor("id:5..10".into())),
            None,
            Some(Cursor("id:20".into())),
        ];
        let stored = segments_cursor(&open).unwrap();
        assert!(stored.0.starts_with(SEGMENTS_PREFIX), "{stored:?}");
        assert_eq!(
            segments_of(&Some(stored)),
            vec![
                Some(Cursor("id:5..10".into())),
                Some(Cursor("id:20".into()))
            ]
        );
        // One segment left is stored as itself; none left means done.
        assert_eq!(
            segments_cursor(&[None, Some(Cursor("id:20".into()))]),
            Some(Cursor("id:20".into()))
        );
        assert_eq!(segments_cursor(&[None, None]), None);
        // A plain cursor (an older store, a sequential listing) is one segment.
        assert_eq!(
            segments_of(&Some(Cursor("id:42".into()))),
            vec![Some(Cursor("id:42".into()))]
        );
        assert_eq!(segments_of(&None), vec![None]);
    }
}
