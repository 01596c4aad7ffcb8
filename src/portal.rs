//! Builds a portal's connector from its config and store: the auth (OAuth tokens kept in the
//! store, a long-lived token, or a webhook URL), the rate ceiling and the retry policy.
use crate::config::{AuthConfig, PortalConfig};
use crate::store::Store;
use crate::store::tokens::StoreTokens;
use rebuy_amocrm::AmoSettings;
use rebuy_core::{Connector, ConnectorError, CrmKind, TokenManager, TokenSet};
use std::sync::Arc;
use std::time::Duration;

/// amoCRM's documented ceiling: 7 requests per second per integration.
pub const AMOCRM_DEFAULT_RPS: u32 = 7;

/// A portal ready to talk to its CRM.
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
    })
}

/// Opens a portal: its store and its connector.
pub fn open(p: &PortalConfig, store: Store) -> Result<PortalHandle, ConnectorError> {
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
        CrmKind::Bitrix24 => Err(ConnectorError::Unsupported {
            what: "Bitrix24 portals (coming with the Bitrix24 connector)".into(),
        }),
    }
}

/// The URL a person opens to authorise rebuy for an OAuth portal.
pub fn authorize_url(p: &PortalConfig, state: &str) -> Result<url::Url, ConnectorError> {
    match p.kind {
        CrmKind::Amocrm => Ok(rebuy_amocrm::auth::authorize_url(&amo_settings(p)?, state)),
        CrmKind::Bitrix24 => Err(ConnectorError::Unsupported {
            what: "Bitrix24 OAuth".into(),
        }),
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
        CrmKind::Bitrix24 => {
            return Err(ConnectorError::Unsupported {
                what: "Bitrix24 OAuth".into(),
            });
        }
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
