//! `/metrics` in the Prometheus text format. Counters and gauges are kept in the process-wide
//! `metrics` recorder; this module installs it once and renders it.
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

/// `GET /metrics`.
pub async fn render(State(state): State<super::AppState>) -> impl IntoResponse {
    for (id, p) in state.portals.iter() {
        if let Ok(depth) = p.store.inbox_depth() {
            ::metrics::gauge!("rebuy_inbox_depth", "portal" => id.0.clone()).set(depth as f64);
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
