//! The dashboard's handlers and page templates (maud).
//!
//! Every page but the login needs a logged-in session (anonymous GETs are redirected to
//! `/ui/login`, anonymous POSTs get 401) and every POST form carries the session's CSRF token
//! (403 without it). Figures carry their raw value in `data-value` next to the formatted
//! text, and customer rows their key in `data-key`, for tests and scripts.
// `Result<_, Response>` is the early-return of a handler: boxing the response gains nothing.
#![allow(clippy::result_large_err)]
use super::auth::{self, SESSION_COOKIE, Session, csrf_ok, set_cookie};
use super::i18n::{LANG_COOKIE, Lang};
use super::svg::{Bar, grouped_bars, line_chart, stacked_bars};
use super::{PortalView, UiState};
use crate::analytics::{Abc, CustomerRow, RfmSegment, Xyz, render};
use crate::config::AuthConfig;
use crate::outbox::ActionState;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use rebuy_core::{EntityKind, PortalId};
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// Query parameters of the pages (all optional, all text: empty form fields are "no filter").
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Params {
    /// Interface language (`en`, `ru`).
    pub lang: Option<String>,
    /// Heatmap colour: `customers` (default) or `revenue`.
    pub by: Option<String>,
    /// RFM segment (snake_case).
    pub segment: Option<String>,
    /// R score 1..5.
    pub r: Option<String>,
    /// F score 1..5.
    pub f: Option<String>,
    /// ABC class.
    pub abc: Option<String>,
    /// XYZ class.
    pub xyz: Option<String>,
    /// Search text: name, phone, email or customer key.
    pub q: Option<String>,
    /// Outbox state filter: `pending`, `in_flight`, `done`, `failed`.
    pub state: Option<String>,
    /// Page of a list, from 1.
    pub page: Option<String>,
    /// After an apply: actions new in the outbox.
    pub applied: Option<String>,
    /// After an apply: actions already there.
    pub already: Option<String>,
    /// After a retry: the requeued action's key.
    pub retried: Option<String>,
    /// Results: touches of this period (`2026-11`, `2026-Q4`, `2026`, `all`).
    pub period: Option<String>,
}

/// Customer rows on one page of a list (the exports have them all).
pub const PAGE_ROWS: usize = 100;
/// Outbox entries on one page.
pub const PAGE_TOUCHES: usize = 100;
/// How long the mapping page waits for the CRM's lists before it shows the cached ones.
pub const MAPPING_CRM_WAIT: Duration = Duration::from_secs(3);
/// Planned actions listed under a dry-run plan.
pub const PLAN_ROWS: usize = 200;

/// The requested page (from 1) of `total` items in pages of `per`, clamped to the last one;
/// returns the page and the number of pages.
fn page_of(p: &Params, total: usize, per: usize) -> (usize, usize) {
    let pages = total.div_ceil(per).max(1);
    let page = nonempty(&p.page)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    (page, pages)
}

/// Previous / next links of a paged list; `query` is the list's filter query (may be empty).
fn pager(l: Lang, query: &str, page: usize, pages: usize) -> Markup {
    let link = |n: usize| {
        if query.is_empty() {
            format!("?page={n}")
        } else {
            format!("?{query}&page={n}")
        }
    };
    html! {
        @if pages > 1 {
            p.pager data-page=(page) data-pages=(pages) {
                @if page > 1 { a href=(link(page - 1)) rel="prev" { "← " (l.t("previous", "назад")) } " " }
                (l.t("page", "страница")) " " (page) " / " (pages)
                @if page < pages { " " a href=(link(page + 1)) rel="next" { (l.t("next", "далее")) " →" } }
            }
        }
    }
}

/// What every page knows about the request.
struct Ctx {
    lang: Lang,
    /// Set the language cookie (a `?lang=` was given).
    set_lang: bool,
    session: Session,
}

fn lang_of(ui: &UiState, p: &Params, headers: &HeaderMap) -> (Lang, bool) {
    let q = p.lang.as_deref().and_then(Lang::parse);
    (
        q.unwrap_or_else(|| Lang::detect_or(None, headers, ui.settings.default_lang)),
        q.is_some(),
    )
}

/// The logged-in session of a request.
fn session(ui: &UiState, headers: &HeaderMap) -> Option<(String, Session)> {
    let id = crate::server::request::cookie(headers, SESSION_COOKIE)?;
    let s = ui.sessions.get(&id)?;
    s.user.is_some().then_some((id, s))
}

/// The page context, or a redirect to the login page.
fn ctx(ui: &UiState, headers: &HeaderMap, p: &Params) -> Result<Ctx, Response> {
    let (lang, set_lang) = lang_of(ui, p, headers);
    match session(ui, headers) {
        Some((_, session)) => Ok(Ctx {
            lang,
            set_lang,
            session,
        }),
        None => Err(Redirect::to("/ui/login").into_response()),
    }
}

fn with_lang_cookie(mut res: Response, c: &Ctx, secure: bool) -> Response {
    if c.set_lang
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{LANG_COOKIE}={}; Path=/ui; Max-Age=31536000; SameSite=Strict{}",
            c.lang.code(),
            if secure { "; Secure" } else { "" }
        ))
    {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

const CSS: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#22324a;color:#fff;padding:8px 16px;display:flex;gap:16px;align-items:center;flex-wrap:wrap}
header a{color:#fff;text-decoration:none}header a.cur{text-decoration:underline}
header .sp{flex:1}header form{margin:0}
main{padding:16px;max-width:1200px}
table{border-collapse:collapse;background:#fff;margin:8px 0 16px}
td,th{border:1px solid #dde;padding:4px 8px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff4e0;border:1px solid #e0a040;padding:8px 12px;margin:8px 0}
.err{color:#a02020}.ok{color:#207020}
.button,button{display:inline-block;background:#3b6fb6;color:#fff;border:0;padding:4px 12px;border-radius:3px;text-decoration:none;cursor:pointer;font:inherit}
header button{background:#44597a}
.heat td{width:90px;height:56px;text-align:center}.heat a{color:inherit;text-decoration:none;display:block}
.heat small{display:block;opacity:.8}
.chart{width:100%;max-width:680px;background:#fff;border:1px solid #dde;margin:8px 0}
.chart .ct{font-size:13px;font-weight:600}.chart .ax{font-size:10px;fill:#555}
form.filters{display:flex;gap:8px;flex-wrap:wrap;align-items:end}
form.filters label{display:flex;flex-direction:column;font-size:12px}
.login{max-width:320px;margin:64px auto;background:#fff;padding:24px;border:1px solid #dde}
.login label{display:block;margin:8px 0}.login input{width:100%;box-sizing:border-box}
"#;

/// The page layout: header with navigation, language switch and logout.
fn layout(c: &Ctx, title: &str, portal: Option<(&str, &str)>, body: Markup) -> Markup {
    let l = c.lang;
    html! {
        (DOCTYPE)
        html lang=(l.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · rebuy" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    strong { "rebuy" }
                    a href="/ui" { (l.t("Portals", "Порталы")) }
                    @if let Some((id, cur)) = portal {
                        span { "›" }
                        @for (slug, name) in [("", l.t("Overview", "Обзор")), ("/rfm", l.t("RFM and ABC/XYZ", "RFM и ABC/XYZ")), ("/segments", l.t("Segments", "Сегменты")), ("/touches", l.t("Touches", "Касания")), ("/results", l.t("Results", "Результаты")), ("/mapping", l.t("Mapping", "Сопоставление"))] {
                            a href={"/ui/p/" (id) (slug)} class=[(cur == slug).then_some("cur")] { (name) }
                        }
                    }
                    span class="sp" {}
                    a href="?lang=en" { "EN" }
                    a href="?lang=ru" { "RU" }
                    @if let Some(u) = &c.session.user { span { (u) } }
                    form method="post" action="/ui/logout" {
                        input type="hidden" name="csrf" value=(c.session.csrf);
                        button type="submit" { (l.t("Log out", "Выйти")) }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn html_response(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

fn page(
    ui: &UiState,
    c: &Ctx,
    title: &str,
    portal: Option<(&str, &str)>,
    body: Markup,
) -> Response {
    with_lang_cookie(
        html_response(StatusCode::OK, layout(c, title, portal, body)),
        c,
        ui.settings.cookie_secure,
    )
}

/// 404 for anything else under `/ui`.
pub async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found").into_response()
}

fn error_page(c: &Ctx, status: StatusCode, msg: &str) -> Response {
    html_response(
        status,
        layout(
            c,
            c.lang.t("Error", "Ошибка"),
            None,
            html! { p class="err" { (msg) } },
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Formatting.

/// Groups the integer digits by thousands with thin spaces: `1234567.5` -> `1 234 567.5`.
pub fn group_digits(s: &str) -> String {
    let (sign, rest) = s.strip_prefix('-').map_or(("", s), |r| ("-", r));
    let (int, frac) = rest
        .split_once('.')
        .map_or((rest, None), |(a, b)| (a, Some(b)));
    let mut out = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push('\u{202f}');
        }
        out.push(ch);
    }
    match frac {
        Some(f) => format!("{sign}{out}.{f}"),
        None => format!("{sign}{out}"),
    }
}

fn money(d: Decimal, currency: &str) -> String {
    format!(
        "{} {currency}",
        crate::playbooks::templates::group_money(d, '\u{202f}', '.')
    )
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{:.1}%", v * 100.0))
}

fn ts(t: Option<jiff::Timestamp>) -> String {
    t.map_or_else(
        || "—".into(),
        |t| t.strftime("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// Login.

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    /// User name.
    #[serde(default)]
    pub user: String,
    /// Password.
    #[serde(default)]
    pub password: String,
    /// The login page's CSRF token.
    #[serde(default)]
    pub csrf: Option<String>,
}

fn login_markup(lang: Lang, csrf: &str, error: Option<&str>) -> Markup {
    let l = lang;
    html! {
        (DOCTYPE)
        html lang=(l.code()) {
            head {
                meta charset="utf-8";
                title { "rebuy · " (l.t("Log in", "Вход")) }
                style { (PreEscaped(CSS)) }
            }
            body {
                form.login method="post" action="/ui/login" {
                    h1 { "rebuy" }
                    @if let Some(e) = error { p class="err" { (e) } }
                    input type="hidden" name="csrf" value=(csrf);
                    label { (l.t("User", "Пользователь")) input type="text" name="user" autocomplete="username" required; }
                    label { (l.t("Password", "Пароль")) input type="password" name="password" autocomplete="current-password" required; }
                    button type="submit" { (l.t("Log in", "Войти")) }
                    p { a href="?lang=en" { "EN" } " · " a href="?lang=ru" { "RU" } }
                }
            }
        }
    }
}

/// `GET /ui/login`: the login form, with a fresh anonymous session for its CSRF token.
pub async fn login_page(
    State(ui): State<UiState>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let (lang, _) = lang_of(&ui, &p, &headers);
    if session(&ui, &headers).is_some() {
        return Redirect::to("/ui").into_response();
    }
    // Nothing is stored per visitor: the token is bound to the cookie's nonce by an HMAC.
    let (nonce, token) = ui.login.issue();
    let mut res = html_response(StatusCode::OK, login_markup(lang, &token, None));
    if let Ok(v) = HeaderValue::from_str(&set_cookie(
        auth::LOGIN_COOKIE,
        &nonce,
        auth::LOGIN_TTL,
        ui.settings.cookie_secure,
    )) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// The client's address: the configured proxy header's first address when the dashboard
/// sits behind a reverse proxy (`[server.ui] client_ip_header`), else the peer's.
fn client_ip(
    ui: &UiState,
    headers: &HeaderMap,
    peer: Option<std::net::SocketAddr>,
) -> Option<std::net::IpAddr> {
    if let Some(h) = &ui.settings.client_ip_header {
        return headers
            .get(h.as_str())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok());
    }
    peer.map(|a| a.ip())
}

/// `POST /ui/login`: checks the login form's token, the attempt limits (per address and per
/// user: 429 with `Retry-After` past them) and the credentials; on success a new session.
pub async fn login(
    State(ui): State<UiState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let lang = Lang::detect_or(None, &headers, ui.settings.default_lang);
    let Some(nonce) = crate::server::request::cookie(&headers, auth::LOGIN_COOKIE) else {
        return (StatusCode::FORBIDDEN, "no login form: open /ui/login first").into_response();
    };
    if !ui.login.token_ok(&nonce, f.csrf.as_deref()) {
        return (
            StatusCode::FORBIDDEN,
            "bad or expired login form: open /ui/login again",
        )
            .into_response();
    }
    let token = f.csrf.clone().unwrap_or_default();
    let known = ui
        .settings
        .users
        .iter()
        .find(|(n, _)| *n == f.user)
        .map(|(n, _)| n.as_str());
    let ip = client_ip(&ui, &headers, peer.map(|p| p.0.0));
    if let Err(auth::LoginRefused::TooMany(wait)) = ui.login.attempt(ip, known) {
        // `?` quotes and escapes the name: no log lines forged through it.
        tracing::warn!(user = ?f.user, ip = ?ip, "ui: login attempts over the limit");
        let mut res = html_response(
            StatusCode::TOO_MANY_REQUESTS,
            login_markup(
                lang,
                &token,
                Some(lang.t(
                    "Too many login attempts. Try again in a minute.",
                    "Слишком много попыток входа. Попробуйте через минуту.",
                )),
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return res;
    }
    let settings = ui.settings.clone();
    let (user, password) = (f.user.clone(), f.password);
    // Argon2 takes tens of milliseconds of CPU: off the async workers.
    let checked = tokio::task::spawn_blocking(move || settings.check(&user, &password))
        .await
        .ok()
        .flatten();
    let Some(user) = checked else {
        tracing::warn!(user = ?f.user, ip = ?ip, "ui: failed login");
        // The form's token stays valid for a retry.
        return html_response(
            StatusCode::UNAUTHORIZED,
            login_markup(
                lang,
                &token,
                Some(lang.t(
                    "Wrong user or password.",
                    "Неверный пользователь или пароль.",
                )),
            ),
        );
    };
    ui.login.consume(&nonce);
    let (id, _) = ui.sessions.create(Some(user), ui.settings.session_ttl);
    let mut res = Redirect::to("/ui").into_response();
    for c in [
        set_cookie(
            SESSION_COOKIE,
            &id,
            ui.settings.session_ttl,
            ui.settings.cookie_secure,
        ),
        set_cookie(
            auth::LOGIN_COOKIE,
            "",
            Duration::ZERO,
            ui.settings.cookie_secure,
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

/// A POST's session and CSRF check: 401 without a logged-in session, 403 without its token.
fn check_post(
    ui: &UiState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<String, Response> {
    let Some((id, s)) = session(ui, headers) else {
        return Err((StatusCode::UNAUTHORIZED, "log in first").into_response());
    };
    if !csrf_ok(&s, form.get("csrf").map(String::as_str)) {
        return Err((StatusCode::FORBIDDEN, "bad CSRF token").into_response());
    }
    Ok(id)
}

/// `POST /ui/logout`.
pub async fn logout(
    State(ui): State<UiState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let id = match check_post(&ui, &headers, &form) {
        Ok(id) => id,
        Err(r) => return r,
    };
    ui.sessions.remove(&id);
    let mut res = Redirect::to("/ui/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(
        SESSION_COOKIE,
        "",
        Duration::ZERO,
        ui.settings.cookie_secure,
    )) {
        res.headers_mut().append(header::SET_COOKIE, v);
    }
    res
}

/// `POST /ui/p/{portal}/refresh`: drops the cached analysis of the portal.
pub async fn refresh(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_post(&ui, &headers, &form) {
        return r;
    }
    let id = PortalId(portal);
    if !ui.app.portals.contains_key(&id) {
        return not_found().await;
    }
    ui.invalidate(&id).await;
    Redirect::to(&format!("/ui/p/{}", id.0)).into_response()
}

/// `GET /ui/p/{portal}/connect`: the Connect button. Starts an OAuth flow for the logged-in
/// user (the session cookie is `SameSite=Strict`, so a link from another site lands on the
/// login page instead) and redirects to the CRM's consent page.
pub async fn connect(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let (_, rt) = match portal_runtime(&ui, &headers, &p, &portal) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match crate::server::oauth::begin(&ui.app, rt) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// Portals.

/// `GET /ui`: every portal with its connection state.
pub async fn portals(
    State(ui): State<UiState>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let c = match ctx(&ui, &headers, &p) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let l = c.lang;
    let mut list: Vec<_> = ui.app.portals.values().cloned().collect();
    list.sort_by(|a, b| a.cfg.id.cmp(&b.cfg.id));
    // Failed touches from the outbox snapshot the touches page keeps (no decode per request).
    let mut failed = Vec::with_capacity(list.len());
    for rt in &list {
        failed.push(ui.outbox(rt).await.map(|s| s.counts[3] as u64));
    }
    let rows = tokio::task::spawn_blocking(move || {
        list.into_iter()
            .zip(failed)
            .map(|(rt, f)| portal_status(rt, f))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let body = html! {
        table {
            tr {
                th { (l.t("Portal", "Портал")) } th { "CRM" } th { (l.t("Connection", "Подключение")) }
                th { (l.t("Token expires", "Токен истекает")) } th { (l.t("Last sync", "Последняя синхронизация")) }
                th.n { (l.t("Contacts", "Контакты")) } th.n { (l.t("Companies", "Компании")) } th.n { (l.t("Deals", "Сделки")) }
                th.n { (l.t("Touches failed", "Касаний с ошибкой")) } th { (l.t("Errors", "Ошибки")) }
            }
            @for s in &rows {
                tr data-portal=(s.id) {
                    td { a href={"/ui/p/" (s.id)} { (s.id) } }
                    td { (s.kind) }
                    td {
                        @match &s.state {
                            ConnState::Connected => span.ok { (l.t("connected", "подключён")) },
                            ConnState::NotConnected => span.err { (l.t("not connected", "не подключён")) },
                            ConnState::NeedsReauth(why) => span.err { (l.t("needs re-authorization", "нужна повторная авторизация")) ": " (why) },
                        }
                        @if s.oauth && !matches!(s.state, ConnState::Connected) {
                            " " a.button href={"/ui/p/" (s.id) "/connect"} { (l.t("Connect", "Подключить")) }
                        }
                    }
                    td { (ts(s.expires)) }
                    td {
                        (ts(s.last_sync))
                        @if s.in_progress { " " em { (l.t("(sync in progress)", "(идёт синхронизация)")) } }
                    }
                    td.n { (s.contacts) } td.n { (s.companies) } td.n { (s.deals) }
                    td.n class=[(s.failed > 0).then_some("err")] { (s.failed) }
                    td.err {
                        @if s.dead_letters > 0 {
                            span data-dead-letters=(s.dead_letters) {
                                (l.t("Webhooks given up after repeated failures: ", "Вебхуков, отложенных после повторных ошибок: "))
                                (s.dead_letters)
                                " (rebuy inbox dead / replay)"
                            }
                            br;
                        }
                        @for e in &s.errors { (e) br; }
                    }
                }
            }
        }
    };
    page(&ui, &c, l.t("Portals", "Порталы"), None, body)
}

enum ConnState {
    Connected,
    NotConnected,
    NeedsReauth(String),
}

struct PortalStatus {
    id: String,
    kind: &'static str,
    oauth: bool,
    state: ConnState,
    expires: Option<jiff::Timestamp>,
    last_sync: Option<jiff::Timestamp>,
    in_progress: bool,
    contacts: u64,
    companies: u64,
    deals: u64,
    failed: u64,
    dead_letters: u64,
    errors: Vec<String>,
}

fn portal_status(rt: crate::server::PortalRuntime, failed: anyhow::Result<u64>) -> PortalStatus {
    let store = &rt.store;
    let mut errors = Vec::new();
    let mut note = |r: Result<(), crate::store::StoreError>| {
        if let Err(e) = r {
            errors.push(e.to_string());
        }
    };
    let oauth = matches!(rt.cfg.auth, AuthConfig::OAuth { .. });
    let mut tokens = None;
    note(store.load_tokens().map(|t| tokens = t));
    let mut reauth = None;
    note(store.needs_reauth().map(|r| reauth = r));
    let state = match (&reauth, &tokens) {
        (Some(r), _) => ConnState::NeedsReauth(format!("{} ({})", r.reason, ts(Some(r.at)))),
        (None, None) if oauth => ConnState::NotConnected,
        _ => ConnState::Connected,
    };
    let mut last_sync = None;
    let mut in_progress = false;
    for k in [
        EntityKind::Companies,
        EntityKind::Contacts,
        EntityKind::Deals,
    ] {
        note(store.sync_state(k).map(|s| {
            last_sync = last_sync.max(s.last_sync_at);
            in_progress |= s.in_progress.is_some();
        }));
    }
    let mut count = |k| {
        store
            .count(k)
            .map_err(|e| errors.push(e.to_string()))
            .unwrap_or(0)
    };
    let (contacts, companies, deals) = (
        count(EntityKind::Contacts),
        count(EntityKind::Companies),
        count(EntityKind::Deals),
    );
    let failed = failed
        .map_err(|e| errors.push(format!("{e:#}")))
        .unwrap_or(0);
    let dead_letters = store
        .inbox_dead_count()
        .map_err(|e| errors.push(e.to_string()))
        .unwrap_or(0);
    PortalStatus {
        id: rt.cfg.id.0.clone(),
        kind: rt.cfg.kind.as_str(),
        oauth,
        state,
        expires: tokens.and_then(|t| t.expires_at),
        last_sync,
        in_progress,
        contacts,
        companies,
        deals,
        failed,
        dead_letters,
        errors,
    }
}

// ---------------------------------------------------------------------------------------------
// Portal pages.

/// The context and runtime of a portal page, or the response to send instead (404 for a
/// portal the config does not have).
fn portal_runtime<'a>(
    ui: &'a UiState,
    headers: &HeaderMap,
    p: &Params,
    portal: &str,
) -> Result<(Ctx, &'a crate::server::PortalRuntime), Response> {
    let c = ctx(ui, headers, p)?;
    match ui.app.portal(portal) {
        Some(rt) => Ok((c, rt)),
        None => Err(error_page(
            &c,
            StatusCode::NOT_FOUND,
            c.lang.t("No such portal.", "Нет такого портала."),
        )),
    }
}

/// The context and cached view of a portal page, or the response to send instead.
async fn portal_ctx(
    ui: &UiState,
    headers: &HeaderMap,
    p: &Params,
    portal: &str,
) -> Result<(Ctx, std::sync::Arc<PortalView>), Response> {
    let (c, rt) = portal_runtime(ui, headers, p, portal)?;
    match ui.view(&rt.cfg.id).await {
        Ok(v) => Ok((c, v)),
        Err(e) => {
            tracing::error!(portal, error = %e, "ui: analysis failed");
            Err(error_page(
                &c,
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("{e:#}"),
            ))
        }
    }
}

/// `GET /ui/p/{portal}`: business figures, warnings and monthly charts.
pub async fn overview(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let (c, v) = match portal_ctx(&ui, &headers, &p, &portal).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let l = c.lang;
    let a = &v.analysis;
    let f = &a.figures;
    let cur = a.currency.as_str();
    let m = |d: Decimal| (money(d, cur), d.to_string());
    let om = |d: Option<Decimal>| {
        d.map_or_else(
            || ("—".to_string(), String::new()),
            |d| (money(d, cur), d.to_string()),
        )
    };
    let n = |x: u64| (group_digits(&x.to_string()), x.to_string());
    let p = |x: Option<f64>| (pct(x), x.map_or_else(String::new, |x| x.to_string()));
    let period: Vec<(&str, &str, (String, String))> = vec![
        (
            "customers",
            l.t("Customers who bought", "Покупавших клиентов"),
            n(f.customers),
        ),
        (
            "new_customers",
            l.t("New customers", "Новых клиентов"),
            n(f.new_customers),
        ),
        (
            "repeat_customers",
            l.t("Repeat customers", "Повторных клиентов"),
            n(f.repeat_customers),
        ),
        (
            "repeat_purchase_rate",
            l.t("Repeat purchase rate", "Доля повторных покупателей"),
            p(f.repeat_purchase_rate),
        ),
        ("revenue", l.t("Revenue", "Выручка"), m(f.revenue)),
        ("orders", l.t("Orders", "Заказов"), n(f.orders)),
        ("aov", l.t("Average order", "Средний чек"), om(f.aov)),
        (
            "repeat_revenue",
            l.t("Repeat revenue", "Выручка повторных продаж"),
            m(f.repeat_revenue),
        ),
        (
            "repeat_revenue_share",
            l.t("Repeat revenue share", "Доля повторной выручки"),
            p(f.repeat_revenue_share),
        ),
        (
            "crr",
            l.t("Customer retention rate", "Удержание клиентов (CRR)"),
            p(f.crr),
        ),
        (
            "marketing_spend",
            l.t("Marketing spend", "Маркетинговые расходы"),
            om(f.marketing_spend),
        ),
        (
            "cac",
            l.t("Acquisition cost (CAC)", "Стоимость привлечения (CAC)"),
            om(f.cac),
        ),
    ];
    let all: Vec<(&str, &str, (String, String))> = vec![
        (
            "customers_total",
            l.t("Customers", "Клиентов"),
            n(f.customers_total),
        ),
        (
            "revenue_total",
            l.t("Revenue", "Выручка"),
            m(f.revenue_total),
        ),
        (
            "historical_ltv",
            l.t("Historical LTV", "Исторический LTV"),
            om(f.historical_ltv),
        ),
        (
            "predicted_clv_total",
            l.t("Predicted CLV, total", "Прогноз CLV, всего"),
            om(f.predicted_clv_total),
        ),
        (
            "predicted_clv_mean",
            l.t("Predicted CLV, mean", "Прогноз CLV, среднее"),
            om(f.predicted_clv_mean),
        ),
    ];
    let conc = &f.concentration;
    let revenue_bars: Vec<Bar> = v
        .months
        .iter()
        .map(|m| Bar {
            label: m.label.clone(),
            parts: vec![m.new_revenue, m.repeat_revenue],
        })
        .collect();
    let customer_bars: Vec<Bar> = v
        .months
        .iter()
        .map(|m| Bar {
            label: m.label.clone(),
            parts: vec![m.new_customers as f64, m.repeat_customers as f64],
        })
        .collect();
    let series = [l.t("new", "новые"), l.t("repeat", "повторные")];
    let short = |x: f64| {
        if x >= 1e6 {
            format!("{:.1}M", x / 1e6)
        } else if x >= 1e3 {
            format!("{:.0}k", x / 1e3)
        } else {
            format!("{x:.0}")
        }
    };
    let body = html! {
        p {
            (l.t("As of", "На дату")) " " strong { (a.as_of_date) } "; "
            (l.t("period", "период")) " " (f.period_start) " — " (f.period_end) "; "
            (l.t("computed", "рассчитано")) " " (ts(Some(v.computed_at)))
            form method="post" action={"/ui/p/" (portal) "/refresh"} style="display:inline;margin-left:8px" {
                input type="hidden" name="csrf" value=(c.session.csrf);
                button type="submit" { (l.t("Recompute", "Пересчитать")) }
            }
        }
        @if let Some(w) = &f.concentration_warning {
            div.warn data-warning="concentration" { strong { (l.t("Concentration: ", "Концентрация: ")) } (w) }
        }
        h2 { (l.t("The period", "Период")) }
        table { @for (key, label, (text, raw)) in &period { tr { th { (label) } td.n data-fig=(key) data-value=(raw) { (text) } } } }
        h2 { (l.t("All time", "За всё время")) }
        table { @for (key, label, (text, raw)) in &all { tr { th { (label) } td.n data-fig=(key) data-value=(raw) { (text) } } } }
        (predictions(l, &a.models))
        h2 { (l.t("Revenue concentration", "Концентрация выручки")) }
        table {
            tr { th { (l.t("Top 1", "Топ-1")) } td.n { (pct(Some(conc.top1_share))) } }
            tr { th { (l.t("Top 3", "Топ-3")) } td.n data-fig="top3_share" data-value=(conc.top3_share) { (pct(Some(conc.top3_share))) } }
            tr { th { (l.t("Top 10", "Топ-10")) } td.n { (pct(Some(conc.top10_share))) } }
            tr { th { (l.t("Top 20% of customers", "Топ-20% клиентов")) " (" (conc.top20pct_customers) ")" } td.n { (pct(Some(conc.top20pct_share))) } }
        }
        h2 { (l.t("Monthly trend", "Динамика по месяцам")) }
        (stacked_bars(&format!("{} ({cur})", l.t("Revenue", "Выручка")), &series, &revenue_bars, short))
        (stacked_bars(l.t("Customers who bought", "Покупавшие клиенты"), &series, &customer_bars, short))
        @if !a.warnings.is_empty() {
            h2 { (l.t("Warnings", "Предупреждения")) }
            ul { @for w in &a.warnings { li { (w) } } }
        }
    };
    let title = format!("{} · {}", portal, l.t("Overview", "Обзор"));
    page(&ui, &c, &title, Some((&portal, "")), body)
}

/// The overview's predictions section: the driving model with its backtest figures on the
/// portal's own history, the calibration chart (predicted vs actual cumulative purchases over
/// the holdout weeks) and the decile chart (customers ranked by the prediction).
fn predictions(l: Lang, m: &crate::analytics::ModelParams) -> Markup {
    let Some(name) = m.driving.as_deref() else {
        return html! {};
    };
    let fig = |v: Option<f64>, d: usize| v.map_or_else(|| "—".to_string(), |v| format!("{v:.d$}"));
    let raw = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
    let short = |x: f64| {
        if x >= 1e4 {
            format!("{:.0}k", x / 1e3)
        } else {
            format!("{x:.0}")
        }
    };
    html! {
        h2 { (l.t("Predictions", "Прогнозы")) }
        p data-model=(name) {
            (l.t("Driving model: ", "Модель прогнозов: ")) strong { (name) }
            @if !m.driving_params.is_empty() { " (" (m.driving_params) ")" }
        }
        @if let Some(e) = &m.evidence {
            p {
                (l.t("Backtest on this portal's history, holdout ", "Проверка на истории портала, контрольный период "))
                (e.holdout.0) " — " (e.holdout.1) ", "
                (group_digits(&e.customers.to_string())) (l.t(" customers", " клиентов"))
                @if let Some(n) = e.sampled_from {
                    " (" (l.t("a sample of ", "выборка из ")) (group_digits(&n.to_string())) ")"
                }
                ". " (e.reason)
            }
            table {
                tr { th { "MAE" } td.n data-fig="backtest_mae" data-value=(raw(e.mae)) { (fig(e.mae, 3)) } }
                tr { th { "AUC" } td.n data-fig="backtest_auc" data-value=(raw(e.auc)) { (fig(e.auc, 3)) } }
                tr { th { "MAPE" } td.n data-fig="backtest_mape" data-value=(raw(e.mape_pct)) { (fig(e.mape_pct, 2)) @if e.mape_pct.is_some() { "%" } } }
                tr { th { (l.t("Holdout purchases: predicted / actual", "Покупки в контрольном периоде: прогноз / факт")) }
                     td.n { (format!("{:.1}", e.predicted)) " / " (format!("{:.0}", e.actual)) } }
                tr { th { (l.t("Next purchase date, median error", "Дата следующей покупки, медианная ошибка")) }
                     td.n { (fig(e.next_mdae_days, 1)) @if e.next_mdae_days.is_some() { (l.t(" d", " дн.")) } } }
            }
            @let labels: Vec<String> = e.weeks.iter().map(|w| format!("{:.0}", (w / 7.0).ceil())).collect();
            (line_chart(
                l.t("Calibration: cumulative purchases in the holdout, by week", "Калибровка: покупки в контрольном периоде нарастающим итогом, по неделям"),
                &[l.t("predicted", "прогноз"), l.t("actual", "факт")],
                &labels,
                &[e.weekly_predicted.clone(), e.weekly_actual.clone()],
                short,
            ))
            @let bars: Vec<Bar> = e.deciles.iter().enumerate().map(|(i, d)| Bar {
                label: (i + 1).to_string(),
                parts: vec![d.predicted, d.actual],
            }).collect();
            (grouped_bars(
                l.t("Deciles: holdout purchases by decile of the prediction (1 = highest)", "Децили: покупки в контрольном периоде по децилям прогноза (1 = высший)"),
                &[l.t("predicted", "прогноз"), l.t("actual", "факт")],
                &bars,
                short,
            ))
        }
    }
}

/// Background of a heat cell: blue with an opacity by share of the maximum.
fn heat_style(v: f64, max: f64) -> String {
    let a = if max > 0.0 {
        0.06 + 0.84 * (v / max)
    } else {
        0.06
    };
    let fg = if a > 0.55 { "#fff" } else { "#222" };
    format!("background:rgba(59,111,182,{a:.2});color:{fg}")
}

/// `GET /ui/p/{portal}/rfm`: the R x F heatmap and the ABC x XYZ matrix.
pub async fn rfm(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    use rust_decimal::prelude::ToPrimitive;
    let (c, v) = match portal_ctx(&ui, &headers, &p, &portal).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let l = c.lang;
    let a = &v.analysis;
    let by_revenue = p.by.as_deref() == Some("revenue");
    let val = |cell: &crate::analytics::GridCell| {
        if by_revenue {
            cell.revenue.to_f64().unwrap_or(0.0)
        } else {
            cell.customers as f64
        }
    };
    let max_rfm = a
        .rfm_grid
        .cells
        .iter()
        .flatten()
        .map(val)
        .fold(0.0, f64::max);
    let max_abc = a
        .abc_xyz
        .cells
        .iter()
        .flatten()
        .map(val)
        .fold(0.0, f64::max);
    let cur = a.currency.as_str();
    let body = html! {
        p {
            (l.t("Colour by: ", "Цвет по: "))
            a href="?by=customers" class=[(!by_revenue).then_some("cur")] { (l.t("customers", "клиентам")) } " · "
            a href="?by=revenue" class=[by_revenue.then_some("cur")] { (l.t("revenue", "выручке")) }
        }
        h2 { (l.t("RFM: recency x frequency", "RFM: давность x частота")) }
        table.heat {
            tr { th { "R \\ F" } @for f in 1..=5u8 { th { (f) } } }
            @for r in (1..=5u8).rev() {
                tr {
                    th { (r) }
                    @for f in 1..=5u8 {
                        @let cell = &a.rfm_grid.cells[r as usize - 1][f as usize - 1];
                        td style=(heat_style(val(cell), max_rfm)) data-r=(r) data-f=(f) data-customers=(cell.customers) {
                            a href={"/ui/p/" (portal) "/segments?r=" (r) "&f=" (f)} title=(l.segment(crate::analytics::rfm::segment(r, f))) {
                                strong { (cell.customers) }
                                small { (money(cell.revenue, cur)) }
                                small { (l.segment(crate::analytics::rfm::segment(r, f))) }
                            }
                        }
                    }
                }
            }
        }
        p { small { (l.t("R 5 = bought most recently, F 5 = buys most often. Click a cell for its customers.", "R 5 — покупали недавно, F 5 — покупают чаще всех. Нажмите на ячейку, чтобы увидеть клиентов.")) } }
        h2 { "ABC x XYZ" }
        table.heat {
            tr { th { "ABC \\ XYZ" } @for x in [Xyz::X, Xyz::Y, Xyz::Z] { th { (x.as_str()) } } }
            @for (i, abc) in [Abc::A, Abc::B, Abc::C].into_iter().enumerate() {
                tr {
                    th { (abc.as_str()) }
                    @for (j, xyz) in [Xyz::X, Xyz::Y, Xyz::Z].into_iter().enumerate() {
                        @let cell = &a.abc_xyz.cells[i][j];
                        td style=(heat_style(val(cell), max_abc)) data-abc=(abc.as_str()) data-xyz=(xyz.as_str()) data-customers=(cell.customers) {
                            a href={"/ui/p/" (portal) "/segments?abc=" (abc.as_str()) "&xyz=" (xyz.as_str())} {
                                strong { (cell.customers) }
                                small { (money(cell.revenue, cur)) }
                            }
                        }
                    }
                }
            }
        }
        p { small { (l.t("A/B/C: share of revenue; X/Y/Z: how often they buy.", "A/B/C — доля в выручке; X/Y/Z — регулярность покупок.")) } }
    };
    let title = format!("{} · RFM, ABC/XYZ", portal);
    page(&ui, &c, &title, Some((&portal, "/rfm")), body)
}

/// A customer filter from the query.
#[derive(Debug, Default)]
pub struct Filter {
    segment: Option<RfmSegment>,
    r: Option<u8>,
    f: Option<u8>,
    abc: Option<String>,
    xyz: Option<String>,
    q: Option<String>,
    /// The digits of `q` when it has three or more (a phone search).
    digits: Option<String>,
}

/// What a search looks in besides phones: the lower-cased name, emails and customer key, one
/// string per customer (kept in the [`PortalView`]).
pub fn search_text(c: &CustomerRow) -> String {
    let mut s = c.name.to_lowercase();
    for e in &c.emails {
        s.push('\u{1}');
        s.push_str(&e.to_lowercase());
    }
    s.push('\u{1}');
    s.push_str(&c.key.to_string());
    s
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl Filter {
    /// The filter of the page parameters (unknown values are ignored).
    pub fn from_params(p: &Params) -> Filter {
        Filter {
            segment: nonempty(&p.segment).and_then(RfmSegment::parse),
            r: nonempty(&p.r).and_then(|v| v.parse().ok()),
            f: nonempty(&p.f).and_then(|v| v.parse().ok()),
            abc: nonempty(&p.abc).map(str::to_ascii_uppercase),
            xyz: nonempty(&p.xyz).map(str::to_ascii_uppercase),
            q: nonempty(&p.q).map(str::to_lowercase),
            digits: nonempty(&p.q)
                .map(|q| q.chars().filter(char::is_ascii_digit).collect::<String>())
                .filter(|d| d.len() >= 3),
        }
    }

    /// Whether a customer passes.
    pub fn matches(&self, c: &CustomerRow) -> bool {
        self.matches_with(c, None)
    }

    /// [`matches`](Self::matches) with the customer's [`search_text`] when it is at hand.
    pub fn matches_with(&self, c: &CustomerRow, text: Option<&str>) -> bool {
        self.segment.is_none_or(|s| c.rfm_segment == s)
            && self.r.is_none_or(|r| c.r == r)
            && self.f.is_none_or(|f| c.f == f)
            && self.abc.as_deref().is_none_or(|x| c.abc.as_str() == x)
            && self.xyz.as_deref().is_none_or(|x| c.xyz.as_str() == x)
            && self.q.as_deref().is_none_or(|q| {
                let in_text = match text {
                    Some(t) => t.contains(q),
                    None => search_text(c).contains(q),
                };
                in_text
                    || self
                        .digits
                        .as_deref()
                        .is_some_and(|d| c.phones.iter().any(|p| p.contains(d)))
            })
    }

    /// The customers of a view that pass, in order.
    pub fn select<'a>(&self, v: &'a PortalView) -> impl Iterator<Item = &'a CustomerRow> {
        v.analysis
            .customers
            .iter()
            .enumerate()
            .filter(move |(i, c)| self.matches_with(c, v.search.get(*i).map(|s| &**s)))
            .map(|(_, c)| c)
    }

    /// Whether it lets every customer through.
    pub fn is_empty(&self) -> bool {
        self.segment.is_none()
            && self.r.is_none()
            && self.f.is_none()
            && self.abc.is_none()
            && self.xyz.is_none()
            && self.q.is_none()
    }

    /// The query string of this filter (for links and the export).
    pub fn query(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        if let Some(v) = self.segment {
            s.append_pair("segment", v.as_str());
        }
        if let Some(v) = self.r {
            s.append_pair("r", &v.to_string());
        }
        if let Some(v) = self.f {
            s.append_pair("f", &v.to_string());
        }
        if let Some(v) = &self.abc {
            s.append_pair("abc", v);
        }
        if let Some(v) = &self.xyz {
            s.append_pair("xyz", v);
        }
        if let Some(v) = &self.q {
            s.append_pair("q", v);
        }
        s.finish()
    }

    /// A name for export files: `all`, `champions`, `r5-f4`, `a-x`...
    fn slug(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.segment {
            parts.push(s.as_str().to_string());
        }
        if let (Some(r), Some(f)) = (self.r, self.f) {
            parts.push(format!("r{r}-f{f}"));
        }
        if let Some(a) = &self.abc {
            parts.push(a.to_lowercase());
        }
        if let Some(x) = &self.xyz {
            parts.push(x.to_lowercase());
        }
        if self.q.is_some() {
            parts.push("search".into());
        }
        let s: String = parts
            .join("-")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        if s.is_empty() { "all".into() } else { s }
    }
}

/// `GET /ui/p/{portal}/segments`: segment summary, filters and the matching customers.
pub async fn segments(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let (c, v) = match portal_ctx(&ui, &headers, &p, &portal).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let l = c.lang;
    let a = &v.analysis;
    let cur = a.currency.as_str();
    let filter = Filter::from_params(&p);
    let query = filter.query();
    // The page's rows: a slice of the customers, or of the matches of one filtering pass.
    let matches: Vec<&CustomerRow> = if filter.is_empty() {
        Vec::new()
    } else {
        filter.select(&v).collect()
    };
    let total = if filter.is_empty() {
        a.customers.len()
    } else {
        matches.len()
    };
    let (page_no, pages) = page_of(&p, total, PAGE_ROWS);
    let range = (page_no - 1) * PAGE_ROWS..(page_no * PAGE_ROWS).min(total);
    let page_rows: Vec<&CustomerRow> = if filter.is_empty() {
        a.customers[range].iter().collect()
    } else {
        matches[range].to_vec()
    };
    let export = format!("/ui/p/{portal}/segments.csv?{query}");
    let export_xlsx = format!("/ui/p/{portal}/segments.xlsx?{query}");
    let sel = |cur: Option<&str>, v: &str| cur.is_some_and(|c| c.eq_ignore_ascii_case(v));
    let body = html! {
        h2 { (l.t("Segments", "Сегменты")) }
        table {
            tr { th { (l.t("Segment", "Сегмент")) } th.n { (l.t("Customers", "Клиентов")) } th.n { (l.t("Revenue", "Выручка")) } th { (l.t("Export", "Выгрузка")) } }
            @for s in &a.segments {
                tr data-segment=(s.segment.as_str()) {
                    td { a href={"?segment=" (s.segment.as_str())} { (l.segment(s.segment)) } }
                    td.n { (s.customers) }
                    td.n { (money(s.revenue, cur)) }
                    td {
                        a href={"/ui/p/" (portal) "/segments.csv?segment=" (s.segment.as_str())} { "CSV" } " · "
                        a href={"/ui/p/" (portal) "/segments.xlsx?segment=" (s.segment.as_str())} { "XLSX" }
                    }
                }
            }
        }
        h2 { (l.t("Customers", "Клиенты")) }
        form.filters method="get" {
            label { (l.t("Search", "Поиск")) input type="search" name="q" value=[filter.q.as_deref()] placeholder=(l.t("name, phone, email", "имя, телефон, email")); }
            label { (l.t("Segment", "Сегмент"))
                select name="segment" {
                    option value="" { "—" }
                    @for s in RfmSegment::ALL { option value=(s.as_str()) selected[filter.segment == Some(s)] { (l.segment(s)) } }
                }
            }
            label { "R" select name="r" { option value="" { "—" } @for i in 1..=5u8 { option value=(i) selected[filter.r == Some(i)] { (i) } } } }
            label { "F" select name="f" { option value="" { "—" } @for i in 1..=5u8 { option value=(i) selected[filter.f == Some(i)] { (i) } } } }
            label { "ABC" select name="abc" { option value="" { "—" } @for x in ["A", "B", "C"] { option value=(x) selected[sel(filter.abc.as_deref(), x)] { (x) } } } }
            label { "XYZ" select name="xyz" { option value="" { "—" } @for x in ["X", "Y", "Z"] { option value=(x) selected[sel(filter.xyz.as_deref(), x)] { (x) } } } }
            button type="submit" { (l.t("Show", "Показать")) }
            a.button href=(export) data-export="csv" { (l.t("Export CSV", "Выгрузить CSV")) }
            a.button href=(export_xlsx) data-export="xlsx" { (l.t("Export XLSX", "Выгрузить XLSX")) }
        }
        p data-count=(total) {
            (l.t("Customers found: ", "Найдено клиентов: ")) strong { (total) }
            @if pages > 1 { " " (l.t("(100 per page; the exports have all)", "(по 100 на странице; в выгрузках все)")) }
        }
        (pager(l, &query, page_no, pages))
        table {
            tr {
                th { (l.t("Customer", "Клиент")) } th { (l.t("Name", "Имя")) } th { (l.t("Phones", "Телефоны")) } th { "Email" }
                th { (l.t("Segment", "Сегмент")) } th { "RFM" } th { "ABC/XYZ" } th.n { (l.t("Purchases", "Покупок")) }
                th.n { (l.t("Revenue", "Выручка")) } th { (l.t("Last purchase", "Последняя покупка")) } th { (l.t("Cycle", "Цикл")) }
            }
            @for r in &page_rows {
                tr data-key=(r.key) {
                    td { (r.key) } td { (r.name) } td { (r.phones.join(", ")) } td { (r.emails.join(", ")) }
                    td { (l.segment(r.rfm_segment)) } td { (r.r) (r.f) (r.m) } td { (r.abc.as_str()) (r.xyz.as_str()) }
                    td.n { (r.purchases) } td.n data-value=(r.revenue) { (money(r.revenue, cur)) } td { (r.last_purchase) }
                    td { @if let Some(s) = r.cycle_status { (l.cycle(s)) } }
                }
            }
        }
        (pager(l, &query, page_no, pages))
    };
    let title = format!("{} · {}", portal, l.t("Segments", "Сегменты"));
    page(&ui, &c, &title, Some((&portal, "/segments")), body)
}

/// `GET /ui/p/{portal}/segments.csv`: the filtered customers as `rebuy segments` CSV (every
/// column, phones and emails included).
pub async fn export_csv(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    export(ui, portal, headers, p, false).await
}

/// `GET /ui/p/{portal}/segments.xlsx`: the same rows and columns as the CSV in an XLSX sheet
/// (phones and emails as text, numbers as numbers, dates as dates).
pub async fn export_xlsx(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    export(ui, portal, headers, p, true).await
}

async fn export(
    ui: UiState,
    portal: String,
    headers: HeaderMap,
    p: Params,
    xlsx: bool,
) -> Response {
    let (c, v) = match portal_ctx(&ui, &headers, &p, &portal).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let filter = Filter::from_params(&p);
    let name = format!(
        "{}-{}-{}.{}",
        portal.replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            ""
        ),
        filter.slug(),
        v.analysis.as_of_date,
        if xlsx { "xlsx" } else { "csv" }
    );
    // A whole base takes a while to write: off the request threads.
    let built = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let rows = filter.select(&v);
        if xlsx {
            render::write_segments_xlsx(rows).map_err(|e| e.to_string())
        } else {
            let mut out = Vec::new();
            render::write_segments(rows, render::Format::Csv, &mut out)
                .map_err(|e| e.to_string())?;
            Ok(out)
        }
    })
    .await;
    let out = match built {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return error_page(&c, StatusCode::UNPROCESSABLE_ENTITY, &e),
        Err(e) => return error_page(&c, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let content_type = if xlsx {
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    } else {
        "text/csv; charset=utf-8"
    };
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        out,
    )
        .into_response()
}

fn state_name(s: &ActionState) -> &'static str {
    match s {
        ActionState::Pending => "pending",
        ActionState::InFlight { .. } => "in_flight",
        ActionState::Done { .. } => "done",
        ActionState::Failed { .. } => "failed",
    }
}

/// `GET /ui/p/{portal}/touches`: actions by day, the outbox (newest first, 100 a page) with
/// the CRM's answer and a retry button on failures, and the dry-run plan with its apply button.
pub async fn touches(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let (c, rt) = match portal_runtime(&ui, &headers, &p, &portal) {
        Ok((c, rt)) => (c, rt.clone()),
        Err(r) => return r,
    };
    let l = c.lang;
    let snap = match ui.outbox(&rt).await {
        Ok(s) => s,
        Err(e) => return error_page(&c, StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}")),
    };
    let entries = &snap.entries;
    let days = &snap.days;
    let label = |k: &str| match k {
        "pending" => l.t("planned", "запланировано"),
        "in_flight" => l.t("sending", "отправляется"),
        "done" => l.t("applied", "применено"),
        _ => l.t("failed", "ошибка"),
    };
    let counts: HashMap<&str, usize> = ["pending", "in_flight", "done", "failed"]
        .into_iter()
        .zip(snap.counts)
        .collect();
    let want = nonempty(&p.state);
    let shown: Vec<_> = entries
        .iter()
        .filter(|e| want.is_none_or(|w| state_name(&e.state) == w))
        .collect();
    let (page_no, pages) = page_of(&p, shown.len(), PAGE_TOUCHES);
    let range = (page_no - 1) * PAGE_TOUCHES..(page_no * PAGE_TOUCHES).min(shown.len());
    let query = want.map_or_else(String::new, |w| format!("state={w}"));
    let run = ui.dry_run(&rt.cfg.id);
    let csrf = c.session.csrf.clone();
    let body = html! {
        @if let Some(n) = nonempty(&p.applied) {
            p.ok data-notice="applied" {
                (l.t("Plan applied: new actions in the outbox: ", "План применён: новых действий в очереди: ")) strong { (n) }
                @if let Some(a) = nonempty(&p.already) { "; " (l.t("already there: ", "уже были: ")) (a) }
                ". " (l.t("They are being sent to the CRM.", "Они отправляются в CRM."))
            }
        }
        @if let Some(k) = nonempty(&p.retried) {
            p.ok data-notice="retried" { (l.t("Queued again: ", "Снова в очереди: ")) code { (k) } }
        }
        h2 id="plan" { (l.t("Dry-run plan", "План (без записи)")) }
        @let (auto_apply, routing) = crate::playbooks::mapping::write_switches(&rt.cfg.mapping);
        p data-auto-apply=(if auto_apply { "on" } else { "off" }) {
            @if auto_apply {
                (l.t("Auto-apply is on: the daily run commits its plan (touches, funnel moves, segment fields) to the outbox and it is sent to the CRM, starting with the run of the day after it was turned on, without catching up on the days before.",
                     "Автоприменение включено: ежедневный запуск ставит свой план (касания, переходы по воронке, поля сегментов) в очередь, и он отправляется в CRM — начиная с запуска следующего дня после включения, без догоняющей отправки за прошедшие дни."))
            } @else {
                (l.t("Auto-apply is off: the daily run only plans. Nothing (touches, funnel moves, segment fields) is written to the CRM until someone presses Apply here or runs rebuy apply.",
                     "Автоприменение выключено: ежедневный запуск только рассчитывает план. Ничего (касания, переходы по воронке, поля сегментов) не записывается в CRM, пока кто-нибудь не нажмёт «Применить» здесь или не запустит rebuy apply."))
            }
            " "
            @if routing {
                (l.t("Repeat leads are routed to the repeat pipeline as they arrive (route_repeat_leads).", "Повторные заявки переносятся в воронку повторных продаж сразу по поступлении (route_repeat_leads)."))
            } @else {
                (l.t("Repeat leads are not routed as they arrive.", "Повторные заявки не переносятся автоматически по поступлении."))
            }
        }
        @match run.as_deref() {
            Some(crate::server::DryRun { plan: Ok(plan), id, computed_at, by_daily_run }) => {
                @if *by_daily_run {
                    p data-plan-source="daily" { (l.t("Planned by the daily run; it waits for Apply.", "Рассчитан ежедневным запуском; ждёт применения.")) }
                }
                p data-plan-actions=(plan.actions.len()) {
                    (l.t("Plan as of ", "План на ")) (ts(Some(plan.as_of))) " (" (plan.as_of_date) "): "
                    strong { (plan.actions.len()) } " " (l.t("action(s); nothing is written until it is applied.", "действий; ничего не записано, пока план не применён."))
                    " " small { (l.t("computed ", "рассчитан ")) (ts(Some(*computed_at))) }
                }
                @if !plan.actions.is_empty() {
                    table {
                        tr { th { (l.t("Rule", "Правило")) } th.n { (l.t("Actions", "Действий")) } }
                        @for (rule, n) in plan.counts() { tr data-rule=(rule) { td { (rule) } td.n data-value=(n) { (n) } } }
                    }
                }
                @if plan.funnel_without_deal > 0 {
                    p { (plan.funnel_without_deal) " " (l.t("customer(s) get a new deal in the funnel pipeline.", "клиентам будет создана сделка в воронке.")) }
                }
                @if !plan.skipped.is_empty() {
                    p { (l.t("Skipped: ", "Пропущено: ")) (plan.skipped.len()) }
                }
                @if plan.pacing.merged > 0 {
                    p data-pacing="merged" data-value=(plan.pacing.merged) {
                        (plan.pacing.merged) " " (l.t("touch(es) merged into another task of the same customer and day (one touch per customer a day; listed in its text).",
                            "касаний объединено с другой задачей того же клиента в тот же день (одно касание в день; перечислены в её тексте)."))
                    }
                }
                @if plan.pacing.suppressed > 0 {
                    p data-pacing="suppressed" data-value=(plan.pacing.suppressed) {
                        (plan.pacing.suppressed) " " (l.t("\"runs out\" reminder(s) not planned: the customer bought or has an open deal within reminder_quiet_days.",
                            "напоминаний «скоро закончится» не запланировано: клиент купил или у него открыта сделка в пределах reminder_quiet_days."))
                    }
                }
                @if let Some(until) = plan.pacing.deferred_until {
                    p data-pacing="deferred" data-value=(plan.pacing.deferred) {
                        (l.t("Deferred by the cap: ", "Перенесено из-за лимита задач: ")) strong { (plan.pacing.deferred) } " "
                        (l.t("task(s), spread over the business days until ", "задач, распределены по рабочим дням до ")) (until) "."
                    }
                }
                form method="post" action={"/ui/p/" (portal) "/apply"} style="display:inline" {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="plan" value=(id);
                    button type="submit" data-action="apply" disabled[plan.actions.is_empty()] { (l.t("Apply the plan", "Применить план")) }
                }
                " "
                form method="post" action={"/ui/p/" (portal) "/plan"} style="display:inline" {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" data-action="plan" { (l.t("Plan again", "Пересчитать план")) }
                }
                @if !plan.actions.is_empty() {
                    table {
                        tr { th { (l.t("Rule", "Правило")) } th { (l.t("Customer", "Клиент")) } th { (l.t("Action", "Действие")) } th { (l.t("Key", "Ключ")) } }
                        @for a in plan.actions.iter().take(PLAN_ROWS) {
                            tr data-plan-action=(a.key) { td { (a.rule) } td { (a.customer) } td { (a.summary) } td { small { (a.key) } } }
                        }
                    }
                    @if plan.actions.len() > PLAN_ROWS { p { (l.t("First 200 actions shown.", "Показаны первые 200 действий.")) } }
                }
            }
            Some(crate::server::DryRun { plan: Err(e), .. }) => {
                p.err data-plan-error="" { (e) }
                form method="post" action={"/ui/p/" (portal) "/plan"} {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" data-action="plan" { (l.t("Plan again", "Пересчитать план")) }
                }
            }
            None => {
                p { (l.t("Plan the playbooks now to see what would be written before anything is sent.", "Рассчитайте план по сценариям, чтобы увидеть, что будет записано, до отправки.")) }
                form method="post" action={"/ui/p/" (portal) "/plan"} {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" data-action="plan" { (l.t("Plan now (dry run)", "Рассчитать план (без записи)")) }
                }
            }
        }
        h2 { (l.t("By day", "По дням")) }
        table {
            tr { th { (l.t("Day", "День")) } th.n { (l.t("Planned", "Запланировано")) } th.n { (l.t("Applied", "Применено")) } th.n { (l.t("Failed", "Ошибок")) } }
            @for (d, [planned, done, failed]) in days.iter().rev().take(14) {
                tr data-day=(d) { td { (d) } td.n { (planned) } td.n { (done) } td.n class=[(*failed > 0).then_some("err")] { (failed) } }
            }
        }
        h2 { (l.t("Outbox", "Очередь")) }
        p {
            a href="?" class=[want.is_none().then_some("cur")] { (l.t("all", "все")) " (" (entries.len()) ")" }
            @for k in ["pending", "in_flight", "done", "failed"] {
                " · " a href={"?state=" (k)} data-state-count=(k) data-value=(counts.get(k).copied().unwrap_or(0)) { (label(k)) " (" (counts.get(k).copied().unwrap_or(0)) ")" }
            }
        }
        (pager(l, &query, page_no, pages))
        table {
            tr {
                th { (l.t("Planned at", "Запланировано")) } th { (l.t("Rule", "Правило")) } th { (l.t("Customer", "Клиент")) }
                th { (l.t("Action", "Действие")) } th { (l.t("State", "Состояние")) } th.n { (l.t("Attempts", "Попыток")) }
                th { (l.t("CRM answer", "Ответ CRM")) } th {}
            }
            @for e in &shown[range] {
                @let st = state_name(&e.state);
                tr data-touch=(e.action.key) data-state=(st) {
                    td { (ts(Some(e.created_at))) } td { (e.action.rule) } td { (e.action.customer) } td { (e.action.summary) }
                    td class=[(st == "failed").then_some("err")] { (label(st)) }
                    td.n { (e.attempts) }
                    td {
                        @match &e.state {
                            ActionState::Done { crm_id, at } => { (ts(Some(*at))) @if let Some(id) = crm_id { " · id " (id) } },
                            ActionState::Failed { code, message, at } => span.err { (ts(Some(*at))) " · " (code) ": " (message) },
                            ActionState::InFlight { since } => { (ts(Some(*since))) },
                            ActionState::Pending => { @if let Some(nb) = e.not_before { (l.t("not before ", "не раньше ")) (ts(Some(nb))) } },
                        }
                        @if let Some(err) = &e.last_error { br; small.err { (err) } }
                    }
                    td {
                        @if st == "failed" {
                            form method="post" action={"/ui/p/" (portal) "/touches/retry"} {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="key" value=(e.action.key);
                                button type="submit" data-action="retry" { (l.t("Retry", "Повторить")) }
                            }
                        }
                    }
                }
            }
        }
        (pager(l, &query, page_no, pages))
    };
    let title = format!("{} · {}", portal, l.t("Touches", "Касания"));
    page(&ui, &c, &title, Some((&portal, "/touches")), body)
}

/// The portal of a POST, after its session and CSRF check.
fn post_portal(
    ui: &UiState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    portal: &str,
) -> Result<crate::server::PortalRuntime, Response> {
    check_post(ui, headers, form)?;
    ui.app
        .portal(portal)
        .cloned()
        .ok_or_else(|| (StatusCode::NOT_FOUND, "no such portal").into_response())
}

fn touches_url(portal: &str, query: &str) -> String {
    let portal: String = url::form_urlencoded::byte_serialize(portal.as_bytes()).collect();
    if query.is_empty() {
        format!("/ui/p/{portal}/touches")
    } else {
        format!("/ui/p/{portal}/touches?{query}")
    }
}

/// `POST /ui/p/{portal}/touches/retry` (`key`, `csrf`): puts a failed action back in the
/// outbox and wakes the portal's drainer.
pub async fn retry(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let rt = match post_portal(&ui, &headers, &form, &portal) {
        Ok(rt) => rt,
        Err(r) => return r,
    };
    let Some(key) = form.get("key").cloned().filter(|k| !k.is_empty()) else {
        return (StatusCode::BAD_REQUEST, "missing key").into_response();
    };
    let k = key.clone();
    match rt.store.blocking(move |s| s.outbox_retry(&k)).await {
        Ok(crate::outbox::RetryOutcome::Requeued) => {
            tracing::info!(portal = %rt.cfg.id, key = %key, "ui: failed action queued again");
            ui.invalidate_outbox(&rt.cfg.id);
            rt.drain_now.notify_one();
            let q = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("retried", &key)
                .finish();
            Redirect::to(&touches_url(&portal, &q)).into_response()
        }
        Ok(crate::outbox::RetryOutcome::NotFailed) => (
            StatusCode::CONFLICT,
            "this action has not failed (it is pending, being sent or done): nothing to retry",
        )
            .into_response(),
        Ok(crate::outbox::RetryOutcome::Missing) => {
            (StatusCode::NOT_FOUND, "no such action in the outbox").into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `POST /ui/p/{portal}/plan` (`csrf`): plans the portal now as `rebuy plan` does (nothing is
/// written) and keeps the plan for the apply button.
pub async fn dry_run(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let rt = match post_portal(&ui, &headers, &form, &portal) {
        Ok(rt) => rt,
        Err(r) => return r,
    };
    // The connector is read only for the custom-field list when the mapping names fields.
    let handle = rt.handle().ok();
    let plan = crate::writeback::plan_portal(
        &rt.cfg,
        &rt.store,
        handle.as_ref().map(|h| h.connector.as_ref()),
        jiff::Timestamp::now(),
    )
    .await
    .map_err(|e| format!("{e:#}"));
    ui.set_dry_run(
        &rt.cfg.id,
        crate::server::DryRun {
            id: crate::server::request::random_token(),
            plan,
            computed_at: jiff::Timestamp::now(),
            by_daily_run: false,
        },
    );
    Redirect::to(&format!("{}#plan", touches_url(&portal, ""))).into_response()
}

/// `POST /ui/p/{portal}/apply` (`csrf`, `plan`): commits the dry-run plan the person saw to the
/// outbox ([`crate::writeback::enqueue_plan`], as `rebuy apply` does; known keys are skipped)
/// and wakes the portal's drainer, which sends it under the CRM's rate limit.
pub async fn apply(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let rt = match post_portal(&ui, &headers, &form, &portal) {
        Ok(rt) => rt,
        Err(r) => return r,
    };
    let plan_id = form.get("plan").map(String::as_str).unwrap_or("");
    let Some(run) = ui.take_dry_run(&rt.cfg.id, plan_id) else {
        return (
            StatusCode::CONFLICT,
            "this plan is no longer the current one (applied already, or planned again): open the touches page and plan again",
        )
            .into_response();
    };
    let Ok(plan) = &run.plan else {
        return (StatusCode::CONFLICT, "the plan failed: nothing to apply").into_response();
    };
    match crate::writeback::enqueue_plan(&rt.store, plan).await {
        Ok(r) => {
            tracing::info!(portal = %rt.cfg.id, new = r.added, already = r.already, "ui: plan applied");
            ui.invalidate_outbox(&rt.cfg.id);
            rt.drain_now.notify_one();
            let q = format!("applied={}&already={}", r.added, r.already);
            Redirect::to(&touches_url(&portal, &q)).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
    }
}

/// `GET /ui/p/{portal}/results[?period=2026-11]`: what the touches brought, treated against
/// the control groups per rule and overall ([`crate::results::portal_results`], as `rebuy
/// results` prints it).
pub async fn results(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let (c, rt) = match portal_runtime(&ui, &headers, &p, &portal) {
        Ok((c, rt)) => (c, rt.clone()),
        Err(r) => return r,
    };
    let l = c.lang;
    let period = p
        .period
        .clone()
        .filter(|s| !s.trim().is_empty() && s.trim() != "all");
    let q = period.clone();
    let computed = tokio::task::spawn_blocking(move || {
        crate::results::portal_results(&rt.store, &rt.cfg, jiff::Timestamp::now(), q.as_deref())
    })
    .await;
    let r = match computed {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            let status = if period.is_some() && format!("{e}").contains("--period") {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            return error_page(&c, status, &format!("{e:#}"));
        }
        Err(e) => return error_page(&c, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let share = |d: Decimal| format!("{:.1}%", d * Decimal::ONE_HUNDRED);
    let money = |d: Decimal, _: &str| crate::playbooks::templates::group_money(d, '\u{202f}', '.');
    let verdict = |v: &crate::results::Verdict| -> String {
        use crate::results::Verdict;
        match v {
            Verdict::Uplift => l.t("uplift", "есть прирост").to_owned(),
            Verdict::NoUplift => l.t("no uplift", "прироста нет").to_owned(),
            Verdict::Negative => l.t("negative", "отрицательный").to_owned(),
            Verdict::NotEnoughData {
                treated_needed: Some(t),
                holdout_needed: Some(h),
            } => format!(
                "{} ({t} / {h})",
                l.t(
                    "not enough data yet: needs treated / holdout",
                    "пока мало данных: нужно с касанием / контроль"
                )
            ),
            Verdict::NotEnoughData { .. } => {
                l.t("not enough data yet", "пока мало данных").to_owned()
            }
        }
    };
    let body = html! {
        p { (l.t(
            "Customers who got a touch against the control group, who got none. A purchase within the outcome window of a touch (or of the day it would have been) is its outcome; the interval is 95%.",
            "Клиенты, получившие касание, против контрольной группы без касаний. Итог касания — покупка в окне после него (или после дня, когда оно было бы); интервал 95%."
        )) " " (l.t("Outcome window", "Окно итога")) ": " (r.window_days) " " (l.t("days", "дн.")) "." }
        form.filters method="get" {
            label { (l.t("Period (2026-11, 2026-Q4, 2026 or all)", "Период (2026-11, 2026-Q4, 2026 или all)"))
                input type="text" name="period" value=(period.as_deref().unwrap_or("all")); }
            button type="submit" { (l.t("Show", "Показать")) }
        }
        table data-period=(r.period) {
            tr {
                th { (l.t("Rule", "Правило")) }
                th { (l.t("Treated", "С касанием")) }
                th { (l.t("Holdout", "Контроль")) }
                th { (l.t("Bought, treated", "Купили, с касанием")) }
                th { (l.t("Bought, holdout", "Купили, контроль")) }
                th { (l.t("Revenue per customer, treated", "Выручка на клиента, с касанием")) }
                th { (l.t("Revenue per customer, holdout", "Выручка на клиента, контроль")) }
                th { (l.t("Incremental per customer (95%)", "Прирост на клиента (95%)")) }
                th { (l.t("Incremental revenue (95%)", "Дополнительная выручка (95%)")) }
                th { (l.t("Tasks completed", "Задач выполнено")) }
                th { (l.t("Verdict", "Вывод")) }
            }
            @for line in std::iter::once(&r.overall).chain(&r.rules) {
                @let cmp = &line.comparison;
                tr data-rule=(line.rule) data-treated=(line.treated.customers) data-holdout=(line.holdout.customers) {
                    td { @if line.rule == "overall" { (l.t("overall", "всего")) } @else { (line.rule) } }
                    td.num { (line.treated.customers) }
                    td.num { (line.holdout.customers) }
                    td.num { (share(line.treated.purchase_rate)) }
                    td.num { (share(line.holdout.purchase_rate)) }
                    td.num { (money(line.treated.revenue_per_customer, "")) }
                    td.num { (money(line.holdout.revenue_per_customer, "")) }
                    td.num { (money(cmp.revenue_diff, "")) " [" (money(cmp.revenue_interval.0, "")) "; " (money(cmp.revenue_interval.1, "")) "]" }
                    td.num { (money(cmp.incremental_revenue, "")) " [" (money(cmp.incremental_interval.0, "")) "; " (money(cmp.incremental_interval.1, "")) "]" }
                    td.num { (line.treated.completed) }
                    td { (verdict(&cmp.verdict)) }
                }
            }
        }
        @let awaiting = r.overall.treated.awaiting + r.overall.holdout.awaiting;
        @if awaiting > 0 {
            p { (awaiting) " " (l.t("customer-months are still inside their outcome window and not counted yet.", "клиенто-месяцев ещё в окне итога и пока не учтены.")) }
        }
    };
    let title = format!("{} · {}", portal, l.t("Results", "Результаты"));
    page(&ui, &c, &title, Some((&portal, "/results")), body)
}

/// `GET /ui/p/{portal}/mapping`: the CRM's pipelines, stages, users and fields, which of them
/// the mapping and playbooks use, and the problems `rebuy mapping` finds (the same
/// [`crate::writeback::mapping_report`]). When the CRM cannot be reached, the cached pipelines
/// and users stand in and the page says so.
pub async fn mapping(
    State(ui): State<UiState>,
    Path(portal): Path<String>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Response {
    let (c, rt) = match portal_runtime(&ui, &headers, &p, &portal) {
        Ok((c, rt)) => (c, rt.clone()),
        Err(r) => return r,
    };
    let l = c.lang;
    let report = match rt.handle() {
        Ok(h) => {
            crate::writeback::mapping_report(
                &rt.cfg,
                &rt.store,
                h.connector.as_ref(),
                Some(MAPPING_CRM_WAIT),
            )
            .await
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    let r = match report {
        Ok(r) => r,
        Err(e) => {
            return error_page(&c, StatusCode::INTERNAL_SERVER_ERROR, &format!("{e:#}"));
        }
    };
    let body = mapping_body(l, &rt.cfg, &r);
    let title = format!("{} · {}", portal, l.t("Mapping", "Сопоставление"));
    page(&ui, &c, &title, Some((&portal, "/mapping")), body)
}

fn mapping_body(
    l: Lang,
    cfg: &crate::config::PortalConfig,
    r: &crate::writeback::MappingReport,
) -> Markup {
    use std::collections::BTreeMap;
    // What each pipeline, stage, user and field is used for.
    let mut pipeline_use: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut stage_use: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut user_use: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    let mut field_use: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let sales = &cfg.analytics.sale_pipelines;
    for pl in &r.pipelines {
        if sales.is_empty() || sales.contains(&pl.id.0) {
            pipeline_use
                .entry(pl.id.0.to_string())
                .or_default()
                .push(l.t("sales analytics", "аналитика продаж"));
        }
        for st in &pl.stages {
            if cfg.analytics.sale_stages.contains(&st.id.0) {
                stage_use
                    .entry(st.id.0.clone())
                    .or_default()
                    .push(l.t("sale stage", "этап продажи").to_string());
            }
        }
    }
    if let Some(rules) = &r.rules {
        if let Some(rep) = &rules.repeat {
            pipeline_use
                .entry(rep.pipeline.0.to_string())
                .or_default()
                .push(l.t("repeat routing", "повторные продажи"));
            stage_use
                .entry(rep.stage.0.clone())
                .or_default()
                .push(l.t("routed deals", "сюда попадают повторные").to_string());
        }
        if let Some(f) = &rules.funnel {
            pipeline_use
                .entry(f.pipeline.0.to_string())
                .or_default()
                .push(l.t("customer funnel", "воронка клиентов"));
            for (i, (id, _)) in f.stages.iter().enumerate() {
                stage_use.entry(id.0.clone()).or_default().push(format!(
                    "{} {}",
                    l.t("funnel step", "шаг воронки"),
                    i + 1
                ));
            }
        }
        if let Some(u) = rules.default_responsible {
            user_use
                .entry(u.0)
                .or_default()
                .push(l.t("default responsible", "ответственный по умолчанию"));
        }
        if let Some(f) = &rules.fields {
            for (id, what) in [
                (&f.rfm_segment, l.t("RFM segment", "RFM-сегмент")),
                (&f.abc, "ABC"),
                (&f.xyz, "XYZ"),
                (&f.p_alive, "P(alive)"),
                (
                    &f.expected_purchases_90d,
                    l.t(
                        "expected purchases, 90 days",
                        "ожидаемые покупки за 90 дней",
                    ),
                ),
                (&f.clv_12m, "CLV"),
                (&f.churn_band, l.t("churn band", "риск оттока")),
            ] {
                if let Some(id) = id {
                    field_use.entry(id.clone()).or_default().push(what);
                }
            }
            if let Some((id, _)) = &f.next_purchase {
                field_use
                    .entry(id.clone())
                    .or_default()
                    .push(l.t("next purchase", "следующая покупка"));
            }
        }
    }
    let mapping = crate::playbooks::mapping::parse(&cfg.mapping).unwrap_or_default();
    html! {
        @if let Some(why) = &r.offline {
            div.warn data-offline="" {
                strong { (l.t("The CRM could not be reached: ", "CRM недоступна: ")) }
                (why) br;
                (l.t("Showing the pipelines and users cached by the last sync; custom fields are not known.", "Показаны воронки и пользователи из кэша последней синхронизации; пользовательские поля неизвестны."))
            }
        }
        @if r.problems.is_empty() && r.test_failures.is_empty() {
            p.ok data-mapping="ok" {
                (l.t("The mapping and playbooks resolve against the CRM", "Сопоставление и сценарии сходятся с CRM"))
                " (" (r.test_cases) " " (l.t("playbook test case(s) pass", "тестов сценариев проходят")) ")."
            }
        } @else {
            div.warn data-mapping="problems" {
                strong { (r.problems.len() + r.test_failures.len()) " " (l.t("problem(s):", "проблем(ы):")) }
                ul {
                    @for pr in &r.problems { li data-problem=(pr.key) { (pr.to_string()) } }
                    @for f in &r.test_failures { li data-problem="test" { (f) } }
                }
            }
        }
        h2 { (l.t("Playbooks", "Сценарии")) }
        @if mapping.playbooks.is_empty() {
            p { (l.t("No playbooks in the mapping.", "В сопоставлении нет сценариев.")) }
        } @else {
            ul { @for pb in &mapping.playbooks { li data-playbook=(pb) { (pb) } } }
        }
        @if let Some(rules) = &r.rules {
            p { (l.t("Touch rules: ", "Правил касаний: ")) strong data-rules=(rules.rules.len()) { (rules.rules.len()) } }
        }
        h2 { (l.t("Pipelines and stages", "Воронки и этапы")) }
        table {
            tr { th { (l.t("Pipeline / stage", "Воронка / этап")) } th { "id" } th { (l.t("Kind", "Тип")) } th { (l.t("Used for", "Используется")) } }
            @for pl in &r.pipelines {
                tr data-pipeline=(pl.id.0) {
                    th { (pl.name) @if pl.is_main { " " small { (l.t("(main)", "(основная)")) } } }
                    td { (pl.id.0) } td {}
                    td data-used=(pipeline_use.get(&pl.id.0.to_string()).map_or(0, Vec::len)) {
                        @if let Some(u) = pipeline_use.get(&pl.id.0.to_string()) { (u.join(", ")) }
                    }
                }
                @for st in &pl.stages {
                    tr data-stage=(st.id.0) {
                        td { "    " (st.name) } td { (st.id.0) } td { (format!("{:?}", st.kind)) }
                        td { @if let Some(u) = stage_use.get(&st.id.0) { (u.join(", ")) } }
                    }
                }
            }
        }
        h2 { (l.t("Users", "Пользователи")) }
        table {
            tr { th { (l.t("Name", "Имя")) } th { "id" } th { (l.t("Active", "Активен")) } th { (l.t("Used for", "Используется")) } }
            @for u in &r.users {
                tr data-user=(u.id.0) {
                    td { (u.name) } td { (u.id.0) } td { @if u.active { "✓" } @else { "—" } }
                    td { @if let Some(x) = user_use.get(&u.id.0) { (x.join(", ")) } }
                }
            }
        }
        h2 { (l.t("Custom fields", "Пользовательские поля")) }
        @match &r.fields {
            Some(fields) => {
                table {
                    tr { th { (l.t("Entity", "Сущность")) } th { (l.t("Name", "Название")) } th { "id" } th { (l.t("Type", "Тип")) } th { (l.t("Used for", "Используется")) } }
                    @for f in fields {
                        tr data-field=(f.id) {
                            td { (f.entity.as_str()) } td { (f.name) } td { (f.id) } td { (f.field_type) @if let Some(code) = &f.code { " [" (code) "]" } }
                            td data-used=(field_use.get(&f.id.to_string()).map_or(0, Vec::len)) { @if let Some(x) = field_use.get(&f.id.to_string()) { (x.join(", ")) } }
                        }
                    }
                }
            }
            None => p { (l.t("Not listed (the CRM was not reached, or its connector does not list fields).", "Не получены (CRM недоступна или её коннектор не отдаёт список полей).")) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped() {
        assert_eq!(group_digits("1234567.5"), "1\u{202f}234\u{202f}567.5");
        assert_eq!(group_digits("-999"), "-999");
        assert_eq!(group_digits("1000"), "1\u{202f}000");
    }

    #[test]
    fn filter_query_round_trips() {
        let p = Params {
            segment: Some("champions".into()),
            r: Some("5".into()),
            f: Some("".into()),
            abc: Some("a".into()),
            ..Params::default()
        };
        let f = Filter::from_params(&p);
        assert_eq!(f.query(), "segment=champions&r=5&abc=A");
        assert_eq!(f.slug(), "champions-a");
    }
}
