//! OAuth endpoints of `rebuy serve`: `/oauth/{portal}/start` redirects a person to the CRM's
//! consent page with a random single-use `state` kept in the portal's store;
//! `/oauth/{portal}/callback` checks that state (once: a replayed or unknown state is refused),
//! exchanges the code, commits the tokens, and answers with a page that says what happened.
use super::AppState;
use super::error::AppError;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use jiff::{SignedDuration, Timestamp};
use std::collections::{BTreeMap, HashMap};

/// Meta key of the pending OAuth states (state -> issued at).
const KEY_OAUTH_STATES: &str = "oauth_states";
/// How long a state stays valid (amoCRM codes live 20 minutes).
const STATE_TTL: SignedDuration = SignedDuration::from_mins(20);

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>rebuy: {t}</title></head>\
         <body><h1>{t}</h1><p>{x}</p></body></html>",
        t = esc(title),
        x = esc(text)
    );
    (status, Html(body)).into_response()
}

/// `GET /oauth/{portal}/start`.
pub async fn start(
    State(state): State<AppState>,
    Path(portal): Path<String>,
) -> Result<Response, AppError> {
    let p = state
        .portal(&portal)
        .ok_or_else(|| AppError::unknown_portal(&portal))?
        .clone();
    if !matches!(p.cfg.auth, crate::config::AuthConfig::OAuth { .. }) {
        return Err(AppError::bad_request(format!(
            "portal {portal} does not use OAuth"
        )));
    }
    let st = crate::cli::random_state();
    let url = crate::portal::authorize_url(&p.cfg, &st)
        .map_err(|e| AppError::bad_request(e.to_string()))?;
    let store = p.store.clone();
    let issued = st.clone();
    tokio::task::spawn_blocking(move || {
        store.write(|w| {
            let now = Timestamp::now();
            let mut states: BTreeMap<String, Timestamp> =
                w.get_meta(KEY_OAUTH_STATES)?.unwrap_or_default();
            states.retain(|_, at| now.duration_since(*at) < STATE_TTL);
            states.insert(issued, now);
            w.set_meta(KEY_OAUTH_STATES, &states)
        })
    })
    .await
    .map_err(|e| AppError::unavailable(e.to_string()))?
    .map_err(|e| AppError::unavailable(e.to_string()))?;
    Ok((StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response())
}

/// `GET /oauth/{portal}/callback?code=..&state=..`.
pub async fn callback(
    State(state): State<AppState>,
    Path(portal): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let p = state
        .portal(&portal)
        .ok_or_else(|| AppError::unknown_portal(&portal))?
        .clone();
    let (Some(code), Some(st)) = (q.get("code").cloned(), q.get("state").cloned()) else {
        return Ok(page(
            StatusCode::BAD_REQUEST,
            "Authorization failed",
            "The CRM did not send a code and a state.",
        ));
    };
    // Take the state out in the same transaction that checks it: it works once.
    let store = p.store.clone();
    let valid = tokio::task::spawn_blocking(move || {
        store.write(|w| {
            let now = Timestamp::now();
            let mut states: BTreeMap<String, Timestamp> =
                w.get_meta(KEY_OAUTH_STATES)?.unwrap_or_default();
            let ok = states
                .remove(&st)
                .is_some_and(|at| now.duration_since(at) < STATE_TTL);
            w.set_meta(KEY_OAUTH_STATES, &states)?;
            Ok(ok)
        })
    })
    .await
    .map_err(|e| AppError::unavailable(e.to_string()))?
    .map_err(|e| AppError::unavailable(e.to_string()))?;
    if !valid {
        tracing::warn!(portal = %portal, "OAuth callback with an unknown, expired or replayed state refused.");
        return Ok(page(
            StatusCode::FORBIDDEN,
            "Authorization refused",
            "This link is not valid: it was used already, it expired, or it was not issued by rebuy. Start again.",
        ));
    }
    match crate::portal::exchange_code(&p.cfg, &p.store, &code).await {
        Ok(_) => {
            tracing::info!(portal = %portal, "Portal authorised over OAuth.");
            Ok(page(
                StatusCode::OK,
                "Connected",
                &format!("Portal {portal} is connected to rebuy. You can close this page."),
            ))
        }
        Err(e) => Ok(page(
            StatusCode::BAD_GATEWAY,
            "Authorization failed",
            &format!("The CRM refused the code: {e}"),
        )),
    }
}
