//! OAuth tokens kept in the portal's store, behind [`rebuy_core::TokenStore`].
//!
//! The redb file is the secret store of the portal (keep the data directory private: mode 0700).
//! Tokens leave it only as `SecretString`s, whose `Debug` prints `[REDACTED]`, so they never
//! reach a log line.
use super::tables::{KEY_NEEDS_REAUTH, KEY_TOKENS};
use super::{Store, StoreError};
use async_trait::async_trait;
use jiff::Timestamp;
use rebuy_core::{ConnectorError, TokenSet, TokenStore};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The stored form of a token set.
#[derive(Serialize, Deserialize)]
struct StoredTokens {
    access_token: String,
    refresh_token: Option<String>,
    expires_at: Option<Timestamp>,
    extra: BTreeMap<String, String>,
    saved_at: Timestamp,
}

/// Why a portal needs a person to authorise it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedsReauth {
    /// What the CRM said.
    pub reason: String,
    /// When it was recorded.
    pub at: Timestamp,
}

impl Store {
    /// The stored tokens.
    pub fn load_tokens(&self) -> Result<Option<TokenSet>, StoreError> {
        Ok(self.meta::<StoredTokens>(KEY_TOKENS)?.map(|s| TokenSet {
            access_token: SecretString::from(s.access_token),
            refresh_token: s.refresh_token.map(SecretString::from),
            expires_at: s.expires_at,
            extra: s.extra,
        }))
    }

    /// Commits tokens durably and clears any "needs re-authorization" mark, in one transaction.
    pub fn save_tokens(&self, t: &TokenSet) -> Result<(), StoreError> {
        let stored = StoredTokens {
            access_token: t.access_token.expose_secret().to_owned(),
            refresh_token: t
                .refresh_token
                .as_ref()
                .map(|r| r.expose_secret().to_owned()),
            expires_at: t.expires_at,
            extra: t.extra.clone(),
            saved_at: Timestamp::now(),
        };
        self.write(|w| {
            w.set_meta(KEY_TOKENS, &stored)?;
            w.remove_meta(KEY_NEEDS_REAUTH)
        })
    }

    /// The "needs re-authorization" mark, if set.
    pub fn needs_reauth(&self) -> Result<Option<NeedsReauth>, StoreError> {
        self.meta(KEY_NEEDS_REAUTH)
    }

    /// Sets the "needs re-authorization" mark.
    pub fn set_needs_reauth(&self, reason: &str) -> Result<(), StoreError> {
        self.set_meta(
            KEY_NEEDS_REAUTH,
            &NeedsReauth {
                reason: reason.to_owned(),
                at: Timestamp::now(),
            },
        )
    }
}

/// [`TokenStore`] over a portal's [`Store`]; writes run on the blocking pool.
#[derive(Debug, Clone)]
pub struct StoreTokens(pub Store);

fn store_err(e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Store {
        message: e.to_string(),
    }
}

#[async_trait]
impl TokenStore for StoreTokens {
    async fn load(&self) -> Result<Option<TokenSet>, ConnectorError> {
        let s = self.0.clone();
        tokio::task::spawn_blocking(move || s.load_tokens())
            .await
            .map_err(store_err)?
            .map_err(store_err)
    }

    async fn save(&self, tokens: &TokenSet) -> Result<(), ConnectorError> {
        let s = self.0.clone();
        let t = tokens.clone();
        tokio::task::spawn_blocking(move || s.save_tokens(&t))
            .await
            .map_err(store_err)?
            .map_err(store_err)
    }

    async fn mark_needs_reauth(&self, reason: &str) -> Result<(), ConnectorError> {
        let s = self.0.clone();
        let r = reason.to_owned();
        tokio::task::spawn_blocking(move || s.set_needs_reauth(&r))
            .await
            .map_err(store_err)?
            .map_err(store_err)
    }
}
