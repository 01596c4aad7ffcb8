//! The Bitrix24 emulator: OAuth 2.0 and inbound webhooks, the REST methods rebuy uses,
//! `batch`, the leaky-bucket and operating-time limits, fault injection.
//!
//! Faithful to `connectors/emulator/docs/bitrix24.md`; where the doc and this emulator disagree,
//! the emulator is wrong. One portal per emulator. Every `/rest/...` request passes, in this
//! order:
//!
//! 1. the leaky bucket of the portal (`batch` counts once): a full bucket answers 503
//!    `QUERY_LIMIT_EXCEEDED` "Too many requests";
//! 2. faults ([`FaultConfig`]): 5xx (nginx HTML or JSON), an extra 503 `QUERY_LIMIT_EXCEEDED`,
//!    slow answers, dropped connections, truncated JSON (a faulted write is never applied);
//! 3. authentication: `/rest/{user_id}/{secret}/{method}` (inbound webhook; a wrong secret is
//!    401 `NO_AUTH_FOUND`) or `/rest/{method}` with an `auth` parameter in the query, the form
//!    or the JSON body (401 `expired_token` when expired or replaced by a refresh, `invalid_token`
//!    after the app was removed; missing or never issued: 401 `NO_AUTH_FOUND`);
//! 4. the operating-time limit of the method (each nested `batch` command for its own method):
//!    429 `OPERATION_TIME_LIMIT` with `operating_reset_at`;
//! 5. the method. Every answer carries the `time` block; lists add `total` / `next`.
//!
//! Parameters come as a GET PHP-bracket query, a POST form (PHP brackets) or a POST JSON body;
//! `crm.*` keys are case-insensitive (`SELECT`/`select`).
//!
//! # Choices where the doc is silent
//! - Lists without `order` are sorted by `ID` ascending.
//! - A known path asked with another HTTP method (REST takes GET and POST) answers 405 in the
//!   REST error shape, `{"error":"ERROR_METHOD_NOT_ALLOWED","error_description":"..."}`, with
//!   `Allow` (the code is this emulator's; Bitrix24 documents none for it).
//! - `batch` runs its commands in the order they were sent (a JSON object's keys, or a form's
//!   `cmd[...]` fields, as they appear: PHP arrays keep insertion order) and answers in that
//!   order; keys are never sorted. A `$result[...]` reference to something missing becomes an
//!   empty string (an empty `>ID` filter then means `> 0`).
//! - The emulator's clock for data changes is `max(wall clock, seed.now + uptime)`; token
//!   expiry uses the wall clock.
//! - `OAuth` calls run as the portal administrator (the first seeded user); webhook calls as
//!   the webhook's user.
//! - Events are recorded ([`B24Emulator::fired_events`]) and queued for `event.offline.get`
//!   when an offline binding exists; every online handler bound with `event.bind` for the
//!   event gets a POST of [`event_form_body`] (`application/x-www-form-urlencoded`) through the
//!   emulator's [`crate::delivery::Delivery`]: never retried (as Bitrix24), with the faults of
//!   [`B24Config::delivery`]. `auth[client_endpoint]` is the served base URL (`https://{domain}`
//!   before [`B24Emulator::serve`] binds a socket).
mod limits;
mod methods;
mod oauth;
mod params;
pub mod state;

pub use state::*;

use crate::delivery::{Delivery, DeliveryConfig, DeliveryStats};
use crate::faults::{Fault, FaultConfig, FaultPicker};
use crate::seed::{self, SeedConfig};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use limits::{LeakyBucket, Operating};
use methods::{ApiErr, MethodOk};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::time::Instant;

/// How an emulated Bitrix24 portal behaves.
#[derive(Debug, Clone)]
pub struct B24Config {
    /// The generated data.
    pub seed: SeedConfig,
    /// The portal's domain as the tokens and events name it (`rebuy-demo.bitrix24.ru`).
    pub domain: String,
    /// The portal's `member_id`.
    pub member_id: String,
    /// The app's `client_id` (`local.…`).
    pub client_id: String,
    /// The app's `client_secret`.
    pub client_secret: String,
    /// The app's configured redirect URI (the authorize step redirects here).
    pub redirect_uri: String,
    /// `application_token` carried by events.
    pub application_token: String,
    /// The user who created the inbound webhook.
    pub webhook_user_id: u64,
    /// The inbound webhook's secret code.
    pub webhook_secret: String,
    /// Access token lifetime (3600 s in the cloud).
    pub access_token_ttl_secs: u64,
    /// Leaky bucket capacity `X` (50; Enterprise 250).
    pub bucket_capacity: u32,
    /// Leaky bucket drain `Y` per second (2; Enterprise 5).
    pub drain_per_sec: f64,
    /// Operating-time limit per method, seconds per window (480).
    pub operating_limit_secs: f64,
    /// The operating-time window (600 s in the cloud).
    pub operating_window_secs: f64,
    /// Simulated execution time of one method call, counted towards the operating limit.
    pub method_cost_ms: u64,
    /// Wall time one call takes on the portal (each command of a `batch` counts), slept before
    /// answering: a real portal spends it in its database, where the emulator answers at once.
    /// `0` (the default): no wait. Benchmarks set it so that requests in flight matter as they
    /// do against a real portal.
    pub call_time_ms: u64,
    /// Injected faults.
    pub faults: FaultConfig,
    /// Event delivery to online handlers (duplicates, drops, delays; the retry schedule is
    /// ignored: Bitrix24 never retries).
    pub delivery: DeliveryConfig,
    /// Seconds added to the emulator's clock for data changes (`DATE_CREATE`, `DATE_MODIFY`,
    /// events): a portal whose clock runs ahead (positive) or behind (negative) the client's.
    pub clock_offset_secs: i64,
}

impl Default for B24Config {
    /// The default dataset, cloud limits (50 / 2 per s, 480 s per 10 min), 1 h tokens, no faults.
    fn default() -> Self {
        Self {
            seed: SeedConfig::default(),
            domain: "rebuy-demo.bitrix24.ru".into(),
            member_id: "a223c6b3710f85df22e9377d6c4f7553".into(),
            client_id: "local.65f0a1b2c3d4e5.12345678".into(),
            client_secret: "emulatorClientSecret0123456789abcdefghijklmnopq".into(),
            redirect_uri: "https://rebuy.example/oauth/bitrix24/callback".into(),
            application_token: "51856fefc120afa4b628cc82d3935cce".into(),
            webhook_user_id: 1,
            webhook_secret: "8g9l071eismy9q2l".into(),
            access_token_ttl_secs: 3600,
            bucket_capacity: 50,
            drain_per_sec: 2.0,
            operating_limit_secs: 480.0,
            operating_window_secs: 600.0,
            method_cost_ms: 5,
            call_time_ms: 0,
            faults: FaultConfig::default(),
            delivery: DeliveryConfig::default(),
            clock_offset_secs: 0,
        }
    }
}

/// Traffic counters of the emulator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct B24Stats {
    /// `/rest/` requests seen.
    pub requests: u64,
    /// Commands run inside `batch` requests.
    pub batch_commands: u64,
    /// 503 `QUERY_LIMIT_EXCEEDED` answers caused by the bucket (injected ones excluded).
    pub query_limit_503: u64,
    /// 429 `OPERATION_TIME_LIMIT` refusals (requests and batch commands).
    pub operation_limit_429: u64,
    /// 401 answers.
    pub unauthorized_401: u64,
    /// Injected faults.
    pub faults_injected: u64,
    /// Successful `authorization_code` grants.
    pub token_grants: u64,
    /// Successful `refresh_token` grants.
    pub token_refreshes: u64,
    /// Refused grants (`invalid_grant`, `invalid_client`).
    pub token_refusals: u64,
    /// Calls per method (batch commands included).
    pub by_method: BTreeMap<String, u64>,
}

/// A write received through the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteRecord {
    /// The method (`crm.deal.update`).
    pub method: String,
    /// Its parameters as received.
    pub params: Value,
    /// What it answered.
    pub result: Value,
    /// When (emulator clock, unix seconds).
    pub at: i64,
}

/// An event the portal fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FiredEvent {
    /// Sequence number.
    pub seq: u64,
    /// `ONCRMDEALUPDATE`, ...
    pub event: String,
    /// The entity id.
    pub id: u64,
    /// When (unix seconds).
    pub ts: i64,
    /// `data[FIELDS]`.
    pub fields: Value,
}

#[derive(Debug, Clone)]
pub(crate) struct EventBinding {
    event: String,
    handler: String,
    offline: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Events {
    bindings: Vec<EventBinding>,
    fired: Vec<FiredEvent>,
    offline: Vec<FiredEvent>,
    seq: u64,
}

/// Who is calling.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    pub user_id: u64,
    /// OAuth (app context) rather than an inbound webhook.
    pub app: bool,
}

pub(crate) struct Inner {
    cfg: B24Config,
    data: RwLock<B24Data>,
    /// Bumped whenever the data may change (each write lock): what [`methods::ListCache`]
    /// entries are valid for.
    generation: std::sync::atomic::AtomicU64,
    /// Matched ids of recent filtered listings.
    list_cache: Mutex<methods::ListCache>,
    oauth: Mutex<oauth::OAuthState>,
    bucket: Mutex<LeakyBucket>,
    operating: Mutex<Operating>,
    faults: Mutex<(FaultConfig, FaultPicker)>,
    stats: Mutex<B24Stats>,
    writes: Mutex<Vec<WriteRecord>>,
    events: Mutex<Events>,
    admin: u64,
    started: Instant,
    /// Event delivery to online handlers.
    delivery: Delivery,
    /// The served base URL (for `auth[client_endpoint]`), once known.
    base_url: Mutex<Option<String>>,
    /// Methods outside the caller's scope (403 `insufficient_scope`).
    denied: Mutex<Vec<String>>,
    /// Whether the app is installed on the portal (`app.info`'s `INSTALLED`).
    installed: std::sync::atomic::AtomicBool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, B24Data> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, B24Data> {
        let guard = self.data.write().unwrap_or_else(|e| e.into_inner());
        // Under the write lock: a reader holding the read lock sees the generation of the
        // data it reads.
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        guard
    }

    /// The data's version (see [`Inner::write`]).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn now(&self) -> i64 {
        let wall = jiff::Timestamp::now().as_second();
        let seeded = self.cfg.seed.now.as_second() + self.started.elapsed().as_secs() as i64;
        wall.max(seeded) + self.cfg.clock_offset_secs
    }

    pub(crate) fn app_installed(&self) -> bool {
        self.installed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn count_batch_command(&self, method: &str) {
        let mut s = lock(&self.stats);
        s.batch_commands += 1;
        *s.by_method.entry(method.to_owned()).or_default() += 1;
    }

    /// Runs a method under its operating-time limit.
    pub(crate) fn run_metered(
        &self,
        method: &str,
        p: &Map<String, Value>,
        caller: &Caller,
    ) -> Result<MethodOk, ApiErr> {
        let state = lock(&self.operating).state(method);
        if state.blocked {
            lock(&self.stats).operation_limit_429 += 1;
            return Err(ApiErr::new(
                429,
                "OPERATION_TIME_LIMIT",
                "Method is blocked due to operation time limit.",
            ));
        }
        if lock(&self.denied).iter().any(|m| m == method) {
            return Err(ApiErr::new(
                403,
                "insufficient_scope",
                "The request requires higher privileges than provided by the webhook token",
            ));
        }
        let r = methods::call(self, method, p, caller);
        lock(&self.operating).record(method, Duration::from_millis(self.cfg.method_cost_ms));
        r
    }

    pub(crate) fn fire(&self, event: &str, id: u64, fields: Value) {
        let ts = self.now();
        let mut ev = lock(&self.events);
        ev.seq += 1;
        let fired = FiredEvent {
            seq: ev.seq,
            event: event.into(),
            id,
            ts,
            fields,
        };
        let handlers: Vec<String> = ev
            .bindings
            .iter()
            .filter(|b| !b.offline && b.event == event && !b.handler.is_empty())
            .map(|b| b.handler.clone())
            .collect();
        if !handlers.is_empty() {
            let base = lock(&self.base_url)
                .clone()
                .unwrap_or_else(|| format!("https://{}", self.cfg.domain));
            let body = event_form_body(&self.cfg, &fired, &base);
            for h in handlers {
                self.delivery
                    .enqueue(&h, "application/x-www-form-urlencoded", body.clone());
            }
        }
        if ev.bindings.iter().any(|b| b.offline && b.event == event) {
            // The offline queue keeps one record per object (the latest change).
            ev.offline
                .retain(|e| !(e.event == fired.event && e.id == id));
            ev.offline.push(fired.clone());
        }
        ev.fired.push(fired);
    }
}

/// The `time` block of an answer (with this method's operating time).
pub(crate) fn time_block(st: &Inner, method: &str, started: jiff::Timestamp) -> Value {
    let finish = jiff::Timestamp::now();
    let op = lock(&st.operating).state(method);
    let f = |t: jiff::Timestamp| t.as_microsecond() as f64 / 1e6;
    let dur = f(finish) - f(started);
    let mut v = json!({
        "start": f(started), "finish": f(finish), "duration": dur, "processing": dur,
        "date_start": iso(started.as_second()), "date_finish": iso(finish.as_second()),
        "operating": op.operating,
    });
    if let Some(r) = op.reset_at {
        v["operating_reset_at"] = json!(r);
    }
    v
}

/// An emulated Bitrix24 portal. Cheap to clone (shared state).
#[derive(Clone)]
pub struct B24Emulator(Arc<Inner>);

impl std::fmt::Debug for B24Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("B24Emulator")
            .field("domain", &self.0.cfg.domain)
            .finish_non_exhaustive()
    }
}

impl B24Emulator {
    /// Generates the data and builds the emulator (no socket yet).
    pub fn new(cfg: B24Config) -> Self {
        let ds = seed::generate(&cfg.seed);
        let data = B24Data::from_dataset(&ds);
        let admin = data
            .users
            .values()
            .find(|u| u.is_admin)
            .or(data.users.values().next())
            .map_or(1, |u| u.id);
        let inner = Inner {
            oauth: Mutex::new(oauth::OAuthState::new(cfg.seed.seed)),
            bucket: Mutex::new(LeakyBucket::new(cfg.bucket_capacity, cfg.drain_per_sec)),
            operating: Mutex::new(Operating::new(
                cfg.operating_limit_secs,
                cfg.operating_window_secs,
            )),
            faults: Mutex::new((cfg.faults.clone(), FaultPicker::new(cfg.seed.seed))),
            stats: Mutex::new(B24Stats::default()),
            writes: Mutex::new(Vec::new()),
            events: Mutex::new(Events::default()),
            data: RwLock::new(data),
            generation: std::sync::atomic::AtomicU64::new(0),
            list_cache: Mutex::new(methods::ListCache::default()),
            admin,
            started: Instant::now(),
            delivery: Delivery::new(cfg.delivery.clone(), false, "Bitrix24 Webhook Engine"),
            denied: Mutex::new(Vec::new()),
            base_url: Mutex::new(None),
            installed: std::sync::atomic::AtomicBool::new(true),
            cfg,
        };
        Self(Arc::new(inner))
    }

    /// The configuration.
    pub fn config(&self) -> &B24Config {
        &self.0.cfg
    }

    /// The HTTP routes: OAuth, REST (token and webhook styles) and `/_emulator/...` inspection.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/oauth/authorize", get(authorize))
            .route("/oauth/authorize/", get(authorize))
            .route("/oauth/token", get(token).post(token_post))
            .route("/oauth/token/", get(token).post(token_post))
            .route("/rest/{*path}", get(rest_get).post(rest_post))
            .route("/_emulator/writes", get(inspect_writes))
            .route("/_emulator/stats", get(inspect_stats))
            .route("/_emulator/events", get(inspect_events))
            .route(
                "/_emulator/authorization_code",
                get(inspect_code).post(inspect_code),
            )
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(self.0.clone())
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            *lock(&self.0.base_url) = Some(format!("http://{addr}"));
        }
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Serves over HTTPS with `tls`'s certificate on `listener` until `shutdown` completes; a
    /// plain-HTTP request on that port gets Bitrix24's 400 `INVALID_REQUEST` "Https required.".
    pub async fn serve_tls(
        self,
        listener: tokio::net::TcpListener,
        tls: &crate::tls::SelfSigned,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            *lock(&self.0.base_url) = Some(format!("https://{addr}"));
        }
        let listener = tls.listen(listener, crate::tls::PlainHttp::Bitrix24)?;
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Generates the data, binds `127.0.0.1:0` and serves in a background task.
    pub async fn spawn(cfg: B24Config) -> std::io::Result<RunningB24> {
        Self::new(cfg).start().await
    }

    /// Binds `127.0.0.1:0` and serves this emulator over HTTPS (`tls`'s certificate) in a
    /// background task; the base URL is `https://127.0.0.1:{port}`.
    pub async fn start_tls(self, tls: &crate::tls::SelfSigned) -> std::io::Result<RunningB24> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let emulator = self.clone();
        let tls = tls.clone();
        let task = tokio::spawn(async move {
            self.serve_tls(listener, &tls, async {
                let _ = rx.await;
            })
            .await
        });
        Ok(RunningB24 {
            base_url: format!("https://{addr}"),
            addr,
            emulator,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Binds `127.0.0.1:0` and serves this emulator in a background task.
    pub async fn start(self) -> std::io::Result<RunningB24> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let emulator = self.clone();
        let task = tokio::spawn(self.serve(listener, async {
            let _ = rx.await;
        }));
        Ok(RunningB24 {
            base_url: format!("http://{addr}"),
            addr,
            emulator,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// An authorization code as if the administrator consented (30 s, single use).
    pub fn issue_authorization_code(&self) -> String {
        lock(&self.0.oauth).issue_code()
    }

    /// Removes the app from the portal, as an administrator does: every token issued so far
    /// dies (`invalid_token`, `invalid_grant`), its event handlers are unbound, and `app.info`
    /// says `INSTALLED: false` until [`Self::install_app`].
    pub fn uninstall_app(&self) {
        self.0
            .installed
            .store(false, std::sync::atomic::Ordering::SeqCst);
        lock(&self.0.oauth).revoke_all();
        lock(&self.0.events).bindings.clear();
    }

    /// Installs the app again (after [`Self::uninstall_app`]); tokens come from new codes.
    pub fn install_app(&self) {
        self.0
            .installed
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes every access token issued so far expire now.
    pub fn expire_access_tokens(&self) {
        lock(&self.0.oauth).expire_all();
    }

    /// Spends every refresh token issued so far: the next refresh gets `invalid_grant`.
    pub fn revoke_refresh_tokens(&self) {
        lock(&self.0.oauth).revoke_refresh_tokens();
    }

    /// Narrows the caller's scope: `methods` (`crm.currency.base.get`) answer 403
    /// `insufficient_scope`, alone or inside a `batch`.
    pub fn set_denied(&self, methods: &[&str]) {
        *lock(&self.0.denied) = methods.iter().map(|m| (*m).to_owned()).collect();
    }

    /// Replaces the fault mix.
    pub fn set_faults(&self, f: FaultConfig) {
        lock(&self.0.faults).0 = f;
    }

    /// Replaces the leaky bucket (empty) with new limits.
    pub fn set_bucket(&self, capacity: u32, drain_per_sec: f64) {
        *lock(&self.0.bucket) = LeakyBucket::new(capacity, drain_per_sec);
    }

    /// Replaces the operating-time limit (history forgotten).
    pub fn set_operating_limit(&self, limit_secs: f64, window_secs: f64) {
        *lock(&self.0.operating) = Operating::new(limit_secs, window_secs);
    }

    /// A copy of the counters.
    pub fn stats(&self) -> B24Stats {
        lock(&self.0.stats).clone()
    }

    /// Runs `f` on the portal's records (exact-equality tests). Do not call the emulator from
    /// inside `f`.
    pub fn with_data<R>(&self, f: impl FnOnce(&B24Data) -> R) -> R {
        f(&self.0.read())
    }

    /// The emulator's clock for data changes (unix seconds).
    pub fn now(&self) -> i64 {
        self.0.now()
    }

    /// The writes received through the API, in order.
    pub fn writes(&self) -> Vec<WriteRecord> {
        lock(&self.0.writes).clone()
    }

    /// The events fired so far.
    pub fn fired_events(&self) -> Vec<FiredEvent> {
        lock(&self.0.events).fired.clone()
    }

    /// Changes a deal as a manager would (bumps `DATE_MODIFY`, fires `ONCRMDEALUPDATE`).
    /// Returns `false` when it does not exist.
    pub fn update_deal(&self, id: u64, f: impl FnOnce(&mut B24Deal)) -> bool {
        let now = self.0.now();
        let found = match self.0.write().deals.get_mut(&id) {
            Some(d) => {
                f(d);
                d.date_modify = now;
                true
            }
            None => false,
        };
        if found {
            self.0
                .fire("ONCRMDEALUPDATE", id, json!({"ID": id.to_string()}));
        }
        found
    }

    /// Changes a contact as a manager would (bumps `DATE_MODIFY`, fires `ONCRMCONTACTUPDATE`).
    pub fn update_contact(&self, id: u64, f: impl FnOnce(&mut B24Contact)) -> bool {
        let now = self.0.now();
        let found = match self.0.write().contacts.get_mut(&id) {
            Some(c) => {
                f(c);
                c.date_modify = now;
                true
            }
            None => false,
        };
        if found {
            self.0
                .fire("ONCRMCONTACTUPDATE", id, json!({"ID": id.to_string()}));
        }
        found
    }

    /// Simulates the period `[from, to)` (unix seconds) of [`crate::answers::AnswerSim`]:
    /// managers complete open to-dos due in it, customers (contacts with a won deal) buy: won
    /// deals in category 0 dated in the period (`DATE_MODIFY` is the emulator's clock, so
    /// incremental syncs see them).
    pub fn simulate_answers(
        &self,
        from: i64,
        to: i64,
        sim: &crate::answers::AnswerSim,
    ) -> crate::answers::AnswerReport {
        let now = self.0.now();
        let mut rng = crate::rng::Rng::new(sim.seed ^ from as u64);
        let mut report = crate::answers::AnswerReport::default();
        let mut added = Vec::new();
        {
            let mut d = self.0.write();
            let mut answered = std::collections::BTreeSet::new();
            let due: Vec<u64> = d
                .activities
                .values()
                .filter(|a| !a.completed && a.deadline >= from && a.deadline < to)
                .map(|a| a.id)
                .collect();
            for id in due {
                if !rng.chance(sim.completion) {
                    continue;
                }
                let Some(a) = d.activities.get_mut(&id) else {
                    continue;
                };
                a.completed = true;
                a.last_updated = now;
                let (ty, owner) = (a.owner_type_id, a.owner_id);
                report.completed += 1;
                let contact = match ty {
                    2 => d.deals.get(&owner).and_then(|x| x.contact_id),
                    3 => Some(owner),
                    _ => None,
                };
                if let Some(c) = contact {
                    answered.insert(c);
                }
            }
            report.answered = answered.len() as u64;
            let customers: std::collections::BTreeSet<u64> = d
                .deals
                .values()
                .filter(|x| x.stage_semantic_id == "S")
                .filter_map(|x| x.contact_id)
                .filter(|c| d.contacts.contains_key(c))
                .collect();
            let user = self.0.admin;
            for c in customers {
                let touched = answered.contains(&c);
                let p = sim.base_probability + if touched { sim.uplift } else { 0.0 };
                if !rng.chance(p) {
                    continue;
                }
                let at = rng.range(from, to - 1);
                let id = d.deals.keys().next_back().map_or(1, |k| k + 1);
                d.deals.insert(
                    id,
                    B24Deal {
                        id,
                        title: format!("Сделка #{id}"),
                        category_id: 0,
                        stage_id: "WON".into(),
                        stage_semantic_id: "S".into(),
                        currency_id: "RUB".into(),
                        opportunity: rust_decimal::Decimal::from(sim.amount),
                        contact_id: Some(c),
                        contact_ids: vec![c],
                        company_id: None,
                        assigned_by_id: user,
                        created_by_id: user,
                        modify_by_id: user,
                        date_create: at,
                        date_modify: now,
                        begindate: midnight(at),
                        closedate: midnight(at),
                        closed: true,
                        is_return_customer: false,
                        is_repeated_approach: false,
                        source_id: None,
                        comments: String::new(),
                        moved_time: at,
                        uf: BTreeMap::new(),
                        products: Vec::new(),
                    },
                );
                added.push(id);
                report.purchases += 1;
                report.purchases_answered += u64::from(touched);
            }
        }
        for id in added {
            self.0
                .fire("ONCRMDEALADD", id, json!({"ID": id.to_string()}));
        }
        report
    }

    /// Marks a to-do activity done (`COMPLETED = Y`), as a manager would in the timeline.
    /// Returns `false` when it does not exist.
    pub fn complete_activity(&self, id: u64) -> bool {
        let now = self.0.now();
        match self.0.write().activities.get_mut(&id) {
            Some(a) => {
                a.completed = true;
                a.last_updated = now;
                true
            }
            None => false,
        }
    }

    /// Deletes a deal (fires `ONCRMDEALDELETE`). Returns `false` when it did not exist.
    pub fn delete_deal(&self, id: u64) -> bool {
        let found = {
            let mut d = self.0.write();
            let removed = d.deals.remove(&id);
            // Its product rows go with it: the row listing never pages over rows that are gone.
            for r in removed.iter().flat_map(|deal| &deal.products) {
                d.product_rows.remove(&r.id);
            }
            removed.is_some()
        };
        if found {
            self.0
                .fire("ONCRMDEALDELETE", id, json!({"ID": id.to_string()}));
        }
        found
    }

    /// Adds an open deal of `contact_id` in the first stage of `category_id`, amount in whole
    /// roubles. Returns its id, or `None` for an unknown category.
    pub fn add_deal(&self, contact_id: u64, amount: i64, category_id: u64) -> Option<u64> {
        let now = self.0.now();
        let id = {
            let mut d = self.0.write();
            let stage = d.stages.get(&category_id)?.first()?.clone();
            let id = d.deals.keys().next_back().map_or(1, |k| k + 1);
            let user = self.0.admin;
            d.deals.insert(
                id,
                B24Deal {
                    id,
                    title: format!("Сделка #{id}"),
                    category_id,
                    stage_id: stage.status_id,
                    stage_semantic_id: "P".into(),
                    currency_id: "RUB".into(),
                    opportunity: rust_decimal::Decimal::new(amount * 100, 2),
                    contact_id: Some(contact_id),
                    contact_ids: vec![contact_id],
                    company_id: None,
                    assigned_by_id: user,
                    created_by_id: user,
                    modify_by_id: user,
                    date_create: now,
                    date_modify: now,
                    begindate: midnight(now),
                    closedate: midnight(now + 7 * 86_400),
                    closed: false,
                    is_return_customer: false,
                    is_repeated_approach: false,
                    source_id: None,
                    comments: String::new(),
                    moved_time: now,
                    uf: BTreeMap::new(),
                    products: Vec::new(),
                },
            );
            id
        };
        self.0
            .fire("ONCRMDEALADD", id, json!({"ID": id.to_string()}));
        Some(id)
    }

    /// Replaces the event delivery settings (faults, delays) for later events.
    pub fn set_delivery(&self, cfg: DeliveryConfig) {
        self.0.delivery.set_config(cfg);
    }

    /// A copy of the event delivery counters.
    pub fn delivery_stats(&self) -> DeliveryStats {
        self.0.delivery.stats()
    }

    /// The form-urlencoded body Bitrix24 would POST to an online handler for `ev`.
    pub fn event_body(&self, ev: &FiredEvent, base_url: &str) -> String {
        event_form_body(&self.0.cfg, ev, base_url)
    }
}

/// The `application/x-www-form-urlencoded` body of an event delivery (app handler style:
/// `event`, `event_handler_id`, `data[FIELDS][..]`, `ts`, `auth[...]`).
pub fn event_form_body(cfg: &B24Config, ev: &FiredEvent, base_url: &str) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    s.append_pair("event", &ev.event);
    s.append_pair("event_handler_id", "1");
    if let Value::Object(f) = &ev.fields {
        for (k, v) in f {
            s.append_pair(&format!("data[FIELDS][{k}]"), &value_text(v));
        }
    }
    s.append_pair("ts", &ev.ts.to_string());
    s.append_pair("auth[domain]", &cfg.domain);
    s.append_pair("auth[client_endpoint]", &format!("{base_url}/rest/"));
    s.append_pair("auth[server_endpoint]", &format!("{base_url}/rest/"));
    s.append_pair("auth[member_id]", &cfg.member_id);
    s.append_pair("auth[application_token]", &cfg.application_token);
    s.finish()
}

/// An emulator serving in a background task. Dropping it stops the server and the
/// emulator's webhook deliveries (pending ones and retries are abandoned).
#[derive(Debug)]
pub struct RunningB24 {
    /// `http://127.0.0.1:{port}`: the portal URL (where the real one is `https://{domain}`).
    pub base_url: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// The emulator, for inspection and mutations.
    pub emulator: B24Emulator,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningB24 {
    /// The inbound webhook URL of the portal (`{base}/rest/{user_id}/{secret}/`).
    pub fn webhook_url(&self) -> String {
        let c = self.emulator.config();
        format!(
            "{}/rest/{}/{}/",
            self.base_url, c.webhook_user_id, c.webhook_secret
        )
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => match tokio::time::timeout(Duration::from_secs(2), task).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(std::io::Error::other(e)),
                Err(_) => Ok(()),
            },
            None => Ok(()),
        }
    }
}

impl Drop for RunningB24 {
    fn drop(&mut self) {
        self.emulator.0.delivery.stop();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// `rebuy emulate bitrix24`: generates the data, serves on `127.0.0.1:{port}` (0 = any free
/// port), prints the portal URL, the app credentials, a fresh authorization code and the
/// inbound webhook URL, and runs until Ctrl-C.
///
/// With `tls`, it serves HTTPS with a certificate generated now, written (PEM) to the given
/// path, which the banner names. The user lacks access to the methods in `deny`.
pub async fn run_bitrix24(
    cfg: B24Config,
    port: u16,
    tls: Option<&std::path::Path>,
    deny: &[String],
) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let emulator = B24Emulator::new(cfg);
    let (contacts, deals) = emulator.with_data(|d| (d.contacts.len(), d.deals.len()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let c = emulator.config();
    let cert = match tls {
        Some(path) => Some((crate::tls::SelfSigned::generate()?, path)),
        None => None,
    };
    let scheme = if cert.is_some() { "https" } else { "http" };
    if !deny.is_empty() {
        let deny: Vec<&str> = deny.iter().map(String::as_str).collect();
        emulator.set_denied(&deny);
    }
    println!("Bitrix24 emulator listening on {scheme}://{addr}");
    println!("  portal:         {} (member_id {})", c.domain, c.member_id);
    println!(
        "  data:           {contacts} contacts, {deals} deals (seed {}, generated in {:.1?})",
        c.seed.seed,
        started.elapsed()
    );
    println!("  history:        {}", c.seed.period_line());
    println!("  client_id:      {}", c.client_id);
    println!("  client_secret:  {}", c.client_secret);
    println!("  redirect_uri:   {}", c.redirect_uri);
    println!("  auth code:      {}", emulator.issue_authorization_code());
    println!(
        "                  (valid 30 s, single use; POST {scheme}://{addr}/_emulator/authorization_code for another)"
    );
    println!(
        "  webhook:        {scheme}://{addr}/rest/{}/{}/",
        c.webhook_user_id, c.webhook_secret
    );
    println!("  faults:         {}", c.faults);
    if !deny.is_empty() {
        println!("  denied:         {}", deny.join(", "));
    }
    if c.clock_offset_secs != 0 {
        println!("  clock offset:   {:+} s", c.clock_offset_secs);
    }
    if let Some((cert, path)) = &cert {
        std::fs::write(path, cert.cert_pem())?;
        println!(
            "  tls cert:       {} (self-signed; trust it, e.g. SSL_CERT_FILE={})",
            path.display(),
            path.display()
        );
    }
    println!(
        "  limits:         bucket {} drained {}/s, operating {} s per {} s, {} ms per call; writes at {scheme}://{addr}/_emulator/writes",
        c.bucket_capacity,
        c.drain_per_sec,
        c.operating_limit_secs,
        c.operating_window_secs,
        c.method_cost_ms
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match cert {
        Some((cert, _)) => emulator.serve_tls(listener, &cert, ctrl_c).await,
        None => emulator.serve(listener, ctrl_c).await,
    }
}

// -------------------------------------------------------------------------------------------------
// HTTP

fn json_response(status: u16, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// A known path asked with an HTTP method it does not serve (`PUT /rest/crm.deal.list`): 405 in
/// the REST error shape (axum adds the `Allow` header).
async fn method_not_allowed(method: axum::http::Method) -> Response {
    error_response(
        405,
        "ERROR_METHOD_NOT_ALLOWED",
        &format!("HTTP method {method} is not allowed here"),
    )
}

fn error_response(status: u16, error: &str, description: &str) -> Response {
    json_response(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

fn base_of(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

async fn authorize(
    State(st): State<Arc<Inner>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let c = &st.cfg;
    if q.get("client_id").map(String::as_str) != Some(c.client_id.as_str()) {
        return error_response(400, "invalid_client", "Unknown client_id");
    }
    let code = lock(&st.oauth).issue_code();
    let target = q
        .get("redirect_uri")
        .cloned()
        .unwrap_or_else(|| c.redirect_uri.clone());
    let Ok(mut url) = url::Url::parse(&target) else {
        return error_response(400, "invalid_request", "Bad redirect_uri");
    };
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", q.get("state").map(String::as_str).unwrap_or(""))
        .append_pair("domain", &c.domain)
        .append_pair("member_id", &c.member_id)
        .append_pair("scope", "crm,task,user")
        .append_pair("server_domain", "oauth.bitrix.info");
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

async fn token_post(
    State(st): State<Arc<Inner>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let mut all: HashMap<String, String> =
        url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    all.extend(url::form_urlencoded::parse(&body).into_owned());
    token_inner(&st, &headers, all)
}

async fn token(
    State(st): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    token_inner(&st, &headers, q)
}

fn token_inner(st: &Inner, headers: &HeaderMap, q: HashMap<String, String>) -> Response {
    let c = &st.cfg;
    let refuse = |st: &Inner, (status, error, desc): oauth::GrantError| {
        lock(&st.stats).token_refusals += 1;
        error_response(status, error, desc)
    };
    if q.get("client_id") != Some(&c.client_id) || q.get("client_secret") != Some(&c.client_secret)
    {
        return refuse(st, (401, "invalid_client", "Invalid client credentials"));
    }
    let ttl = c.access_token_ttl_secs;
    let grant = q.get("grant_type").map(String::as_str).unwrap_or("");
    let issued = match grant {
        "authorization_code" => {
            lock(&st.oauth).grant_code(q.get("code").map(String::as_str).unwrap_or(""), ttl)
        }
        "refresh_token" => lock(&st.oauth).grant_refresh(
            q.get("refresh_token").map(String::as_str).unwrap_or(""),
            ttl,
        ),
        _ => Err((400, "invalid_request", "Unsupported grant_type")),
    };
    let issued = match issued {
        Ok(i) => i,
        Err(e) => return refuse(st, e),
    };
    {
        let mut s = lock(&st.stats);
        if grant == "refresh_token" {
            s.token_refreshes += 1;
        } else {
            s.token_grants += 1;
        }
    }
    let base = base_of(headers);
    json_response(
        200,
        &json!({
            "access_token": issued.access_token,
            "expires": jiff::Timestamp::now().as_second() + ttl as i64,
            "expires_in": ttl,
            "scope": "crm,task,user",
            "domain": c.domain,
            "server_endpoint": format!("{base}/rest/"),
            "status": "L",
            "client_endpoint": format!("{base}/rest/"),
            "member_id": c.member_id,
            "user_id": st.admin,
            "refresh_token": issued.refresh_token,
        }),
    )
}

async fn rest_get(
    State(st): State<Arc<Inner>>,
    Path(path): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let params = params::parse_php(q.as_deref().unwrap_or(""));
    rest(st, path, Ok(params)).await
}

async fn rest_post(
    State(st): State<Arc<Inner>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let mut params = params::parse_php(q.as_deref().unwrap_or(""));
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let parsed: Result<Map<String, Value>, ()> = if ctype.starts_with("application/json") {
        if body.iter().all(u8::is_ascii_whitespace) {
            Ok(Map::new())
        } else {
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(m)) => Ok(m),
                _ => Err(()),
            }
        }
    } else {
        Ok(params::parse_php(&String::from_utf8_lossy(&body)))
    };
    let parsed = parsed.map(|m| {
        params.extend(m);
        params
    });
    rest(st, path, parsed).await
}

async fn rest(st: Arc<Inner>, path: String, params: Result<Map<String, Value>, ()>) -> Response {
    let started = jiff::Timestamp::now();
    lock(&st.stats).requests += 1;
    // 1. The leaky bucket of the portal.
    if !lock(&st.bucket).admit() {
        lock(&st.stats).query_limit_503 += 1;
        return error_response(503, "QUERY_LIMIT_EXCEEDED", "Too many requests");
    }
    // 2. Faults.
    let fault = {
        let mut f = lock(&st.faults);
        let (cfg, picker) = &mut *f;
        picker.pick(cfg)
    };
    if fault != Fault::None {
        lock(&st.stats).faults_injected += 1;
    }
    match fault {
        Fault::ServerError { status, json: true } => {
            return error_response(status, "INTERNAL_SERVER_ERROR", "Internal server error");
        }
        Fault::ServerError {
            status,
            json: false,
        } => {
            let mut r = Response::new(Body::from(format!(
                "<html><head><title>{status} Bad Gateway</title></head><body><center><h1>{status}</h1></center><hr><center>nginx</center></body></html>"
            )));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            return r;
        }
        Fault::Extra429 => return error_response(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"),
        Fault::Slow(d) => tokio::time::sleep(d).await,
        _ => {}
    }
    // 3. Auth.
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let Ok(mut params) = params else {
        return error_response(400, "INVALID_REQUEST", "Invalid JSON body");
    };
    let (method, caller) = match segments.as_slice() {
        [uid, secret, method] => {
            let c = &st.cfg;
            if uid.parse::<u64>().ok() != Some(c.webhook_user_id) || *secret != c.webhook_secret {
                lock(&st.stats).unauthorized_401 += 1;
                return error_response(401, "NO_AUTH_FOUND", "Wrong authorization data");
            }
            (
                *method,
                Caller {
                    user_id: c.webhook_user_id,
                    app: false,
                },
            )
        }
        [method] => {
            let token = params
                .remove("auth")
                .map(|v| value_text(&v))
                .unwrap_or_default();
            if token.is_empty() {
                lock(&st.stats).unauthorized_401 += 1;
                return error_response(401, "NO_AUTH_FOUND", "Wrong authorization data");
            }
            match lock(&st.oauth).check(&token) {
                oauth::TokenCheck::Ok => {}
                oauth::TokenCheck::Expired => {
                    lock(&st.stats).unauthorized_401 += 1;
                    return error_response(
                        401,
                        "expired_token",
                        "The access token provided has expired",
                    );
                }
                oauth::TokenCheck::Invalid => {
                    lock(&st.stats).unauthorized_401 += 1;
                    return error_response(
                        401,
                        "invalid_token",
                        "The access token provided is invalid",
                    );
                }
                oauth::TokenCheck::Unknown => {
                    lock(&st.stats).unauthorized_401 += 1;
                    return error_response(401, "NO_AUTH_FOUND", "Wrong authorization data");
                }
            }
            (
                *method,
                Caller {
                    user_id: st.admin,
                    app: true,
                },
            )
        }
        _ => return error_response(404, "ERROR_METHOD_NOT_FOUND", "Method not found!"),
    };
    params.remove("auth");
    let method = method.trim_end_matches(".json").to_ascii_lowercase();
    if method.ends_with(".xml") {
        return error_response(400, "INVALID_REQUEST", "Only JSON answers are emulated");
    }
    let writes = method_is_write(&method, &params);
    // A faulted write is never applied.
    if writes && matches!(fault, Fault::Drop | Fault::Malformed) {
        return broken(fault, Bytes::from_static(b"{\"result\":{\"result\":{\"c0"));
    }
    // 4-5. Operating limit and the method.
    let (outcome, calls) = if method == "batch" {
        *lock(&st.stats).by_method.entry(method.clone()).or_default() += 1;
        let calls = match params.get("cmd") {
            Some(Value::Object(m)) => m.len(),
            Some(Value::Array(a)) => a.len(),
            _ => 0,
        };
        (methods::batch(&st, &params, &caller), calls)
    } else {
        *lock(&st.stats).by_method.entry(method.clone()).or_default() += 1;
        (st.run_metered(&method, &params, &caller), 1)
    };
    if st.cfg.call_time_ms > 0 {
        tokio::time::sleep(Duration::from_millis(st.cfg.call_time_ms * calls as u64)).await;
    }
    let resp = match outcome {
        Ok(ok) => {
            let mut v = json!({"result": ok.result});
            if let Some(n) = ok.next {
                v["next"] = json!(n);
            }
            if let Some(t) = ok.total {
                v["total"] = json!(t);
            }
            v["time"] = time_block(&st, &method, started);
            (200, v)
        }
        Err(e) => {
            let mut v = json!({"error": e.error, "error_description": e.description});
            if e.error == "OPERATION_TIME_LIMIT" {
                v["time"] = time_block(&st, &method, started);
            }
            (e.status, v)
        }
    };
    match fault {
        Fault::DropAfterWrite if writes => broken(
            Fault::Drop,
            Bytes::from(serde_json::to_vec(&resp.1).unwrap_or_default()),
        ),
        Fault::Drop | Fault::Malformed => broken(
            fault,
            Bytes::from(serde_json::to_vec(&resp.1).unwrap_or_default()),
        ),
        _ => json_response(resp.0, &resp.1),
    }
}

fn method_is_write(method: &str, p: &Map<String, Value>) -> bool {
    if method == "batch" {
        let cmds = params::param(p, "cmd")
            .map(params::list_of)
            .unwrap_or_default();
        return cmds.iter().any(|c| {
            let m = value_text(c);
            methods::is_write(m.split('?').next().unwrap_or("").trim_end_matches(".json"))
        });
    }
    methods::is_write(method)
}

/// A dropped connection (half the body, then a reset) or a truncated 200 body.
fn broken(fault: Fault, body: Bytes) -> Response {
    let half = body.slice(..(body.len() / 2).max(1).min(body.len()));
    let mut r = if fault == Fault::Drop {
        let stream = futures::stream::iter([
            Ok::<Bytes, std::io::Error>(half),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "emulated dropped connection",
            )),
        ]);
        Response::new(Body::from_stream(stream))
    } else {
        Response::new(Body::from(half))
    };
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

async fn inspect_writes(State(st): State<Arc<Inner>>) -> Response {
    let w = lock(&st.writes).clone();
    json_response(200, &serde_json::to_value(w).unwrap_or_default())
}

async fn inspect_stats(State(st): State<Arc<Inner>>) -> Response {
    let s = lock(&st.stats).clone();
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["bucket_level"] = json!(lock(&st.bucket).level());
    json_response(200, &v)
}

async fn inspect_events(State(st): State<Arc<Inner>>) -> Response {
    let ev = lock(&st.events).fired.clone();
    json_response(200, &serde_json::to_value(ev).unwrap_or_default())
}

async fn inspect_code(State(st): State<Arc<Inner>>) -> Response {
    let code = lock(&st.oauth).issue_code();
    let c = &st.cfg;
    json_response(
        200,
        &json!({"code": code, "domain": c.domain, "member_id": c.member_id, "client_id": c.client_id, "expires_in": 30}),
    )
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        error_response(self.status, &self.error, &self.description)
    }
}
