//! The dashboard's login: settings from `[server.ui]` (users with passwords from env vars),
//! constant-time password check, in-memory sessions and their CSRF tokens.
//!
//! A session is a random 256-bit id in the `rebuy_ui` cookie (`HttpOnly`, `SameSite=Strict`,
//! `Path=/ui`, `Secure` when [`UiSettings::cookie_secure`]), created only by a successful
//! login (a new id: no session fixation). The login form itself keeps no state on the server:
//! its token is an HMAC of the `rebuy_login` cookie's nonce ([`LoginGuard`]), and attempts
//! are rate limited per address and per user. Every POST form carries its session's CSRF
//! token, compared in constant time. Sessions live in memory: a restart logs everyone out.
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

use crate::config::passwords::{DUMMY_ARGON2, PasswordForm, verify_password, weak_passwords};
use crate::server::request::random_token;

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
    /// Who may log in: name and stored password (an argon2 PHC string from `rebuy
    /// hash-password`; deprecated: `sha256:<64 hex digits>`, or the password itself).
    pub users: Vec<(String, SecretString)>,
    /// Mark the cookies `Secure` (set it whenever the dashboard is reached over HTTPS).
    pub cookie_secure: bool,
    /// How long a portal's analysis is reused before it is computed again.
    pub cache_ttl: Duration,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Language when the request does not choose one.
    pub default_lang: super::i18n::Lang,
    /// Behind a reverse proxy: the header holding the client's address (`X-Real-IP`,
    /// `X-Forwarded-For`), so login limits apply per client and not to the proxy.
    pub client_ip_header: Option<String>,
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
            client_ip_header: None,
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
            client_ip_header: c.client_ip_header.clone(),
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

    /// The user whose name and password these are. The name is compared with every user in
    /// constant time; the password is then verified against that user's stored form (an
    /// argon2 PHC string, a `sha256:` digest or plain text), and when no user has the name a
    /// dummy argon2 verification runs instead where argon2 hashes are in use, so the answer's
    /// timing does not tell whether the name exists. Argon2 is slow on purpose: call it off
    /// the async runtime (`spawn_blocking`).
    pub fn check(&self, user: &str, password: &str) -> Option<String> {
        let given_user = Sha256::digest(user.as_bytes());
        let mut found: Option<&(String, SecretString)> = None;
        for entry in &self.users {
            let user_ok = given_user.ct_eq(&Sha256::digest(entry.0.as_bytes()));
            if bool::from(user_ok) {
                found = Some(entry);
            }
        }
        match found {
            Some((name, stored)) => {
                verify_password(stored.expose_secret(), password).then(|| name.clone())
            }
            None => {
                if self
                    .users
                    .iter()
                    .any(|(_, p)| PasswordForm::of(p.expose_secret()) == PasswordForm::Argon2)
                {
                    let _ = verify_password(DUMMY_ARGON2, password);
                }
                None
            }
        }
    }

    /// Users whose password is kept in a weak form (plain text or unsalted SHA-256), for the
    /// warnings at start and in `rebuy config check`.
    pub fn weak_passwords(&self) -> Vec<(String, PasswordForm)> {
        weak_passwords(self.users.iter().map(|(n, p)| (n.as_str(), p)))
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

/// The login form's cookie: a random nonce the form's token is bound to.
pub const LOGIN_COOKIE: &str = "rebuy_login";
/// Login attempts one client address may make per minute (the burst too).
pub const LOGIN_ATTEMPTS_PER_IP_PER_MINUTE: u32 = 20;
/// Login attempts one user name may get per minute, from all addresses together.
pub const LOGIN_ATTEMPTS_PER_USER_PER_MINUTE: u32 = 10;

type Keyed<K> = governor::DefaultKeyedRateLimiter<K>;

/// Guards the login form without keeping state per visitor: the form's CSRF token is an
/// HMAC of the login cookie's nonce and an expiry under a per-process key, so a flood of
/// anonymous login pages stores nothing and cannot push out someone in the middle of logging
/// in; and attempts are rate limited per client address and per user name (names that are no
/// user share one bucket, so made-up names cannot grow the table).
pub struct LoginGuard {
    key: [u8; 32],
    by_ip: Keyed<std::net::IpAddr>,
    by_user: Keyed<String>,
    calls: std::sync::atomic::AtomicU64,
    /// Nonces of forms that logged someone in, until they expire: a form logs in once.
    used: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for LoginGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginGuard").finish_non_exhaustive()
    }
}

impl Default for LoginGuard {
    fn default() -> Self {
        Self::new(
            LOGIN_ATTEMPTS_PER_IP_PER_MINUTE,
            LOGIN_ATTEMPTS_PER_USER_PER_MINUTE,
        )
    }
}

/// Why a login attempt was not even checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginRefused {
    /// Too many attempts from this address or for this user; retry after the duration.
    TooMany(Duration),
}

impl LoginGuard {
    /// A guard allowing `per_ip` attempts a minute from one address and `per_user` for one
    /// user name (both at least 1).
    pub fn new(per_ip: u32, per_user: u32) -> LoginGuard {
        use std::num::NonZeroU32;
        let q = |n: u32| governor::Quota::per_minute(NonZeroU32::new(n.max(1)).expect("max(1)"));
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        LoginGuard {
            key,
            by_ip: governor::RateLimiter::keyed(q(per_ip)),
            by_user: governor::RateLimiter::keyed(q(per_user)),
            calls: Default::default(),
            used: Mutex::default(),
        }
    }

    fn mac(&self, nonce: &str, expires: u64) -> String {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(b"rebuy-login\0");
        mac.update(nonce.as_bytes());
        mac.update(b"\0");
        mac.update(&expires.to_be_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A new login form: the nonce for [`LOGIN_COOKIE`] and the form's token
    /// (`<unix expiry>.<hex HMAC>`), valid for [`LOGIN_TTL`].
    pub fn issue(&self) -> (String, String) {
        let nonce = random_token();
        let expires = unix_now() + LOGIN_TTL.as_secs();
        let token = format!("{expires}.{}", self.mac(&nonce, expires));
        (nonce, token)
    }

    /// Whether a submitted token belongs to the cookie's nonce and has not expired
    /// (constant-time comparison).
    pub fn token_ok(&self, nonce: &str, token: Option<&str>) -> bool {
        let Some((exp, mac)) = token.and_then(|t| t.split_once('.')) else {
            return false;
        };
        let Ok(expires) = exp.parse::<u64>() else {
            return false;
        };
        if expires < unix_now() || nonce.len() != 64 {
            return false;
        }
        if self.used.lock().expect("login lock").contains_key(nonce) {
            return false;
        }
        let want = self.mac(nonce, expires);
        mac.len() == want.len() && bool::from(mac.as_bytes().ct_eq(want.as_bytes()))
    }

    /// Marks a form's nonce used after it logged someone in (only successful logins are
    /// remembered, so the table is as small as the number of logins in [`LOGIN_TTL`]).
    pub fn consume(&self, nonce: &str) {
        let now = unix_now();
        let mut used = self.used.lock().expect("login lock");
        used.retain(|_, exp| *exp >= now);
        used.insert(nonce.to_owned(), now + LOGIN_TTL.as_secs());
    }

    /// Counts one attempt from `ip` for `user` (a configured user's name, or `None` for any
    /// other name); refused when either bucket is empty.
    pub fn attempt(
        &self,
        ip: Option<std::net::IpAddr>,
        user: Option<&str>,
    ) -> Result<(), LoginRefused> {
        use governor::clock::{Clock, DefaultClock};
        // Forget idle keys now and then, so the address table stays small.
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 1024 == 1023 {
            self.by_ip.retain_recent();
            self.by_user.retain_recent();
        }
        let now = DefaultClock::default().now();
        if let Some(ip) = ip {
            self.by_ip
                .check_key(&ip)
                .map_err(|w| LoginRefused::TooMany(w.wait_time_from(now)))?;
        }
        let key = user.map_or_else(|| "\0unknown".to_owned(), str::to_owned);
        self.by_user
            .check_key(&key)
            .map_err(|w| LoginRefused::TooMany(w.wait_time_from(now)))
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
    use crate::config::passwords::{check_stored_password, hash_password};
    use crate::server::request::cookie;
    use axum::http::HeaderMap;

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
    fn argon2_hashes_and_weak_forms() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert_ne!(
            hash,
            hash_password("s3cret").unwrap(),
            "a fresh salt each time"
        );
        assert_eq!(check_stored_password(&hash), Ok(PasswordForm::Argon2));
        let s = settings(&hash);
        assert_eq!(s.check("admin", "s3cret").as_deref(), Some("admin"));
        assert!(s.check("admin", "s3cret!").is_none());
        assert!(s.check("nobody", "s3cret").is_none());
        assert!(s.weak_passwords().is_empty());
        assert!(check_stored_password("$argon2id$v=19$garbage").is_err());
        assert!(
            argon2::PasswordHash::new(DUMMY_ARGON2).is_ok(),
            "the dummy must cost a real verification"
        );
        let plain = settings("pw");
        assert_eq!(
            plain.weak_passwords(),
            vec![("admin".to_owned(), PasswordForm::Plain)]
        );
        let sha = settings(&format!("sha256:{}", hex::encode(Sha256::digest(b"pw"))));
        assert_eq!(sha.weak_passwords()[0].1, PasswordForm::Sha256);
        assert!(check_stored_password("sha256:12").is_err());
    }

    #[test]
    fn login_tokens_are_bound_to_their_nonce() {
        let g = LoginGuard::default();
        let (nonce, token) = g.issue();
        assert!(g.token_ok(&nonce, Some(&token)));
        let (other, _) = g.issue();
        assert!(!g.token_ok(&other, Some(&token)));
        assert!(!g.token_ok(&nonce, None));
        assert!(!g.token_ok(&nonce, Some("1.abc")));
        // An expired token with a valid MAC is refused.
        let old = unix_now() - 1;
        assert!(!g.token_ok(&nonce, Some(&format!("{old}.{}", g.mac(&nonce, old)))));
        // A form logs in once.
        g.consume(&nonce);
        assert!(!g.token_ok(&nonce, Some(&token)));
        // Another process's key does not verify.
        assert!(!LoginGuard::default().token_ok(&nonce, Some(&token)));
    }

    #[test]
    fn login_attempts_are_limited_per_address_and_user() {
        let g = LoginGuard::new(2, 2);
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        assert!(g.attempt(Some(a), Some("admin")).is_ok());
        assert!(g.attempt(Some(b), Some("admin")).is_ok());
        // The user's bucket is empty, whichever address asks.
        assert!(matches!(
            g.attempt(Some(b), Some("admin")),
            Err(LoginRefused::TooMany(_))
        ));
        assert!(g.attempt(Some(a), Some("anna")).is_ok());
        // Address a has now used 2 of its 2 (b's refused attempt still counted for b).
        let Err(LoginRefused::TooMany(wait)) = g.attempt(Some(a), Some("boris")) else {
            panic!("address a is over its limit");
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        // Unknown names share one bucket.
        assert!(g.attempt(None, None).is_ok());
        assert!(g.attempt(None, None).is_ok());
        assert!(g.attempt(None, None).is_err());
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
