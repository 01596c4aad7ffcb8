//! The dashboard's login: settings from `[server.ui]` (users with passwords from env vars),
//! constant-time password check, in-memory sessions and their CSRF tokens.
//!
//! A session is a random 256-bit id in the `rebuy_ui` cookie (`HttpOnly`, `SameSite=Strict`,
//! `Path=/ui`, `Secure` when [`UiSettings::cookie_secure`]). The login page starts an
//! anonymous session whose CSRF token the login form carries; a successful login replaces it
//! with a new authenticated session (a new id: no session fixation). Every POST form carries
//! its session's CSRF token, compared in constant time. Sessions live in memory: a restart
//! logs everyone out.
use axum::http::HeaderMap;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The session cookie.
pub const SESSION_COOKIE: &str = "rebuy_ui";
/// How long a logged-in session lasts unless `[server.ui] session_hours` says otherwise.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// How long a login page's anonymous session lasts.
pub const LOGIN_TTL: Duration = Duration::from_secs(15 * 60);
/// Most sessions kept at once; past it the ones closest to expiry are dropped.
pub const MAX_SESSIONS: usize = 10_000;

/// Settings of the dashboard, from the config's `[server.ui]` ([`UiSettings::from_config`]),
/// whose resolution falls back to `REBUY_UI_USER` / `REBUY_UI_PASSWORD`.
#[derive(Debug, Clone)]
pub struct UiSettings {
    /// Who may log in: name and password (`sha256:<64 hex digits>`, the SHA-256 of the
    /// password, or the password itself).
    pub users: Vec<(String, SecretString)>,
    /// Mark the cookies `Secure` (set it whenever the dashboard is reached over HTTPS).
    pub cookie_secure: bool,
    /// How long a portal's analysis is reused before it is computed again.
    pub cache_ttl: Duration,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Language when the request does not choose one.
    pub default_lang: super::i18n::Lang,
}

impl UiSettings {
    /// One admin with the defaults (secure cookies, 5-minute cache, 8-hour sessions, English).
    pub fn single(user: &str, password: &str) -> UiSettings {
        UiSettings {
            users: vec![(user.to_owned(), SecretString::from(password.to_owned()))],
            cookie_secure: true,
            cache_ttl: Duration::from_secs(300),
            session_ttl: SESSION_TTL,
            default_lang: super::i18n::Lang::En,
        }
    }

    /// The settings of a resolved `[server.ui]`; `None` when the dashboard is off (disabled, or
    /// nobody may log in).
    pub fn from_config(c: &crate::config::UiConfig) -> Option<UiSettings> {
        if !c.enabled || c.users.is_empty() {
            return None;
        }
        Some(UiSettings {
            users: c
                .users
                .iter()
                .map(|u| (u.name.clone(), u.password.clone()))
                .collect(),
            cookie_secure: c.cookie_secure,
            cache_ttl: c.cache_ttl,
            session_ttl: c.session_ttl,
            default_lang: super::i18n::Lang::parse(&c.default_lang).unwrap_or_default(),
        })
    }

    /// Reads `REBUY_UI_USER` and `REBUY_UI_PASSWORD` (both required and non-empty, else the
    /// dashboard is disabled: `None`), `REBUY_UI_COOKIE_SECURE` (`false`/`0` to allow plain
    /// HTTP; default `true`) and `REBUY_UI_CACHE_TTL_SECS` (default 300): the fallback of a
    /// config without `[server.ui]` users.
    pub fn from_env() -> Option<UiSettings> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) over any variable lookup (for tests).
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Option<UiSettings> {
        let user = env("REBUY_UI_USER").filter(|s| !s.trim().is_empty())?;
        let password = env("REBUY_UI_PASSWORD").filter(|s| !s.is_empty())?;
        let mut s = UiSettings::single(user.trim(), &password);
        s.cookie_secure = env("REBUY_UI_COOKIE_SECURE").is_none_or(|v| {
            !matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "no")
        });
        s.cache_ttl = env("REBUY_UI_CACHE_TTL_SECS")
            .and_then(|v| v.trim().parse().ok())
            .map_or(Duration::from_secs(300), Duration::from_secs);
        Some(s)
    }

    /// The user whose name and password these are. Every user is compared, in constant time
    /// in the name and password, so the answer's timing tells nothing about which part is wrong.
    pub fn check(&self, user: &str, password: &str) -> Option<String> {
        let given_user = Sha256::digest(user.as_bytes());
        let given = Sha256::digest(password.as_bytes());
        let mut found = None;
        for (name, stored) in &self.users {
            let want = stored.expose_secret();
            let expected: [u8; 32] = match want
                .strip_prefix("sha256:")
                .and_then(|h| hex::decode(h.trim()).ok())
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
            {
                Some(h) => h,
                None => Sha256::digest(want.as_bytes()).into(),
            };
            let user_ok = given_user.ct_eq(&Sha256::digest(name.as_bytes()));
            let pass_ok = given.as_slice().ct_eq(&expected);
            if bool::from(user_ok & pass_ok) {
                found = Some(name.clone());
            }
        }
        found
    }
}

/// One session.
#[derive(Debug, Clone)]
pub struct Session {
    /// Its CSRF token (hex of 256 random bits).
    pub csrf: String,
    /// The logged-in user; `None` for a login page's anonymous session.
    pub user: Option<String>,
    /// When it ends.
    pub expires: Instant,
}

/// The sessions, by id.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// 256 random bits as hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Sessions {
    /// Starts a session lasting `ttl` (a login page's anonymous one: [`LOGIN_TTL`]); returns
    /// its id and the session.
    pub fn create(&self, user: Option<String>, ttl: Duration) -> (String, Session) {
        let s = Session {
            csrf: random_token(),
            user,
            expires: Instant::now() + ttl,
        };
        let id = random_token();
        let mut map = self.map.lock().expect("sessions lock");
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            // Drop anonymous sessions first, then the oldest.
            let mut all: Vec<(bool, Instant, String)> = map
                .iter()
                .map(|(k, v)| (v.user.is_some(), v.expires, k.clone()))
                .collect();
            all.sort();
            for (_, _, k) in all.into_iter().take(map.len() + 1 - MAX_SESSIONS) {
                map.remove(&k);
            }
        }
        map.insert(id.clone(), s.clone());
        (id, s)
    }

    /// The live session of an id.
    pub fn get(&self, id: &str) -> Option<Session> {
        let map = self.map.lock().expect("sessions lock");
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.map.lock().expect("sessions lock").remove(id);
    }
}

/// Whether a submitted CSRF token is the session's (constant time).
pub fn csrf_ok(session: &Session, submitted: Option<&str>) -> bool {
    match submitted {
        Some(t) if t.len() == session.csrf.len() => {
            t.as_bytes().ct_eq(session.csrf.as_bytes()).into()
        }
        _ => false,
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

/// A `Set-Cookie` value for the dashboard (`Path=/ui`, `HttpOnly`, `SameSite=Strict`).
/// `max_age` 0 deletes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/ui; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pw: &str) -> UiSettings {
        UiSettings::from_lookup(|k| match k {
            "REBUY_UI_USER" => Some("admin".into()),
            "REBUY_UI_PASSWORD" => Some(pw.into()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn plain_and_hashed_passwords() {
        let s = settings("s3cret");
        assert_eq!(s.check("admin", "s3cret").as_deref(), Some("admin"));
        assert!(s.check("admin", "s3cret ").is_none());
        assert!(s.check("root", "s3cret").is_none());
        assert!(s.cookie_secure);
        let h = settings(&format!("sha256:{}", hex::encode(Sha256::digest(b"pw"))));
        assert!(h.check("admin", "pw").is_some());
        assert!(h.check("admin", "sha256:").is_none());
        let mut two = UiSettings::single("anna", "a");
        two.users.push(("boris".into(), SecretString::from("b")));
        assert_eq!(two.check("boris", "b").as_deref(), Some("boris"));
        assert!(
            two.check("boris", "a").is_none(),
            "a password is its user's only"
        );
    }

    #[test]
    fn disabled_without_user_or_password() {
        assert!(UiSettings::from_lookup(|_| None).is_none());
        assert!(UiSettings::from_lookup(|k| (k == "REBUY_UI_USER").then(|| "a".into())).is_none());
    }

    #[test]
    fn sessions_and_csrf() {
        let ss = Sessions::default();
        let (id, s) = ss.create(Some("admin".into()), SESSION_TTL);
        assert_eq!(id.len(), 64);
        assert!(ss.get(&id).is_some());
        assert!(csrf_ok(&s, Some(&s.csrf)));
        assert!(!csrf_ok(&s, Some("x")));
        assert!(!csrf_ok(&s, None));
        ss.remove(&id);
        assert!(ss.get(&id).is_none());
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; rebuy_ui=abc; b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
    }
}
