//! One error type for every HTTP answer of the server: a stable code, a status and a message
//! that names the problem without leaking internals. Input errors are not logged as errors.
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An HTTP error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine code (`unknown_portal`, `bad_secret`, ...).
    pub code: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

impl AppError {
    /// 404: no such portal.
    pub fn unknown_portal(id: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "unknown_portal",
            message: format!("unknown portal {id:?}"),
        }
    }
    /// 401: missing or wrong credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "unauthorized",
            message: message.into(),
        }
    }
    /// 403: credentials fine, but not for this portal.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: "forbidden",
            message: message.into(),
        }
    }
    /// 404: nothing is served at this path here.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
        }
    }
    /// 400: a malformed body.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
        }
    }
    /// 503: the server cannot take the request now (store failure); the CRM retries later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: message.into(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "Request failed.");
        } else {
            tracing::debug!(code = self.code, message = %self.message, "Request refused.");
        }
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}
