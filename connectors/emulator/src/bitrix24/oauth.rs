//! OAuth 2.0 of Bitrix24 local and Marketplace apps (`docs/bitrix24.md` of this crate, section 1).
//!
//! - `GET /oauth/authorize/?client_id=..&state=..` (portal side): 302 to the app's redirect URI
//!   with `code`, `state`, `domain`, `member_id`, `scope`, `server_domain`. Codes live 30 s.
//! - `GET /oauth/token/?grant_type=authorization_code|refresh_token&client_id=..&client_secret=..&code=..|refresh_token=..`
//!   (served here although the real one is `oauth.bitrix.info`): the documented JSON, with
//!   `server_endpoint` and `client_endpoint` = `{base}/rest/`. A refresh rotates the pair: the
//!   used refresh token and the access token issued with it die; a reused or unknown grant is
//!   400 `invalid_grant`, a bad client 401 `invalid_client`.
//! - API calls with an expired token, or with the access token of a pair a refresh has replaced
//!   ("both become invalid"; the documented answer to a token that no longer works is
//!   `expired_token`, on which clients refresh): 401 `expired_token`; with a token the portal
//!   never issued: 401 `NO_AUTH_FOUND` (the system errors' "invalid access token"); after the
//!   app was removed: 401 `invalid_token` (met in practice; CRest: "need reinstall application").
use crate::rng::Rng;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// How long an authorization code is valid.
pub const CODE_TTL: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Access {
    expires_at: i64,
    /// The app was removed.
    revoked: bool,
    /// A refresh replaced the pair this token came with.
    superseded: bool,
}

#[derive(Debug)]
struct Refresh {
    access: String,
    used: bool,
}

/// Issued codes and tokens.
#[derive(Debug)]
pub struct OAuthState {
    rng: Rng,
    codes: HashMap<String, Instant>,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
}

/// Why a token was refused on an API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// Valid.
    Ok,
    /// 401 `expired_token`: expired, or replaced by a refresh.
    Expired,
    /// 401 `invalid_token`: the app was removed.
    Invalid,
    /// 401 `NO_AUTH_FOUND`: never issued here.
    Unknown,
}

/// A token endpoint failure: (HTTP status, `error`, `error_description`).
pub type GrantError = (u16, &'static str, &'static str);

/// A freshly issued pair.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Access token.
    pub access_token: String,
    /// Refresh token.
    pub refresh_token: String,
}

impl OAuthState {
    /// Empty state; tokens are random but seeded.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed ^ 0x0A07),
            codes: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
        }
    }

    fn hex(&mut self, n: usize) -> String {
        let mut s = String::with_capacity(n);
        while s.len() < n {
            s.push_str(&format!("{:016x}", self.rng.next_u64()));
        }
        s.truncate(n);
        s
    }

    /// A new authorization code (30 s, single use).
    pub fn issue_code(&mut self) -> String {
        let code = self.hex(32);
        self.codes.insert(code.clone(), Instant::now());
        code
    }

    fn issue_pair(&mut self, ttl_secs: u64) -> Issued {
        let access_token = self.hex(70);
        let refresh_token = self.hex(70);
        let expires_at = jiff::Timestamp::now().as_second() + ttl_secs as i64;
        self.access.insert(
            access_token.clone(),
            Access {
                expires_at,
                revoked: false,
                superseded: false,
            },
        );
        self.refresh.insert(
            refresh_token.clone(),
            Refresh {
                access: access_token.clone(),
                used: false,
            },
        );
        Issued {
            access_token,
            refresh_token,
        }
    }

    /// `authorization_code` grant.
    pub fn grant_code(&mut self, code: &str, ttl_secs: u64) -> Result<Issued, GrantError> {
        match self.codes.remove(code) {
            Some(at) if at.elapsed() <= CODE_TTL => Ok(self.issue_pair(ttl_secs)),
            _ => Err((400, "invalid_grant", "Invalid authorization code")),
        }
    }

    /// `refresh_token` grant: rotates the pair.
    pub fn grant_refresh(&mut self, token: &str, ttl_secs: u64) -> Result<Issued, GrantError> {
        let Some(r) = self.refresh.get_mut(token) else {
            return Err((400, "invalid_grant", "Invalid refresh token"));
        };
        if r.used {
            return Err((400, "invalid_grant", "Refresh token has already been used"));
        }
        r.used = true;
        let old = r.access.clone();
        if let Some(a) = self.access.get_mut(&old) {
            a.superseded = true;
        }
        Ok(self.issue_pair(ttl_secs))
    }

    /// Checks an access token on an API call.
    pub fn check(&self, token: &str) -> TokenCheck {
        match self.access.get(token) {
            Some(a) if a.revoked => TokenCheck::Invalid,
            Some(a) if a.superseded || a.expires_at <= jiff::Timestamp::now().as_second() => {
                TokenCheck::Expired
            }
            Some(_) => TokenCheck::Ok,
            None => TokenCheck::Unknown,
        }
    }

    /// Makes every access token expire now.
    pub fn expire_all(&mut self) {
        let now = jiff::Timestamp::now().as_second();
        for a in self.access.values_mut() {
            a.expires_at = a.expires_at.min(now);
        }
    }

    /// Revokes every access token and spends every refresh token (the app was removed).
    pub fn revoke_all(&mut self) {
        for a in self.access.values_mut() {
            a.revoked = true;
        }
        self.revoke_refresh_tokens();
    }

    /// Spends every refresh token (as if another client used them): the next refresh is refused.
    pub fn revoke_refresh_tokens(&mut self) {
        for r in self.refresh.values_mut() {
            r.used = true;
        }
    }
}
