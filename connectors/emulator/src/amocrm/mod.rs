//! The amoCRM emulator: OAuth 2.0, REST API v4, rate limits and blocks, fault injection.
//!
//! Faithful to `connectors/emulator/docs/amocrm.md`; where the doc and this emulator disagree,
//! the emulator is wrong. Every request goes through one gate (see [`AmoEmulator::router`]) in
//! this order:
//!
//! 1. inspection endpoints (`/_emulator/...`) pass straight through, uncounted;
//! 2. a blocked integration gets the nginx `403 Forbidden` page on every path, the token
//!    endpoint included;
//! 3. `/api/v4` requests take a token from the bucket (capacity = rate, refilled at rate/s);
//!    an empty bucket answers `429` (HTML, no `Retry-After`) and counts a violation; more than
//!    `block_after_violations` violations within 60 s block the integration until
//!    [`AmoEmulator::reset_block`];
//! 4. faults are drawn (`/api/v4` only): 5xx, extra 429, slow answers;
//! 5. the bearer token is checked (401 problem+json);
//! 6. the handler runs, unless a drop or malformed fault replaces a write (a faulted write is
//!    never applied); for reads, drop and malformed faults corrupt the real answer.
//!
//! # Choices where the doc is silent
//! - `_links.next` is present whenever a page is full (`limit` records); a full last page is
//!   therefore followed by a `204`, which clients must handle anyway.
//! - Default order of lists is by `id` ascending; `/api/v4/events` defaults to newest first.
//! - The server's default page size is 50.
//! - The emulator's clock for writes and events is `max(wall clock, seed.now + uptime)`, so
//!   changes are always newer than the generated history.
//! - Token times (`exp`, `server_time`) use the wall clock, as clients compare them with theirs.
mod api;
mod customers;
mod entities;
mod error;
mod oauth;
mod query;
mod render;
pub mod state;
mod webhooks;
mod writes;

pub use customers::MAX_CUSTOMERS_BATCH;
pub use entities::NOTE_TYPES;
pub use state::*;
pub use writes::{
    CustomerWrite, EntityCreated, EntityUpdate, FieldCreated, FieldUpdate, LeadCreated, LeadMove,
    TagUpdate, TaskCreated, TaskUpdated, Writes,
};

use crate::delivery::{Delivery, DeliveryConfig, DeliveryStats};
use crate::faults::{Fault, FaultConfig, FaultPicker};
use crate::limits::{Admission, Limiter};
use crate::seed::{self, SeedConfig};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use tokio::time::Instant;

/// Configuration of an emulated amoCRM account and its one integration.
#[derive(Debug, Clone)]
pub struct AmoConfig {
    /// What data to generate.
    pub seed: SeedConfig,
    /// Account subdomain: the `referer` is `{subdomain}.amocrm.ru`.
    pub subdomain: String,
    /// Account id.
    pub account_id: u64,
    /// The integration's id (`client_id`, a UUID; the JWT `aud`).
    pub client_id: String,
    /// The integration's secret.
    pub client_secret: String,
    /// The integration's redirect URI (where `/oauth` sends the code).
    pub redirect_uri: String,
    /// Access token lifetime in seconds (amoCRM: 86400; may be 1 for expiry tests).
    pub access_token_ttl_secs: u64,
    /// Requests per second per integration (amoCRM: 7); `0` = unlimited.
    pub rate_limit_per_sec: u32,
    /// More than this many 429s within 60 s block the integration (sticky 403); `0` = never.
    pub block_after_violations: u32,
    /// Fault injection.
    pub faults: FaultConfig,
    /// `customers_mode` of the account (`disabled`, `periodicity`, `segments`, `unavailable`).
    pub customers_mode: String,
    /// In customers mode, whether the generated history holds a customer (with its purchases)
    /// for every periodic buyer (`true` by default); `false` starts with no customers, for
    /// tests that count the customers an integration creates.
    pub history_customers: bool,
    /// A long-lived token (private integrations) accepted as Bearer without expiry.
    pub long_lived_token: Option<String>,
    /// Outgoing webhook delivery (timeout, retry schedule, duplicates, drops, delays).
    pub delivery: DeliveryConfig,
    /// Seconds added to the emulator's clock for data changes (records' `created_at` /
    /// `updated_at`, events): a CRM whose clock runs ahead (positive) or behind (negative) the
    /// client's.
    pub clock_offset_secs: i64,
}

impl Default for AmoConfig {
    /// The default dataset, subdomain `rebuy-demo`, 7 requests/s, block after 20 violations,
    /// 24 h tokens, no faults, customers mode `disabled`.
    fn default() -> Self {
        Self {
            seed: SeedConfig::default(),
            subdomain: "rebuy-demo".into(),
            account_id: 31_000_001,
            client_id: "5a1f3c4e-8d2b-4e6f-9a7c-1b2d3e4f5a6b".into(),
            client_secret: "emulator-client-secret-0123456789abcdefghijklmnopqrstuvwxyz".into(),
            redirect_uri: "https://rebuy.example/oauth/amocrm/callback".into(),
            access_token_ttl_secs: 86_400,
            rate_limit_per_sec: 7,
            block_after_violations: 20,
            faults: FaultConfig::default(),
            customers_mode: "disabled".into(),
            history_customers: true,
            long_lived_token: None,
            delivery: DeliveryConfig::default(),
            clock_offset_secs: 0,
        }
    }
}

/// Traffic counters of an emulator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AmoStats {
    /// Requests seen (inspection endpoints excluded).
    pub requests: u64,
    /// 2xx answers (204 included).
    pub ok: u64,
    /// 204 answers.
    pub no_content_204: u64,
    /// 429 answers (rate limit and injected).
    pub rate_limited_429: u64,
    /// 403 answers of a blocked integration.
    pub blocked_403: u64,
    /// 401 answers (API and token endpoint).
    pub unauthorized_401: u64,
    /// 400 answers.
    pub bad_request_400: u64,
    /// Injected faults (5xx, extra 429, slow, drop, malformed).
    pub faults_injected: u64,
    /// Successful `authorization_code` grants.
    pub token_grants: u64,
    /// Successful `refresh_token` grants.
    pub token_refreshes: u64,
    /// Whether the integration is blocked now.
    pub blocked: bool,
    /// Requests per endpoint (`"GET /api/v4/leads"`).
    pub by_endpoint: BTreeMap<String, u64>,
}

pub(crate) struct Inner {
    cfg: AmoConfig,
    data: RwLock<AmoData>,
    oauth: Mutex<oauth::OAuthState>,
    limiter: Mutex<Limiter>,
    faults: Mutex<(FaultConfig, FaultPicker)>,
    stats: Mutex<AmoStats>,
    writes: Mutex<Writes>,
    started: Instant,
    request_seq: AtomicU64,
    /// Bumped on every write-lock: page cursors of older versions are stale.
    version: AtomicU64,
    cursors: Mutex<std::collections::HashMap<String, api::PageCursor>>,
    /// Outgoing webhooks.
    delivery: Delivery,
    /// API path prefixes this integration's user has no rights to (403).
    denied: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, AmoData> {
        self.data.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The write lock; releasing it sends the webhooks of the changes made under it.
    fn write(&self) -> webhooks::WriteGuard<'_> {
        let guard = self.data.write().unwrap_or_else(|e| e.into_inner());
        self.version.fetch_add(1, Ordering::SeqCst);
        webhooks::WriteGuard::new(guard, self)
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    fn cursors(&self) -> MutexGuard<'_, std::collections::HashMap<String, api::PageCursor>> {
        lock(&self.cursors)
    }

    /// The emulator's clock for data changes (unix seconds), with the configured offset.
    fn now(&self) -> i64 {
        let wall = jiff::Timestamp::now().as_second();
        let seeded = self.cfg.seed.now.as_second() + self.started.elapsed().as_secs() as i64;
        wall.max(seeded) + self.cfg.clock_offset_secs
    }

    fn record_writes(&self, f: impl FnOnce(&mut Writes)) {
        f(&mut lock(&self.writes));
    }
}

/// An emulated amoCRM account. Cheap to clone (shared state).
#[derive(Clone)]
pub struct AmoEmulator(Arc<Inner>);

impl std::fmt::Debug for AmoEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmoEmulator")
            .field("subdomain", &self.0.cfg.subdomain)
            .finish_non_exhaustive()
    }
}

impl AmoEmulator {
    /// Generates the data and builds the emulator (no socket yet).
    pub fn new(cfg: AmoConfig) -> Self {
        let ds = seed::generate(&cfg.seed);
        let account = AmoAccount {
            id: cfg.account_id,
            name: format!("{} (эмулятор rebuy)", cfg.subdomain),
            subdomain: cfg.subdomain.clone(),
            currency: "RUB".into(),
            customers_mode: cfg.customers_mode.clone(),
            created_at: cfg.seed.start.as_second(),
            current_user_id: state::admin_of(&ds),
        };
        let data = AmoData::from_dataset(&ds, account, cfg.seed.seed, cfg.history_customers);
        let inner = Inner {
            oauth: Mutex::new(oauth::OAuthState::new(cfg.seed.seed)),
            limiter: Mutex::new(Limiter::new(
                cfg.rate_limit_per_sec,
                cfg.block_after_violations,
            )),
            faults: Mutex::new((cfg.faults.clone(), FaultPicker::new(cfg.seed.seed))),
            stats: Mutex::new(AmoStats::default()),
            writes: Mutex::new(Writes::default()),
            data: RwLock::new(data),
            started: Instant::now(),
            request_seq: AtomicU64::new(1),
            version: AtomicU64::new(0),
            cursors: Mutex::new(Default::default()),
            delivery: Delivery::new(cfg.delivery.clone(), true, webhooks::USER_AGENT),
            denied: Mutex::new(Vec::new()),
            cfg,
        };
        Self(Arc::new(inner))
    }

    /// The configuration this emulator was built with.
    pub fn config(&self) -> &AmoConfig {
        &self.0.cfg
    }

    /// The HTTP routes, with the gate (block, rate limit, faults, auth) applied.
    pub fn router(&self) -> Router {
        let st = self.0.clone();
        let mut r = Router::new();
        // Notes, links and tags of every entity (static entity names: `/api/v4/leads/{id}`
        // shares the segment).
        for e in ["leads", "contacts", "companies", "customers"] {
            r = r
                .route(
                    &format!("/api/v4/{e}/notes"),
                    get(entities::list_notes).post(entities::create_notes),
                )
                .route(
                    &format!("/api/v4/{e}/{{id}}/notes"),
                    get(entities::list_entity_notes).post(entities::create_entity_notes),
                )
                .route(&format!("/api/v4/{e}/link"), post(entities::link_mass))
                .route(
                    &format!("/api/v4/{e}/{{id}}/link"),
                    post(entities::link_one),
                )
                .route(
                    &format!("/api/v4/{e}/{{id}}/links"),
                    get(entities::links_of),
                )
                .route(
                    &format!("/api/v4/{e}/tags"),
                    get(entities::list_tags).post(entities::create_tags),
                );
        }
        r.route("/oauth", get(oauth::authorize))
            .route("/oauth/", get(oauth::authorize))
            .route("/oauth2/access_token", post(oauth::token))
            .route(
                "/oauth2/account/current/subdomain",
                get(oauth::current_subdomain),
            )
            .route("/api/v4/account", get(api::account))
            .route("/api/v4/users", get(api::users))
            .route("/api/v4/users/{id}", get(api::user))
            .route("/api/v4/leads/pipelines", get(api::pipelines))
            .route("/api/v4/leads/pipelines/{id}", get(api::pipeline))
            .route("/api/v4/leads/pipelines/{id}/statuses", get(api::statuses))
            .route(
                "/api/v4/leads/custom_fields",
                get(api::lead_fields).post(customers::create_fields),
            )
            .route(
                "/api/v4/contacts/custom_fields",
                get(api::contact_fields).post(customers::create_fields),
            )
            .route(
                "/api/v4/companies/custom_fields",
                get(api::company_fields).post(customers::create_fields),
            )
            .route(
                "/api/v4/customers/custom_fields",
                get(api::customer_fields).post(customers::create_fields),
            )
            .route(
                "/api/v4/customers",
                get(customers::list)
                    .post(customers::create)
                    .patch(customers::patch),
            )
            .route("/api/v4/customers/statuses", get(customers::statuses))
            .route("/api/v4/customers/statuses/{id}", get(customers::status))
            .route("/api/v4/customers/mode", patch(customers::set_mode))
            .route(
                "/api/v4/customers/transactions",
                get(customers::all_transactions),
            )
            .route(
                "/api/v4/customers/{id}/transactions",
                get(customers::transactions).post(customers::create_transactions),
            )
            .route(
                "/api/v4/customers/{id}",
                get(customers::get_one).patch(customers::patch_one),
            )
            .route(
                "/api/v4/leads",
                get(api::leads)
                    .post(writes::create_leads)
                    .patch(writes::patch_leads),
            )
            .route("/api/v4/leads/complex", post(writes::create_complex))
            .route(
                "/api/v4/leads/{id}",
                get(api::lead).patch(writes::patch_lead),
            )
            .route(
                "/api/v4/contacts",
                get(api::contacts)
                    .post(entities::create_contacts)
                    .patch(writes::patch_contacts),
            )
            .route(
                "/api/v4/contacts/{id}",
                get(api::contact).patch(writes::patch_contact),
            )
            .route(
                "/api/v4/companies",
                get(api::companies)
                    .post(entities::create_companies)
                    .patch(writes::patch_companies),
            )
            .route("/api/v4/companies/{id}", get(api::company))
            .route("/api/v4/catalogs", get(api::catalogs))
            .route("/api/v4/catalogs/{id}/elements", get(api::catalog_elements))
            .route(
                "/api/v4/tasks",
                get(api::tasks)
                    .post(writes::create_tasks)
                    .patch(writes::patch_tasks),
            )
            .route("/api/v4/tasks/{id}", get(api::task))
            .route("/api/v4/events", get(api::events))
            .route(
                "/api/v4/webhooks",
                get(webhooks::list)
                    .post(webhooks::create)
                    .delete(webhooks::delete),
            )
            .route("/_emulator/writes", get(inspect_writes))
            .route("/_emulator/unblock", post(inspect_unblock))
            .route("/_emulator/stats", get(inspect_stats))
            .route(
                "/_emulator/authorization_code",
                get(inspect_code).post(inspect_code),
            )
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(st.clone(), gate))
            .with_state(st)
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Serves over HTTPS with `tls`'s certificate on `listener` until `shutdown` completes;
    /// plain HTTP on that port gets nginx's "plain HTTP request was sent to HTTPS port".
    pub async fn serve_tls(
        self,
        listener: tokio::net::TcpListener,
        tls: &crate::tls::SelfSigned,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = tls.listen(listener, crate::tls::PlainHttp::Nginx)?;
        let router = self.router().layer(axum::Extension(api::Https));
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Generates the data, binds `127.0.0.1:0` and serves in a background task.
    pub async fn spawn(cfg: AmoConfig) -> std::io::Result<RunningAmo> {
        Self::new(cfg).start().await
    }

    /// Binds `127.0.0.1:0` and serves this emulator in a background task.
    pub async fn start(self) -> std::io::Result<RunningAmo> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let emulator = self.clone();
        let task = tokio::spawn(self.serve(listener, async {
            let _ = rx.await;
        }));
        Ok(RunningAmo {
            base_url: format!("http://{addr}"),
            addr,
            emulator,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Issues an authorization code as if a user consented in the amoCRM window (for tests,
    /// the demo and `rebuy auth` automation). Valid 20 minutes, single use.
    pub fn issue_authorization_code(&self) -> String {
        lock(&self.0.oauth).issue_code()
    }

    /// Makes every access token issued so far expire now (their JWT `exp` is unchanged, as
    /// when a token is revoked server-side).
    pub fn expire_access_tokens(&self) {
        lock(&self.0.oauth).expire_all();
    }

    /// The account disconnects the integration (as amoCRM does before it calls the
    /// integration's disconnect hook): access tokens stop working, refresh tokens are revoked.
    pub fn disconnect_integration(&self) {
        lock(&self.0.oauth).revoke_all();
    }

    /// Replaces the fault mix.
    pub fn set_faults(&self, f: FaultConfig) {
        lock(&self.0.faults).0 = f;
    }

    /// Takes rights away: API paths starting with one of `prefixes` (`/api/v4/companies`)
    /// answer 403 with amoCRM's problem body, as for a user without access to that entity.
    pub fn set_denied(&self, prefixes: &[&str]) {
        *lock(&self.0.denied) = prefixes.iter().map(|p| (*p).to_owned()).collect();
    }

    /// Changes the rate limit (`0` = unlimited); the bucket starts full.
    pub fn set_rate_limit(&self, per_sec: u32) {
        lock(&self.0.limiter).set_rate(per_sec);
    }

    /// A copy of the traffic counters.
    pub fn stats(&self) -> AmoStats {
        let mut s = lock(&self.0.stats).clone();
        s.blocked = lock(&self.0.limiter).is_blocked();
        s
    }

    /// Lifts a block (what amoCRM support does on request) and forgets past violations; also
    /// `POST /_emulator/unblock`.
    pub fn reset_block(&self) {
        lock(&self.0.limiter).reset_block();
    }

    /// Runs `f` on the emulator's records (for exact-equality tests). Do not call the emulator
    /// from inside `f`.
    pub fn with_data<R>(&self, f: impl FnOnce(&AmoData) -> R) -> R {
        f(&self.0.read())
    }

    /// The emulator's clock for data changes (unix seconds): `max(wall clock, seed.now +
    /// uptime)`.
    pub fn now(&self) -> i64 {
        self.0.now()
    }

    /// A copy of the writes received through the API.
    pub fn writes(&self) -> Writes {
        lock(&self.0.writes).clone()
    }

    /// Changes a lead as a manager would in the CRM: price and/or (pipeline, status). Bumps
    /// `updated_at` and records events. Returns `false` when the lead does not exist or the
    /// status is not in the pipeline.
    pub fn update_lead(&self, id: u64, price: Option<i64>, status: Option<(u64, u64)>) -> bool {
        let now = self.0.now();
        let mut d = self.0.write();
        let Some(lead) = d.leads.get(&id) else {
            return false;
        };
        let by = lead.responsible_user_id;
        if let Some((p, s)) = status
            && !d.status_valid(p, s)
        {
            return false;
        }
        if let Some(new_price) = price {
            let old = lead.price;
            if let Some(l) = d.leads.get_mut(&id) {
                l.price = new_price;
            }
            if old != new_price {
                d.event(
                    "sale_field_changed",
                    id,
                    "lead",
                    by,
                    now,
                    json!([{"sale_field_value": {"sale": new_price}}]),
                    json!([{"sale_field_value": {"sale": old}}]),
                );
            }
        }
        if let Some((p, s)) = status {
            d.move_lead(id, p, s, now, by);
        }
        d.touch_lead(id, now, by);
        true
    }

    /// Renames a contact as a manager would. Returns `false` when it does not exist.
    pub fn update_contact_name(&self, id: u64, name: &str) -> bool {
        let now = self.0.now();
        let mut d = self.0.write();
        let Some(c) = d.contacts.get_mut(&id) else {
            return false;
        };
        let old = std::mem::replace(&mut c.name, name.to_owned());
        let by = c.responsible_user_id;
        d.event(
            "name_field_changed",
            id,
            "contact",
            by,
            now,
            json!([{"name_field_value": {"name": name}}]),
            json!([{"name_field_value": {"name": old}}]),
        );
        d.touch_contact(id, now, by);
        true
    }

    /// Deletes a lead (as from the UI; the v4 API has no DELETE) and records `lead_deleted`.
    /// Returns `false` when it does not exist.
    pub fn delete_lead(&self, id: u64) -> bool {
        let now = self.0.now();
        let mut d = self.0.write();
        let Some(lead) = d.remove_lead(id) else {
            return false;
        };
        d.event(
            "lead_deleted",
            id,
            "lead",
            lead.responsible_user_id,
            now,
            json!([]),
            json!([]),
        );
        true
    }

    /// Deletes a contact and records `contact_deleted`. Its leads stay, without the link.
    pub fn delete_contact(&self, id: u64) -> bool {
        let now = self.0.now();
        let mut d = self.0.write();
        let Some(c) = d.contacts.remove(&id) else {
            return false;
        };
        d.idx.contact_updated.remove(&(c.updated_at, id));
        if let Some(co) = c.company_id
            && let Some(v) = d.idx.company_contacts.get_mut(&co)
        {
            v.retain(|&x| x != id);
        }
        let leads = d.idx.contact_leads.remove(&id).unwrap_or_default();
        for l in leads {
            if let Some(lead) = d.leads.get_mut(&l) {
                lead.contacts.retain(|c| c.id != id);
            }
            d.touch_lead(l, now, c.responsible_user_id);
        }
        d.event(
            "contact_deleted",
            id,
            "contact",
            c.responsible_user_id,
            now,
            json!([]),
            json!([]),
        );
        true
    }

    /// Adds a lead for a contact (as a manager would) and records `lead_added`. Returns its
    /// id, or `None` when the contact does not exist or the status is not in the pipeline.
    pub fn add_lead(
        &self,
        contact_id: u64,
        price: i64,
        pipeline_id: u64,
        status_id: u64,
    ) -> Option<u64> {
        let now = self.0.now();
        let mut d = self.0.write();
        let contact = d.contacts.get(&contact_id)?;
        let (by, company_id) = (contact.responsible_user_id, contact.company_id);
        if !d.status_valid(pipeline_id, status_id) {
            return None;
        }
        let id = d.new_id();
        let closed = status_id == STATUS_WON || status_id == STATUS_LOST;
        d.insert_lead(AmoLead {
            id,
            name: format!("Сделка #{id}"),
            price,
            responsible_user_id: by,
            status_id,
            pipeline_id,
            created_by: by,
            updated_by: by,
            created_at: now,
            updated_at: now,
            closed_at: closed.then_some(now),
            custom_fields: vec![],
            tags: vec![],
            contacts: vec![AmoLeadContact {
                id: contact_id,
                is_main: true,
            }],
            company_id,
            products: vec![],
        });
        d.event(
            "lead_added",
            id,
            "lead",
            by,
            now,
            json!([{"lead_status": {"id": status_id, "pipeline_id": pipeline_id}}]),
            json!([]),
        );
        Some(id)
    }

    /// Simulates the period `[from, to)` (unix seconds) of [`crate::answers::AnswerSim`]:
    /// managers complete open tasks due in it (as a PATCH would: `task_completed` events),
    /// customers buy (won leads in the main pipeline, dated in the period, `lead_added`
    /// events; `updated_at` is the emulator's clock so incremental syncs see them).
    pub fn simulate_answers(
        &self,
        from: i64,
        to: i64,
        sim: &crate::answers::AnswerSim,
    ) -> crate::answers::AnswerReport {
        let now = self.0.now();
        let mut rng = crate::rng::Rng::new(sim.seed ^ from as u64);
        let mut report = crate::answers::AnswerReport::default();
        let mut d = self.0.write();
        let main_contact = |d: &AmoData, lead: u64| {
            d.leads.get(&lead).and_then(|l| {
                l.contacts
                    .iter()
                    .find(|c| c.is_main)
                    .or(l.contacts.first())
                    .map(|c| c.id)
            })
        };
        let due: Vec<u64> = d
            .tasks
            .values()
            .filter(|t| !t.is_completed && t.complete_till >= from && t.complete_till < to)
            .map(|t| t.id)
            .collect();
        let mut answered = std::collections::BTreeSet::new();
        for id in due {
            if !rng.chance(sim.completion) {
                continue;
            }
            let Some(t) = d.tasks.get_mut(&id) else {
                continue;
            };
            t.is_completed = true;
            t.result_text = Some("Клиент ответил".into());
            t.updated_at = now;
            let (by, entity_type, entity_id) =
                (t.responsible_user_id, t.entity_type.clone(), t.entity_id);
            d.event(
                "task_completed",
                id,
                "task",
                by,
                now,
                json!([{"task_status": {"is_completed": true}}]),
                json!([]),
            );
            report.completed += 1;
            let contact = match (entity_type.as_deref(), entity_id) {
                (Some("leads"), Some(l)) => main_contact(&d, l),
                (Some("contacts"), Some(c)) => Some(c),
                _ => None,
            };
            if let Some(c) = contact {
                answered.insert(c);
            }
        }
        report.answered = answered.len() as u64;
        let customers: std::collections::BTreeSet<u64> = d
            .leads
            .values()
            .filter(|l| l.status_id == STATUS_WON)
            .filter_map(|l| main_contact(&d, l.id))
            .filter(|c| d.contacts.contains_key(c))
            .collect();
        let Some(pipeline) = d.pipelines.values().find(|p| p.is_main).map(|p| p.id) else {
            return report;
        };
        for c in customers {
            let touched = answered.contains(&c);
            let p = sim.base_probability + if touched { sim.uplift } else { 0.0 };
            if !rng.chance(p) {
                continue;
            }
            let at = rng.range(from, to - 1);
            let Some(contact) = d.contacts.get(&c) else {
                continue;
            };
            let (by, company_id) = (contact.responsible_user_id, contact.company_id);
            let id = d.new_id();
            d.insert_lead(AmoLead {
                id,
                name: format!("Сделка #{id}"),
                price: sim.amount,
                responsible_user_id: by,
                status_id: STATUS_WON,
                pipeline_id: pipeline,
                created_by: by,
                updated_by: by,
                created_at: at,
                updated_at: now,
                closed_at: Some(at),
                custom_fields: vec![],
                tags: vec![],
                contacts: vec![AmoLeadContact {
                    id: c,
                    is_main: true,
                }],
                company_id,
                products: vec![],
            });
            d.event(
                "lead_added",
                id,
                "lead",
                by,
                now,
                json!([{"lead_status": {"id": STATUS_WON, "pipeline_id": pipeline}}]),
                json!([]),
            );
            report.purchases += 1;
            report.purchases_answered += u64::from(touched);
        }
        report
    }

    /// Subscribes `destination` to the changes whose codes are in `settings` (`add_lead`,
    /// `status_lead`, ...), as `POST /api/v4/webhooks` does (the same destination again
    /// replaces its settings). Every later change is POSTed there in amoCRM's webhook format.
    pub fn register_webhook(&self, destination: &str, settings: &[&str]) {
        let now = self.0.now();
        let settings = settings.iter().map(|s| (*s).to_owned()).collect();
        webhooks::subscribe(&mut self.0.write(), destination, settings, 1, now);
    }

    /// Replaces the webhook delivery settings (faults, delays, retry schedule) for later
    /// deliveries.
    pub fn set_delivery(&self, cfg: DeliveryConfig) {
        self.0.delivery.set_config(cfg);
    }

    /// A copy of the webhook delivery counters.
    pub fn delivery_stats(&self) -> DeliveryStats {
        self.0.delivery.stats()
    }
}

/// An emulator serving in a background task. Dropping it stops the server and the
/// emulator's webhook deliveries (pending ones and retries are abandoned).
#[derive(Debug)]
pub struct RunningAmo {
    /// `http://127.0.0.1:{port}`: the account base URL (use it where the real one would be
    /// `https://{subdomain}.amocrm.ru`).
    pub base_url: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// The emulator, for inspection and mutations.
    pub emulator: AmoEmulator,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningAmo {
    /// Stops the server and waits for it (open keep-alive connections are closed).
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => match tokio::time::timeout(std::time::Duration::from_secs(2), task).await
            {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(std::io::Error::other(e)),
                Err(_) => Ok(()), // idle keep-alive connections held it open; the drop aborts it
            },
            None => Ok(()),
        }
    }
}

impl Drop for RunningAmo {
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

/// `rebuy emulate amocrm`: generates the data, serves on `127.0.0.1:{port}` (0 = any free
/// port), prints the base URL, the integration's credentials and a fresh authorization code,
/// and runs until Ctrl-C.
///
/// With `tls`, it serves HTTPS with a certificate generated now, written (PEM) to the given
/// path, which the banner names. The user lacks access to the paths in `deny`.
pub async fn run_amocrm(
    cfg: AmoConfig,
    port: u16,
    tls: Option<&std::path::Path>,
    deny: &[String],
) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let emulator = AmoEmulator::new(cfg);
    let (contacts, leads) = emulator.with_data(|d| (d.contacts.len(), d.leads.len()));
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
    println!("amoCRM emulator listening on {scheme}://{addr}");
    println!(
        "  account:        {} ({}.amocrm.ru), id {}",
        c.subdomain, c.subdomain, c.account_id
    );
    println!(
        "  data:           {contacts} contacts, {leads} leads (seed {}, generated in {:.1?})",
        c.seed.seed,
        started.elapsed()
    );
    println!("  history:        {}", c.seed.period_line());
    println!("  client_id:      {}", c.client_id);
    println!("  client_secret:  {}", c.client_secret);
    println!("  redirect_uri:   {}", c.redirect_uri);
    println!("  auth code:      {}", emulator.issue_authorization_code());
    println!(
        "                  (valid 20 min, single use; POST {scheme}://{addr}/_emulator/authorization_code for another)"
    );
    if let Some(t) = &c.long_lived_token {
        println!("  long-lived token: {t}");
    }
    println!("  customers mode: {}", c.customers_mode);
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
        "  block:          after {} 429s within 60 s (0 = never); POST {scheme}://{addr}/_emulator/unblock lifts it",
        c.block_after_violations
    );
    println!(
        "  rate limit:     {} req/s (0 = unlimited); writes at {scheme}://{addr}/_emulator/writes",
        c.rate_limit_per_sec
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match cert {
        Some((cert, _)) => emulator.serve_tls(listener, &cert, ctrl_c).await,
        None => emulator.serve(listener, ctrl_c).await,
    }
}

/// The gate every request passes (see the module docs for the order).
async fn gate(State(st): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with("/_emulator/") {
        return next.run(req).await;
    }
    let endpoint = format!(
        "{} {}",
        req.method(),
        req.extensions()
            .get::<MatchedPath>()
            .map_or("(unmatched)", |m| m.as_str())
    );
    let is_api = path.starts_with("/api/v4/") || path == "/api/v4";
    let admission = {
        let mut l = lock(&st.limiter);
        if is_api { l.admit() } else { l.check_block() }
    };
    let mut faulted = false;
    let mut resp = match admission {
        Admission::Blocked => error::forbidden_blocked(),
        Admission::RateLimited => error::too_many_requests(),
        Admission::Allowed if is_api => {
            let fault = {
                let mut f = lock(&st.faults);
                let (cfg, picker) = &mut *f;
                picker.pick(cfg)
            };
            faulted = fault != Fault::None;
            serve_api(&st, fault, req, next).await
        }
        Admission::Allowed => next.run(req).await,
    };
    if is_api {
        let id = st.request_seq.fetch_add(1, Ordering::Relaxed);
        if let Ok(v) = HeaderValue::from_str(&format!("{id:016x}")) {
            resp.headers_mut().insert("x-request-id", v);
        }
    }
    let status = resp.status();
    let mut s = lock(&st.stats);
    s.requests += 1;
    *s.by_endpoint.entry(endpoint).or_default() += 1;
    if faulted {
        s.faults_injected += 1;
    }
    match status.as_u16() {
        200..=299 => {
            s.ok += 1;
            if status == StatusCode::NO_CONTENT {
                s.no_content_204 += 1;
            }
        }
        400 => s.bad_request_400 += 1,
        401 => s.unauthorized_401 += 1,
        403 => s.blocked_403 += 1,
        429 => s.rate_limited_429 += 1,
        _ => {}
    }
    resp
}

async fn serve_api(st: &Arc<Inner>, fault: Fault, req: Request, next: Next) -> Response {
    match fault {
        Fault::ServerError { status, json } => return error::gateway_error(status, json),
        Fault::Extra429 => return error::too_many_requests(),
        Fault::Slow(d) => tokio::time::sleep(d).await,
        _ => {}
    }
    if let Err(e) = oauth::check_bearer(st, req.headers()) {
        return e.into_response();
    }
    let path = req.uri().path();
    if lock(&st.denied)
        .iter()
        .any(|p| path.starts_with(p.as_str()))
    {
        return error::problem(403, "Forbidden", "Access denied");
    }
    let is_read = req.method() == Method::GET;
    match fault {
        // A read is served normally under a drop after the write.
        Fault::DropAfterWrite if is_read => next.run(req).await,
        Fault::Drop | Fault::DropAfterWrite => {
            let head: Bytes = if is_read || fault == Fault::DropAfterWrite {
                let resp = next.run(req).await;
                let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap_or_default();
                body.slice(..body.len() / 2)
            } else {
                Bytes::from_static(b"{\"_links\":{\"self\":")
            };
            let stream = futures::stream::iter([
                Ok::<Bytes, std::io::Error>(head),
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "emulated dropped connection",
                )),
            ]);
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(error::HAL_JSON),
            );
            r
        }
        Fault::Malformed => {
            let (status, body) = if is_read {
                let resp = next.run(req).await;
                let status = resp.status();
                let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .unwrap_or_default();
                (status, body)
            } else {
                (
                    StatusCode::OK,
                    Bytes::from_static(
                        b"{\"_links\":{\"self\":{\"href\":\"/api/v4\"}},\"_embedded\":{}}",
                    ),
                )
            };
            // A 204 has no body to truncate; send a broken body with 200 instead.
            let (status, body) = if body.is_empty() {
                (StatusCode::OK, Bytes::from_static(b"{\"_page\":"))
            } else {
                (status, body)
            };
            let cut = body.slice(..(body.len() / 2).max(1));
            let mut r = Response::new(Body::from(cut));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(error::HAL_JSON),
            );
            r
        }
        _ => next.run(req).await,
    }
}

/// A known path asked with an HTTP method it does not serve (`DELETE /api/v4/leads`): 405 as
/// problem+json like every v4 error (axum adds the `Allow` header).
async fn method_not_allowed(method: axum::http::Method) -> Response {
    error::problem(
        405,
        "Method Not Allowed",
        &format!("Method {method} is not allowed for this resource"),
    )
}

async fn not_found() -> Response {
    error::problem(404, "Not Found", "Not Found")
}

async fn inspect_writes(State(st): State<Arc<Inner>>) -> Response {
    let w = lock(&st.writes).clone();
    error::json_response(
        StatusCode::OK,
        "application/json",
        &serde_json::to_value(w).unwrap_or_default(),
    )
}

async fn inspect_stats(State(st): State<Arc<Inner>>) -> Response {
    let mut s = lock(&st.stats).clone();
    s.blocked = lock(&st.limiter).is_blocked();
    error::json_response(
        StatusCode::OK,
        "application/json",
        &serde_json::to_value(s).unwrap_or_default(),
    )
}

/// `POST /_emulator/unblock`: what amoCRM support does for a blocked integration.
async fn inspect_unblock(State(st): State<Arc<Inner>>) -> Response {
    let was = {
        let mut l = lock(&st.limiter);
        let was = l.is_blocked();
        l.reset_block();
        was
    };
    error::json_response(
        StatusCode::OK,
        "application/json",
        &json!({"unblocked": was, "blocked": false}),
    )
}

async fn inspect_code(State(st): State<Arc<Inner>>) -> Response {
    let code = lock(&st.oauth).issue_code();
    let c = &st.cfg;
    error::json_response(
        StatusCode::OK,
        "application/json",
        &json!({"code": code, "referer": format!("{}.amocrm.ru", c.subdomain), "client_id": c.client_id, "expires_in": 1200}),
    )
}
