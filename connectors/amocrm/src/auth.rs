//! OAuth 2.0 with amoCRM, through the `oauth2` crate.
//!
//! - [`authorize_url`]: where a person grants access (`{base}/oauth?client_id=..&state=..&mode=post_message`);
//!   amoCRM then calls the redirect URI with `code`, `state` and `referer`.
//! - [`exchange_code`]: the code -> a [`TokenSet`] (`POST {base}/oauth2/access_token`).
//! - [`AmoRefresher`]: the [`TokenRefresher`] behind [`rebuy_core::TokenManager`]. amoCRM refresh
//!   tokens are single-use and rotate; the manager makes refreshes single-flight and commits the
//!   new pair before use, this module only performs the exchange.
//!
//! `oauth2` is used without its default features (they pull reqwest 0.12); a small adapter
//! sends its requests with our reqwest 0.13 client (redirects off, as the crate advises). The
//! adapter sends the grant as JSON, the format amoCRM documents for its token endpoint, and
//! hands every non-200 answer back unparsed so the status and amoCRM's `hint` can be classified
//! here: a refused grant -> `NeedsReauth`, an HTML 403 -> `Blocked`, 429 -> `RateLimited`,
//! 5xx and network failures -> `Transient`.
//!
//! Secrets (client secret, tokens, codes) are never logged.
use crate::client::AmoSettings;
use crate::wire::Problem;
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
use std::collections::BTreeMap;
use url::Url;

/// The fields amoCRM adds to a token response.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AmoTokenFields {
    /// When the server issued the token (Unix seconds); present in current answers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time: Option<i64>,
}
impl ExtraTokenFields for AmoTokenFields {}

type AmoTokenResponse = StandardTokenResponse<AmoTokenFields, BasicTokenType>;
type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    AmoTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The URL where a person grants the integration access to an account.
pub fn authorize_url(settings: &AmoSettings, state: &str) -> Url {
    let base = settings.base();
    let mut url = base.join("oauth").unwrap_or(base);
    url.query_pairs_mut()
        .append_pair("client_id", &settings.client_id)
        .append_pair("state", state)
        .append_pair("mode", "post_message");
    url
}

/// Exchanges an authorization code (single use, valid 20 minutes) for tokens.
pub async fn exchange_code(settings: &AmoSettings, code: &str) -> Result<TokenSet, ConnectorError> {
    let oauth = oauth_client(settings)?;
    let http = http_client(settings)?;
    let send = |req| send(http.clone(), req);
    let resp = oauth
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .add_extra_param("redirect_uri", settings.redirect_uri.clone())
        .request_async(&send)
        .await
        .map_err(token_error)?;
    tracing::info!(client_id = %settings.client_id, "Exchanged an amoCRM authorization code for tokens");
    Ok(token_set(resp, BTreeMap::new(), None))
}

/// Renews amoCRM tokens with the refresh token (single use: the answer carries the next one).
pub struct AmoRefresher {
    oauth: Result<OAuthClient, ConnectorError>,
    http: Result<reqwest::Client, ConnectorError>,
    redirect_uri: String,
}

impl std::fmt::Debug for AmoRefresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmoRefresher")
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

impl AmoRefresher {
    /// A refresher for the portal of `settings`. Unusable settings surface on the first refresh.
    pub fn new(settings: &AmoSettings) -> Self {
        Self {
            oauth: oauth_client(settings),
            http: http_client(settings),
            redirect_uri: settings.redirect_uri.clone(),
        }
    }
}

#[async_trait::async_trait]
impl TokenRefresher for AmoRefresher {
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
            // amoCRM wants the redirect URI on refresh too.
            .add_extra_param("redirect_uri", self.redirect_uri.clone())
            .request_async(&send)
            .await
            .map_err(token_error)?;
        tracing::info!("Refreshed the amoCRM access token");
        Ok(token_set(
            resp,
            current.extra.clone(),
            current.refresh_token.clone(),
        ))
    }
}

fn oauth_client(settings: &AmoSettings) -> Result<OAuthClient, ConnectorError> {
    let token_url =
        settings
            .base()
            .join("oauth2/access_token")
            .map_err(|e| ConnectorError::Invalid {
                path: "base_url".into(),
                message: e.to_string(),
            })?;
    Ok(
        oauth2::Client::new(ClientId::new(settings.client_id.clone()))
            .set_client_secret(ClientSecret::new(
                settings.client_secret.expose_secret().to_owned(),
            ))
            // amoCRM reads client_id and client_secret from the body, not from Basic auth.
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(TokenUrl::from_url(token_url)),
    )
}

fn http_client(settings: &AmoSettings) -> Result<reqwest::Client, ConnectorError> {
    reqwest::Client::builder()
        .user_agent(concat!("rebuy-amocrm/", env!("CARGO_PKG_VERSION")))
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

/// The `oauth2` HTTP client: sends the crate's form-encoded grant as a JSON object.
async fn send(
    http: reqwest::Client,
    req: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, OAuthHttpError> {
    let (parts, body) = req.into_parts();
    let grant: serde_json::Map<String, serde_json::Value> = url::form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
        .collect();
    let resp = http
        .request(parts.method, parts.uri.to_string())
        .header(http::header::ACCEPT, "application/json")
        .json(&grant)
        .send()
        .await
        .map_err(|e| OAuthHttpError::Transport(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| OAuthHttpError::Transport(e.to_string()))?
        .to_vec();
    if status != http::StatusCode::OK {
        return Err(OAuthHttpError::Status { status, body });
    }
    // `oauth2` insists on `application/json`; amoCRM's gateways vary the exact type
    // (`application/hal+json`, charset suffixes), so the body is handed over as JSON.
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| OAuthHttpError::Build(e.to_string()))
}

fn token_error(e: RequestTokenError<OAuthHttpError, BasicErrorResponse>) -> ConnectorError {
    rebuy_core::oauth::token_error(e, classify_token_error)
}

/// Classifies a non-200 answer of `/oauth2/access_token`.
pub(crate) fn classify_token_error(status: http::StatusCode, body: &[u8]) -> ConnectorError {
    let problem: Option<Problem> = serde_json::from_slice(body).ok();
    let message = problem
        .as_ref()
        .map(Problem::message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("token endpoint answered {status}"));
    match status.as_u16() {
        401 => ConnectorError::NeedsReauth { message },
        400 => {
            let lower = message.to_lowercase();
            let refused = [
                "revoked",
                "invalid",
                "expired",
                "not found",
                "отозван",
                "невалид",
                "истек",
                "истёк",
            ]
            .iter()
            .any(|w| lower.contains(w));
            if refused {
                ConnectorError::NeedsReauth { message }
            } else {
                ConnectorError::Rejected {
                    status: 400,
                    code: problem.and_then(|p| p.title),
                    message,
                }
            }
        }
        403 if problem.is_some() => ConnectorError::NeedsReauth { message },
        403 => ConnectorError::Blocked {
            message: "403 (HTML) from the token endpoint: amoCRM blocked the account or this IP"
                .into(),
        },
        429 => ConnectorError::RateLimited {
            retry_after: None,
            message: "429 from the token endpoint".into(),
        },
        s if s >= 500 => ConnectorError::Transient { message },
        s => ConnectorError::Rejected {
            status: s,
            code: problem.and_then(|p| p.title),
            message,
        },
    }
}

fn token_set(
    resp: AmoTokenResponse,
    mut extra: BTreeMap<String, String>,
    old_refresh: Option<SecretString>,
) -> TokenSet {
    let now = Timestamp::now();
    let expires_at = resp
        .expires_in()
        .and_then(|d| SignedDuration::try_from(d).ok())
        .and_then(|d| now.checked_add(d).ok());
    if let Some(t) = resp.extra_fields().server_time {
        extra.insert("server_time".into(), t.to_string());
    }
    TokenSet {
        access_token: SecretString::from(resp.access_token().secret().to_owned()),
        // amoCRM always rotates; should an answer lack the next token, the old one is kept.
        refresh_token: resp
            .refresh_token()
            .map(|r| SecretString::from(r.secret().to_owned()))
            .or(old_refresh),
        expires_at,
        extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AmoSettings {
        AmoSettings::new(
            "http://127.0.0.1:1".parse().unwrap(),
            "cid",
            SecretString::from("secret"),
            "https://example.com/cb",
        )
    }

    #[test]
    fn authorize_url_has_the_documented_shape() {
        let u = authorize_url(&settings(), "st 1");
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:1/oauth?client_id=cid&state=st+1&mode=post_message"
        );
    }

    #[test]
    fn revoked_refresh_token_needs_reauth() {
        let body = r#"{"hint":"Token has been revoked","title":"Некорректный запрос","type":"https://developers.amocrm.ru/v3/errors/OAuthProblemJson","status":401,"detail":"В запросе отсутствует ряд параметров или параметры невалидны"}"#;
        for status in [400, 401] {
            match classify_token_error(http::StatusCode::from_u16(status).unwrap(), body.as_bytes())
            {
                ConnectorError::NeedsReauth { message } => {
                    assert_eq!(message, "Token has been revoked")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn blocked_and_server_errors() {
        let html = b"<html><head><title>403 Forbidden</title></head></html>";
        assert!(matches!(
            classify_token_error(http::StatusCode::FORBIDDEN, html),
            ConnectorError::Blocked { .. }
        ));
        assert!(matches!(
            classify_token_error(http::StatusCode::BAD_GATEWAY, b"oops"),
            ConnectorError::Transient { .. }
        ));
    }
}
