//! OAuth 2.0 of Bitrix24 apps, through the `oauth2` crate.
//!
//! - [`authorize_url`]: `{portal}/oauth/authorize/?client_id=..&state=..`; the portal redirects
//!   to the app's configured redirect URI with `code` (valid 30 s), `state`, `domain`,
//!   `member_id`, `scope` and `server_domain`.
//! - [`exchange_code`]: the code -> a [`TokenSet`].
//! - [`B24Refresher`]: the [`TokenRefresher`] behind [`rebuy_core::TokenManager`]. Refresh tokens
//!   rotate (the used one and its access token die); the manager makes refreshes single-flight
//!   and commits the new pair before anyone uses it.
//!
//! **The adapter.** Bitrix24's token endpoint (`oauth.bitrix.info/oauth/token/`) takes a `GET`
//! with the grant in the query string, and its answer has no `token_type`. `oauth2` builds a
//! `POST` with a form body and insists on `token_type`. The small HTTP adapter here moves the
//! form fields into the query of a `GET` (so `client_secret` goes only to the token server, as
//! the docs require) and adds `"token_type":"bearer"` to a success; `oauth2` still does the rest
//! (grant parameters, response parsing, `expires_in`). Non-200 answers are handed back
//! unparsed and classified here: `invalid_grant` / `invalid_client` -> `NeedsReauth`, 5xx and
//! network failures -> `Transient`.
//!
//! What `TokenSet::extra` keeps: `client_endpoint`, `server_endpoint`, `member_id`, `domain`,
//! `user_id`, `scope`, `status` (whichever the answer carried).
use crate::client::{B24Auth, B24Settings};
use jiff::{SignedDuration, Timestamp};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    ExtraTokenFields, RefreshToken, RequestTokenError, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
};
use rebuy_core::{ConnectorError, TokenRefresher, TokenSet};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use url::Url;

/// The fields Bitrix24 adds to a token answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct B24TokenFields {
    /// `https://{portal}/rest/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_endpoint: Option<String>,
    /// `https://oauth.bitrix.info/rest/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_endpoint: Option<String>,
    /// The portal's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// The portal's (or the OAuth server's) domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// `L` local, `F` free, `P` paid...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The user the token acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Value>,
    /// Unix expiry of the access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Value>,
}
impl ExtraTokenFields for B24TokenFields {}

type B24TokenResponse = StandardTokenResponse<B24TokenFields, BasicTokenType>;
type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    B24TokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

struct OAuthParts<'a> {
    client_id: &'a str,
    client_secret: &'a SecretString,
    oauth_server: Url,
}

fn parts(settings: &B24Settings) -> Result<OAuthParts<'_>, ConnectorError> {
    match &settings.auth {
        B24Auth::OAuth {
            client_id,
            client_secret,
            oauth_server,
            ..
        } => Ok(OAuthParts {
            client_id,
            client_secret,
            oauth_server: oauth_server.clone().unwrap_or_else(|| settings.base()),
        }),
        B24Auth::Webhook { .. } => Err(ConnectorError::Invalid {
            path: "auth".into(),
            message: "an inbound webhook has no OAuth flow".into(),
        }),
    }
}

/// The URL where the portal's administrator grants the app access.
pub fn authorize_url(settings: &B24Settings, state: &str) -> Url {
    let base = settings.base();
    let mut url = base.join("oauth/authorize/").unwrap_or(base);
    let client_id = match &settings.auth {
        B24Auth::OAuth { client_id, .. } => client_id.as_str(),
        B24Auth::Webhook { .. } => "",
    };
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("state", state);
    url
}

/// Exchanges an authorization code (single use, valid 30 s) for tokens.
pub async fn exchange_code(settings: &B24Settings, code: &str) -> Result<TokenSet, ConnectorError> {
    let oauth = oauth_client(settings)?;
    let http = http_client(settings)?;
    let send = |req| send(http.clone(), req);
    let resp = oauth
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .request_async(&send)
        .await
        .map_err(token_error)?;
    tracing::info!(portal = %settings.base_url, "Exchanged a Bitrix24 authorization code for tokens");
    Ok(token_set(resp, BTreeMap::new(), None))
}

/// What `app.info` answers about the application a token belongs to (documented fields).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AppInfo {
    /// The app's local id on the portal.
    #[serde(rename = "ID", default)]
    pub id: Option<Value>,
    /// The app's code: a local app's `client_id` (`local.…`), a Marketplace app's `vendor.app`.
    #[serde(rename = "CODE", default)]
    pub code: String,
    /// `L` local, `F` free, `P` paid, ...
    #[serde(rename = "STATUS", default)]
    pub status: Option<String>,
    /// Whether the installation is finished.
    #[serde(rename = "INSTALLED", default)]
    pub installed: Option<Value>,
    /// The portal's plan (`ru_project`).
    #[serde(rename = "LICENSE", default)]
    pub license: Option<String>,
}

/// Checks an access token that arrived from outside (the `ONAPPINSTALL` event): asks the portal
/// at its configured address (never an address named by the event) for `app.info` with it, as
/// the Bitrix24 docs advise before trusting an install's `application_token`. A token the portal
/// refuses is [`ConnectorError::Auth`]; a local app's token must belong to this app (`CODE` is
/// its `client_id`), else [`ConnectorError::Rejected`]. One request, no retries, no redirects.
pub async fn verify_token(
    settings: &B24Settings,
    access_token: &SecretString,
) -> Result<AppInfo, ConnectorError> {
    let client_id = match &settings.auth {
        B24Auth::OAuth { client_id, .. } => client_id.as_str(),
        B24Auth::Webhook { .. } => {
            return Err(ConnectorError::Invalid {
                path: "auth".into(),
                message: "an inbound-webhook portal has no app tokens to verify".into(),
            });
        }
    };
    let url = settings
        .base()
        .join("rest/app.info")
        .map_err(|e| ConnectorError::Invalid {
            path: "base_url".into(),
            message: e.to_string(),
        })?;
    let http = reqwest::Client::builder()
        .user_agent(concat!("rebuy-bitrix24/", env!("CARGO_PKG_VERSION")))
        .timeout(
            settings
                .request_timeout
                .min(std::time::Duration::from_secs(10)),
        )
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ConnectorError::Invalid {
            path: "http client".into(),
            message: e.to_string(),
        })?;
    let transport = |e: reqwest::Error| ConnectorError::Transient {
        message: format!("app.info: {}", e.without_url()),
    };
    let resp = http
        .post(url)
        .json(&serde_json::json!({"auth": access_token.expose_secret()}))
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(transport)?;
    if !status.is_success() {
        let e: crate::wire::ApiError = serde_json::from_slice(&body).unwrap_or_default();
        if status == http::StatusCode::UNAUTHORIZED {
            return Err(ConnectorError::Auth {
                message: format!("app.info: the portal refused the token: {}", e.error),
            });
        }
        return Err(crate::client::api_error(status.as_u16(), &e, "app.info"));
    }
    let env: crate::wire::Envelope<AppInfo> = crate::client::decode_json(&body)?;
    let info = env.result;
    if client_id.starts_with("local.") && info.code != client_id {
        return Err(ConnectorError::Rejected {
            status: status.as_u16(),
            code: None,
            message: format!(
                "app.info: the token belongs to app {:?}, not to this one",
                info.code
            ),
        });
    }
    Ok(info)
}

/// Renews Bitrix24 tokens with the refresh token.
pub struct B24Refresher {
    oauth: Result<OAuthClient, ConnectorError>,
    http: Result<reqwest::Client, ConnectorError>,
}

impl std::fmt::Debug for B24Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("B24Refresher").finish_non_exhaustive()
    }
}

impl B24Refresher {
    /// A refresher for the portal of `settings`. Unusable settings surface on the first refresh.
    pub fn new(settings: &B24Settings) -> Self {
        Self {
            oauth: oauth_client(settings),
            http: http_client(settings),
        }
    }
}

#[async_trait::async_trait]
impl TokenRefresher for B24Refresher {
    async fn refresh(&self, current: &TokenSet) -> Result<TokenSet, ConnectorError> {
        let oauth = self.oauth.as_ref().map_err(Clone::clone)?;
        let http = self.http.as_ref().map_err(Clone::clone)?.clone();
        let Some(refresh) = &current.refresh_token else {
            return Err(ConnectorError::NeedsReauth {
                message: "no refresh token stored".into(),
            });
        };
        let refresh = RefreshToken::new(refresh.expose_secret().to_owned());
        let send = |req| send(http.clone(), req);
        let resp = oauth
            .exchange_refresh_token(&refresh)
            .request_async(&send)
            .await
            .map_err(token_error)?;
        tracing::info!("Refreshed the Bitrix24 access token");
        Ok(token_set(
            resp,
            current.extra.clone(),
            current.refresh_token.clone(),
        ))
    }
}

fn oauth_client(settings: &B24Settings) -> Result<OAuthClient, ConnectorError> {
    let p = parts(settings)?;
    let token_url = p
        .oauth_server
        .join("oauth/token/")
        .map_err(|e| ConnectorError::Invalid {
            path: "oauth_server".into(),
            message: e.to_string(),
        })?;
    Ok(oauth2::Client::new(ClientId::new(p.client_id.to_owned()))
        .set_client_secret(ClientSecret::new(
            p.client_secret.expose_secret().to_owned(),
        ))
        // In the parameters (moved to the query by the adapter), never in a Basic header.
        .set_auth_type(AuthType::RequestBody)
        .set_token_uri(TokenUrl::from_url(token_url)))
}

fn http_client(settings: &B24Settings) -> Result<reqwest::Client, ConnectorError> {
    reqwest::Client::builder()
        .user_agent(concat!("rebuy-bitrix24/", env!("CARGO_PKG_VERSION")))
        .timeout(settings.request_timeout)
        // A token endpoint that redirects could leak the grant: never follow.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ConnectorError::Invalid {
            path: "http client".into(),
            message: e.to_string(),
        })
}

pub use rebuy_core::oauth::OAuthHttpError;

/// The `oauth2` HTTP client: form `POST` -> `GET` with the same fields in the query.
async fn send(
    http: reqwest::Client,
    req: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, OAuthHttpError> {
    let (parts, body) = req.into_parts();
    let mut url =
        Url::parse(&parts.uri.to_string()).map_err(|e| OAuthHttpError::Build(e.to_string()))?;
    url.query_pairs_mut()
        .extend_pairs(url::form_urlencoded::parse(&body));
    let resp = http
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| OAuthHttpError::Transport(e.without_url().to_string()))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| OAuthHttpError::Transport(e.without_url().to_string()))?
        .to_vec();
    if status != http::StatusCode::OK {
        return Err(OAuthHttpError::Status { status, body });
    }
    // Bitrix24 sends no token_type; oauth2 requires one.
    let body = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut m)) => {
            m.entry("token_type")
                .or_insert_with(|| Value::String("bearer".into()));
            serde_json::to_vec(&m).map_err(|e| OAuthHttpError::Build(e.to_string()))?
        }
        _ => body,
    };
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| OAuthHttpError::Build(e.to_string()))
}

fn token_error(e: RequestTokenError<OAuthHttpError, BasicErrorResponse>) -> ConnectorError {
    rebuy_core::oauth::token_error(e, classify_token_error)
}

/// Classifies a non-200 answer of the token endpoint.
pub(crate) fn classify_token_error(status: http::StatusCode, body: &[u8]) -> ConnectorError {
    let e: crate::wire::ApiError = serde_json::from_slice(body).unwrap_or_default();
    let message = if e.error.is_empty() {
        format!("token endpoint answered {status}")
    } else {
        format!("{}: {}", e.error, e.error_description)
    };
    match (status.as_u16(), e.error.as_str()) {
        (_, "invalid_grant" | "invalid_client" | "expired_token" | "invalid_token") => {
            ConnectorError::NeedsReauth { message }
        }
        (_, "PAYMENT_REQUIRED") => ConnectorError::Blocked { message },
        (401, _) => ConnectorError::NeedsReauth { message },
        (429 | 503, _) => ConnectorError::RateLimited {
            retry_after: None,
            message,
        },
        (s, _) if s >= 500 => ConnectorError::Transient { message },
        (s, code) => ConnectorError::Rejected {
            status: s,
            code: (!code.is_empty()).then(|| code.to_owned()),
            message,
        },
    }
}

fn token_set(
    resp: B24TokenResponse,
    mut extra: BTreeMap<String, String>,
    old_refresh: Option<SecretString>,
) -> TokenSet {
    let now = Timestamp::now();
    let x = resp.extra_fields();
    let expires_at = resp
        .expires_in()
        .and_then(|d| SignedDuration::try_from(d).ok())
        .and_then(|d| now.checked_add(d).ok())
        .or_else(|| {
            x.expires
                .as_ref()
                .and_then(value_i64)
                .and_then(|s| Timestamp::from_second(s).ok())
        });
    let text = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
    for (k, v) in [
        ("client_endpoint", text(&x.client_endpoint)),
        ("server_endpoint", text(&x.server_endpoint)),
        ("member_id", text(&x.member_id)),
        ("domain", text(&x.domain)),
        ("status", text(&x.status)),
        (
            "user_id",
            x.user_id
                .as_ref()
                .and_then(value_i64)
                .map(|v| v.to_string()),
        ),
    ] {
        if let Some(v) = v {
            extra.insert(k.into(), v);
        }
    }
    if let Some(scopes) = resp.scopes() {
        extra.insert(
            "scope".into(),
            scopes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    TokenSet {
        access_token: SecretString::from(resp.access_token().secret().to_owned()),
        refresh_token: resp
            .refresh_token()
            .map(|r| SecretString::from(r.secret().to_owned()))
            .or(old_refresh),
        expires_at,
        extra,
    }
}

fn value_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorize_url_has_the_documented_shape() {
        let s = B24Settings::oauth(
            "https://x.bitrix24.ru".parse().unwrap(),
            "local.1",
            SecretString::from("s"),
            "https://r",
        );
        assert_eq!(
            authorize_url(&s, "st 1").as_str(),
            "https://x.bitrix24.ru/oauth/authorize/?client_id=local.1&state=st+1"
        );
    }

    #[test]
    fn refused_grants_need_reauth() {
        let body = br#"{"error":"invalid_grant","error_description":"Invalid grant"}"#;
        assert!(matches!(
            classify_token_error(http::StatusCode::BAD_REQUEST, body),
            ConnectorError::NeedsReauth { .. }
        ));
        assert!(matches!(
            classify_token_error(http::StatusCode::BAD_GATEWAY, b"<html>"),
            ConnectorError::Transient { .. }
        ));
    }
}
