//! The pieces of OAuth token handling both connectors share: the error of their `oauth2`
//! HTTP adapters and its classification into [`ConnectorError`]. Each connector keeps its own
//! adapter (amoCRM posts JSON; Bitrix24 wants a GET with the grant in the query) and its own
//! reading of a refused grant's body.
use crate::error::ConnectorError;
use oauth2::RequestTokenError;
use oauth2::basic::BasicErrorResponse;

/// A failure of a connector's `oauth2` HTTP adapter.
#[derive(Debug, thiserror::Error)]
pub enum OAuthHttpError {
    /// The request got no answer (connection, timeout). The text never holds the URL: a
    /// Bitrix24 token URL carries the client secret.
    #[error("token request failed: {0}")]
    Transport(String),
    /// The token endpoint answered something other than 200.
    #[error("token endpoint answered {status}")]
    Status {
        /// HTTP status.
        status: http::StatusCode,
        /// The body, kept for classification.
        body: Vec<u8>,
    },
    /// The answer could not be rebuilt as an `http` response.
    #[error("token response: {0}")]
    Build(String),
}

/// Classifies a failed token request; `refused` reads a non-200 answer's body the CRM's way.
pub fn token_error(
    e: RequestTokenError<OAuthHttpError, BasicErrorResponse>,
    refused: impl FnOnce(http::StatusCode, &[u8]) -> ConnectorError,
) -> ConnectorError {
    match e {
        RequestTokenError::Request(OAuthHttpError::Transport(m)) => ConnectorError::Transient {
            message: format!("token endpoint: {m}"),
        },
        RequestTokenError::Request(OAuthHttpError::Status { status, body }) => {
            refused(status, &body)
        }
        RequestTokenError::Request(e @ OAuthHttpError::Build(_)) => ConnectorError::Transient {
            message: e.to_string(),
        },
        RequestTokenError::Parse(e, _) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.classify() == serde_json::error::Category::Eof {
                ConnectorError::Transient {
                    message: format!("truncated token response at {path}: {inner}"),
                }
            } else {
                ConnectorError::Invalid {
                    path,
                    message: format!("token response: {inner}"),
                }
            }
        }
        RequestTokenError::ServerResponse(r) => ConnectorError::NeedsReauth {
            message: r.to_string(),
        },
        RequestTokenError::Other(m) => ConnectorError::Invalid {
            path: "token response".into(),
            message: m,
        },
    }
}
