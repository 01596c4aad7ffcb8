//! Connector errors, classified so the retry policy ([`crate::retry::decide`]) and the sidecar
//! can act on them without knowing which CRM produced them.
use std::time::Duration;
use thiserror::Error;

/// An error from a CRM connector.
#[derive(Debug, Clone, Error)]
pub enum ConnectorError {
    /// The access token was refused (401). The connector refreshes once and retries; this
    /// surfaces only when that did not help or no refresh is possible.
    #[error("authentication failed: {message}")]
    Auth {
        /// What the CRM said.
        message: String,
    },
    /// The refresh token (or long-lived token) was rejected: a person must authorise again.
    #[error("needs re-authorization: {message}")]
    NeedsReauth {
        /// What the CRM said.
        message: String,
    },
    /// The CRM said "too many requests" (amoCRM 429, Bitrix24 503 QUERY_LIMIT_EXCEEDED or 429
    /// OPERATION_TIME_LIMIT).
    #[error("rate limited: {message}")]
    RateLimited {
        /// How long the CRM asked to wait, when it said.
        retry_after: Option<Duration>,
        /// What the CRM said.
        message: String,
    },
    /// The CRM blocked the account or address (amoCRM 403 after repeated 429s). Never retried:
    /// retrying makes a block longer.
    #[error("blocked by the CRM: {message}")]
    Blocked {
        /// What the CRM said.
        message: String,
    },
    /// A passing fault: 5xx, connection reset, timeout. Retried with backoff.
    #[error("transient failure: {message}")]
    Transient {
        /// What failed.
        message: String,
    },
    /// A write whose request may have reached the CRM failed without an answer (the connection
    /// dropped after it was sent, a timeout, a gateway error, a cut body): it may or may not
    /// have been applied. Never repeated blindly: the caller (the outbox) looks in the CRM
    /// first and sends again only what is not there.
    #[error("outcome unknown: {message}")]
    Unconfirmed {
        /// What failed.
        message: String,
    },
    /// The entity does not exist (amoCRM 204/404 on a single entity, Bitrix24 "Not found").
    #[error("not found: {what}")]
    NotFound {
        /// Which entity.
        what: String,
    },
    /// The CRM's answer could not be decoded; `path` names the JSON path that failed.
    #[error("invalid response at {path}: {message}")]
    Invalid {
        /// JSON path of the offending value (`_embedded.leads[3].price`).
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The CRM refused the request permanently (validation error, permission denied).
    #[error("rejected by the CRM ({status}{}): {message}", code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The CRM's error code when it has one.
        code: Option<String>,
        /// What the CRM said, including the field path of a validation error.
        message: String,
    },
    /// The operation is not supported by this CRM or connector.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What was asked.
        what: String,
    },
    /// The token store failed (the sidecar's storage).
    #[error("token store: {message}")]
    Store {
        /// What failed.
        message: String,
    },
}

impl ConnectorError {
    /// Whether the same request may succeed if repeated later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConnectorError::RateLimited { .. } | ConnectorError::Transient { .. }
        )
    }

    /// A short stable code for logs, metrics and the outbox's failure records.
    pub fn code(&self) -> &'static str {
        match self {
            ConnectorError::Auth { .. } => "auth",
            ConnectorError::NeedsReauth { .. } => "needs_reauth",
            ConnectorError::RateLimited { .. } => "rate_limited",
            ConnectorError::Blocked { .. } => "blocked",
            ConnectorError::Transient { .. } => "transient",
            ConnectorError::Unconfirmed { .. } => "unconfirmed",
            ConnectorError::NotFound { .. } => "not_found",
            ConnectorError::Invalid { .. } => "invalid",
            ConnectorError::Rejected { .. } => "rejected",
            ConnectorError::Unsupported { .. } => "unsupported",
            ConnectorError::Store { .. } => "store",
        }
    }

    /// Whether the CRM refused access to this part of the API (a missing right or scope, a
    /// method or endpoint the account does not have), as opposed to a fault of the call: the
    /// sync treats such answers for optional data as "none, with a warning".
    pub fn is_unavailable(&self) -> bool {
        match self {
            ConnectorError::NotFound { .. } | ConnectorError::Unsupported { .. } => true,
            ConnectorError::Rejected { status, code, .. } => {
                matches!(*status, 403 | 404 | 405)
                    || code.as_deref().is_some_and(|c| {
                        matches!(
                            c,
                            "insufficient_scope"
                                | "ERROR_METHOD_NOT_FOUND"
                                | "METHOD_NOT_FOUND"
                                | "ACCESS_DENIED"
                                | "ERROR_ACCESS_DENIED"
                        )
                    })
            }
            _ => false,
        }
    }

    /// Builds a transient error from anything displayable.
    pub fn transient(e: impl std::fmt::Display) -> Self {
        ConnectorError::Transient {
            message: e.to_string(),
        }
    }
}
