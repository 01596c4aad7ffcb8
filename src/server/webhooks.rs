//! The webhook endpoints. Each checks, in order: the portal exists and runs on that CRM (404),
//! the credentials (401 missing / 403 wrong), the body (400 with the reason; 413 above 1 MiB is
//! the body-limit layer's), then commits the raw body to the portal's inbox and answers.
use super::error::AppError;
use super::{AppState, PortalRuntime};
use crate::inbox::{Accepted, InboxEvent, dedup_key};
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
pub(super) const KEY_APP_TOKEN: &str = "bitrix24_application_token";
/// Meta key of "the CRM disconnected the integration".
pub(super) const KEY_DISCONNECTED: &str = "disconnected";

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

/// The account the portal's last sync cached (`None` before the first).
fn stored_account(p: &PortalRuntime) -> Result<Option<Account>, AppError> {
    p.store
        .meta(KEY_ACCOUNT)
        .map_err(|e| AppError::unavailable(e.to_string()))
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
pub(super) async fn amocrm(
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
    // The check below and the parser must read the same account: a repeated key would let
    // them read different ones.
    for key in ["account[id]", "account[subdomain]"] {
        if pairs.iter().filter(|(k, _)| k == key).count() > 1 {
            return Err(AppError::bad_request(format!("{key} is repeated")));
        }
    }
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
    if let Some(acc) = stored_account(&p)?
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
pub(super) async fn amocrm_disconnect(
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
    // The signature covers the account the hook names, so a hook signed for another account
    // (the same integration installed elsewhere) is valid: it must name this portal's.
    if let Some(acc) = stored_account(&p)?
        && acc.id.to_string() != *account_id
    {
        return Err(AppError::forbidden(
            "the hook's account is not this portal's",
        ));
    }
    if p.store
        .needs_reauth()
        .map_err(|e| AppError::unavailable(e.to_string()))?
        .is_some()
    {
        return Ok((
            StatusCode::OK,
            Json(json!({"status": "already disconnected"})),
        ));
    }
    // The signature never changes for an account, so a recorded hook could be replayed after
    // a reconnect: ask the CRM. A token it still accepts means the integration is connected
    // and the hook is stale; only a refused token (or no answer in time) is believed.
    if let Ok(handle) = p.handle() {
        let probe = tokio::time::timeout(
            std::time::Duration::from_millis(1500),
            handle.connector.account(),
        )
        .await;
        if let Ok(Ok(_)) = probe {
            tracing::warn!(portal = %portal, "A disconnect hook while amoCRM still accepts the integration's token: ignored (replayed or stale).");
            return Ok((StatusCode::OK, Json(json!({"status": "still connected"}))));
        }
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
/// configured for an outgoing webhook). An install is checked by [`b24_install`].
pub(super) async fn bitrix24(
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
        return b24_install(&p, &pairs, token, expected, &headers, body).await;
    }
    let Some(expected) = expected else {
        return Err(AppError::forbidden(
            "the app is not installed on this portal yet",
        ));
    };
    if !ct_eq(token, &expected) {
        return Err(AppError::forbidden("wrong application token"));
    }
    // An event the worker could not act on is refused here (400, which Bitrix24 logs), not
    // acknowledged and then dropped.
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let ev = rebuy_bitrix24::events::parse(&body, ct)
        .map_err(|e| AppError::bad_request(format!("malformed Bitrix24 event: {e}")))?;
    {
        use rebuy_bitrix24::events::EventKind as K;
        let needs_id = !matches!(ev.kind, K::AppInstall | K::AppUninstall | K::Other(_));
        if needs_id && ev.entity_id.is_none() {
            return Err(AppError::bad_request(format!(
                "malformed Bitrix24 event: {} without data[FIELDS][ID]",
                ev.name
            )));
        }
    }
    store_event(&p, "bitrix24", &headers, body).await
}

fn refuse_install(portal: &str, reason: &str) -> AppError {
    metrics::counter!("rebuy_installs_refused_total", "portal" => portal.to_owned()).increment(1);
    tracing::warn!(portal = %portal, reason = %reason, "Refused a Bitrix24 app install.");
    AppError::forbidden(format!("install refused: {reason}"))
}

/// `ONAPPINSTALL`: the only event that brings tokens, so the only one that could hand the
/// portal to someone else. Before the 2xx:
/// - the event's `domain` must be the portal's host (or one of its `allowed_hosts`);
/// - a **connected** portal (tokens stored, no "needs re-authorization" mark) never gets new
///   tokens from an install: an install presenting the known application token is an app update
///   (handlers are bound again); without a known application token (connected through
///   `rebuy auth`), the application token is learnt only after the check below;
/// - a portal **awaiting** an install (no tokens, or uninstalled / needing re-authorization)
///   stores the tokens only after the check below, and commits them before answering.
///
/// The check, as the Bitrix24 docs advise: the supplied access token is sent to the portal's
/// configured `base_url` (never to the event's `client_endpoint` or `domain`) with `app.info`,
/// which must answer for this app; the event's `member_id` must match the one the portal's
/// earlier tokens carried, when known. Anything else is 403 and nothing is stored.
async fn b24_install(
    p: &PortalRuntime,
    pairs: &[(String, String)],
    app_token: &str,
    expected: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let portal = p.cfg.id.0.as_str();
    if !matches!(p.cfg.auth, crate::config::AuthConfig::OAuth { .. }) {
        return Err(refuse_install(
            portal,
            "the portal is not configured as an OAuth app",
        ));
    }
    let settings =
        crate::portal::b24_settings(&p.cfg).map_err(|e| AppError::unavailable(e.to_string()))?;
    let domain = field(pairs, "auth[domain]").unwrap_or_default();
    if !settings.domain_allowed(domain) {
        return Err(refuse_install(
            portal,
            &format!("domain {domain:?} is neither the portal's host nor in allowed_hosts"),
        ));
    }
    if let Some(cfg_token) = &p.cfg.application_token
        && !ct_eq(app_token, cfg_token.expose_secret())
    {
        return Err(refuse_install(
            portal,
            "application token differs from the configured one",
        ));
    }
    let (stored, reauth) = p
        .store
        .blocking(|s| Ok((s.load_tokens()?, s.needs_reauth()?)))
        .await
        .map_err(|e| AppError::unavailable(e.to_string()))?;
    let connected = stored.is_some() && reauth.is_none();
    if connected && let Some(known) = &expected {
        if !ct_eq(app_token, known) {
            return Err(refuse_install(
                portal,
                "the portal is connected and the application token differs from its app's",
            ));
        }
        // An app update of the installed app: its tokens stay, its handlers are bound again.
        return store_event(p, "bitrix24", headers, body).await;
    }
    let Some(access) = field(pairs, "auth[access_token]").filter(|t| !t.is_empty()) else {
        return Err(refuse_install(portal, "no auth[access_token]"));
    };
    let refresh = field(pairs, "auth[refresh_token]").filter(|t| !t.is_empty());
    if !connected && refresh.is_none() {
        return Err(refuse_install(portal, "no auth[refresh_token]"));
    }
    let member_id = field(pairs, "auth[member_id]");
    if let Some(known) = stored.as_ref().and_then(|t| t.extra.get("member_id"))
        && member_id.is_none_or(|m| !ct_eq(m, known))
    {
        return Err(refuse_install(
            portal,
            "member_id is not the one this portal's tokens carry",
        ));
    }
    let access = SecretString::from(access.to_owned());
    match rebuy_bitrix24::auth::verify_token(&settings, &access).await {
        Ok(_) => {}
        Err(
            e @ (rebuy_core::ConnectorError::Transient { .. }
            | rebuy_core::ConnectorError::RateLimited { .. }),
        ) => {
            tracing::warn!(portal = %portal, error = %e, "Could not verify a Bitrix24 install: the portal did not answer.");
            return Err(AppError::unavailable(
                "the portal could not be asked to verify the install",
            ));
        }
        Err(e) => {
            return Err(refuse_install(
                portal,
                &format!("the portal did not confirm the token ({e})"),
            ));
        }
    }
    if !connected {
        let mut extra = std::collections::BTreeMap::new();
        for k in ["domain", "member_id", "client_endpoint", "server_endpoint"] {
            if let Some(v) = field(pairs, &format!("auth[{k}]")).filter(|v| !v.is_empty()) {
                extra.insert(k.to_owned(), v.to_owned());
            }
        }
        if let Some(ep) = extra.get("client_endpoint")
            && !url::Url::parse(ep).is_ok_and(|u| settings.endpoint_allowed(&u))
        {
            tracing::warn!(portal = %portal, "The install's client_endpoint is neither the portal's host nor in allowed_hosts; it is not kept.");
            extra.remove("client_endpoint");
        }
        let expires_in = field(pairs, "auth[expires_in]")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(3600);
        let tokens = rebuy_core::TokenSet {
            access_token: access,
            refresh_token: refresh.map(|r| SecretString::from(r.to_owned())),
            expires_at: Timestamp::now()
                .checked_add(jiff::SignedDuration::from_secs(expires_in))
                .ok(),
            extra,
        };
        let handle = p
            .handle()
            .map_err(|e| AppError::unavailable(e.to_string()))?;
        // Committed before the 2xx, like every token set.
        handle
            .tokens
            .install(tokens)
            .await
            .map_err(|e| AppError::unavailable(format!("cannot store the tokens: {e}")))?;
        tracing::info!(portal = %portal, "Bitrix24 app installed: tokens verified with the portal and stored.");
    }
    let token = SecretString::from(app_token.to_owned());
    p.store
        .blocking(move |s| s.set_meta(KEY_APP_TOKEN, &token.expose_secret()))
        .await
        .map_err(|e| AppError::unavailable(e.to_string()))?;
    store_event(p, "bitrix24", headers, body).await
}

/// `GET /readyz`: every portal's store answers.
pub(super) async fn readyz(State(state): State<AppState>) -> Result<&'static str, AppError> {
    for p in state.portals.values() {
        p.store
            .inbox_depth()
            .map_err(|e| AppError::unavailable(format!("portal {}: {e}", p.cfg.id)))?;
    }
    Ok("ready")
}
