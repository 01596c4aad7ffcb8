//! OAuth tokens and their life cycle.
//!
//! Both CRMs rotate refresh tokens: a refresh token works once, and the answer carries the next
//! one. Losing that answer (a crash between receiving and storing it, or two workers refreshing
//! at once) disconnects the portal until a person authorises again. [`TokenManager`] prevents
//! both: refreshes are single-flight per portal (a mutex plus a generation counter, so fifty
//! callers that meet one expired token cause one refresh), and a new token set is committed to
//! the [`TokenStore`] before anyone uses it.
use crate::error::ConnectorError;
use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Mutex, RwLock};

/// An access token with what is needed to renew it.
#[derive(Debug, Clone)]
pub struct TokenSet {
    /// Bearer / `auth` token.
    pub access_token: SecretString,
    /// Refresh token; `None` for amoCRM long-lived tokens and Bitrix24 inbound webhooks.
    pub refresh_token: Option<SecretString>,
    /// When the access token expires, when known.
    pub expires_at: Option<Timestamp>,
    /// CRM-specific extras kept with the tokens (Bitrix24 `client_endpoint`, `member_id`,
    /// `domain`; amoCRM `api_domain`). Not secret.
    pub extra: BTreeMap<String, String>,
}

impl TokenSet {
    /// Whether the access token is expired at `now`, counting `skew` early.
    pub fn is_expired(&self, now: Timestamp, skew: SignedDuration) -> bool {
        self.expires_at
            .is_some_and(|exp| now.saturating_add(skew).is_ok_and(|t| t >= exp))
    }
}

/// Durable home of a portal's tokens, implemented by the sidecar on its redb store.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// The stored tokens, if any.
    async fn load(&self) -> Result<Option<TokenSet>, ConnectorError>;
    /// Commits tokens durably; returns only once they would survive a crash.
    async fn save(&self, tokens: &TokenSet) -> Result<(), ConnectorError>;
    /// Records that the portal needs a person to authorise again, with the reason.
    async fn mark_needs_reauth(&self, reason: &str) -> Result<(), ConnectorError>;
}

/// Renews tokens against a CRM's token endpoint; implemented by each connector.
#[async_trait]
pub trait TokenRefresher: Send + Sync {
    /// Exchanges `current.refresh_token` for a new set. A refused refresh token is
    /// [`ConnectorError::NeedsReauth`].
    async fn refresh(&self, current: &TokenSet) -> Result<TokenSet, ConnectorError>;
}

/// An in-memory store, for tests and for static tokens.
#[derive(Debug, Default)]
pub struct MemoryTokenStore {
    tokens: std::sync::Mutex<Option<TokenSet>>,
    reauth: std::sync::Mutex<Option<String>>,
    saves: AtomicU64,
}

impl MemoryTokenStore {
    /// A store holding `tokens`.
    pub fn new(tokens: Option<TokenSet>) -> Self {
        Self {
            tokens: std::sync::Mutex::new(tokens),
            ..Default::default()
        }
    }
    /// How many times tokens were saved.
    pub fn saves(&self) -> u64 {
        self.saves.load(Ordering::SeqCst)
    }
    /// The re-authorisation reason, if one was recorded.
    pub fn needs_reauth(&self) -> Option<String> {
        self.reauth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl TokenStore for MemoryTokenStore {
    async fn load(&self) -> Result<Option<TokenSet>, ConnectorError> {
        Ok(self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }
    async fn save(&self, tokens: &TokenSet) -> Result<(), ConnectorError> {
        *self.tokens.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokens.clone());
        self.saves.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn mark_needs_reauth(&self, reason: &str) -> Result<(), ConnectorError> {
        *self.reauth.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
        Ok(())
    }
}

/// A token handed out by [`TokenManager::access_token`], with the generation it belongs to so a
/// 401 can be reported against the token that actually failed.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The secret.
    pub token: SecretString,
    /// Generation counter of the token set it came from.
    pub generation: u64,
}

impl IssuedToken {
    /// The secret, for a request header or parameter. Never log it.
    pub fn expose(&self) -> &str {
        self.token.expose_secret()
    }
}

/// Single-flight token coordinator of one portal.
pub struct TokenManager {
    store: Arc<dyn TokenStore>,
    refresher: Option<Arc<dyn TokenRefresher>>,
    current: RwLock<Option<TokenSet>>,
    refresh_lock: Mutex<()>,
    generation: AtomicU64,
    refreshes: AtomicU64,
    /// Refresh this long before the stated expiry.
    skew: SignedDuration,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager")
            .field("generation", &self.generation.load(Ordering::SeqCst))
            .field("refreshes", &self.refreshes.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl TokenManager {
    /// A manager over `store`; `refresher` is `None` for tokens that cannot be renewed
    /// (amoCRM long-lived tokens, Bitrix24 inbound webhooks).
    pub fn new(store: Arc<dyn TokenStore>, refresher: Option<Arc<dyn TokenRefresher>>) -> Self {
        Self {
            store,
            refresher,
            current: RwLock::new(None),
            refresh_lock: Mutex::new(()),
            generation: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            skew: SignedDuration::from_secs(30),
        }
    }

    /// A manager for a fixed token held in memory only.
    pub fn fixed(token: SecretString) -> Self {
        let set = TokenSet {
            access_token: token,
            refresh_token: None,
            expires_at: None,
            extra: BTreeMap::new(),
        };
        Self::new(Arc::new(MemoryTokenStore::new(Some(set))), None)
    }

    /// How many refreshes this manager performed.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::SeqCst)
    }

    /// The current token set (loaded from the store on first use).
    pub async fn tokens(&self) -> Result<TokenSet, ConnectorError> {
        if let Some(t) = self.current.read().await.clone() {
            return Ok(t);
        }
        let mut cur = self.current.write().await;
        if cur.is_none() {
            *cur = self.store.load().await?;
        }
        cur.clone().ok_or_else(|| ConnectorError::NeedsReauth {
            message: "no tokens stored: run `rebuy auth`".into(),
        })
    }

    /// A valid access token, refreshing first when the stored one has expired.
    pub async fn access_token(&self) -> Result<IssuedToken, ConnectorError> {
        let gen_before = self.generation.load(Ordering::SeqCst);
        let tokens = self.tokens().await?;
        if tokens.is_expired(Timestamp::now(), self.skew) && self.refresher.is_some() {
            self.refresh_if_current(gen_before).await?;
            let tokens = self.tokens().await?;
            return Ok(IssuedToken {
                token: tokens.access_token,
                generation: self.generation.load(Ordering::SeqCst),
            });
        }
        Ok(IssuedToken {
            token: tokens.access_token,
            generation: gen_before,
        })
    }

    /// Reports that `failed` was refused with 401. Refreshes unless another caller already did
    /// since that token was issued.
    pub async fn on_unauthorized(&self, failed: &IssuedToken) -> Result<(), ConnectorError> {
        if self.refresher.is_none() {
            let reason = "the access token was refused and cannot be refreshed";
            self.store.mark_needs_reauth(reason).await?;
            return Err(ConnectorError::NeedsReauth {
                message: reason.into(),
            });
        }
        self.refresh_if_current(failed.generation).await
    }

    /// Stores an externally obtained token set (authorization code exchange, app install).
    pub async fn install(&self, tokens: TokenSet) -> Result<(), ConnectorError> {
        let _guard = self.refresh_lock.lock().await;
        self.store.save(&tokens).await?;
        *self.current.write().await = Some(tokens);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn refresh_if_current(&self, seen_generation: u64) -> Result<(), ConnectorError> {
        let _guard = self.refresh_lock.lock().await;
        if self.generation.load(Ordering::SeqCst) != seen_generation {
            // Someone refreshed while we waited for the lock.
            return Ok(());
        }
        let Some(refresher) = &self.refresher else {
            return Err(ConnectorError::NeedsReauth {
                message: "token cannot be refreshed".into(),
            });
        };
        let current = self.tokens().await?;
        if current.refresh_token.is_none() {
            let reason = "no refresh token stored";
            self.store.mark_needs_reauth(reason).await?;
            return Err(ConnectorError::NeedsReauth {
                message: reason.into(),
            });
        }
        match refresher.refresh(&current).await {
            Ok(new) => {
                // The old refresh token is spent now: the new pair must reach the disk before
                // anything uses it. Keep it in memory even if the save fails, so a retry of the
                // save is still possible and the pair is not lost with this stack frame.
                *self.current.write().await = Some(new.clone());
                self.generation.fetch_add(1, Ordering::SeqCst);
                self.refreshes.fetch_add(1, Ordering::SeqCst);
                let mut last = None;
                for _ in 0..3 {
                    match self.store.save(&new).await {
                        Ok(()) => return Ok(()),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| ConnectorError::Store {
                    message: "save failed".into(),
                }))
            }
            Err(ConnectorError::NeedsReauth { message }) => {
                self.store.mark_needs_reauth(&message).await?;
                Err(ConnectorError::NeedsReauth { message })
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct CountingRefresher {
        calls: AtomicU64,
        fail: bool,
    }

    #[async_trait]
    impl TokenRefresher for CountingRefresher {
        async fn refresh(&self, current: &TokenSet) -> Result<TokenSet, ConnectorError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            if self.fail {
                return Err(ConnectorError::NeedsReauth {
                    message: "Token has been revoked".into(),
                });
            }
            Ok(TokenSet {
                access_token: SecretString::from(format!("access-{n}")),
                refresh_token: Some(SecretString::from(format!("refresh-{n}"))),
                expires_at: Some(Timestamp::now() + SignedDuration::from_hours(1)),
                extra: current.extra.clone(),
            })
        }
    }

    fn expired() -> TokenSet {
        TokenSet {
            access_token: SecretString::from("old"),
            refresh_token: Some(SecretString::from("r0")),
            expires_at: Some(Timestamp::UNIX_EPOCH),
            extra: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn fifty_callers_one_refresh() {
        let store = Arc::new(MemoryTokenStore::new(Some(expired())));
        let refresher = Arc::new(CountingRefresher {
            calls: AtomicU64::new(0),
            fail: false,
        });
        let mgr = Arc::new(TokenManager::new(store.clone(), Some(refresher.clone())));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let mgr = mgr.clone();
                tokio::spawn(async move { mgr.access_token().await.map(|t| t.expose().to_owned()) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "access-1");
        }
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 1);
        assert_eq!(store.saves(), 1);
        let saved = store.load().await.unwrap().unwrap();
        assert_eq!(saved.refresh_token.unwrap().expose_secret(), "refresh-1");
    }

    #[tokio::test]
    async fn rejected_refresh_marks_reauth() {
        let store = Arc::new(MemoryTokenStore::new(Some(expired())));
        let refresher = Arc::new(CountingRefresher {
            calls: AtomicU64::new(0),
            fail: true,
        });
        let mgr = TokenManager::new(store.clone(), Some(refresher));
        let err = mgr.access_token().await.unwrap_err();
        assert!(matches!(err, ConnectorError::NeedsReauth { .. }));
        assert!(store.needs_reauth().unwrap().contains("revoked"));
    }

    #[tokio::test]
    async fn stale_unauthorized_does_not_refresh_twice() {
        let mut valid = expired();
        valid.expires_at = None;
        let store = Arc::new(MemoryTokenStore::new(Some(valid)));
        let refresher = Arc::new(CountingRefresher {
            calls: AtomicU64::new(0),
            fail: false,
        });
        let mgr = TokenManager::new(store, Some(refresher.clone()));
        let t = mgr.access_token().await.unwrap();
        mgr.on_unauthorized(&t).await.unwrap();
        mgr.on_unauthorized(&t).await.unwrap();
        assert_eq!(refresher.calls.load(Ordering::SeqCst), 1);
    }
}
