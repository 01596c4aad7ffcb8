//! Validation of the merged document into a typed [`Config`], collecting every problem.
use crate::analytics::Settings as AnalyticsSettings;
use rebuy_core::{CrmKind, PortalId};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;

/// One problem of a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file.
    pub file: String,
    /// The key path (`portal[1].auth.client_id`); empty for the whole file.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigProblem {
    /// Builds a problem.
    pub fn new(file: &str, key: &str, reason: &str) -> Self {
        Self {
            file: file.to_owned(),
            key: key.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigProblem {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the portals' redb files live.
    pub data_dir: PathBuf,
    /// The portals.
    pub portals: Vec<PortalConfig>,
    /// The server settings.
    pub server: ServerSettings,
}

impl Config {
    /// A portal by id.
    pub fn portal(&self, id: &str) -> Option<&PortalConfig> {
        self.portals.iter().find(|p| p.id.0 == id)
    }
}

/// How rebuy authenticates to a portal.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// OAuth 2.0 (amoCRM integrations, Bitrix24 local/marketplace apps).
    OAuth {
        /// Client (integration / app) id.
        client_id: String,
        /// Client secret, read from the env var named in the file.
        client_secret: SecretString,
        /// Redirect URI registered with the CRM.
        redirect_uri: String,
        /// Bitrix24 OAuth server base URL (`https://oauth.bitrix.info`); defaults to the portal.
        oauth_server: Option<String>,
    },
    /// amoCRM long-lived token of a private integration.
    LongLivedToken {
        /// The token, read from the env var named in the file.
        token: SecretString,
    },
    /// Bitrix24 inbound webhook URL (`https://x.bitrix24.ru/rest/1/secret/`).
    Webhook {
        /// The URL, read from the env var named in the file (it contains the secret).
        url: SecretString,
    },
}

/// Sync tunables of a portal.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// Incremental sync re-reads this many seconds before its cursor, to absorb clock skew and
    /// same-second updates.
    pub overlap_secs: u64,
    /// Records per page requested (amoCRM caps at 250).
    pub page_limit: u32,
    /// Concurrent listings (entity kinds fetched at once; they share the rate limiter).
    pub concurrency: usize,
    /// Hours between reconciliations of deal ids, for CRMs without a deletion log (Bitrix24).
    pub reconcile_interval_hours: u64,
    /// Bitrix24: fetch the product rows of won deals while listing deals (needed by
    /// consumption-cycle rules; costs extra batch requests).
    pub product_rows: bool,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            overlap_secs: 300,
            page_limit: 250,
            concurrency: 3,
            reconcile_interval_hours: 24,
            product_rows: true,
        }
    }
}

/// One portal.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// Portal id (file name of its store; letters, digits, `-`, `_`).
    pub id: PortalId,
    /// Which CRM.
    pub kind: CrmKind,
    /// Base URL of the account (`https://shop.amocrm.ru`, `https://shop.bitrix24.ru`, or an
    /// emulator's `http://127.0.0.1:PORT`).
    pub base_url: url::Url,
    /// The portal's IANA time zone (business hours, local dates).
    pub time_zone: jiff::tz::TimeZone,
    /// Name of that time zone.
    pub time_zone_name: String,
    /// Request rate ceiling override (requests/s); `None` = the CRM's documented limit.
    pub requests_per_sec: Option<u32>,
    /// Authentication.
    pub auth: AuthConfig,
    /// Sync tunables.
    pub sync: SyncSettings,
    /// Analytics settings (sale definition, thresholds).
    pub analytics: AnalyticsSettings,
    /// Where playbook names are looked up when the mapping sets no `playbooks_dir`: the
    /// `playbooks/` directory beside the config file, when it exists (set by [`super::load`]).
    pub playbooks_dir: Option<std::path::PathBuf>,
    /// The raw `[portal.mapping]` table, read by the playbooks and write-back.
    pub mapping: serde_json::Value,
    /// amoCRM: the secret path segment of this portal's webhook URL
    /// (`/hooks/amocrm/{portal}/{secret}`).
    pub webhook_secret: Option<SecretString>,
    /// Bitrix24: the application token of an outgoing webhook configured by hand (apps receive
    /// theirs at install instead).
    pub application_token: Option<SecretString>,
    /// Bitrix24: hosts besides `base_url`'s that a `client_endpoint` or `domain` of a token
    /// answer or an event may name (a portal renamed to another domain); `host` or `host:port`.
    pub allowed_hosts: Vec<String>,
    /// Largest CRM answer read, in bytes (`max_answer_mib`, default 64 MiB): a larger one is
    /// refused unread with an error naming the portal and the endpoint.
    pub max_answer_bytes: usize,
}

/// `[server]`: the long-lived `rebuy serve` process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address.
    pub listen: String,
    /// The URL the CRMs reach this server at (webhook and OAuth redirect URLs are built on it).
    pub public_url: Option<String>,
    /// Minutes between incremental syncs of a portal (jittered).
    pub sync_interval_mins: u64,
    /// Local hour (portal time zone) of the daily funnel moves and touch planning.
    pub daily_hour: u8,
    /// Seconds between outbox drains.
    pub outbox_interval_secs: u64,
    /// The environment variable holding the bearer token `/metrics` asks for on `listen`.
    pub metrics_token_env: Option<String>,
    /// A separate address where `/metrics` is served without a token (keep it internal).
    pub metrics_listen: Option<String>,
    /// Failed attempts after which a webhook moves to the dead-letter table.
    pub inbox_max_attempts: u32,
    /// Days a webhook's dedup key is kept (a redelivery within them has no second effect).
    pub inbox_dedupe_days: u32,
    /// The token of `metrics_token_env`, read at resolution.
    #[serde(skip)]
    pub metrics_token: Option<SecretString>,
    /// Most connections open at once; past it the oldest idle one is closed.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (also the idle timeout of a
    /// kept-alive connection).
    pub header_timeout_secs: u64,
    /// Longest pause, in seconds, between two pieces of a request body.
    pub body_timeout_secs: u64,
    /// Seconds a webhook, OAuth, health or metrics request may take in all (408 after it).
    pub request_timeout_secs: u64,
    /// Seconds shutdown waits for requests in flight before closing their connections.
    pub shutdown_grace_secs: u64,
    /// `[server.ui]`: the dashboard (resolved separately: it reads passwords from the
    /// environment).
    #[serde(skip)]
    pub ui: UiConfig,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            public_url: None,
            sync_interval_mins: 15,
            daily_hour: 9,
            outbox_interval_secs: 10,
            metrics_token_env: None,
            metrics_listen: None,
            inbox_max_attempts: 10,
            inbox_dedupe_days: 7,
            metrics_token: None,
            max_connections: 1024,
            header_timeout_secs: 10,
            body_timeout_secs: 10,
            request_timeout_secs: 30,
            shutdown_grace_secs: 3,
            ui: UiConfig::default(),
        }
    }
}

impl ServerSettings {
    /// The listener's timeouts and connection cap.
    pub fn limits(&self) -> crate::server::listen::Limits {
        use std::time::Duration;
        crate::server::listen::Limits {
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            body_timeout: Duration::from_secs(self.body_timeout_secs),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            max_connections: self.max_connections,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        }
    }
}

/// `[server.ui]`: the dashboard under `/ui`. Without users (from the table or from
/// `REBUY_UI_USER` / `REBUY_UI_PASSWORD`) it is off: there is no anonymous access.
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// Whether `/ui` is served at all (default true; it still needs a user).
    pub enabled: bool,
    /// Who may log in.
    pub users: Vec<UiUser>,
    /// How long a login lasts.
    pub session_ttl: std::time::Duration,
    /// Interface language when neither `?lang=`, the cookie nor `Accept-Language` decide:
    /// `en` or `ru`.
    pub default_lang: String,
    /// Mark cookies `Secure` (default true; false only for plain-HTTP set-ups such as tests).
    pub cookie_secure: bool,
    /// How long a portal's analysis is reused by the pages before it is computed again.
    pub cache_ttl: std::time::Duration,
    /// The header a reverse proxy puts the client's address in (`X-Real-IP`), for the
    /// per-address login limit; unset: the connection's peer address.
    pub client_ip_header: Option<String>,
}

impl UiConfig {
    /// Users whose password is not an argon2 hash (plain text or unsalted `sha256:`), with
    /// what to tell the operator.
    pub fn weak_passwords(&self) -> Vec<(String, crate::config::passwords::PasswordForm)> {
        crate::config::passwords::weak_passwords(
            self.users.iter().map(|u| (u.name.as_str(), &u.password)),
        )
    }
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            users: Vec::new(),
            session_ttl: std::time::Duration::from_secs(8 * 3600),
            default_lang: "en".into(),
            cookie_secure: true,
            cache_ttl: std::time::Duration::from_secs(300),
            client_ip_header: None,
        }
    }
}

/// One dashboard login.
#[derive(Debug, Clone)]
pub struct UiUser {
    /// Login name.
    pub name: String,
    /// The password as the env var holds it: an argon2 PHC string (`rebuy hash-password`),
    /// or, deprecated, `sha256:<64 hex digits>` (its SHA-256) or the password itself.
    pub password: SecretString,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUi {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    users: Vec<RawUiUser>,
    #[serde(default)]
    session_hours: Option<f64>,
    #[serde(default)]
    default_lang: Option<String>,
    #[serde(default)]
    cookie_secure: Option<bool>,
    #[serde(default)]
    cache_ttl_secs: Option<u64>,
    #[serde(default)]
    client_ip_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUiUser {
    name: String,
    password_env: String,
}

/// Resolves `[server.ui]` (absent: defaults), reading passwords from the environment and
/// falling back to `REBUY_UI_USER` / `REBUY_UI_PASSWORD`, `REBUY_UI_COOKIE_SECURE` and
/// `REBUY_UI_CACHE_TTL_SECS` for what the table does not set.
fn resolve_ui(
    cx: &mut Ctx<'_>,
    value: Option<&serde_json::Value>,
    env: &dyn Fn(&str) -> Option<String>,
) -> UiConfig {
    let mut ui = UiConfig::default();
    let raw = match value {
        Some(v) => match cx.parse::<RawUi>("server.ui", v) {
            Some(r) => Some(r),
            None => return ui,
        },
        None => None,
    };
    let env_flag = |k: &str| {
        env(k).map(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "no"))
    };
    ui.cookie_secure = raw
        .as_ref()
        .and_then(|r| r.cookie_secure)
        .or_else(|| env_flag("REBUY_UI_COOKIE_SECURE"))
        .unwrap_or(true);
    let ttl = raw
        .as_ref()
        .and_then(|r| r.cache_ttl_secs)
        .or_else(|| env("REBUY_UI_CACHE_TTL_SECS").and_then(|v| v.trim().parse().ok()));
    if let Some(t) = ttl {
        ui.cache_ttl = std::time::Duration::from_secs(t);
    }
    let Some(raw) = raw else {
        // No table: the environment's single admin, if set.
        ui.users = env_user(env).into_iter().collect();
        return ui;
    };
    ui.enabled = raw.enabled.unwrap_or(true);
    if let Some(h) = raw.client_ip_header {
        let h = h.trim();
        if axum::http::HeaderName::from_bytes(h.as_bytes()).is_ok() {
            ui.client_ip_header = Some(h.to_ascii_lowercase());
        } else {
            cx.problem(
                "server.ui.client_ip_header",
                format!("{h:?} is not an HTTP header name"),
            );
        }
    }
    if let Some(h) = raw.session_hours {
        if h.is_finite() && h > 0.0 && h <= 24.0 * 90.0 {
            ui.session_ttl = std::time::Duration::from_secs_f64(h * 3600.0);
        } else {
            cx.problem(
                "server.ui.session_hours",
                format!("{h} is not between 0 and 2160 hours (90 days)"),
            );
        }
    }
    if let Some(l) = raw.default_lang {
        match l.trim().to_ascii_lowercase().as_str() {
            "en" | "ru" => ui.default_lang = l.trim().to_ascii_lowercase(),
            _ => cx.problem(
                "server.ui.default_lang",
                format!("{l:?} is not a language of the dashboard: use \"en\" or \"ru\""),
            ),
        }
    }
    let mut names = HashSet::new();
    for (i, u) in raw.users.into_iter().enumerate() {
        let key = format!("server.ui.users[{i}]");
        let name = u.name.trim().to_owned();
        if name.is_empty() {
            cx.problem(&format!("{key}.name"), "is empty");
            continue;
        }
        if !names.insert(name.clone()) {
            cx.problem(&format!("{key}.name"), format!("duplicate user {name:?}"));
            continue;
        }
        let var = u.password_env.trim();
        let Some(password) = secret_from_env(cx, &format!("{key}.password_env"), var, env) else {
            continue;
        };
        use secrecy::ExposeSecret;
        if let Err(why) = crate::config::passwords::check_stored_password(password.expose_secret())
        {
            cx.problem(
                &format!("{key}.password_env"),
                format!("environment variable {var} {why}"),
            );
            continue;
        }
        ui.users.push(UiUser { name, password });
    }
    if ui.users.is_empty() && names.is_empty() {
        ui.users = env_user(env).into_iter().collect();
        if ui.enabled && ui.users.is_empty() {
            cx.problem(
                "server.ui.users",
                "no users: add [[server.ui.users]] with name and password_env, set REBUY_UI_USER and REBUY_UI_PASSWORD, or set enabled = false",
            );
        }
    }
    ui
}

/// The single admin of `REBUY_UI_USER` / `REBUY_UI_PASSWORD`, when both are set and non-empty.
fn env_user(env: &dyn Fn(&str) -> Option<String>) -> Option<UiUser> {
    let name = env("REBUY_UI_USER").filter(|s| !s.trim().is_empty())?;
    let password = env("REBUY_UI_PASSWORD").filter(|s| !s.is_empty())?;
    Some(UiUser {
        name: name.trim().to_owned(),
        password: SecretString::from(password),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    #[serde(default)]
    secret_env: Option<String>,
    #[serde(default)]
    application_token_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTop {
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    portal: Vec<serde_json::Value>,
    #[serde(default)]
    server: Option<serde_json::Value>,
}

/// Keys a `[[portal]]` table may hold.
const PORTAL_KEYS: &[&str] = &[
    "id",
    "kind",
    "base_url",
    "time_zone",
    "requests_per_sec",
    "exceed_documented_limit",
    "auth",
    "sync",
    "analytics",
    "mapping",
    "webhooks",
    "allowed_hosts",
    "max_answer_mib",
];

#[derive(Deserialize)]
struct RawPortal {
    id: String,
    kind: CrmKind,
    base_url: String,
    #[serde(default)]
    time_zone: Option<String>,
    #[serde(default)]
    requests_per_sec: Option<u32>,
    #[serde(default)]
    exceed_documented_limit: bool,
    auth: serde_json::Value,
    #[serde(default)]
    sync: Option<serde_json::Value>,
    #[serde(default)]
    analytics: Option<serde_json::Value>,
    #[serde(default)]
    mapping: Option<serde_json::Value>,
    #[serde(default)]
    webhooks: Option<serde_json::Value>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    max_answer_mib: Option<u64>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum RawAuth {
    #[serde(rename = "oauth")]
    OAuth {
        client_id: String,
        client_secret_env: String,
        redirect_uri: String,
        oauth_server: Option<String>,
    },
    LongLivedToken {
        token_env: String,
    },
    Webhook {
        url_env: String,
    },
}

struct Ctx<'a> {
    file: &'a str,
    problems: Vec<ConfigProblem>,
}

impl Ctx<'_> {
    fn problem(&mut self, key: &str, reason: impl Into<String>) {
        self.problems
            .push(ConfigProblem::new(self.file, key, &reason.into()));
    }

    /// Deserializes `value` into `T`, recording a problem naming the exact key on failure.
    fn parse<T: DeserializeOwned>(&mut self, key: &str, value: &serde_json::Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = if inner == "." || inner.is_empty() {
                    key.to_owned()
                } else {
                    format!("{key}.{inner}")
                };
                self.problem(&full, e.inner().to_string());
                None
            }
        }
    }
}

/// Validates a merged config document. `file` names it in problems; `env` reads secrets.
pub fn resolve(
    doc: &serde_json::Value,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigProblem>> {
    let mut cx = Ctx {
        file,
        problems: Vec::new(),
    };
    let Some(top) = cx.parse::<RawTop>("", doc) else {
        return Err(cx.problems);
    };
    // `[server.ui]` is resolved on its own (it reads the environment); the rest by serde.
    let mut server_value = top.server.clone();
    let ui_value = server_value
        .as_mut()
        .and_then(|v| v.as_object_mut())
        .and_then(|o| o.remove("ui"));
    let mut server = match &server_value {
        Some(v) => cx.parse::<ServerSettings>("server", v).unwrap_or_default(),
        None => ServerSettings::default(),
    };
    server.ui = resolve_ui(&mut cx, ui_value.as_ref(), env);
    if server.inbox_max_attempts == 0 {
        cx.problem("server.inbox_max_attempts", "must be at least 1");
    }
    if server.inbox_dedupe_days == 0 {
        cx.problem(
            "server.inbox_dedupe_days",
            "must be at least 1 (amoCRM redelivers a webhook for hours)",
        );
    }
    if server.daily_hour > 23 {
        cx.problem("server.daily_hour", "must be between 0 and 23");
    }
    if server.max_connections == 0 {
        cx.problem("server.max_connections", "must be at least 1");
    }
    for (key, v) in [
        ("server.header_timeout_secs", server.header_timeout_secs),
        ("server.body_timeout_secs", server.body_timeout_secs),
        ("server.request_timeout_secs", server.request_timeout_secs),
    ] {
        if !(1..=3600).contains(&v) {
            cx.problem(key, format!("{v} is not between 1 and 3600 seconds"));
        }
    }
    if server.shutdown_grace_secs > 60 {
        cx.problem(
            "server.shutdown_grace_secs",
            format!("{} is more than 60 seconds", server.shutdown_grace_secs),
        );
    }
    if server.listen.parse::<std::net::SocketAddr>().is_err() {
        cx.problem(
            "server.listen",
            format!(
                "{:?} is not an address such as 127.0.0.1:8080",
                server.listen
            ),
        );
    }
    if let Some(addr) = &server.metrics_listen
        && addr.parse::<std::net::SocketAddr>().is_err()
    {
        cx.problem(
            "server.metrics_listen",
            format!("{addr:?} is not an address such as 127.0.0.1:9090"),
        );
    }
    if let Some(var) = server.metrics_token_env.clone() {
        server.metrics_token = secret_from_env(&mut cx, "server.metrics_token_env", &var, env);
    }
    let data_dir = top.data_dir.unwrap_or_else(|| PathBuf::from("data"));
    if top.portal.is_empty() {
        cx.problem("portal", "no [[portal]] entries: add at least one portal");
    }
    let mut ids = HashSet::new();
    let mut portals = Vec::new();
    for (i, value) in top.portal.iter().enumerate() {
        let key = format!("portal[{i}]");
        // Report unknown keys, then go on with the rest so their problems are listed too.
        let mut value = value.clone();
        if let Some(obj) = value.as_object_mut() {
            let unknown: Vec<String> = obj
                .keys()
                .filter(|k| !PORTAL_KEYS.contains(&k.as_str()))
                .cloned()
                .collect();
            for k in unknown {
                cx.problem(
                    &format!("{key}.{k}"),
                    format!("unknown key, expected one of {}", PORTAL_KEYS.join(", ")),
                );
                obj.remove(&k);
            }
        }
        let Some(raw) = cx.parse::<RawPortal>(&key, &value) else {
            continue;
        };
        if let Some(p) = resolve_portal(&mut cx, &key, raw, env) {
            if !ids.insert(p.id.0.clone()) {
                cx.problem(
                    &format!("{key}.id"),
                    format!("duplicate portal id {:?}", p.id.0),
                );
            }
            portals.push(p);
        }
    }
    if cx.problems.is_empty() {
        Ok(Config {
            data_dir,
            portals,
            server,
        })
    } else {
        Err(cx.problems)
    }
}

fn secret_from_env(
    cx: &mut Ctx<'_>,
    key: &str,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<SecretString> {
    match env(var) {
        Some(v) if !v.trim().is_empty() => Some(SecretString::from(v)),
        Some(_) => {
            cx.problem(key, format!("environment variable {var} is empty"));
            None
        }
        None => {
            cx.problem(key, format!("environment variable {var} is not set"));
            None
        }
    }
}

fn resolve_portal(
    cx: &mut Ctx<'_>,
    key: &str,
    raw: RawPortal,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<PortalConfig> {
    let before = cx.problems.len();
    if raw.id.is_empty()
        || !raw
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        cx.problem(
            &format!("{key}.id"),
            format!(
                "{:?} is not a valid portal id: use letters, digits, '-' and '_'",
                raw.id
            ),
        );
    }
    let base_url = match url::Url::parse(&raw.base_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
        Ok(u) => {
            cx.problem(
                &format!("{key}.base_url"),
                format!("scheme {:?} is not http or https", u.scheme()),
            );
            None
        }
        Err(e) => {
            cx.problem(
                &format!("{key}.base_url"),
                format!("{:?} is not a URL: {e}", raw.base_url),
            );
            None
        }
    };
    let tz_name = raw.time_zone.unwrap_or_else(|| "Europe/Moscow".to_owned());
    let time_zone = match jiff::tz::TimeZone::get(&tz_name) {
        Ok(tz) => Some(tz),
        Err(_) => {
            cx.problem(
                &format!("{key}.time_zone"),
                format!("unknown time zone {tz_name:?} (use an IANA name such as Europe/Moscow)"),
            );
            None
        }
    };
    if raw.requests_per_sec == Some(0) {
        cx.problem(&format!("{key}.requests_per_sec"), "must be at least 1");
    }
    // Over the documented limit a CRM answers 429/503, and amoCRM blocks the whole account
    // after repeated 429s: only an explicit, separate key lets a portal go there (an account
    // whose limit the CRM raised, an emulator).
    let documented = super::documented_rps(raw.kind);
    if let Some(r) = raw.requests_per_sec
        && r > documented
        && !raw.exceed_documented_limit
    {
        cx.problem(
            &format!("{key}.requests_per_sec"),
            format!(
                "{r} is above {}'s documented limit of {documented} requests/s; set \
                 exceed_documented_limit = true only if the CRM raised this account's limit",
                raw.kind.as_str()
            ),
        );
    }
    let auth = cx
        .parse::<RawAuth>(&format!("{key}.auth"), &raw.auth)
        .and_then(|a| match a {
            RawAuth::OAuth {
                client_id,
                client_secret_env,
                redirect_uri,
                oauth_server,
            } => {
                if client_id.trim().is_empty() {
                    cx.problem(&format!("{key}.auth.client_id"), "must not be empty");
                }
                if url::Url::parse(&redirect_uri).is_err() {
                    cx.problem(
                        &format!("{key}.auth.redirect_uri"),
                        format!("{redirect_uri:?} is not a URL"),
                    );
                }
                let secret = secret_from_env(
                    cx,
                    &format!("{key}.auth.client_secret_env"),
                    &client_secret_env,
                    env,
                )?;
                Some(AuthConfig::OAuth {
                    client_id,
                    client_secret: secret,
                    redirect_uri,
                    oauth_server,
                })
            }
            RawAuth::LongLivedToken { token_env } => {
                if raw.kind != CrmKind::Amocrm {
                    cx.problem(
                        &format!("{key}.auth.type"),
                        "long_lived_token is an amoCRM auth; Bitrix24 uses oauth or webhook",
                    );
                }
                let token = secret_from_env(cx, &format!("{key}.auth.token_env"), &token_env, env)?;
                Some(AuthConfig::LongLivedToken { token })
            }
            RawAuth::Webhook { url_env } => {
                if raw.kind != CrmKind::Bitrix24 {
                    cx.problem(
                        &format!("{key}.auth.type"),
                        "webhook is a Bitrix24 auth; amoCRM uses oauth or long_lived_token",
                    );
                }
                let url = secret_from_env(cx, &format!("{key}.auth.url_env"), &url_env, env)?;
                Some(AuthConfig::Webhook { url })
            }
        });
    let sync = match &raw.sync {
        Some(v) => cx.parse::<SyncSettings>(&format!("{key}.sync"), v),
        None => Some(SyncSettings::default()),
    };
    if let Some(s) = &sync {
        if s.page_limit == 0 || s.page_limit > 250 {
            cx.problem(
                &format!("{key}.sync.page_limit"),
                "must be between 1 and 250",
            );
        }
        if s.concurrency == 0 {
            cx.problem(&format!("{key}.sync.concurrency"), "must be at least 1");
        }
    }
    let analytics = match &raw.analytics {
        Some(v) => cx.parse::<AnalyticsSettings>(&format!("{key}.analytics"), v),
        None => Some(AnalyticsSettings::default()),
    };
    if let Some(a) = &analytics {
        for p in a.validate() {
            cx.problem(&format!("{key}.analytics"), p);
        }
    }
    let (mut webhook_secret, mut application_token) = (None, None);
    if let Some(v) = &raw.webhooks
        && let Some(w) = cx.parse::<RawWebhooks>(&format!("{key}.webhooks"), v)
    {
        if let Some(var) = w.secret_env {
            webhook_secret = secret_from_env(cx, &format!("{key}.webhooks.secret_env"), &var, env);
        }
        if let Some(var) = w.application_token_env {
            application_token = secret_from_env(
                cx,
                &format!("{key}.webhooks.application_token_env"),
                &var,
                env,
            );
        }
    }
    for (i, h) in raw.allowed_hosts.iter().enumerate() {
        if !host_entry_ok(h) {
            cx.problem(
                &format!("{key}.allowed_hosts[{i}]"),
                format!("{h:?} is not a host name (such as new-name.bitrix24.ru or host:port)"),
            );
        }
    }
    let max_answer_mib = raw.max_answer_mib.unwrap_or(DEFAULT_MAX_ANSWER_MIB);
    if !(1..=4096).contains(&max_answer_mib) {
        cx.problem(
            &format!("{key}.max_answer_mib"),
            format!("{max_answer_mib} is not between 1 and 4096 MiB"),
        );
    }
    if cx.problems.len() > before {
        return None;
    }
    Some(PortalConfig {
        id: PortalId(raw.id),
        kind: raw.kind,
        base_url: base_url?,
        time_zone: time_zone?,
        time_zone_name: tz_name,
        requests_per_sec: raw.requests_per_sec,
        auth: auth?,
        sync: sync?,
        analytics: analytics?,
        playbooks_dir: None,
        mapping: raw.mapping.unwrap_or(serde_json::Value::Null),
        webhook_secret,
        application_token,
        allowed_hosts: raw
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        max_answer_bytes: (max_answer_mib as usize) << 20,
    })
}

/// The default of `max_answer_mib`.
pub(super) const DEFAULT_MAX_ANSWER_MIB: u64 =
    (rebuy_core::body::DEFAULT_MAX_ANSWER_BYTES >> 20) as u64;

/// Whether an `allowed_hosts` entry is a bare `host` or `host:port` (no scheme, path or
/// credentials).
fn host_entry_ok(entry: &str) -> bool {
    let e = entry.trim();
    !e.is_empty()
        && !e.contains(['/', '@', '?', '#', '\\', ' '])
        && url::Url::parse(&format!("https://{e}/"))
            .is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "SHOP_SECRET").then(|| "s3cret".to_owned())
    }

    fn doc(toml_text: &str) -> serde_json::Value {
        use figment::providers::Format;
        figment::Figment::from(figment::providers::Toml::string(toml_text))
            .extract()
            .unwrap()
    }

    #[test]
    fn valid_config_resolves() {
        let d = doc(r#"
            data_dir = "/tmp/x"
            [[portal]]
            id = "shop"
            kind = "amocrm"
            base_url = "https://shop.amocrm.ru"
            [portal.auth]
            type = "oauth"
            client_id = "abc"
            client_secret_env = "SHOP_SECRET"
            redirect_uri = "https://example.com/cb"
        "#);
        let c = resolve(&d, "rebuy.toml", &env).unwrap();
        assert_eq!(c.portals[0].id.0, "shop");
        assert_eq!(c.portals[0].sync.overlap_secs, 300);
        assert_eq!(c.portals[0].time_zone_name, "Europe/Moscow");
    }

    #[test]
    fn max_answer_mib_resolves_and_is_checked() {
        let portal = |extra: &str| {
            doc(&format!(
                r#"
            [[portal]]
            id = "shop"
            kind = "amocrm"
            base_url = "https://shop.amocrm.ru"
            {extra}
            [portal.auth]
            type = "oauth"
            client_id = "abc"
            client_secret_env = "SHOP_SECRET"
            redirect_uri = "https://example.com/cb"
        "#
            ))
        };
        let c = resolve(&portal(""), "rebuy.toml", &env).unwrap();
        assert_eq!(c.portals[0].max_answer_bytes, 64 << 20);
        let c = resolve(&portal("max_answer_mib = 8"), "rebuy.toml", &env).unwrap();
        assert_eq!(c.portals[0].max_answer_bytes, 8 << 20);
        let text = format_problems(
            &resolve(&portal("max_answer_mib = 0"), "rebuy.toml", &env).unwrap_err(),
        );
        assert!(
            text.contains("portal[0].max_answer_mib: 0 is not between 1 and 4096 MiB"),
            "{text}"
        );
    }

    #[test]
    fn listener_limits_resolve_and_are_checked() {
        let portal = r#"
            [[portal]]
            id = "shop"
            kind = "amocrm"
            base_url = "https://shop.amocrm.ru"
            [portal.auth]
            type = "oauth"
            client_id = "abc"
            client_secret_env = "SHOP_SECRET"
            redirect_uri = "https://example.com/cb"
        "#;
        let c = resolve(&doc(portal), "rebuy.toml", &env).unwrap();
        assert_eq!(c.server.limits(), crate::server::listen::Limits::default());
        let d = doc(&format!(
            "[server]\nmax_connections = 0\nheader_timeout_secs = 0\nbody_timeout_secs = 5000\nrequest_timeout_secs = 7\nshutdown_grace_secs = 61\n{portal}"
        ));
        let text = format_problems(&resolve(&d, "rebuy.toml", &env).unwrap_err());
        for needle in [
            "server.max_connections: must be at least 1",
            "server.header_timeout_secs: 0 is not between 1 and 3600 seconds",
            "server.body_timeout_secs: 5000 is not between 1 and 3600 seconds",
            "server.shutdown_grace_secs: 61 is more than 60 seconds",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(!text.contains("request_timeout_secs"), "{text}");
    }

    #[test]
    fn allowed_hosts_and_metrics_settings_are_checked() {
        let d = doc(r#"
            [server]
            metrics_token_env = "METRICS_NOT_SET"
            metrics_listen = "nowhere"
            [[portal]]
            id = "b24"
            kind = "bitrix24"
            base_url = "https://x.bitrix24.ru"
            allowed_hosts = ["new.bitrix24.ru", "https://evil.example/rest", "ok.example:8443"]
            [portal.auth]
            type = "oauth"
            client_id = "local.1"
            client_secret_env = "SHOP_SECRET"
            redirect_uri = "https://example.com/cb"
        "#);
        let text = format_problems(&resolve(&d, "rebuy.toml", &env).unwrap_err());
        for needle in [
            "server.metrics_token_env: environment variable METRICS_NOT_SET is not set",
            "server.metrics_listen: \"nowhere\" is not an address",
            "portal[0].allowed_hosts[1]: \"https://evil.example/rest\" is not a host name",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(!text.contains("allowed_hosts[0]") && !text.contains("allowed_hosts[2]"));
        let ok = doc(r#"
            [server]
            metrics_token_env = "SHOP_SECRET"
            [[portal]]
            id = "b24"
            kind = "bitrix24"
            base_url = "https://x.bitrix24.ru"
            allowed_hosts = ["New.Bitrix24.ru"]
            [portal.auth]
            type = "oauth"
            client_id = "local.1"
            client_secret_env = "SHOP_SECRET"
            redirect_uri = "https://example.com/cb"
        "#);
        let c = resolve(&ok, "rebuy.toml", &env).unwrap();
        assert_eq!(c.portals[0].allowed_hosts, vec!["new.bitrix24.ru"]);
        use secrecy::ExposeSecret;
        assert_eq!(
            c.server.metrics_token.as_ref().map(|t| t.expose_secret()),
            Some("s3cret")
        );
    }

    #[test]
    fn every_problem_is_reported_with_file_and_key() {
        let d = doc(r#"
            [[portal]]
            id = "bad id"
            kind = "amocrm"
            base_url = "ftp://x"
            time_zone = "Mars/Olympus"
            [portal.auth]
            type = "oauth"
            client_id = "abc"
            client_secret_env = "MISSING_VAR"
            redirect_uri = "https://example.com/cb"
            [portal.sync]
            page_limit = 500

            [[portal]]
            id = "b24"
            kind = "bitrix24"
            base_url = "https://x.bitrix24.ru"
            colour = "red"
            [portal.auth]
            type = "webhook"
            url_env = "NOT_SET_EITHER"
        "#);
        let problems = resolve(&d, "rebuy.toml", &env).unwrap_err();
        let text = format_problems(&problems);
        for needle in [
            "rebuy.toml: portal[0].id",
            "portal[0].base_url: scheme \"ftp\"",
            "portal[0].time_zone: unknown time zone",
            "portal[0].auth.client_secret_env: environment variable MISSING_VAR is not set",
            "portal[0].sync.page_limit",
            "portal[1].colour: unknown key",
            "portal[1].auth.url_env: environment variable NOT_SET_EITHER is not set",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    use super::super::format_problems;

    #[test]
    fn example_config_is_valid() {
        let d = doc(super::super::EXAMPLE);
        let env = |_: &str| Some("x".to_owned());
        if let Err(p) = resolve(&d, "rebuy.example.toml", &env) {
            panic!("{}", format_problems(&p));
        }
    }

    const PORTAL: &str = r#"
        [[portal]]
        id = "shop"
        kind = "amocrm"
        base_url = "https://shop.amocrm.ru"
        [portal.auth]
        type = "oauth"
        client_id = "abc"
        client_secret_env = "SHOP_SECRET"
        redirect_uri = "https://example.com/cb"
    "#;

    #[test]
    fn ui_table_resolves_users_from_the_environment() {
        let d = doc(&format!(
            r#"
            [server.ui]
            session_hours = 2
            default_lang = "RU"
            cookie_secure = false
            [[server.ui.users]]
            name = "anna"
            password_env = "ANNA_PW"
            [[server.ui.users]]
            name = "boris"
            password_env = "BORIS_PW"
            {PORTAL}"#
        ));
        let env = |k: &str| match k {
            "SHOP_SECRET" => Some("s".to_owned()),
            "ANNA_PW" => Some("plain".to_owned()),
            "BORIS_PW" => Some(format!("sha256:{}", "ab".repeat(32))),
            "REBUY_UI_USER" => Some("ignored".to_owned()),
            "REBUY_UI_PASSWORD" => Some("ignored".to_owned()),
            _ => None,
        };
        let c = resolve(&d, "rebuy.toml", &env).unwrap();
        let ui = &c.server.ui;
        assert!(ui.enabled && !ui.cookie_secure);
        let names: Vec<&str> = ui.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["anna", "boris"], "the table's users, not the env's");
        assert_eq!(ui.session_ttl, std::time::Duration::from_secs(7200));
        assert_eq!(ui.default_lang, "ru");
    }

    #[test]
    fn ui_falls_back_to_the_env_admin_and_reports_problems() {
        let d = doc(PORTAL);
        let env = |k: &str| match k {
            "SHOP_SECRET" => Some("s".to_owned()),
            "REBUY_UI_USER" => Some("admin".to_owned()),
            "REBUY_UI_PASSWORD" => Some("pw".to_owned()),
            _ => None,
        };
        let c = resolve(&d, "rebuy.toml", &env).unwrap();
        assert_eq!(c.server.ui.users.len(), 1);
        assert_eq!(c.server.ui.users[0].name, "admin");
        assert!(c.server.ui.cookie_secure);
        // No table and no env: off, without a problem.
        let c = resolve(&d, "rebuy.toml", &super::tests::env).unwrap();
        assert!(c.server.ui.users.is_empty());

        let bad = doc(&format!(
            r#"
            [server.ui]
            session_hours = -1
            default_lang = "de"
            colour = "red"
            {PORTAL}"#
        ));
        let text = format_problems(&resolve(&bad, "rebuy.toml", &super::tests::env).unwrap_err());
        assert!(
            text.contains("rebuy.toml: server.ui.colour: unknown field `colour`"),
            "{text}"
        );
        let bad = doc(&format!(
            r#"
            [server.ui]
            session_hours = -1
            default_lang = "de"
            [[server.ui.users]]
            name = "anna"
            password_env = "NOT_SET"
            [[server.ui.users]]
            name = "anna"
            password_env = "SHOP_SECRET"
            [[server.ui.users]]
            name = "bad"
            password_env = "BAD_HASH"
            {PORTAL}"#
        ));
        let env = |k: &str| match k {
            "SHOP_SECRET" => Some("s".to_owned()),
            "BAD_HASH" => Some("sha256:xyz".to_owned()),
            _ => None,
        };
        let text = format_problems(&resolve(&bad, "rebuy.toml", &env).unwrap_err());
        for needle in [
            "server.ui.session_hours: -1 is not between",
            "server.ui.default_lang: \"de\" is not a language",
            "server.ui.users[0].password_env: environment variable NOT_SET is not set",
            "server.ui.users[1].name: duplicate user \"anna\"",
            "server.ui.users[2].password_env: environment variable BAD_HASH starts with \"sha256:\"",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        let none = doc(&format!("[server.ui]\n{PORTAL}"));
        let text = format_problems(&resolve(&none, "rebuy.toml", &super::tests::env).unwrap_err());
        assert!(text.contains("server.ui.users: no users"), "{text}");
        let off = doc(&format!("[server.ui]\nenabled = false\n{PORTAL}"));
        assert!(
            !resolve(&off, "rebuy.toml", &super::tests::env)
                .unwrap()
                .server
                .ui
                .enabled
        );
    }
}
