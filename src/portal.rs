//! Builds a portal's connector from its config and store: the auth (OAuth tokens kept in the
//! store, a long-lived token, or a webhook URL), the rate ceiling and the retry policy.
pub use crate::config::{AMOCRM_DEFAULT_RPS, BITRIX24_DEFAULT_RPS, documented_rps};
use crate::config::{AuthConfig, PortalConfig};
use crate::store::Store;
use crate::store::tokens::StoreTokens;
use rebuy_amocrm::AmoSettings;
use rebuy_core::{Connector, ConnectorError, CrmKind, TokenManager, TokenSet};
use std::sync::Arc;
use std::time::Duration;

/// The request ceiling of a portal (requests/s): the override or the CRM's documented limit.
pub fn ceiling_rps(p: &PortalConfig) -> u32 {
    p.requests_per_sec.unwrap_or(documented_rps(p.kind))
}

/// Requests a CRM allows at once above its rate: Bitrix24's leaky bucket holds 50; amoCRM's
/// limiter here runs without a burst.
pub fn burst_requests(p: &PortalConfig) -> u64 {
    match p.kind {
        CrmKind::Amocrm => 0,
        CrmKind::Bitrix24 => 50,
    }
}

/// Records one request of the ceiling can carry: amoCRM pages hold 250 records, a Bitrix24
/// `batch` holds 50 list calls of 50 rows.
pub fn records_per_request(p: &PortalConfig) -> u32 {
    match p.kind {
        CrmKind::Amocrm => p.sync.page_limit,
        CrmKind::Bitrix24 => 50 * 50,
    }
}

/// Bitrix24 connector settings from a portal's config.
pub fn b24_settings(p: &PortalConfig) -> Result<rebuy_bitrix24::B24Settings, ConnectorError> {
    let mut s = match &p.auth {
        AuthConfig::OAuth {
            client_id,
            client_secret,
            redirect_uri,
            oauth_server,
        } => {
            let mut s = rebuy_bitrix24::B24Settings::oauth(
                p.base_url.clone(),
                client_id,
                client_secret.clone(),
                redirect_uri,
            );
            if let (
                Some(server),
                rebuy_bitrix24::B24Auth::OAuth {
                    oauth_server: slot, ..
                },
            ) = (oauth_server, &mut s.auth)
            {
                *slot = Some(
                    url::Url::parse(server).map_err(|e| ConnectorError::Invalid {
                        path: "auth.oauth_server".into(),
                        message: e.to_string(),
                    })?,
                );
            }
            s
        }
        AuthConfig::Webhook { url } => {
            use secrecy::ExposeSecret;
            let mut s = rebuy_bitrix24::B24Settings::webhook(url.expose_secret())?;
            // The portal is the configured base URL even when the webhook names another host.
            s.base_url = p.base_url.clone();
            s
        }
        AuthConfig::LongLivedToken { .. } => {
            return Err(ConnectorError::Unsupported {
                what: "long-lived tokens on a Bitrix24 portal".into(),
            });
        }
    };
    if let Some(r) = p.requests_per_sec {
        s.drain_per_sec = f64::from(r);
    }
    s.product_rows = p.sync.product_rows;
    // A client_endpoint or domain of a token answer or an event is followed only to these.
    s.allowed_hosts = p.allowed_hosts.clone();
    s.max_answer_bytes = p.max_answer_bytes;
    Ok(s)
}

/// A portal ready to talk to its CRM (clones share the connector and tokens).
#[derive(Clone)]
pub struct PortalHandle {
    /// The connector.
    pub connector: Arc<dyn Connector>,
    /// Its token manager (refresh counts, installing new tokens).
    pub tokens: Arc<TokenManager>,
    /// The store.
    pub store: Store,
}

/// amoCRM connector settings from a portal's config.
pub fn amo_settings(p: &PortalConfig) -> Result<AmoSettings, ConnectorError> {
    let (client_id, client_secret, redirect_uri) = match &p.auth {
        AuthConfig::OAuth {
            client_id,
            client_secret,
            redirect_uri,
            ..
        } => (
            client_id.clone(),
            client_secret.clone(),
            redirect_uri.clone(),
        ),
        AuthConfig::LongLivedToken { .. } => (
            String::new(),
            secrecy::SecretString::from(""),
            String::new(),
        ),
        AuthConfig::Webhook { .. } => {
            return Err(ConnectorError::Unsupported {
                what: "webhook auth on an amoCRM portal".into(),
            });
        }
    };
    Ok(AmoSettings {
        base_url: p.base_url.clone(),
        client_id,
        client_secret,
        redirect_uri,
        requests_per_sec: p.requests_per_sec.unwrap_or(AMOCRM_DEFAULT_RPS),
        page_limit: p.sync.page_limit,
        retry: rebuy_core::retry::RetryPolicy::default(),
        request_timeout: Duration::from_secs(30),
        prefetch: 2,
        max_answer_bytes: p.max_answer_bytes,
    })
}

/// Meta key of the connector's persisted [`rebuy_core::LimiterState`].
const KEY_LIMITER: &str = "limiter_state";

/// Opens a portal: its store and its connector. The connector's rate limiter starts from the
/// state the previous process left in the store (so `rebuy sync && rebuy apply` does not
/// start the second command with a full burst the CRM still counts against the first) and
/// leaves its own there when it is dropped.
pub fn open(p: &PortalConfig, store: Store) -> Result<PortalHandle, ConnectorError> {
    let handle = open_connector(p, store)?;
    match handle.store.meta::<rebuy_core::LimiterState>(KEY_LIMITER) {
        Ok(Some(state)) => handle.connector.restore_limiter(&state),
        Ok(None) => {}
        // A state that cannot be read costs a burst, not the command.
        Err(e) => tracing::warn!(portal = %p.id, error = %e, "Ignoring the saved limiter state"),
    }
    let store = handle.store.clone();
    let portal = p.id.clone();
    handle
        .connector
        .save_limiter_on_drop(Arc::new(move |state: &rebuy_core::LimiterState| {
            if let Err(e) = store.set_meta(KEY_LIMITER, state) {
                tracing::warn!(portal = %portal, error = %e, "Could not save the limiter state");
            }
        }));
    Ok(handle)
}

fn open_connector(p: &PortalConfig, store: Store) -> Result<PortalHandle, ConnectorError> {
    match p.kind {
        CrmKind::Amocrm => {
            let settings = amo_settings(p)?;
            let tokens = Arc::new(match &p.auth {
                AuthConfig::LongLivedToken { token } => TokenManager::fixed(token.clone()),
                _ => TokenManager::new(
                    Arc::new(StoreTokens(store.clone())),
                    Some(Arc::new(rebuy_amocrm::auth::AmoRefresher::new(&settings))),
                ),
            });
            let client = rebuy_amocrm::AmoClient::new(settings, tokens.clone())?;
            Ok(PortalHandle {
                connector: Arc::new(client),
                tokens,
                store,
            })
        }
        CrmKind::Bitrix24 => {
            let settings = b24_settings(p)?;
            let tokens = match &p.auth {
                AuthConfig::OAuth { .. } => Some(Arc::new(TokenManager::new(
                    Arc::new(StoreTokens(store.clone())),
                    Some(Arc::new(rebuy_bitrix24::auth::B24Refresher::new(&settings))),
                ))),
                _ => None,
            };
            let client = rebuy_bitrix24::B24Client::new(settings, tokens.clone())?;
            // An inbound webhook has no tokens; the handle still carries a manager so callers
            // need no special case (it is never asked for a token).
            let tokens = tokens
                .unwrap_or_else(|| Arc::new(TokenManager::fixed(secrecy::SecretString::from(""))));
            Ok(PortalHandle {
                connector: Arc::new(client),
                tokens,
                store,
            })
        }
    }
}

/// The URL a person opens to authorise rebuy for an OAuth portal.
pub fn authorize_url(p: &PortalConfig, state: &str) -> Result<url::Url, ConnectorError> {
    match p.kind {
        CrmKind::Amocrm => Ok(rebuy_amocrm::auth::authorize_url(&amo_settings(p)?, state)),
        CrmKind::Bitrix24 => Ok(rebuy_bitrix24::auth::authorize_url(
            &b24_settings(p)?,
            state,
        )),
    }
}

/// Exchanges an authorization code and commits the tokens to the store.
pub async fn exchange_code(
    p: &PortalConfig,
    store: &Store,
    code: &str,
) -> Result<TokenSet, ConnectorError> {
    let tokens = match p.kind {
        CrmKind::Amocrm => rebuy_amocrm::auth::exchange_code(&amo_settings(p)?, code).await?,
        CrmKind::Bitrix24 => rebuy_bitrix24::auth::exchange_code(&b24_settings(p)?, code).await?,
    };
    let s = store.clone();
    let t = tokens.clone();
    tokio::task::spawn_blocking(move || s.save_tokens(&t))
        .await
        .map_err(ConnectorError::transient)?
        .map_err(|e| ConnectorError::Store {
            message: e.to_string(),
        })?;
    Ok(tokens)
}

/// Tries the authorization without a person: emulators (and only they) answer the authorize
/// URL with an immediate redirect carrying the code. Returns `None` against a real CRM, which
/// answers with a login page.
pub async fn try_automatic_code(authorize: &url::Url, state: &str) -> Option<String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .ok()?;
    let resp = client.get(authorize.clone()).send().await.ok()?;
    if !resp.status().is_redirection() {
        return None;
    }
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    let loc = url::Url::parse(location).ok()?;
    let mut code = None;
    let mut got_state = None;
    for (k, v) in loc.query_pairs() {
        match &*k {
            "code" => code = Some(v.into_owned()),
            "state" => got_state = Some(v.into_owned()),
            _ => {}
        }
    }
    // A redirect whose state is not ours is not our authorization.
    (got_state.as_deref() == Some(state))
        .then_some(code)
        .flatten()
}

/// Sync options of a portal from its config.
pub fn sync_options(p: &PortalConfig, full: bool) -> crate::sync::SyncOptions {
    crate::sync::SyncOptions {
        full,
        overlap: Duration::from_secs(p.sync.overlap_secs),
        concurrency: p.sync.concurrency,
        reconcile_every: Duration::from_secs(p.sync.reconcile_interval_hours.saturating_mul(3600)),
    }
}

/// A random OAuth `state` value.
pub fn random_state() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..24)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}
