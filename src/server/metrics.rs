//! `/metrics` in the Prometheus text format. Counters and gauges are kept in the process-wide
//! `metrics` recorder; this module installs it once and renders it.
//!
//! The series name every portal, so `/metrics` is not public: on the main listener it asks for
//! `Authorization: Bearer <token>` (the token is read from the env var `[server]
//! metrics_token_env` names; compared in constant time), and without that key it is 404 there.
//! `[server] metrics_listen` serves it without a token on an address of its own (keep that one
//! internal).
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Handle on the process's Prometheus recorder.
#[derive(Clone)]
pub struct Metrics(Option<PrometheusHandle>);

impl Metrics {
    /// Installs the recorder on first use (tests may build many servers in one process).
    pub fn new() -> Self {
        static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
        Metrics(
            HANDLE
                .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
                .clone(),
        )
    }

    /// The text exposition.
    pub fn text(&self) -> String {
        self.0
            .as_ref()
            .map(PrometheusHandle::render)
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `GET /metrics` on the main listener: 401 without a bearer token, 403 with a wrong one, 404
/// when no `metrics_token_env` is configured.
pub async fn render_guarded(
    State(state): State<super::AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use secrecy::ExposeSecret;
    use subtle::ConstantTimeEq;
    let Some(expected) = &state.metrics_token else {
        return super::error::AppError::not_found(
            "metrics are not served on this address: set [server] metrics_token_env or metrics_listen",
        )
        .into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let Some(given) = given else {
        let mut r =
            super::error::AppError::unauthorized("metrics need a bearer token").into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
        return r;
    };
    let ok: bool = given
        .trim()
        .as_bytes()
        .ct_eq(expected.expose_secret().as_bytes())
        .into();
    if !ok {
        return super::error::AppError::forbidden("wrong metrics token").into_response();
    }
    render(State(state)).await.into_response()
}

/// The router of `[server] metrics_listen`: `/metrics` without a token, nothing else.
pub fn open_router(state: super::AppState) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(render))
        .with_state(state)
}

/// `GET /metrics`, unguarded (the `metrics_listen` address).
pub async fn render(State(state): State<super::AppState>) -> impl IntoResponse {
    for (id, p) in state.portals.iter() {
        if let Ok(depth) = p.store.inbox_depth() {
            ::metrics::gauge!("rebuy_inbox_depth", "portal" => id.0.clone()).set(depth as f64);
        }
        if let Ok(dead) = p.store.inbox_dead_count() {
            ::metrics::gauge!("rebuy_inbox_dead_letters", "portal" => id.0.clone())
                .set(dead as f64);
        }
        if let Ok(w) = crate::sync::last_warnings(&p.store) {
            ::metrics::gauge!("rebuy_sync_warnings", "portal" => id.0.clone())
                .set(w.warnings.len() as f64);
        }
        if let Ok(c) = p.store.outbox_counts() {
            ::metrics::gauge!("rebuy_outbox_pending", "portal" => id.0.clone())
                .set((c.pending + c.in_flight) as f64);
            ::metrics::gauge!("rebuy_outbox_failed", "portal" => id.0.clone()).set(c.failed as f64);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.text(),
    )
}
