//! [`B24Settings`] and [`B24Client`]: one portal's HTTP client with its limiter, the retry loop
//! and the two ways to authenticate.
//!
//! Every request is a `POST` with a JSON body to `{portal}/rest/{method}` (OAuth: the token goes
//! in the body's `auth`) or to `{webhook}/{method}` (inbound webhook: the secret is in the
//! path). One attempt is: operating-time pause of the methods involved -> token (refreshed
//! first when known to be expired) -> a slot of the portal's leaky bucket -> send -> classify:
//!
//! | answer | meaning | what happens |
//! |---|---|---|
//! | 200 | success | decoded (a truncated body is `Transient` and fetched again) |
//! | 401 `expired_token` / `invalid_token` | OAuth token refused | one single-flight refresh, then the same request again |
//! | 401 other (`NO_AUTH_FOUND`) | bad webhook / no auth | `Auth` |
//! | 503 `QUERY_LIMIT_EXCEEDED` | bucket full | shared growing pause, `RateLimited` (retried) |
//! | 429 `OPERATION_TIME_LIMIT` | method over its budget | method paused until `operating_reset_at`, retried |
//! | other 5xx, network | passing fault | `Transient` (retried with backoff) |
//! | 400 `Not found` | no such entity | `NotFound` |
//! | other 4xx | refusal | `Rejected` |
//!
//! Retries follow [`rebuy_core::retry::decide`]. Redirects are never followed (a moved portal
//! answers 302; following it would turn the POST into a GET and lose the body).
use crate::batch::{self, Command};
use crate::limits::{Limiter, OperatingBudget};
use crate::wire::{ApiError, BatchResult, Envelope};
use rebuy_core::connector::{ConnectorStats, StatsSnapshot};
use rebuy_core::retry::{Decision, RetryPolicy, decide};
use rebuy_core::{ConnectorError, TokenManager};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{debug, warn};
use url::Url;

/// How the connector authenticates to a portal.
#[derive(Clone)]
pub enum B24Auth {
    /// An OAuth 2.0 app (local or Marketplace); tokens live in a [`TokenManager`].
    OAuth {
        /// `client_id` (`local.…` or `app.…`).
        client_id: String,
        /// `client_secret`.
        client_secret: SecretString,
        /// The app's redirect URI.
        redirect_uri: String,
        /// The token server (`https://oauth.bitrix.info/`); `None` = the portal URL.
        oauth_server: Option<Url>,
    },
    /// An inbound webhook: `https://{portal}/rest/{user_id}/{secret}/`.
    Webhook {
        /// The webhook URL (the secret is in its path).
        url: SecretString,
    },
}

impl std::fmt::Debug for B24Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            B24Auth::OAuth {
                client_id,
                redirect_uri,
                oauth_server,
                ..
            } => f
                .debug_struct("OAuth")
                .field("client_id", client_id)
                .field("redirect_uri", redirect_uri)
                .field("oauth_server", &oauth_server.as_ref().map(Url::as_str))
                .finish_non_exhaustive(),
            B24Auth::Webhook { .. } => f.write_str("Webhook { url: [redacted] }"),
        }
    }
}

/// Settings of one Bitrix24 portal.
#[derive(Debug, Clone)]
pub struct B24Settings {
    /// The portal (`https://example.bitrix24.ru`, or the emulator's `http://127.0.0.1:PORT`).
    pub base_url: Url,
    /// OAuth app or inbound webhook.
    pub auth: B24Auth,
    /// The portal's leaky bucket capacity `X` (50; Enterprise 250).
    pub bucket_capacity: u32,
    /// The bucket's drain `Y` per second (2; Enterprise 5).
    pub drain_per_sec: f64,
    /// Operating-time budget per method and 10 minutes (480 s).
    pub operating_limit_secs: f64,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Timeout of one HTTP request (the cloud cuts requests at 60 s).
    pub request_timeout: Duration,
    /// Commands per `batch` (at most 50).
    pub batch_size: usize,
    /// Fetch the deals' product rows: a full sync lists them as their own chained stream
    /// (2,500 rows per request), incremental deal pages and single deals carry theirs.
    pub product_rows: bool,
    /// Hosts besides `base_url`'s that a `client_endpoint` or `domain` of a token answer or an
    /// event may name (`new-name.bitrix24.ru`, or `host:port` for a port other than the
    /// scheme's default). Any other address is never called.
    pub allowed_hosts: Vec<String>,
    /// The largest answer read; a larger one is refused (`Invalid`) without being buffered.
    pub max_answer_bytes: usize,
}

impl B24Settings {
    /// Cloud defaults for an OAuth app.
    pub fn oauth(
        base_url: Url,
        client_id: &str,
        client_secret: SecretString,
        redirect_uri: &str,
    ) -> Self {
        Self::with_auth(
            base_url,
            B24Auth::OAuth {
                client_id: client_id.into(),
                client_secret,
                redirect_uri: redirect_uri.into(),
                oauth_server: None,
            },
        )
    }

    /// Cloud defaults for an inbound webhook URL (`https://portal/rest/1/secret/`); the portal
    /// URL is taken from it.
    pub fn webhook(url: &str) -> Result<Self, ConnectorError> {
        let parsed = Url::parse(url).map_err(|e| ConnectorError::Invalid {
            path: "webhook_url".into(),
            message: e.to_string(),
        })?;
        let mut base = parsed.clone();
        base.set_path("/");
        base.set_query(None);
        Ok(Self::with_auth(
            base,
            B24Auth::Webhook {
                url: SecretString::from(url.to_owned()),
            },
        ))
    }

    fn with_auth(base_url: Url, auth: B24Auth) -> Self {
        Self {
            base_url,
            auth,
            bucket_capacity: 50,
            drain_per_sec: 2.0,
            operating_limit_secs: 480.0,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(55),
            batch_size: 50,
            product_rows: true,
            allowed_hosts: Vec::new(),
            max_answer_bytes: rebuy_core::body::DEFAULT_MAX_ANSWER_BYTES,
        }
    }

    /// Whether `url` may be called for this portal: http(s) (https only when the portal itself
    /// is https), no credentials in it, and its host and port are the portal's own or listed in
    /// [`Self::allowed_hosts`]. Everything a token answer or an event names passes here before
    /// a request goes to it.
    pub fn endpoint_allowed(&self, url: &Url) -> bool {
        let base = &self.base_url;
        let scheme_ok = match base.scheme() {
            "https" => url.scheme() == "https",
            _ => matches!(url.scheme(), "http" | "https"),
        };
        if !scheme_ok || !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        let Some(host) = url.host_str() else {
            return false;
        };
        let port = url.port_or_known_default();
        if base.host_str() == Some(host) && base.port_or_known_default() == port {
            return true;
        }
        self.allowed_hosts.iter().any(|entry| {
            Url::parse(&format!("{}://{}/", url.scheme(), entry.trim()))
                .ok()
                .is_some_and(|e| e.host_str() == Some(host) && e.port_or_known_default() == port)
        })
    }

    /// Whether a `domain` (`x.bitrix24.ru`, `host:port`) of a token answer or an event is this
    /// portal's or an allowed one (see [`Self::endpoint_allowed`]).
    pub fn domain_allowed(&self, domain: &str) -> bool {
        let domain = domain.trim();
        if domain.is_empty() || domain.contains(['/', '@', '?', '#', '\\']) {
            return false;
        }
        Url::parse(&format!("{}://{domain}/", self.base_url.scheme()))
            .is_ok_and(|u| self.endpoint_allowed(&u))
    }

    /// `base_url` with a trailing slash.
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

    /// The portal's host (and port), the key of its rate limit.
    pub(crate) fn portal_key(&self) -> String {
        let b = &self.base_url;
        format!(
            "{}:{}",
            b.host_str().unwrap_or(""),
            b.port_or_known_default().unwrap_or(0)
        )
    }
}

/// The Bitrix24 connector of one portal. Cheap to clone; clones share the limiter, the token
/// manager and the counters.
#[derive(Clone)]
pub struct B24Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) settings: B24Settings,
    /// `{portal}/rest/` or the webhook URL, with a trailing slash.
    pub(crate) endpoint: Url,
    pub(crate) tokens: Option<Arc<TokenManager>>,
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) budget: OperatingBudget,
    pub(crate) stats: ConnectorStats,
    /// The account currency, fetched once; or why the portal would not tell (no `crm` rights
    /// to currencies, a missing method), also kept so it is asked once.
    pub(crate) currency: tokio::sync::OnceCell<Result<rebuy_core::Currency, ConnectorError>>,
    /// The last refused `client_endpoint` (warned about once, not on every call).
    refused_endpoint: std::sync::Mutex<Option<String>>,
    /// Where the limiter's state goes when the last clone is dropped.
    pub(crate) limiter_saver: rebuy_core::SaverSlot,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let limiter = &self.limiter;
        self.limiter_saver.fire(|| limiter.state());
    }
}

impl std::fmt::Debug for B24Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("B24Client")
            .field("base_url", &self.inner.settings.base_url.as_str())
            .finish_non_exhaustive()
    }
}

/// A JSON body ready to be sent (again).
struct Req<'a> {
    /// The method in the URL (`batch`, `crm.deal.list`).
    method: &'a str,
    /// Methods whose operating budget this request spends (batch: every command's).
    spends: Vec<&'a str>,
    body: Value,
}

impl Req<'_> {
    /// Whether repeating the request can change anything in the portal: any method but a
    /// plain read, a `batch` holding any such method.
    fn is_write(&self) -> bool {
        self.spends.iter().any(|m| !is_read(m))
    }
}

/// Reads by name (`*.list`, `*.get`, `*.fields`, `profile`, `app.info`, `scope`, ...); every
/// other method is taken as a write, the safe side.
pub(crate) fn is_read(method: &str) -> bool {
    let last = method.rsplit('.').next().unwrap_or(method);
    matches!(last, "list" | "get" | "fields" | "info" | "getlist")
        || matches!(method, "profile" | "scope" | "methods" | "batch")
}

impl B24Client {
    /// A client for one portal. `tokens` is required for OAuth and ignored for webhooks.
    pub fn new(
        settings: B24Settings,
        tokens: Option<Arc<TokenManager>>,
    ) -> Result<Self, ConnectorError> {
        let invalid = |path: &str, message: String| ConnectorError::Invalid {
            path: path.into(),
            message,
        };
        if !matches!(settings.base_url.scheme(), "http" | "https")
            || settings.base_url.cannot_be_a_base()
        {
            return Err(invalid(
                "base_url",
                format!("{} is not an http(s) base URL", settings.base_url),
            ));
        }
        if settings.bucket_capacity == 0
            || settings.drain_per_sec.is_nan()
            || settings.drain_per_sec <= 0.0
        {
            return Err(invalid(
                "bucket_capacity",
                "the bucket needs a capacity and a positive drain rate".into(),
            ));
        }
        if !(1..=50).contains(&settings.batch_size) {
            return Err(invalid(
                "batch_size",
                format!("{} is not in 1..=50", settings.batch_size),
            ));
        }
        let (endpoint, tokens) = match &settings.auth {
            B24Auth::OAuth { .. } => {
                let tokens = tokens.ok_or_else(|| {
                    invalid("auth", "an OAuth portal needs a token manager".into())
                })?;
                let ep = settings
                    .base()
                    .join("rest/")
                    .map_err(|e| invalid("base_url", e.to_string()))?;
                (ep, Some(tokens))
            }
            B24Auth::Webhook { url } => {
                let mut u = Url::parse(url.expose_secret())
                    .map_err(|_| invalid("webhook_url", "not a URL".into()))?;
                if !u.path().ends_with('/') {
                    let p = format!("{}/", u.path());
                    u.set_path(&p);
                }
                let segs: Vec<_> = u
                    .path_segments()
                    .map(|s| s.filter(|x| !x.is_empty()).collect())
                    .unwrap_or_default();
                if segs.len() < 3 || segs[segs.len() - 3] != "rest" {
                    return Err(invalid(
                        "webhook_url",
                        "expected https://{portal}/rest/{user_id}/{secret}/".into(),
                    ));
                }
                (u, None)
            }
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("rebuy-bitrix24/", env!("CARGO_PKG_VERSION")))
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .build()
            .map_err(|e| invalid("http client", e.to_string()))?;
        let limiter = Limiter::for_portal(
            &settings.portal_key(),
            settings.bucket_capacity,
            settings.drain_per_sec,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                endpoint,
                tokens,
                limiter,
                budget: OperatingBudget::new(settings.operating_limit_secs),
                settings,
                stats: ConnectorStats::default(),
                currency: tokio::sync::OnceCell::new(),
                limiter_saver: Default::default(),
                refused_endpoint: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &B24Settings {
        &self.inner.settings
    }

    /// The token manager (OAuth portals).
    pub fn tokens(&self) -> Option<&Arc<TokenManager>> {
        self.inner.tokens.as_ref()
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Calls one method with JSON parameters.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: Value,
    ) -> Result<Envelope<T>, ConnectorError> {
        let req = Req {
            method,
            spends: vec![method],
            body: params,
        };
        let budget = &self.inner.budget;
        self.execute(&req, |body| {
            let env: Envelope<T> = decode_json(body)?;
            if let Some(t) = &env.time {
                budget.observe(method, t.operating, t.operating_reset_at);
            }
            Ok(env)
        })
        .await
    }

    /// Sends one `batch`. With `retry_limited`, a command refused for its operating time
    /// makes the whole batch wait and run again (only for reads: writes would repeat).
    pub async fn batch<T: DeserializeOwned>(
        &self,
        commands: &[Command],
        halt: bool,
        retry_limited: bool,
    ) -> Result<BatchResult<T>, ConnectorError> {
        let req = Req {
            method: "batch",
            spends: commands.iter().map(|c| c.method.as_str()).collect(),
            body: batch::body(commands, halt),
        };
        let budget = &self.inner.budget;
        let stats = &self.inner.stats;
        self.execute(&req, |body| {
            let env: Envelope<BatchResult<T>> = decode_json(body)?;
            let res = env.result;
            for c in commands {
                if let Some(t) = res.result_time.get(&c.key) {
                    budget.observe(&c.method, t.operating, t.operating_reset_at);
                }
            }
            if retry_limited {
                for c in commands {
                    if let Some(e) = res.result_error.get(&c.key)
                        && (e.error == "OPERATION_TIME_LIMIT" || e.error == "QUERY_LIMIT_EXCEEDED")
                    {
                        stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                        let wait = budget.on_blocked(
                            &c.method,
                            e.time.as_ref().and_then(|t| t.operating_reset_at),
                        );
                        return Err(ConnectorError::RateLimited {
                            retry_after: Some(wait),
                            message: format!("{} refused inside batch: {}", c.method, e.error),
                        });
                    }
                }
            }
            Ok(res)
        })
        .await
    }

    async fn execute<R>(
        &self,
        req: &Req<'_>,
        decode: impl Fn(&[u8]) -> Result<R, ConnectorError>,
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
                    warn!(method = req.method, attempt, delay_ms = delay.as_millis() as u64, error = %err, "Retrying Bitrix24 request");
                    tokio::time::sleep(delay).await;
                }
                Decision::GiveUp => {
                    debug!(method = req.method, attempt, error = %err, "Bitrix24 request failed");
                    return Err(err);
                }
            }
        }
    }

    /// The portal's REST address as the OAuth server last gave it (`client_endpoint` of the
    /// token answer): a portal that moved to another domain keeps working, since every refresh
    /// brings the current address. Only an address [`B24Settings::endpoint_allowed`] accepts is
    /// followed; any other is refused with a warning (once per address) and the configured
    /// `base_url` serves. `None` also when the tokens carry none usable.
    async fn client_endpoint(&self, m: &TokenManager) -> Option<Url> {
        let tokens = m.tokens().await.ok()?;
        let raw = tokens.extra.get("client_endpoint")?;
        let mut url = Url::parse(raw).ok()?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return None;
        }
        let settings = &self.inner.settings;
        if !settings.endpoint_allowed(&url) {
            let mut last = self
                .inner
                .refused_endpoint
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.as_deref() != Some(raw.as_str()) {
                warn!(
                    portal = %settings.base_url,
                    host = url.host_str().unwrap_or(""),
                    "Not following the client_endpoint of the tokens: its host is neither the portal's nor in allowed_hosts; calls stay on the configured address"
                );
                *last = Some(raw.clone());
            }
            return None;
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        url.set_query(None);
        url.set_fragment(None);
        Some(url)
    }

    async fn attempt<R>(
        &self,
        req: &Req<'_>,
        refreshed: &mut bool,
        decode: &impl Fn(&[u8]) -> Result<R, ConnectorError>,
    ) -> Result<R, ConnectorError> {
        let inner = &self.inner;
        loop {
            let pause = inner.budget.pause_for(&req.spends);
            if !pause.is_zero() {
                debug!(
                    method = req.method,
                    pause_secs = pause.as_secs(),
                    "Waiting for the operating-time budget"
                );
                tokio::time::sleep(pause).await;
                inner.budget.clear_expired();
            }
            let (token, endpoint) = match &inner.tokens {
                Some(m) => {
                    let token = m.access_token().await?;
                    (Some(token), self.client_endpoint(m).await)
                }
                None => (None, None),
            };
            let endpoint = endpoint.as_ref().unwrap_or(&inner.endpoint);
            let mut body = req.body.clone();
            if let (Some(t), Value::Object(m)) = (&token, &mut body) {
                m.insert("auth".into(), Value::String(t.expose().to_owned()));
            }
            let url = endpoint
                .join(req.method)
                .map_err(|e| ConnectorError::Invalid {
                    path: "method".into(),
                    message: e.to_string(),
                })?;
            inner.limiter.wait().await;
            inner.stats.requests.fetch_add(1, Ordering::Relaxed);
            let transport = |e: reqwest::Error| {
                // Never print the URL of a webhook: its path is the secret.
                let what = if e.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                };
                let connect_failed = e.is_connect();
                let message = format!("{} {what}: {}", req.method, e.without_url());
                // A connection never made carried nothing: safe to repeat. Anything later may
                // have run the write.
                if req.is_write() && !connect_failed {
                    ConnectorError::Unconfirmed { message }
                } else {
                    ConnectorError::Transient { message }
                }
            };
            let resp = inner
                .http
                .post(url)
                .json(&body)
                .send()
                .await
                .map_err(transport)?;
            let status = resp.status();
            let limit = inner.settings.max_answer_bytes;
            let bytes = match rebuy_core::body::read_capped(resp, limit).await {
                Ok(b) => b,
                Err(rebuy_core::body::ReadError::Transport(e)) => return Err(transport(e)),
                Err(rebuy_core::body::ReadError::TooLarge { limit }) => {
                    let what = format!(
                        "Bitrix24 {} {}",
                        inner.settings.base_url.host_str().unwrap_or(""),
                        req.method
                    );
                    return Err(rebuy_core::body::ReadError::too_large(limit, &what));
                }
            };
            if status == StatusCode::UNAUTHORIZED {
                let e: ApiError = serde_json::from_slice(&bytes).unwrap_or_default();
                let refreshable = matches!(e.error.as_str(), "expired_token" | "invalid_token");
                match (&token, refreshable, *refreshed) {
                    (Some(t), true, false) => {
                        *refreshed = true;
                        debug!(method = req.method, generation = t.generation, code = %e.error, "Access token refused, refreshing");
                        if let Some(m) = &inner.tokens {
                            m.on_unauthorized(t).await?;
                        }
                        continue;
                    }
                    // The token is fine; the app or webhook lacks the method's scope.
                    _ if e.error == "insufficient_scope" => {
                        return Err(ConnectorError::Rejected {
                            status: 401,
                            code: Some(e.error),
                            message: format!("{}: {}", req.method, e.error_description),
                        });
                    }
                    _ => {
                        return Err(ConnectorError::Auth {
                            message: format!("{}: {} {}", req.method, e.error, e.error_description),
                        });
                    }
                }
            }
            return self.classify(req, status, &bytes, decode);
        }
    }

    fn classify<R>(
        &self,
        req: &Req<'_>,
        status: StatusCode,
        body: &[u8],
        decode: &impl Fn(&[u8]) -> Result<R, ConnectorError>,
    ) -> Result<R, ConnectorError> {
        let inner = &self.inner;
        let api: Option<ApiError> = serde_json::from_slice(body).ok();
        let code = api.as_ref().map(|e| e.error.as_str()).unwrap_or("");
        if code == "QUERY_LIMIT_EXCEEDED"
            || (status == StatusCode::SERVICE_UNAVAILABLE && code.is_empty() && api.is_some())
        {
            inner.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            let pause = inner.limiter.on_limited();
            return Err(ConnectorError::RateLimited {
                retry_after: Some(pause),
                message: format!("{} {}: QUERY_LIMIT_EXCEEDED", status.as_u16(), req.method),
            });
        }
        if code == "OPERATION_TIME_LIMIT" || status == StatusCode::TOO_MANY_REQUESTS {
            inner.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            let reset = api
                .as_ref()
                .and_then(|e| e.time.as_ref())
                .and_then(|t| t.operating_reset_at);
            let mut wait = Duration::ZERO;
            for m in &req.spends {
                wait = wait.max(inner.budget.on_blocked(m, reset));
            }
            return Err(ConnectorError::RateLimited {
                retry_after: Some(wait),
                message: format!("{} {}: OPERATION_TIME_LIMIT", status.as_u16(), req.method),
            });
        }
        if status.is_server_error() {
            let message = format!("{} from Bitrix24 on {}", status.as_u16(), req.method);
            // QUERY_LIMIT_EXCEEDED was handled above; any other 5xx may come after the write.
            return Err(if req.is_write() {
                ConnectorError::Unconfirmed { message }
            } else {
                ConnectorError::Transient { message }
            });
        }
        if status.is_success() {
            inner.limiter.on_success();
            return decode(body).map_err(|e| match e {
                // A 2xx cut short: the write ran, its answer is lost.
                ConnectorError::Transient { message } if req.is_write() => {
                    ConnectorError::Unconfirmed { message }
                }
                e => e,
            });
        }
        let e = api.unwrap_or_default();
        Err(api_error(status.as_u16(), &e, req.method))
    }

    /// The account currency (`crm.currency.base.get`), fetched once. A portal that refuses
    /// the method (rights, scope, an implementation without it) answers the same refusal
    /// every time without asking again.
    pub(crate) async fn currency(&self) -> Result<rebuy_core::Currency, ConnectorError> {
        self.inner
            .currency
            .get_or_try_init(|| async {
                let env: Envelope<Value> = match self
                    .call("crm.currency.base.get", serde_json::json!({}))
                    .await
                {
                    Ok(env) => env,
                    Err(e) if e.is_unavailable() => return Ok(Err(e)),
                    Err(e) => return Err(e),
                };
                let code = env
                    .result
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("RUB")
                    .to_owned();
                Ok::<_, ConnectorError>(Ok(rebuy_core::Currency::new(&code)))
            })
            .await?
            .clone()
    }

    /// The currency of amounts that name none: the account's, or RUB where the portal would
    /// not tell it (the sync reports that as a warning on the account).
    pub(crate) async fn default_currency(&self) -> Result<rebuy_core::Currency, ConnectorError> {
        match self.currency().await {
            Err(e) if e.is_unavailable() => Ok(rebuy_core::Currency::new("RUB")),
            r => r,
        }
    }
}

/// Maps an API error body to a connector error.
pub(crate) fn api_error(status: u16, e: &ApiError, what: &str) -> ConnectorError {
    let desc = e.error_description.trim();
    if desc.eq_ignore_ascii_case("Not found") || e.error == "NOT_FOUND" {
        return ConnectorError::NotFound {
            what: format!("{what}: {desc}"),
        };
    }
    match e.error.as_str() {
        "QUERY_LIMIT_EXCEEDED" | "OPERATION_TIME_LIMIT" => ConnectorError::RateLimited {
            retry_after: None,
            message: format!("{what}: {}", e.error),
        },
        "expired_token" | "invalid_token" | "NO_AUTH_FOUND" => ConnectorError::Auth {
            message: format!("{what}: {} {desc}", e.error),
        },
        "INTERNAL_SERVER_ERROR" | "ERROR_UNEXPECTED_ANSWER" => ConnectorError::Transient {
            message: format!("{what}: {}", e.error),
        },
        code => ConnectorError::Rejected {
            status,
            code: (!code.is_empty()).then(|| code.to_owned()),
            message: format!("{what}: {}", if desc.is_empty() { "refused" } else { desc }),
        },
    }
}

/// Decodes JSON naming the failing path. A body that ends early is `Transient` (fetched
/// again); any other mismatch is `Invalid`.
pub(crate) fn decode_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ConnectorError> {
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

/// Decodes a JSON value already parsed, naming the path below `prefix`.
pub(crate) fn decode_value<T: DeserializeOwned>(
    v: Value,
    prefix: &str,
) -> Result<T, ConnectorError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        ConnectorError::Invalid {
            path: if path == "." {
                prefix.to_owned()
            } else {
                format!("{prefix}.{path}")
            },
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_name_the_path() {
        let body = br#"{"result":{"result":{"c00":[{"ID":"1","DATE_CREATE":"2024-01-01T00:00:00+03:00","DATE_MODIFY":"2024-01-01T00:00:00+03:00","OPPORTUNITY":"abc"}]}}}"#;
        let err = decode_json::<Envelope<BatchResult<Vec<crate::wire::Deal>>>>(body).unwrap_err();
        match err {
            ConnectorError::Invalid { path, .. } => {
                assert_eq!(path, "result.result.c00[0].OPPORTUNITY")
            }
            other => panic!("{other:?}"),
        }
        let err = decode_json::<Envelope<Value>>(br#"{"result":{"a":"#).unwrap_err();
        assert!(matches!(err, ConnectorError::Transient { .. }));
    }

    #[test]
    fn only_the_portal_and_allowed_hosts_may_be_called() {
        let mut s = B24Settings::oauth(
            "https://x.bitrix24.ru".parse().unwrap(),
            "local.1",
            SecretString::from("s"),
            "https://r",
        );
        let ok = |s: &B24Settings, u: &str| s.endpoint_allowed(&Url::parse(u).unwrap());
        assert!(ok(&s, "https://x.bitrix24.ru/rest/"));
        assert!(ok(&s, "https://X.Bitrix24.ru:443/rest/"));
        assert!(
            !ok(&s, "http://x.bitrix24.ru/rest/"),
            "no downgrade to plain HTTP"
        );
        assert!(!ok(&s, "https://x.bitrix24.ru:8443/rest/"), "another port");
        assert!(!ok(&s, "https://evil.example/rest/"));
        assert!(!ok(&s, "https://x.bitrix24.ru.evil.example/rest/"));
        assert!(!ok(&s, "https://user@x.bitrix24.ru/rest/"));
        assert!(!s.domain_allowed("evil.example"));
        assert!(s.domain_allowed("x.bitrix24.ru"));
        assert!(!s.domain_allowed("x.bitrix24.ru/evil"));
        s.allowed_hosts = vec!["new.bitrix24.ru".into(), "alt.example:8443".into()];
        assert!(ok(&s, "https://new.bitrix24.ru/rest/"));
        assert!(!ok(&s, "https://new.bitrix24.ru:444/rest/"));
        assert!(ok(&s, "https://alt.example:8443/rest/"));
        assert!(!ok(&s, "https://alt.example/rest/"));
        assert!(s.domain_allowed("new.bitrix24.ru"));
    }

    #[test]
    fn webhook_settings_take_the_portal_from_the_url() {
        let s = B24Settings::webhook("https://x.bitrix24.ru/rest/1/abc/").unwrap();
        assert_eq!(s.base_url.as_str(), "https://x.bitrix24.ru/");
        assert!(B24Client::new(s, None).is_ok());
        let bad = B24Settings::webhook("https://x.bitrix24.ru/abc/").unwrap();
        assert!(B24Client::new(bad, None).is_err());
    }
}
