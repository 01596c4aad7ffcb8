//! The webhook endpoints. Each checks, in order: the portal exists and runs on that CRM (404),
//! the credentials (401 missing / 403 wrong), the body (400 with the reason; 413 above 1 MiB is
//! the body-limit layer's), then commits the raw body to the portal's inbox and answers.
use super::error::AppError;
use super::inbox::{Accepted, InboxEvent, dedup_key};
use super::{AppState, PortalRuntime};
use crate::store::tables::KEY_ACCOUNT;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use jiff::Timestamp;
use rebuy_core::{Account, CrmKind};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// Meta key of the Bitrix24 application token received at install.
pub const KEY_APP_TOKEN: &str = "bitrix24_application_token";
/// Meta key of "the CRM disconnected the integration".
pub const KEY_DISCONNECTED: &str = "disconnected";

fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

fn portal_of(state: &AppState, id: &str, kind: CrmKind) -> Result<PortalRuntime, AppError> {
    state
        .portal(id)
        .filter(|p| p.cfg.kind == kind)
        .cloned()
        .ok_or_else(|| AppError::unknown_portal(id))
}

/// Decodes an `application/x-www-form-urlencoded` body into its pairs, refusing what is not one.
fn form_pairs(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, AppError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.is_empty() && !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(AppError::bad_request(format!(
            "content type {ct:?} is not application/x-www-form-urlencoded"
        )));
    }
    if std::str::from_utf8(body).is_err() {
        return Err(AppError::bad_request("body is not UTF-8 text"));
    }
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    if pairs.is_empty() {
        return Err(AppError::bad_request("empty body: no form fields"));
    }
    Ok(pairs)
}

fn field<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

async fn store_event(
    p: &PortalRuntime,
    crm: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let event = InboxEvent {
        seq: 0,
        crm: crm.to_owned(),
        received_at: Timestamp::now(),
        content_type,
        dedup_key: dedup_key(crm, &body),
        body: body.to_vec(),
    };
    let portal = p.cfg.id.0.clone();
    match p.inbox.submit(event).await {
        Ok(Accepted::Stored(seq)) => {
            metrics::counter!("rebuy_webhooks_total", "portal" => portal, "result" => "stored")
                .increment(1);
            Ok((
                StatusCode::OK,
                Json(json!({"status": "stored", "seq": seq})),
            ))
        }
        Ok(Accepted::Duplicate(seq)) => {
            metrics::counter!("rebuy_webhooks_total", "portal" => portal, "result" => "duplicate")
                .increment(1);
            Ok((
                StatusCode::OK,
                Json(json!({"status": "duplicate", "seq": seq})),
            ))
        }
        Err(e) => Err(AppError::unavailable(format!(
            "cannot store the webhook: {e}"
        ))),
    }
}

/// `POST /hooks/amocrm/{portal}/{secret}`. amoCRM signs nothing: the secret in the path and the
/// account the payload names must both match the portal.
pub async fn amocrm(
    State(state): State<AppState>,
    Path((portal, secret)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let p = portal_of(&state, &portal, CrmKind::Amocrm)?;
    let Some(expected) = &p.cfg.webhook_secret else {
        return Err(AppError::forbidden(format!(
            "portal {portal}: no webhook secret is configured ([portal.webhooks] secret_env)"
        )));
    };
    if !ct_eq(&secret, expected.expose_secret()) {
        return Err(AppError::unauthorized("wrong webhook secret"));
    }
    let pairs = form_pairs(&headers, &body)?;
    let account_id = field(&pairs, "account[id]");
    let subdomain = field(&pairs, "account[subdomain]");
    if account_id.is_none() && subdomain.is_none() {
        return Err(AppError::bad_request(
            "missing account[id] and account[subdomain]",
        ));
    }
    if let Err(e) = rebuy_amocrm::webhooks::parse(&body) {
        return Err(AppError::bad_request(format!(
            "malformed amoCRM webhook: {e}"
        )));
    }
    let stored: Option<Account> = p
        .store
        .meta(KEY_ACCOUNT)
        .map_err(|e| AppError::unavailable(e.to_string()))?;
    if let Some(acc) = stored
        && (account_id.is_some_and(|id| id != acc.id.to_string())
            || subdomain.is_some_and(|s| s != acc.domain))
    {
        return Err(AppError::forbidden(
            "the payload's account is not this portal's",
        ));
    }
    store_event(&p, "amocrm", &headers, body).await
}

/// `GET /hooks/amocrm/{portal}/disconnect?account_id=..&client_uuid=..&signature=..`: amoCRM's
/// "integration disconnected" hook, signed with HMAC-SHA256(client_uuid|account_id,
/// client_secret).
pub async fn amocrm_disconnect(
    State(state): State<AppState>,
    Path(portal): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    use hmac::{KeyInit, Mac};
    let p = portal_of(&state, &portal, CrmKind::Amocrm)?;
    let (Some(account_id), Some(client_uuid), Some(signature)) = (
        q.get("account_id"),
        q.get("client_uuid"),
        q.get("signature"),
    ) else {
        return Err(AppError::unauthorized(
            "missing account_id, client_uuid or signature",
        ));
    };
    let crate::config::AuthConfig::OAuth {
        client_id,
        client_secret,
        ..
    } = &p.cfg.auth
    else {
        return Err(AppError::forbidden("portal is not an OAuth integration"));
    };
    if !ct_eq(client_uuid, client_id) {
        return Err(AppError::forbidden(
            "client_uuid is not this portal's integration",
        ));
    }
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(client_secret.expose_secret().as_bytes())
            .map_err(|_| AppError::unavailable("bad client secret"))?;
    mac.update(format!("{client_uuid}|{account_id}").as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    if !ct_eq(&signature.to_ascii_lowercase(), &expected) {
        return Err(AppError::forbidden("bad signature"));
    }
    let store = p.store.clone();
    let account_id = account_id.clone();
    tokio::task::spawn_blocking(move || {
        store.set_meta(
            KEY_DISCONNECTED,
            &json!({"at": Timestamp::now(), "account_id": account_id}),
        )?;
        store.set_needs_reauth("amoCRM reported the integration disconnected")
    })
    .await
    .map_err(|e| AppError::unavailable(e.to_string()))?
    .map_err(|e| AppError::unavailable(e.to_string()))?;
    tracing::warn!(portal = %portal, "The CRM disconnected the integration; the portal needs re-authorization.");
    Ok((StatusCode::OK, Json(json!({"status": "disconnected"}))))
}

/// `POST /hooks/bitrix24/{portal}`: events and app install/uninstall. Every event carries
/// `auth[application_token]`, compared in constant time with the one stored at install (or
/// configured for an outgoing webhook).
pub async fn bitrix24(
    State(state): State<AppState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let p = portal_of(&state, &portal, CrmKind::Bitrix24)?;
    let pairs = form_pairs(&headers, &body)?;
    let Some(event) = field(&pairs, "event") else {
        return Err(AppError::bad_request("missing event"));
    };
    let event = event.to_ascii_uppercase();
    let Some(token) = field(&pairs, "auth[application_token]") else {
        return Err(AppError::unauthorized("missing auth[application_token]"));
    };
    let stored: Option<String> = p
        .store
        .meta(KEY_APP_TOKEN)
        .map_err(|e| AppError::unavailable(e.to_string()))?;
    let expected: Option<String> = p
        .cfg
        .application_token
        .as_ref()
        .map(|s| s.expose_secret().to_owned())
        .or(stored);
    if event == "ONAPPINSTALL" {
        // The install event brings the token. A re-install (app update) must present the same
        // domain; a token already known must match unless the app was uninstalled.
        let domain = field(&pairs, "auth[domain]").unwrap_or_default();
        let portal_host = p.cfg.base_url.host_str().unwrap_or_default();
        let port_suffix = p
            .cfg
            .base_url
            .port()
            .map(|x| format!(":{x}"))
            .unwrap_or_default();
        if domain != portal_host && domain != format!("{portal_host}{port_suffix}") {
            return Err(AppError::forbidden(format!(
                "install for domain {domain:?}, not this portal's {portal_host:?}"
            )));
        }
        if let Some(exp) = &expected
            && !ct_eq(token, exp)
        {
            return Err(AppError::forbidden(
                "application token differs from the installed app's",
            ));
        }
        let token = SecretString::from(token.to_owned());
        let store = p.store.clone();
        tokio::task::spawn_blocking(move || store.set_meta(KEY_APP_TOKEN, &token.expose_secret()))
            .await
            .map_err(|e| AppError::unavailable(e.to_string()))?
            .map_err(|e| AppError::unavailable(e.to_string()))?;
        return store_event(&p, "bitrix24", &headers, body).await;
    }
    let Some(expected) = expected else {
        return Err(AppError::forbidden(
            "the app is not installed on this portal yet",
        ));
    };
    if !ct_eq(token, &expected) {
        return Err(AppError::forbidden("wrong application token"));
    }
    store_event(&p, "bitrix24", &headers, body).await
}

/// `GET /readyz`: every portal's store answers.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, AppError> {
    for p in state.portals.values() {
        p.store
            .inbox_depth()
            .map_err(|e| AppError::unavailable(format!("portal {}: {e}", p.cfg.id)))?;
    }
    Ok("ready")
}
