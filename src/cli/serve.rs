//! `rebuy serve`: the server, its background tasks and the dashboard, composed here.

use super::*;

pub(super) async fn cmd_serve(cfg: Config) -> Result<()> {
    let state = rebuy::server::AppState::new(&cfg, true)?;
    let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.server.listen))?;
    tracing::info!(listen = %cfg.server.listen, portals = cfg.portals.len(), "Serving.");
    for (user, form) in cfg.server.ui.weak_passwords() {
        if let Some(w) = form.warning() {
            tracing::warn!(user = ?user, "Dashboard user: {w}.");
        }
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let tasks = rebuy::server::runtime::spawn_all(&state, &cfg.server, cancel.clone());
    let shutdown = {
        let cancel = cancel.clone();
        async move {
            shutdown_signal().await;
            tracing::info!(
                "Shutting down: finishing in-flight requests; the inbox keeps the rest."
            );
            cancel.cancel();
        }
    };
    // `/metrics` without a token on an address of its own, when configured (keep it internal).
    if let Some(addr) = &cfg.server.metrics_listen {
        let metrics_listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (server.metrics_listen)"))?;
        tracing::info!(listen = %addr, "Serving /metrics.");
        let app = rebuy::server::metrics::open_router(state.clone());
        let stop = cancel.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics_listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "The metrics listener failed.");
            }
        });
    }
    // The dashboard is on when `[server.ui]` (or REBUY_UI_USER / REBUY_UI_PASSWORD) gives it a
    // user (else /ui is 404).
    let dashboard = rebuy::ui::router_from_config(state.clone());
    rebuy::server::serve(listener, state, Some(dashboard), shutdown)
        .await
        .context("serving")?;
    cancel.cancel();
    tasks.wait().await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
