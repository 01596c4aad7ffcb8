//! The dashboard of `rebuy serve`, under `/ui`: server-rendered HTML pages (maud, no
//! front-end build, no JavaScript) for integrators and managers, behind an admin login.
//!
//! Flow position: a reader at the end of the pipeline. It reads the portal stores the server
//! already opened ([`AppState`]): tokens, sync cursors and the outbox directly, and the
//! [`Analysis`] through a per-portal cache with a TTL (the analysis is computed at most once
//! per TTL per portal, on a blocking thread, and shared by every page).
//!
//! Pages (see [`pages`]): portals (connection, tokens, last sync, errors, connect button to
//! `/ui/p/{portal}/connect`, which starts an OAuth flow), a portal's overview (figures, warnings, monthly SVG charts), the
//! RFM heatmap and the ABC x XYZ matrix (cells link to their customers), segments (search,
//! filters, pages of 100, CSV and XLSX export with phones and emails), touches (the outbox
//! with a retry button on failures; the dry-run plan with an apply button), mapping (the
//! CRM's pipelines, users and fields the mapping uses, and its problems). English or Russian
//! ([`i18n`]).
//!
//! Enabling it: `[server.ui]` users, or `REBUY_UI_USER` and `REBUY_UI_PASSWORD`
//! ([`UiSettings::from_config`]); without a user every `/ui` route answers 404. Security: see [`auth`]; pages are sent with
//! `Cache-Control: no-store`, a strict Content-Security-Policy and `X-Frame-Options: DENY`.
pub mod auth;
pub mod i18n;
pub mod pages;
pub mod svg;

pub use auth::UiSettings;

use crate::analytics::{Analysis, Dataset};
use crate::server::AppState;
use crate::server::DryRun;
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::{get, post};
use rebuy_core::PortalId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the dashboard shows of one portal's analysis, computed once per cache period.
#[derive(Debug)]
pub struct PortalView {
    /// The analysis.
    pub analysis: Analysis,
    /// Monthly figures of the last 12 months up to the analysis date, oldest first.
    pub months: Vec<Month>,
    /// When it was computed.
    pub computed_at: jiff::Timestamp,
    /// Per customer (parallel to `analysis.customers`): lower-cased name, emails and key, so
    /// a search does not lower-case a million names per request.
    pub search: Vec<Box<str>>,
}

impl PortalView {
    /// A view of an analysis and its months.
    pub fn new(analysis: Analysis, months: Vec<Month>) -> PortalView {
        let search = analysis
            .customers
            .iter()
            .map(|c| pages::search_text(c).into_boxed_str())
            .collect();
        PortalView {
            computed_at: analysis.as_of,
            analysis,
            months,
            search,
        }
    }
}

/// One month of the trend charts.
#[derive(Debug, Clone, PartialEq)]
pub struct Month {
    /// `YYYY-MM`.
    pub label: String,
    /// Revenue of new customers' purchases (their first purchase month).
    pub new_revenue: f64,
    /// Revenue of returning customers' purchases.
    pub repeat_revenue: f64,
    /// Buyers whose first purchase is in this month.
    pub new_customers: u64,
    /// Buyers who had bought before this month.
    pub repeat_customers: u64,
}

/// A value computed on demand and kept: the first request computes it (one computation at a
/// time; other requests wait for its result); once it is older than its TTL, requests keep
/// getting it while one background task computes the next. Clearing it makes the next request
/// wait for a fresh one, and drops any background result started before the clear.
struct Cached<T> {
    value: Mutex<Option<(Instant, Arc<T>)>>,
    computing: Arc<tokio::sync::Mutex<()>>,
    generation: std::sync::atomic::AtomicU64,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached {
            value: Mutex::new(None),
            computing: Arc::default(),
            generation: Default::default(),
        }
    }
}

impl<T: Send + Sync + 'static> Cached<T> {
    fn current(&self) -> Option<(Instant, Arc<T>)> {
        self.value.lock().expect("ui cache value lock").clone()
    }

    fn store(&self, generation: u64, v: Arc<T>) {
        let mut slot = self.value.lock().expect("ui cache value lock");
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
            *slot = Some((Instant::now(), v));
        }
    }

    async fn get<Fut>(
        self: &Arc<Self>,
        ttl: Duration,
        what: &'static str,
        compute: impl FnOnce() -> Fut,
    ) -> anyhow::Result<Arc<T>>
    where
        Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        use std::sync::atomic::Ordering::SeqCst;
        if let Some((at, v)) = self.current() {
            if at.elapsed() >= ttl
                && let Ok(computing) = self.computing.clone().try_lock_owned()
            {
                let me = self.clone();
                let generation = self.generation.load(SeqCst);
                let fut = compute();
                tokio::spawn(async move {
                    let _computing = computing;
                    match fut.await {
                        Ok(v) => me.store(generation, Arc::new(v)),
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "ui: refreshing the {what} failed; the previous one is kept");
                        }
                    }
                });
            }
            return Ok(v);
        }
        let _computing = self.computing.lock().await;
        if let Some((_, v)) = self.current() {
            return Ok(v); // computed while this request waited
        }
        let generation = self.generation.load(SeqCst);
        let v = Arc::new(compute().await?);
        self.store(generation, v.clone());
        Ok(v)
    }

    fn clear(&self) {
        let mut slot = self.value.lock().expect("ui cache value lock");
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *slot = None;
    }

    fn set(&self, v: T) {
        let mut slot = self.value.lock().expect("ui cache value lock");
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *slot = Some((Instant::now(), Arc::new(v)));
    }
}

/// How long the touches and portals pages reuse a read of the outbox.
pub const OUTBOX_TTL: Duration = Duration::from_secs(5);

/// The outbox as the touches and portals pages show it, read at most once per [`OUTBOX_TTL`]
/// (a big outbox takes a while to decode; pages must not wait for it).
#[derive(Debug)]
pub struct OutboxSnapshot {
    /// Every entry, newest first.
    pub entries: Vec<crate::outbox::Entry>,
    /// Entries by state: pending, in flight, done, failed.
    pub counts: [usize; 4],
    /// Per local day (portal time zone): enqueued, done, failed.
    pub days: std::collections::BTreeMap<jiff::civil::Date, [usize; 3]>,
}

impl OutboxSnapshot {
    /// Reads a portal's outbox.
    pub fn read(rt: &crate::server::PortalRuntime) -> anyhow::Result<OutboxSnapshot> {
        use crate::outbox::ActionState;
        let mut entries = rt.store.outbox_all()?;
        entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
        let tz = &rt.cfg.time_zone;
        let day = |t: jiff::Timestamp| t.to_zoned(tz.clone()).date();
        let mut counts = [0usize; 4];
        let mut days: std::collections::BTreeMap<jiff::civil::Date, [usize; 3]> =
            Default::default();
        for e in &entries {
            days.entry(day(e.created_at)).or_default()[0] += 1;
            match &e.state {
                ActionState::Pending => counts[0] += 1,
                ActionState::InFlight { .. } => counts[1] += 1,
                ActionState::Done { at, .. } => {
                    counts[2] += 1;
                    days.entry(day(*at)).or_default()[1] += 1;
                }
                ActionState::Failed { at, .. } => {
                    counts[3] += 1;
                    days.entry(day(*at)).or_default()[2] += 1;
                }
            }
        }
        Ok(OutboxSnapshot {
            entries,
            counts,
            days,
        })
    }
}

/// Shared state of the dashboard.
#[derive(Clone)]
pub struct UiState {
    /// The server's state (portals and their stores).
    pub app: AppState,
    /// Login and cache settings.
    pub settings: Arc<UiSettings>,
    /// Sessions.
    pub sessions: Arc<auth::Sessions>,
    /// The login form's tokens and attempt limits.
    pub login: Arc<auth::LoginGuard>,
    cache: Arc<Mutex<HashMap<PortalId, Arc<Cached<PortalView>>>>>,
    outboxes: Arc<Mutex<HashMap<PortalId, Arc<Cached<OutboxSnapshot>>>>>,
}

impl UiState {
    /// A new dashboard state over the server's.
    pub fn new(app: AppState, settings: UiSettings) -> UiState {
        UiState {
            app,
            settings: Arc::new(settings),
            sessions: Arc::new(auth::Sessions::default()),
            login: Arc::new(auth::LoginGuard::default()),
            cache: Arc::new(Mutex::new(HashMap::new())),
            outboxes: Arc::default(),
        }
    }

    /// Installs a precomputed view of a portal (the bench builds one for a synthetic portal
    /// that has no cache to analyse); it is served until the TTL runs out.
    pub fn put_view(&self, id: &PortalId, view: PortalView) {
        self.slot(id).set(view);
    }

    /// The portal's waiting plan (a dry run, or the daily run's plan).
    pub fn dry_run(&self, id: &PortalId) -> Option<Arc<DryRun>> {
        self.app.portals.get(id)?.waiting_plan()
    }

    /// Keeps a dry-run plan for the apply button (replacing the previous one).
    pub fn set_dry_run(&self, id: &PortalId, run: DryRun) {
        if let Some(p) = self.app.portals.get(id) {
            p.set_waiting_plan(run);
        }
    }

    /// Takes the portal's waiting plan if its id is `plan_id` (an apply consumes it).
    pub fn take_dry_run(&self, id: &PortalId, plan_id: &str) -> Option<Arc<DryRun>> {
        self.app.portals.get(id)?.take_waiting_plan(plan_id)
    }

    fn slot(&self, id: &PortalId) -> Arc<Cached<PortalView>> {
        self.cache
            .lock()
            .expect("ui cache lock")
            .entry(id.clone())
            .or_default()
            .clone()
    }

    fn outbox_slot(&self, id: &PortalId) -> Arc<Cached<OutboxSnapshot>> {
        self.outboxes
            .lock()
            .expect("ui outbox cache lock")
            .entry(id.clone())
            .or_default()
            .clone()
    }

    /// The cached view of a portal ([`Cached`]: computed by the first request, then refreshed
    /// in the background once older than the cache TTL, so no page waits for an analysis
    /// after the first).
    pub async fn view(&self, id: &PortalId) -> anyhow::Result<Arc<PortalView>> {
        let rt = self
            .app
            .portals
            .get(id)
            .ok_or_else(|| anyhow::anyhow!("unknown portal {}", id.0))?
            .clone();
        self.slot(id)
            .get(self.settings.cache_ttl, "analysis", move || {
                compute_view(rt)
            })
            .await
    }

    /// Drops a portal's cached view (the next page computes it again and waits for it).
    pub async fn invalidate(&self, id: &PortalId) {
        self.slot(id).clear();
    }

    /// A portal's outbox as last read (at most [`OUTBOX_TTL`] old, refreshed in the
    /// background).
    pub async fn outbox(
        &self,
        rt: &crate::server::PortalRuntime,
    ) -> anyhow::Result<Arc<OutboxSnapshot>> {
        let rt = rt.clone();
        self.outbox_slot(&rt.cfg.id)
            .get(OUTBOX_TTL, "outbox", move || async move {
                tokio::task::spawn_blocking(move || OutboxSnapshot::read(&rt)).await?
            })
            .await
    }

    /// Drops a portal's outbox snapshot (after the dashboard itself changed the outbox).
    pub fn invalidate_outbox(&self, id: &PortalId) {
        self.outbox_slot(id).clear();
    }
}

/// Analyses a portal's cache on a blocking thread: the analysis and its monthly trend.
async fn compute_view(rt: crate::server::PortalRuntime) -> anyhow::Result<PortalView> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<PortalView> {
        let (data, analysis) = crate::analyse::analyse_portal(&rt.store, &rt.cfg, None)?;
        let months = monthly(&data, &analysis, &rt.cfg, 12);
        Ok(PortalView::new(analysis, months))
    })
    .await?
}

/// The last `n` months (ending with the analysis month) of sales: revenue and buyers split
/// into new (first purchase that month) and returning. A sale is what the analytics count
/// as one (won deal or sale stage, in a sale pipeline, at its purchase time); money in other
/// currencies than the portal's is left out of the revenue bars.
pub fn monthly(
    data: &Dataset,
    analysis: &Analysis,
    portal: &crate::config::PortalConfig,
    n: usize,
) -> Vec<Month> {
    use crate::analytics::PurchaseTime;
    use rust_decimal::prelude::ToPrimitive;
    let s = &portal.analytics;
    let tz = &portal.time_zone;
    let month_index = |d: jiff::civil::Date| d.year() as i64 * 12 + d.month() as i64 - 1;
    let end = month_index(analysis.as_of_date);
    let start = end - n as i64 + 1;
    let first: HashMap<_, _> = analysis
        .customers
        .iter()
        .map(|c| (c.key, month_index(c.first_purchase)))
        .collect();
    let currency = data
        .currencies
        .iter()
        .position(|c| c.trim().eq_ignore_ascii_case(&analysis.currency));
    let mut months: Vec<Month> = (start..=end)
        .map(|m| Month {
            label: format!("{:04}-{:02}", m.div_euclid(12), m.rem_euclid(12) + 1),
            new_revenue: 0.0,
            repeat_revenue: 0.0,
            new_customers: 0,
            repeat_customers: 0,
        })
        .collect();
    let mut seen: Vec<std::collections::HashSet<u32>> = vec![Default::default(); n];
    let as_of = analysis.as_of.as_second();
    for d in &data.deals {
        if d.group == crate::analytics::dataset::NONE {
            continue;
        }
        let in_pipeline = s.sale_pipelines.is_empty()
            || data
                .pipelines
                .get(d.pipeline as usize)
                .is_some_and(|p| s.sale_pipelines.contains(p));
        let in_stage = data
            .stages
            .get(d.stage as usize)
            .is_some_and(|st| s.sale_stages.contains(st));
        if !crate::analytics::settings::sale_rule(s.won_is_sale, d.state, in_pipeline, in_stage) {
            continue;
        }
        let ts = match s.purchase_time {
            PurchaseTime::Closed if d.closed_at != i64::MIN => d.closed_at,
            _ => d.created_at,
        };
        if ts > as_of {
            continue;
        }
        let Ok(t) = jiff::Timestamp::from_second(ts) else {
            continue;
        };
        let m = month_index(t.to_zoned(tz.clone()).date());
        if m < start || m > end {
            continue;
        }
        let i = (m - start) as usize;
        let key = data.groups[d.group as usize].key;
        let is_new = first.get(&key) == Some(&m);
        let money = match d.amount() {
            Some(a)
                if d.currency == crate::analytics::dataset::NONE
                    || Some(d.currency as usize) == currency =>
            {
                a.to_f64().unwrap_or(0.0)
            }
            _ => 0.0,
        };
        let mo = &mut months[i];
        if is_new {
            mo.new_revenue += money;
        } else {
            mo.repeat_revenue += money;
        }
        if seen[i].insert(d.group) {
            if is_new {
                mo.new_customers += 1;
            } else {
                mo.repeat_customers += 1;
            }
        }
    }
    months
}

async fn headers_layer(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    res
}

/// The dashboard's routes, to be nested under `/ui`:
/// `Router::new().nest("/ui", ui::router(state, settings))`.
pub fn router(state: AppState, settings: UiSettings) -> Router {
    router_with(UiState::new(state, settings))
}

/// [`router`] over a dashboard state the caller keeps (to install views, as the bench does).
pub fn router_with(ui: UiState) -> Router {
    Router::new()
        .route("/", get(pages::portals))
        .route("/login", get(pages::login_page).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/p/{portal}", get(pages::overview))
        .route("/p/{portal}/refresh", post(pages::refresh))
        .route("/p/{portal}/connect", get(pages::connect))
        .route("/p/{portal}/rfm", get(pages::rfm))
        .route("/p/{portal}/segments", get(pages::segments))
        .route("/p/{portal}/segments.csv", get(pages::export_csv))
        .route("/p/{portal}/segments.xlsx", get(pages::export_xlsx))
        .route("/p/{portal}/touches", get(pages::touches))
        .route("/p/{portal}/touches/retry", post(pages::retry))
        .route("/p/{portal}/plan", post(pages::dry_run))
        .route("/p/{portal}/apply", post(pages::apply))
        .route("/p/{portal}/results", get(pages::results))
        .route("/p/{portal}/mapping", get(pages::mapping))
        .fallback(pages::not_found)
        .layer(axum::middleware::map_response(headers_layer))
        .with_state(ui)
}

/// [`router`] with the server's `[server.ui]` settings ([`UiSettings::from_config`]); when
/// the dashboard is disabled or nobody may log in, a router whose every route answers 404.
pub fn router_from_config(state: AppState) -> Router {
    match UiSettings::from_config(&state.ui) {
        Some(s) => router(state, s),
        None => disabled(),
    }
}

/// The router of a disabled dashboard: 404 everywhere.
pub fn disabled() -> Router {
    Router::new().fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "not found") })
}
