//! amoCRM OAuth 2.0: the consent redirect, the token endpoint and the bearer check.
//!
//! - `GET /oauth?client_id=..&state=..&mode=..` redirects (302) to the integration's redirect
//!   URI with `code`, `state` and `referer` (`{subdomain}.amocrm.ru`), as after a user's
//!   consent. `mode` (`post_message`/`popup`) only matters to a browser, so it is ignored.
//! - `POST /oauth2/access_token` takes JSON (as the docs show) or a form (as the `oauth2` crate
//!   and league/oauth2-client send it), client credentials in the body or in HTTP Basic auth
//!   (league/oauth2-server, which amoCRM runs, reads both). Grants `authorization_code` and
//!   `refresh_token`. Codes are single use and live 20 minutes; refresh tokens are globally
//!   single use and rotated on every refresh, and live 3 months.
//! - Errors of the token endpoint are amoCRM's `OAuthProblemJson`; the hints are those of
//!   league/oauth2-server (`Token has been revoked` is quoted by amoCRM staff in the doc).
//! - Access tokens are JWT-shaped (`header.payload.signature`, base64url) with the claims seen
//!   in real amoCRM tokens (`aud` = client_id, `jti`, `iat`, `nbf`, `exp`, `sub`, `account_id`,
//!   `base_domain`, `api_domain`, `scopes`...). The signature is random bytes: clients read
//!   `exp` without verifying, and the emulator checks tokens by lookup.
use super::error::{ApiError, PROBLEM_JSON, json_response};
use super::{Inner, lock};
use crate::rng::Rng;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const CODE_TTL: Duration = Duration::from_secs(20 * 60);
const REFRESH_TTL: Duration = Duration::from_secs(90 * 86_400);

struct Issued {
    at: Instant,
    used: bool,
}

/// Issued codes and tokens.
pub(crate) struct OAuthState {
    rng: Rng,
    codes: HashMap<String, Issued>,
    refresh: HashMap<String, Issued>,
    /// Access token -> expiry.
    access: HashMap<String, Instant>,
}

impl OAuthState {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed ^ 0x0A07_4000),
            codes: HashMap::new(),
            refresh: HashMap::new(),
            access: HashMap::new(),
        }
    }

    fn hex(&mut self, chars: usize) -> String {
        let mut s = String::with_capacity(chars + 16);
        while s.len() < chars {
            s.push_str(&format!("{:016x}", self.rng.next_u64()));
        }
        s.truncate(chars);
        s
    }

    pub fn issue_code(&mut self) -> String {
        let code = format!("def50200{}", self.hex(200));
        self.codes.insert(
            code.clone(),
            Issued {
                at: Instant::now(),
                used: false,
            },
        );
        code
    }

    pub fn expire_all(&mut self) {
        let now = Instant::now();
        for exp in self.access.values_mut() {
            *exp = now;
        }
    }

    /// The account turned the integration off: every access token stops working and every
    /// refresh token is revoked.
    pub fn revoke_all(&mut self) {
        self.expire_all();
        for r in self.refresh.values_mut() {
            r.used = true;
        }
    }

    fn issue_tokens(&mut self, cfg: &super::AmoConfig, user_id: u64) -> Value {
        let jti = self.hex(80);
        let iat = jiff::Timestamp::now().as_second();
        let ttl = cfg.access_token_ttl_secs;
        let header = json!({"typ": "JWT", "alg": "RS256", "jti": jti});
        let payload = json!({
            "aud": cfg.client_id,
            "jti": jti,
            "iat": iat,
            "nbf": iat,
            "exp": iat + ttl as i64,
            "sub": user_id.to_string(),
            "grant_type": "",
            "account_id": cfg.account_id,
            "base_domain": "amocrm.ru",
            "version": 2,
            "scopes": ["crm", "files", "files_delete", "notifications", "push_notifications"],
            "hash_uuid": format!("{}-{}-{}-{}-{}", self.hex(8), self.hex(4), self.hex(4), self.hex(4), self.hex(12)),
            "api_domain": "api-b.amocrm.ru",
        });
        let signature: Vec<u8> = (0..32)
            .flat_map(|_| self.rng.next_u64().to_le_bytes())
            .collect();
        let access = format!(
            "{}.{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(payload.to_string().as_bytes()),
            b64url(&signature)
        );
        let refresh = format!("def50200{}", self.hex(300));
        self.access
            .insert(access.clone(), Instant::now() + Duration::from_secs(ttl));
        self.refresh.insert(
            refresh.clone(),
            Issued {
                at: Instant::now(),
                used: false,
            },
        );
        json!({
            "token_type": "Bearer",
            "expires_in": ttl,
            "server_time": iat,
            "access_token": access,
            "refresh_token": refresh,
        })
    }
}

/// Base64url without padding.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Standard or url-safe base64, padding optional; `None` on bad input.
pub(crate) fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.trim().bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

/// amoCRM's OAuth error body.
fn oauth_problem(status: u16, hint: &str) -> Response {
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        PROBLEM_JSON,
        &json!({
            "hint": hint,
            "title": "Некорректный запрос",
            "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson",
            "status": status,
            "detail": "В запросе отсутствует ряд параметров или параметры невалидны",
        }),
    )
}

fn params(headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let from_json = |body: &[u8]| -> Option<HashMap<String, String>> {
        let v: Value = serde_json::from_slice(body).ok()?;
        let obj = v.as_object()?;
        Some(
            obj.iter()
                .filter_map(|(k, v)| {
                    let s = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return None,
                    };
                    Some((k.clone(), s))
                })
                .collect(),
        )
    };
    let from_form = |body: &[u8]| {
        url::form_urlencoded::parse(body)
            .into_owned()
            .collect::<HashMap<_, _>>()
    };
    if ct.contains("x-www-form-urlencoded") {
        from_form(body)
    } else {
        from_json(body).unwrap_or_else(|| from_form(body))
    }
}

/// Client credentials from HTTP Basic auth (each part form-urlencoded, RFC 6749 §2.3.1).
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(b64_decode(rest)?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let dec = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((dec(id)?, dec(secret)?))
}

/// `POST /oauth2/access_token`.
pub(crate) async fn token(
    State(st): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = params(&headers, &body);
    let basic = basic_auth(&headers);
    let cfg = &st.cfg;
    let client_id = p
        .get("client_id")
        .cloned()
        .or_else(|| basic.as_ref().map(|b| b.0.clone()));
    let secret = p
        .get("client_secret")
        .cloned()
        .or_else(|| basic.as_ref().map(|b| b.1.clone()));
    let Some(client_id) = client_id else {
        return oauth_problem(400, "Check the `client_id` parameter");
    };
    if client_id != cfg.client_id || secret.as_deref() != Some(cfg.client_secret.as_str()) {
        return oauth_problem(401, "Client authentication failed");
    }
    let user_id = st.read().account.current_user_id;
    let mut o = lock(&st.oauth);
    match p.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some(code) = p.get("code") else {
                return oauth_problem(400, "Check the `code` parameter");
            };
            if let Some(uri) = p.get("redirect_uri")
                && uri != &cfg.redirect_uri
            {
                return oauth_problem(400, "Invalid redirect URI");
            }
            match o.codes.get_mut(code) {
                None => return oauth_problem(400, "Cannot decrypt the authorization code"),
                Some(c) if c.used => {
                    return oauth_problem(400, "Authorization code has been revoked");
                }
                Some(c) if c.at.elapsed() > CODE_TTL => {
                    return oauth_problem(400, "Authorization code has expired");
                }
                Some(c) => c.used = true,
            }
            let body = o.issue_tokens(cfg, user_id);
            drop(o);
            lock(&st.stats).token_grants += 1;
            json_response(StatusCode::OK, "application/json", &body)
        }
        Some("refresh_token") => {
            let Some(rt) = p.get("refresh_token") else {
                return oauth_problem(400, "Check the `refresh_token` parameter");
            };
            match o.refresh.get_mut(rt) {
                None => return oauth_problem(401, "Cannot decrypt the refresh token"),
                Some(r) if r.used => return oauth_problem(401, "Token has been revoked"),
                Some(r) if r.at.elapsed() > REFRESH_TTL => {
                    return oauth_problem(401, "Token has expired");
                }
                Some(r) => r.used = true,
            }
            let body = o.issue_tokens(cfg, user_id);
            drop(o);
            lock(&st.stats).token_refreshes += 1;
            json_response(StatusCode::OK, "application/json", &body)
        }
        Some(_) => oauth_problem(400, "Check that all required parameters have been provided"),
        None => oauth_problem(400, "Check the `grant_type` parameter"),
    }
}

/// `GET /oauth`: the consent page, already consented.
pub(crate) async fn authorize(State(st): State<Arc<Inner>>, RawQuery(q): RawQuery) -> Response {
    let q: HashMap<String, String> = url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let cfg = &st.cfg;
    if q.get("client_id") != Some(&cfg.client_id) {
        return super::error::problem(400, "Bad Request", "unknown client_id");
    }
    if let Some(uri) = q.get("redirect_uri")
        && uri != &cfg.redirect_uri
    {
        return super::error::problem(
            400,
            "Bad Request",
            "redirect_uri does not match the integration's",
        );
    }
    let Ok(mut target) = url::Url::parse(&cfg.redirect_uri) else {
        return super::error::problem(
            400,
            "Bad Request",
            "the integration's redirect_uri is not a URL",
        );
    };
    let code = lock(&st.oauth).issue_code();
    target
        .query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", q.get("state").map_or("", String::as_str))
        .append_pair("referer", &format!("{}.amocrm.ru", cfg.subdomain));
    let mut r = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(target.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// `GET /oauth2/account/current/subdomain` with `X-Refresh-Token` (the lib's domain lookup).
pub(crate) async fn current_subdomain(
    State(st): State<Arc<Inner>>,
    headers: HeaderMap,
) -> Response {
    let rt = headers
        .get("x-refresh-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !lock(&st.oauth).refresh.contains_key(rt) {
        return ApiError::Unauthorized("Неверный логин или пароль".into()).into_response();
    }
    json_response(
        StatusCode::OK,
        "application/json",
        &json!({"id": st.cfg.account_id, "subdomain": st.cfg.subdomain, "domain": "amocrm.ru", "top_level_domain": "ru"}),
    )
}

/// Checks `Authorization: Bearer ...` for the API.
pub(crate) fn check_bearer(st: &Inner, headers: &HeaderMap) -> Result<(), ApiError> {
    let unauthorized = || ApiError::Unauthorized("Неверный логин или пароль".into());
    let v = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    let (scheme, token) = v.split_once(' ').ok_or_else(unauthorized)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized());
    }
    let token = token.trim();
    if st.cfg.long_lived_token.as_deref() == Some(token) {
        return Ok(());
    }
    match lock(&st.oauth).access.get(token) {
        Some(exp) if Instant::now() < *exp => Ok(()),
        _ => Err(unauthorized()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in ["", "a", "ab", "abc", "abcd", "client:secret with spaces"] {
            assert_eq!(
                b64_decode(&b64url(s.as_bytes())).as_deref(),
                Some(s.as_bytes())
            );
        }
        assert_eq!(b64url(b"hello"), "aGVsbG8");
        assert_eq!(b64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(b64_decode("a"), None);
        assert_eq!(b64_decode("!!!!"), None);
    }
}
