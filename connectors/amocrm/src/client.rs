//! The HTTP client of one amoCRM portal: settings, the request loop, response classification.
//!
//! Every request goes through [`AmoClient::execute`]:
//! 1. take a valid access token from the [`TokenManager`] (it refreshes an expired one first);
//! 2. wait for a slot of the portal's [`Limiter`] (every attempt, retries included);
//! 3. send with `Authorization: Bearer`;
//! 4. a 401 reports the token to [`TokenManager::on_unauthorized`] (single-flight refresh) and
//!    repeats the request once with the new token; a second 401 is [`ConnectorError::Auth`];
//! 5. classify: 429 -> `RateLimited` (and the limiter halves its rate), 5xx / connection
//!    errors / timeouts / truncated JSON -> `Transient`, non-JSON 403 -> `Blocked` (never
//!    retried: retrying lengthens a block), other answers go to the caller's decoder;
//! 6. retryable errors are retried after [`rebuy_core::retry::decide`]'s delay (full jitter),
//!    up to the policy's attempt cap.
//!
//! A write (any method but `GET`) is repeated here only when it surely did not run: a 429, or
//! a connection that could not be made. Once its body may have reached amoCRM (the
//! connection dropped after sending, a timeout, a gateway 5xx, an answer cut short) it fails
//! as [`ConnectorError::Unconfirmed`], and the caller looks in the CRM before sending it again.
//!
//! Nothing serialises requests but the limiter: concurrent calls on one client are fine and
//! keep the limiter's pipe full when a response takes longer than a slot.
use crate::limits::Limiter;
use crate::list::Prefetch;
use http::{Method, StatusCode};
use rebuy_core::auth::IssuedToken;
use rebuy_core::connector::{ConnectorStats, StatsSnapshot};
use rebuy_core::retry::{Decision, RetryPolicy, decide};
use rebuy_core::{ConnectorError, Currency, TokenManager};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::OnceCell;
use tracing::{debug, warn};
use url::Url;

/// How to reach and use one amoCRM portal.
#[derive(Debug, Clone)]
pub struct AmoSettings {
    /// The account's address, e.g. `https://example.amocrm.ru` or an emulator's
    /// `http://127.0.0.1:PORT`. API paths are resolved below it.
    pub base_url: Url,
    /// The integration's id (a UUID).
    pub client_id: String,
    /// The integration's secret key.
    pub client_secret: SecretString,
    /// The integration's redirect URI, sent with every token request as amoCRM expects.
    pub redirect_uri: String,
    /// Request rate of this portal; amoCRM allows 7.
    pub requests_per_sec: u32,
    /// Records per listing page; amoCRM caps at 250.
    pub page_limit: u32,
    /// Retry policy of transient failures and rate limits.
    pub retry: RetryPolicy,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// Listing pages fetched ahead of the caller (full listings in id order only); 0 disables.
    pub prefetch: usize,
    /// The largest answer read; a larger one is refused (`Invalid`) without being buffered.
    pub max_answer_bytes: usize,
}

impl AmoSettings {
    /// Settings with amoCRM's defaults: 7 requests/s, 250 records/page, default retry policy,
    /// 20 s timeout (the official library's), 2 pages prefetched.
    pub fn new(
        base_url: Url,
        client_id: impl Into<String>,
        client_secret: SecretString,
        redirect_uri: impl Into<String>,
    ) -> Self {
        Self {
            base_url,
            client_id: client_id.into(),
            client_secret,
            redirect_uri: redirect_uri.into(),
            requests_per_sec: 7,
            page_limit: 250,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(20),
            prefetch: 2,
            max_answer_bytes: rebuy_core::body::DEFAULT_MAX_ANSWER_BYTES,
        }
    }

    /// `base_url` with a trailing slash, so relative API paths resolve below it.
    pub(crate) fn base(&self) -> Url {
        let mut base = self.base_url.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);
        base
    }
}

/// The amoCRM connector of one portal. Cheap to clone (an `Arc` inside); all clones share the
/// limiter, the token manager, the counters and the prefetched pages.
#[derive(Clone)]
pub struct AmoClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) base: Url,
    pub(crate) settings: AmoSettings,
    pub(crate) tokens: Arc<TokenManager>,
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) stats: ConnectorStats,
    /// The account currency, fetched once (`/api/v4/account`).
    pub(crate) currency: OnceCell<Currency>,
    /// Task type id used for letters (`TaskKind::Letter`), looked up once.
    pub(crate) letter_task_type: OnceCell<u64>,
    /// Names and unit prices of catalog elements seen on leads, by element id.
    pub(crate) products:
        std::sync::Mutex<std::collections::HashMap<u64, (String, rust_decimal::Decimal)>>,
    pub(crate) prefetch: Prefetch,
    /// Where the limiter's state goes when the last clone is dropped.
    pub(crate) limiter_saver: rebuy_core::SaverSlot,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let limiter = &self.limiter;
        self.limiter_saver.fire(|| limiter.state());
    }
}

impl std::fmt::Debug for AmoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmoClient")
            .field("base_url", &self.inner.base.as_str())
            .finish_non_exhaustive()
    }
}

/// A request, ready to be sent (again).
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) url: Url,
    /// JSON body.
    pub(crate) body: Option<Vec<u8>>,
}

impl Req {
    /// Whether repeating the request can change anything in the CRM.
    fn is_write(&self) -> bool {
        self.method != Method::GET && self.method != Method::HEAD
    }

    pub(crate) fn get(url: Url) -> Self {
        Self {
            method: Method::GET,
            url,
            body: None,
        }
    }
}

/// What came back, before the caller's decoder sees it.
struct Reply {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: bytes::Bytes,
}

impl AmoClient {
    /// A client for one portal. Fails only on unusable settings (zero rate, bad base URL).
    pub fn new(settings: AmoSettings, tokens: Arc<TokenManager>) -> Result<Self, ConnectorError> {
        let rate =
            NonZeroU32::new(settings.requests_per_sec).ok_or_else(|| ConnectorError::Invalid {
                path: "requests_per_sec".into(),
                message: "must be at least 1".into(),
            })?;
        if !matches!(settings.base_url.scheme(), "http" | "https")
            || settings.base_url.cannot_be_a_base()
        {
            return Err(ConnectorError::Invalid {
                path: "base_url".into(),
                message: format!("{} is not an http(s) base URL", settings.base_url),
            });
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("rebuy-amocrm/", env!("CARGO_PKG_VERSION")))
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(5)))
            // The API never redirects a valid call; a redirect would carry the bearer token to
            // wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ConnectorError::Invalid {
                path: "http client".into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base: settings.base(),
                limiter: Limiter::for_portal(
                    &format!(
                        "{}:{}",
                        settings.base_url.host_str().unwrap_or(""),
                        settings.base_url.port_or_known_default().unwrap_or(0)
                    ),
                    rate,
                ),
                settings,
                tokens,
                stats: ConnectorStats::default(),
                currency: OnceCell::new(),
                letter_task_type: OnceCell::new(),
                products: Default::default(),
                prefetch: Prefetch::default(),
                limiter_saver: Default::default(),
            }),
        })
    }

    /// The settings this client was built with.
    pub fn settings(&self) -> &AmoSettings {
        &self.inner.settings
    }

    /// The token manager of this portal.
    pub fn tokens(&self) -> &Arc<TokenManager> {
        &self.inner.tokens
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// An API URL below the base: `path` is relative (`api/v4/leads`).
    pub(crate) fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, ConnectorError> {
        let mut url = self
            .inner
            .base
            .join(path)
            .map_err(|e| ConnectorError::Invalid {
                path: "url".into(),
                message: format!("{path}: {e}"),
            })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// Sends `req` with retries and the 401 rule; `decode` turns any answer not handled here
    /// (2xx, 4xx other than 401/403-HTML/429) into the result. A `Transient` error from `decode`
    /// (a truncated body) is retried like any other.
    pub(crate) async fn execute<R>(
        &self,
        req: &Req,
        decode: impl Fn(StatusCode, &[u8]) -> Result<R, ConnectorError>,
    ) -> Result<R, ConnectorError> {
        let policy = &self.inner.settings.retry;
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let err = match self.attempt(req, &mut refreshed, &decode).await {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            if matches!(err, ConnectorError::Transient { .. }) {
                self.inner.stats.transient.fetch_add(1, Ordering::Relaxed);
            }

            match decide(&err, attempt, policy, rand::random::<f64>()) {
                Decision::Retry(delay) => {
                    self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                    warn!(method = %req.method, path = req.url.path(), attempt, delay_ms = delay.as_millis() as u64, error = %err, "Retrying amoCRM request");
                    tokio::time::sleep(delay).await;
                }
                Decision::GiveUp => {
                    debug!(method = %req.method, path = req.url.path(), attempt, error = %err, "amoCRM request failed");
                    return Err(err);
                }
            }
        }
    }

    async fn attempt<R>(
        &self,
        req: &Req,
        refreshed: &mut bool,
        decode: &impl Fn(StatusCode, &[u8]) -> Result<R, ConnectorError>,
    ) -> Result<R, ConnectorError> {
        loop {
            let token = self.inner.tokens.access_token().await?;
            let reply = self.send(req, &token).await?;
            if reply.status == StatusCode::UNAUTHORIZED {
                let message = problem_text(&reply.body, "401 unauthorized");
                if *refreshed {
                    return Err(ConnectorError::Auth { message });
                }
                *refreshed = true;
                debug!(
                    path = req.url.path(),
                    generation = token.generation,
                    "Access token refused, refreshing"
                );
                self.inner.tokens.on_unauthorized(&token).await?;
                continue;
            }
            return self.classify(req, reply, decode);
        }
    }

    async fn send(&self, req: &Req, token: &IssuedToken) -> Result<Reply, ConnectorError> {
        self.inner.limiter.wait().await;
        self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut builder = self
            .inner
            .http
            .request(req.method.clone(), req.url.clone())
            .bearer_auth(token.expose())
            .header(http::header::ACCEPT, "application/json");
        if let Some(body) = &req.body {
            builder = builder
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let transport = |e: reqwest::Error| {
            // reqwest's message names the URL (never the token, which is a header).
            let what = if e.is_timeout() {
                "timed out"
            } else {
                "failed"
            };
            let message = format!("{} {} {what}: {e}", req.method, req.url.path());
            // A connection never made carried nothing: safe to repeat, write or not.
            if req.is_write() && !e.is_connect() {
                ConnectorError::Unconfirmed { message }
            } else {
                ConnectorError::Transient { message }
            }
        };
        let resp = builder.send().await.map_err(transport)?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let limit = self.inner.settings.max_answer_bytes;
        let body = match rebuy_core::body::read_capped(resp, limit).await {
            Ok(b) => bytes::Bytes::from(b),
            Err(rebuy_core::body::ReadError::Transport(e)) => return Err(transport(e)),
            Err(rebuy_core::body::ReadError::TooLarge { limit }) => {
                let what = format!(
                    "amoCRM {} {} {}",
                    self.inner.base.host_str().unwrap_or(""),
                    req.method,
                    req.url.path()
                );
                return Err(rebuy_core::body::ReadError::too_large(limit, &what));
            }
        };
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }

    fn classify<R>(
        &self,
        req: &Req,
        reply: Reply,
        decode: &impl Fn(StatusCode, &[u8]) -> Result<R, ConnectorError>,
    ) -> Result<R, ConnectorError> {
        let status = reply.status;
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.inner
                .stats
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
            self.inner.limiter.on_rate_limited();
            return Err(ConnectorError::RateLimited {
                retry_after: reply.retry_after,
                message: format!("429 from amoCRM on {} {}", req.method, req.url.path()),
            });
        }
        if status == StatusCode::FORBIDDEN && !looks_like_json(&reply.body) {
            return Err(ConnectorError::Blocked {
                message: format!(
                    "403 (HTML) on {} {}: amoCRM blocked the account or this IP; ask amoCRM support to lift it",
                    req.method,
                    req.url.path()
                ),
            });
        }
        if status.is_server_error() {
            let message = format!("{status} from amoCRM on {} {}", req.method, req.url.path());
            // A 503 is the gateway refusing before the API ran; other 5xx may come after.
            return Err(
                if req.is_write() && status != StatusCode::SERVICE_UNAVAILABLE {
                    ConnectorError::Unconfirmed { message }
                } else {
                    ConnectorError::Transient { message }
                },
            );
        }
        self.inner.limiter.on_success();
        decode(status, &reply.body).map_err(|e| match e {
            // A 2xx cut short: the write ran, its answer is lost.
            ConnectorError::Transient { message } if req.is_write() => {
                ConnectorError::Unconfirmed { message }
            }
            e => e,
        })
    }

    /// `GET` a JSON document: `Ok(None)` on 204 (amoCRM's "nothing here"), `NotFound` on 404.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &self,
        url: Url,
    ) -> Result<Option<T>, ConnectorError> {
        let req = Req::get(url);
        self.execute(&req, |status, body| match status.as_u16() {
            204 => Ok(None),
            200..=299 => decode_json(body).map(Some),
            404 => Err(ConnectorError::NotFound {
                what: req.url.path().to_owned(),
            }),
            _ => Err(rejected(status, body)),
        })
        .await
    }

    /// The account currency, fetched once.
    pub(crate) async fn currency(&self) -> Result<Currency, ConnectorError> {
        self.inner
            .currency
            .get_or_try_init(|| async {
                let account = rebuy_core::Connector::account(self).await?;
                Ok::<_, ConnectorError>(account.currency)
            })
            .await
            .cloned()
    }
}

fn looks_like_json(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{' || b == b'[')
}

/// Decodes JSON naming the failing path. A body that ends early (the connection dropped, a
/// proxy cut it) is `Transient` so it is fetched again; any other mismatch is `Invalid`.
///
/// Path tracking doubles the cost of decoding a page, so a body is first decoded plainly and
/// only a failing one is decoded again with `serde_path_to_error` to name the path.
pub(crate) fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ConnectorError> {
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.classify() == serde_json::error::Category::Eof {
            ConnectorError::Transient {
                message: format!("truncated JSON body at {path}: {inner}"),
            }
        } else {
            ConnectorError::Invalid {
                path,
                message: inner.to_string(),
            }
        }
    })?;
    de.end().map_err(|e| ConnectorError::Invalid {
        path: ".".into(),
        message: e.to_string(),
    })?;
    Ok(value)
}

/// The text of a problem body, or `fallback` when it is not one.
pub(crate) fn problem_text(body: &[u8], fallback: &str) -> String {
    match serde_json::from_slice::<crate::wire::Problem>(body) {
        Ok(p) if !p.message().is_empty() => p.message(),
        _ => fallback.to_owned(),
    }
}

/// A permanent refusal from a 4xx answer, with the validation errors spelled out.
pub(crate) fn rejected(status: StatusCode, body: &[u8]) -> ConnectorError {
    let problem: crate::wire::Problem = serde_json::from_slice(body).unwrap_or_default();
    let mut message = problem.message();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_owned();
    }
    let mut code = problem.title.clone();
    for ve in &problem.validation_errors {
        for e in &ve.errors {
            if code.is_none() || code == problem.title {
                code = e.code.clone().or(code);
            }
            message.push_str(&format!(
                "; request_id {}: {} {}: {}",
                ve.request_id.0,
                e.path.as_deref().unwrap_or("?"),
                e.code.as_deref().unwrap_or("?"),
                e.detail.as_deref().unwrap_or("")
            ));
        }
    }
    ConnectorError::Rejected {
        status: status.as_u16(),
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_json_names_the_path() {
        let body =
            br#"{"_embedded":{"leads":[{"id":1},{"id":2},{"id":3},{"id":4,"price":"abc"}]}}"#;
        let err = decode_json::<crate::wire::ListPage<crate::wire::Leads>>(body).unwrap_err();
        match err {
            ConnectorError::Invalid { path, .. } => assert_eq!(path, "_embedded.leads[3].price"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_json_is_transient() {
        let body = br#"{"_embedded":{"leads":[{"id":1},{"id":2"#;
        let err = decode_json::<crate::wire::ListPage<crate::wire::Leads>>(body).unwrap_err();
        assert!(matches!(err, ConnectorError::Transient { .. }), "{err:?}");
        let err = decode_json::<crate::wire::ListPage<crate::wire::Leads>>(b"").unwrap_err();
        assert!(matches!(err, ConnectorError::Transient { .. }), "{err:?}");
    }

    #[test]
    fn validation_errors_are_spelled_out() {
        let body = br#"{"validation-errors":[{"request_id":"0","errors":[{"code":"NotSupportedChoice",
            "path":"custom_fields_values.0.field_id","detail":"The value you selected is not a valid choice."}]}],
            "title":"Bad Request","type":"https://httpstatus.es/400","status":400,"detail":"Request validation failed"}"#;
        match rejected(StatusCode::BAD_REQUEST, body) {
            ConnectorError::Rejected {
                status,
                code,
                message,
            } => {
                assert_eq!(status, 400);
                assert_eq!(code.as_deref(), Some("NotSupportedChoice"));
                assert!(
                    message.contains("custom_fields_values.0.field_id"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn base_gets_a_trailing_slash() {
        let s = AmoSettings::new(
            "http://127.0.0.1:9/x".parse().unwrap(),
            "id",
            SecretString::from("s"),
            "https://r",
        );
        assert_eq!(
            s.base().join("api/v4/leads").unwrap().as_str(),
            "http://127.0.0.1:9/x/api/v4/leads"
        );
    }
}
