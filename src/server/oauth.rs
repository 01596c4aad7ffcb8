//! OAuth endpoints of `rebuy serve`.
//!
//! A flow is started only by someone entitled to: a logged-in dashboard user (the portals
//! page's Connect button, `/ui/p/{portal}/connect`) or whoever holds a signed, expiring link
//! printed by `rebuy auth --portal ID --link` (`/oauth/{portal}/start?exp=..&sig=..`, an
//! HMAC-SHA256 over the portal and the expiry with the server's link key in the data
//! directory). Anonymous starts get 401, bad or expired links 403; neither touches a store.
//!
//! The flow's random `state` lives in a bounded in-memory map ([`PendingStates`]: 10 minutes,
//! at most [`MAX_PENDING`]) and is bound to the browser that started it by a random nonce in
//! an `HttpOnly` cookie scoped to `/oauth/{portal}/`. `/oauth/{portal}/callback` takes the
//! state out (once) and checks the portal and that cookie, exchanges the code, commits the
//! tokens, and answers with a page that says what happened. A restart forgets pending flows.
use super::error::AppError;
use super::{AppState, PortalRuntime};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How long a started flow may take (the person's consent at the CRM).
pub const STATE_TTL: Duration = Duration::from_secs(10 * 60);
/// Most flows pending at once; past it the oldest is forgotten.
pub const MAX_PENDING: usize = 4096;
/// The cookie binding a flow to the browser that started it.
pub const FLOW_COOKIE: &str = "rebuy_oauth";
/// The link key's file in the data directory.
pub const LINK_KEY_FILE: &str = "oauth-link.key";
/// Longest validity of a signed start link.
pub const MAX_LINK_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

type HmacSha256 = hmac::Hmac<Sha256>;

/// The secret that signs start links (`rebuy auth --link`) and that `serve` checks them with:
/// 32 random bytes, hex, in `data_dir/oauth-link.key` (0600), made by whichever comes first.
pub struct LinkKey(secrecy::SecretBox<[u8; 32]>);

impl LinkKey {
    /// Reads the data directory's key, creating it (and the directory, 0700) when missing.
    pub fn load_or_create(data_dir: &std::path::Path) -> std::io::Result<LinkKey> {
        let path = data_dir.join(LINK_KEY_FILE);
        if !path.exists() {
            let mut dir = std::fs::DirBuilder::new();
            dir.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
            dir.create(data_dir)?;
            let mut key = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
            // A temporary file is 0600; persisting without clobbering lets a concurrent
            // creator win and both read its key.
            let mut tmp = tempfile::NamedTempFile::new_in(data_dir)?;
            std::io::Write::write_all(&mut tmp, hex::encode(key).as_bytes())?;
            tmp.as_file().sync_all()?;
            match tmp.persist_noclobber(&path) {
                Ok(_) => {}
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.error),
            }
        }
        let text = std::fs::read_to_string(&path)?;
        let bytes = hex::decode(text.trim())
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not 64 hex digits", path.display()),
                )
            })?;
        Ok(LinkKey(secrecy::SecretBox::new(Box::new(bytes))))
    }

    fn mac(&self, portal: &str, exp: i64) -> HmacSha256 {
        use secrecy::ExposeSecret;
        let mut m = HmacSha256::new_from_slice(self.0.expose_secret()).expect("any key length");
        m.update(format!("rebuy-oauth-start\n{portal}\n{exp}").as_bytes());
        m
    }

    /// The signature of a start link for `portal` valid until `exp` (Unix seconds).
    pub fn sign(&self, portal: &str, exp: i64) -> String {
        hex::encode(self.mac(portal, exp).finalize().into_bytes())
    }

    /// Whether `sig` signs `portal` and `exp` (constant time).
    pub fn verify(&self, portal: &str, exp: i64, sig: &str) -> bool {
        match hex::decode(sig) {
            Ok(bytes) => self.mac(portal, exp).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    /// A start link for `portal` on the server at `base` (its public URL), valid for `valid`.
    pub fn start_link(&self, base: &str, portal: &str, valid: Duration) -> String {
        let exp = jiff::Timestamp::now().as_second() + valid.as_secs() as i64;
        format!(
            "{}/oauth/{portal}/start?exp={exp}&sig={}",
            base.trim_end_matches('/'),
            self.sign(portal, exp)
        )
    }
}

/// One started flow.
struct Pending {
    portal: String,
    /// SHA-256 of the starter's cookie nonce.
    binding: [u8; 32],
    issued: Instant,
}

/// The started OAuth flows by state: in memory, expiring after [`STATE_TTL`], at most
/// [`MAX_PENDING`] (the oldest is dropped first).
#[derive(Default)]
pub struct PendingStates {
    map: Mutex<HashMap<String, Pending>>,
}

impl PendingStates {
    /// Starts a flow for `portal`: its state and the nonce for the starter's cookie.
    pub fn issue(&self, portal: &str) -> (String, String) {
        let state = crate::server::request::random_token();
        let nonce = crate::server::request::random_token();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, p| now.duration_since(p.issued) < STATE_TTL);
        while map.len() >= MAX_PENDING {
            let oldest = map
                .iter()
                .min_by_key(|(_, p)| p.issued)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            state.clone(),
            Pending {
                portal: portal.to_owned(),
                binding: Sha256::digest(nonce.as_bytes()).into(),
                issued: now,
            },
        );
        (state, nonce)
    }

    /// Takes a state out (it works once) and says whether it was issued for `portal`, to the
    /// browser holding `nonce`, less than [`STATE_TTL`] ago.
    pub fn take(&self, state: &str, portal: &str, nonce: Option<&str>) -> bool {
        let Some(p) = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(state)
        else {
            return false;
        };
        let Some(nonce) = nonce else {
            return false;
        };
        let bound: [u8; 32] = Sha256::digest(nonce.as_bytes()).into();
        p.portal == portal && p.issued.elapsed() < STATE_TTL && bool::from(bound.ct_eq(&p.binding))
    }

    /// Flows pending now.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no flow is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>rebuy: {t}</title></head>\
         <body><h1>{t}</h1><p>{x}</p></body></html>",
        t = esc(title),
        x = esc(text)
    );
    (status, Html(body)).into_response()
}

/// Starts a flow for an entitled person: a redirect to the CRM's consent page with a new
/// state, and the cookie that binds the state to this browser.
pub fn begin(state: &AppState, p: &PortalRuntime) -> Result<Response, AppError> {
    let portal = &p.cfg.id.0;
    if !matches!(p.cfg.auth, crate::config::AuthConfig::OAuth { .. }) {
        return Err(AppError::bad_request(format!(
            "portal {portal} does not use OAuth"
        )));
    }
    let (st, nonce) = state.oauth.issue(portal);
    let url = crate::portal::authorize_url(&p.cfg, &st)
        .map_err(|e| AppError::bad_request(e.to_string()))?;
    // `SameSite=Lax`: the CRM's redirect back is a top-level navigation from its own site.
    let cookie = format!(
        "{FLOW_COOKIE}={nonce}; Path=/oauth/{portal}/; Max-Age={}; HttpOnly; SameSite=Lax{}",
        STATE_TTL.as_secs(),
        if state.ui.cookie_secure {
            "; Secure"
        } else {
            ""
        }
    );
    let mut res = (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// `GET /oauth/{portal}/start?exp=..&sig=..`: a signed link from `rebuy auth --link`.
pub async fn start(
    State(state): State<AppState>,
    Path(portal): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    let p = state
        .portal(&portal)
        .ok_or_else(|| AppError::unknown_portal(&portal))?;
    let (Some(exp), Some(sig)) = (q.get("exp"), q.get("sig")) else {
        return Ok(page(
            StatusCode::UNAUTHORIZED,
            "Authorization not started",
            "Connect the portal from the dashboard, or open a link printed by `rebuy auth --portal ID --link`.",
        ));
    };
    let now = jiff::Timestamp::now().as_second();
    let valid = match (&state.link_key, exp.parse::<i64>()) {
        (Some(key), Ok(exp)) => {
            exp > now
                && exp - now <= MAX_LINK_VALIDITY.as_secs() as i64
                && key.verify(&portal, exp, sig)
        }
        _ => false,
    };
    if !valid {
        return Ok(page(
            StatusCode::FORBIDDEN,
            "Authorization refused",
            "This link is not valid: it expired or was not signed by this server. Print a new one with `rebuy auth --portal ID --link`.",
        ));
    }
    begin(&state, p)
}

/// `GET /oauth/{portal}/callback?code=..&state=..`.
pub async fn callback(
    State(state): State<AppState>,
    Path(portal): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let p = state
        .portal(&portal)
        .ok_or_else(|| AppError::unknown_portal(&portal))?
        .clone();
    let (Some(code), Some(st)) = (q.get("code").cloned(), q.get("state").cloned()) else {
        return Ok(page(
            StatusCode::BAD_REQUEST,
            "Authorization failed",
            "The CRM did not send a code and a state.",
        ));
    };
    let nonce = crate::server::request::cookie(&headers, FLOW_COOKIE);
    if !state.oauth.take(&st, &portal, nonce.as_deref()) {
        tracing::warn!(portal = %portal, "OAuth callback with an unknown, expired, replayed or foreign state refused.");
        return Ok(page(
            StatusCode::FORBIDDEN,
            "Authorization refused",
            "This link is not valid: it was used already, it expired, or it was not started in this browser. Start again.",
        ));
    }
    let done = |mut r: Response| {
        // The flow is over: the binding cookie goes.
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{FLOW_COOKIE}=; Path=/oauth/{portal}/; Max-Age=0; HttpOnly; SameSite=Lax"
        )) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r
    };
    match crate::portal::exchange_code(&p.cfg, &p.store, &code).await {
        Ok(_) => {
            tracing::info!(portal = %portal, "Portal authorised over OAuth.");
            Ok(done(page(
                StatusCode::OK,
                "Connected",
                &format!("Portal {portal} is connected to rebuy. You can close this page."),
            )))
        }
        Err(e) => Ok(done(page(
            StatusCode::BAD_GATEWAY,
            "Authorization failed",
            &format!("The CRM refused the code: {e}"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_bound_single_use_and_bounded() {
        let s = PendingStates::default();
        let (st, nonce) = s.issue("shop");
        assert!(!s.take(&st, "shop", Some("other")), "another browser");
        let (st, nonce2) = s.issue("shop");
        assert_ne!(nonce, nonce2);
        assert!(!s.take(&st, "b24", Some(&nonce2)), "another portal");
        let (st, nonce) = s.issue("shop");
        assert!(!s.take(&st, "shop", None), "no cookie");
        let (st, nonce_ok) = s.issue("shop");
        assert!(s.take(&st, "shop", Some(&nonce_ok)));
        assert!(!s.take(&st, "shop", Some(&nonce_ok)), "once");
        let _ = nonce;
        for _ in 0..MAX_PENDING + 10 {
            s.issue("shop");
        }
        assert_eq!(s.len(), MAX_PENDING);
    }

    #[test]
    fn link_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let k = LinkKey::load_or_create(&data).unwrap();
        let again = LinkKey::load_or_create(&data).unwrap();
        let sig = k.sign("shop", 1_900_000_000);
        assert!(again.verify("shop", 1_900_000_000, &sig), "the same key");
        assert!(!k.verify("shop", 1_900_000_001, &sig));
        assert!(!k.verify("shap", 1_900_000_000, &sig));
        assert!(!k.verify("shop", 1_900_000_000, "zz"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.join(LINK_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let link = k.start_link("https://r.example/", "shop", Duration::from_secs(60));
        assert!(
            link.starts_with("https://r.example/oauth/shop/start?exp="),
            "{link}"
        );
    }
}
