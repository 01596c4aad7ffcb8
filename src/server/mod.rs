//! `rebuy serve`: the long-lived sidecar. Webhook receivers with a durable inbox, OAuth
//! endpoints, health and metrics.
//!
//! Flow position: the server feeds the same pipeline as the CLI: a webhook is committed to
//! the portal's inbox ([`inbox`]) before the CRM gets its 2xx, then the [`worker`] fetches the
//! entity, updates the cache and hands the change on.
//!
//! `router(state)` builds the whole app without a socket (tests call it directly); `serve`
//! runs it on a listener until the shutdown future resolves, then finishes in-flight requests.
pub mod error;
pub mod fuzz;
pub mod listen;
pub mod metrics;
pub mod oauth;
pub mod request;
pub mod runtime;
mod webhooks;
pub mod worker;

use crate::config::{Config, PortalConfig};
use crate::inbox::InboxWriter;
use crate::store::Store;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use rebuy_core::PortalId;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Notify;

/// Largest accepted webhook body (1 MiB); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// One portal as the server runs it.
#[derive(Clone)]
pub struct PortalRuntime {
    /// Its config.
    pub cfg: PortalConfig,
    /// Its store.
    pub store: Store,
    /// Its inbox writer.
    pub inbox: InboxWriter,
    /// Wakes its worker when events arrive.
    pub notify: Arc<Notify>,
    /// Wakes its scheduler to drain the outbox now (the dashboard's apply and retry): one
    /// drainer per portal, so an action is never sent twice by two concurrent drains.
    pub drain_now: Arc<Notify>,
    /// The plan waiting for the dashboard's Apply: the last dry run a person asked for, or the
    /// daily run's plan when it only plans (`auto_apply` off), whichever is newer.
    waiting_plan: Arc<std::sync::Mutex<Option<Arc<crate::server::DryRun>>>>,
    /// Its connector, opened once and shared by the scheduler and the dashboard (one rate
    /// limiter and one token refresher per portal).
    handle: Arc<std::sync::Mutex<Option<crate::portal::PortalHandle>>>,
}

impl PortalRuntime {
    /// A portal over an opened store, with its inbox writer started.
    pub fn new(cfg: PortalConfig, store: Store, durable_inbox: bool) -> Self {
        let notify = Arc::new(Notify::new());
        let inbox = InboxWriter::start(store.clone(), durable_inbox, notify.clone());
        PortalRuntime {
            cfg,
            store,
            inbox,
            notify,
            drain_now: Arc::new(Notify::new()),
            waiting_plan: Arc::default(),
            handle: Arc::default(),
        }
    }

    /// The plan waiting for Apply, if any.
    pub fn waiting_plan(&self) -> Option<Arc<crate::server::DryRun>> {
        self.waiting_plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps a plan for Apply, replacing the previous one.
    pub fn set_waiting_plan(&self, run: crate::server::DryRun) {
        *self.waiting_plan.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(run));
    }

    /// Takes the waiting plan if its id is `plan_id` (an apply consumes it).
    pub fn take_waiting_plan(&self, plan_id: &str) -> Option<Arc<crate::server::DryRun>> {
        let mut slot = self.waiting_plan.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some(r) if r.id == plan_id => slot.take(),
            _ => None,
        }
    }

    /// The portal's connector handle, opened on first use.
    pub fn handle(&self) -> Result<crate::portal::PortalHandle, rebuy_core::ConnectorError> {
        let mut slot = self.handle.lock().expect("portal handle lock");
        if let Some(h) = slot.as_ref() {
            return Ok(h.clone());
        }
        let h = crate::portal::open(&self.cfg, self.store.clone())?;
        *slot = Some(h.clone());
        Ok(h)
    }
}

/// Shared state of the server.
#[derive(Clone)]
pub struct AppState {
    /// Portals by id.
    pub portals: Arc<HashMap<PortalId, PortalRuntime>>,
    /// Prometheus rendering.
    pub metrics: metrics::Metrics,
    /// The dashboard's `[server.ui]` settings.
    pub ui: crate::config::UiConfig,
    /// The bearer token `/metrics` asks for on the main listener (`[server]
    /// metrics_token_env`); `None`: `/metrics` is 404 there.
    pub metrics_token: Option<secrecy::SecretString>,
    /// The listener's timeouts and connection cap (`[server]`).
    pub limits: listen::Limits,
    /// OAuth flows started and not yet called back.
    pub oauth: Arc<oauth::PendingStates>,
    /// The key of signed start links (`rebuy auth --link`); `None`: no link is accepted.
    pub link_key: Option<Arc<oauth::LinkKey>>,
}

impl AppState {
    /// Opens every portal's store and starts its inbox writer. `durable_inbox = false` is for
    /// the benchmark's upper bound only.
    pub fn new(cfg: &Config, durable_inbox: bool) -> Result<Self, crate::store::StoreError> {
        let mut portals = HashMap::new();
        for p in &cfg.portals {
            let store = Store::open(&cfg.data_dir, &p.id)?;
            portals.insert(
                p.id.clone(),
                PortalRuntime::new(p.clone(), store, durable_inbox),
            );
        }
        Ok(Self {
            portals: Arc::new(portals),
            metrics: metrics::Metrics::new(),
            ui: cfg.server.ui.clone(),
            metrics_token: cfg.server.metrics_token.clone(),
            limits: cfg.server.limits(),
            oauth: Arc::default(),
            link_key: match oauth::LinkKey::load_or_create(&cfg.data_dir) {
                Ok(k) => Some(Arc::new(k)),
                Err(e) => {
                    tracing::warn!(error = %e, "No OAuth start link key: signed start links are refused.");
                    None
                }
            },
        })
    }

    /// A portal by id.
    pub fn portal(&self, id: &str) -> Option<&PortalRuntime> {
        self.portals.get(&PortalId(id.to_owned()))
    }
}

/// The whole HTTP app.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/hooks/amocrm/{portal}/{secret}", post(webhooks::amocrm))
        .route(
            "/hooks/amocrm/{portal}/disconnect",
            get(webhooks::amocrm_disconnect),
        )
        .route("/hooks/bitrix24/{portal}", post(webhooks::bitrix24))
        .route("/oauth/{portal}/start", get(oauth::start))
        .route("/oauth/{portal}/callback", get(oauth::callback))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(webhooks::readyz))
        .route("/metrics", get(metrics::render_guarded))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, under the state's
/// [`listen::Limits`], with `dashboard` (when given) nested under `/ui`: the request timeout
/// covers the server's own routes, not the dashboard's (its dry runs may take longer); the
/// body timeout covers both. In-flight requests finish within the shutdown grace period.
///
/// The server does not know the dashboard: the binary composes the two (`crate::ui` builds its
/// router over the same [`AppState`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    dashboard: Option<Router>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits.clone();
    let mut app = router(state).layer(tower_http::timeout::TimeoutLayer::with_status_code(
        axum::http::StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    if let Some(ui) = dashboard {
        app = app.nest("/ui", ui);
    }
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ));
    listen::run(listener, app, limits, shutdown).await
}

impl AppState {
    /// A state over stores the caller already opened (a redb file opens once per process).
    pub fn from_stores(portals: Vec<(PortalConfig, Store)>, durable_inbox: bool) -> Self {
        let mut map = std::collections::HashMap::new();
        for (cfg, store) in portals {
            map.insert(
                cfg.id.clone(),
                PortalRuntime::new(cfg, store, durable_inbox),
            );
        }
        Self {
            portals: std::sync::Arc::new(map),
            metrics: metrics::Metrics::new(),
            ui: crate::config::UiConfig::default(),
            metrics_token: None,
            limits: Default::default(),
            oauth: Default::default(),
            link_key: None,
        }
    }
}

/// A dry-run plan computed by the touches page or by the server's daily run (when it only
/// plans), kept until it is applied or replaced.
#[derive(Debug)]
pub struct DryRun {
    /// Random id the apply form carries, so an apply is of the plan the person saw.
    pub id: String,
    /// The plan, or why it could not be made.
    pub plan: Result<crate::plan::Plan, String>,
    /// When it was computed.
    pub computed_at: jiff::Timestamp,
    /// Made by the server's daily run (`auto_apply` off), not by a person's Plan button.
    pub by_daily_run: bool,
}
