//! Answers that are not a success: problem+json errors, the 204 "nothing here", and the HTML
//! pages of the gateway (429, 403 block, 5xx).
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// `application/hal+json`: every v4 success.
pub(crate) const HAL_JSON: &str = "application/hal+json";
/// `application/problem+json`: every v4 error.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// An API answer other than a success body.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 204 with an empty body: past the end of a list, nothing matched, or no such entity.
    NoContent,
    /// 400 problem json with a free-text detail (bad query parameter, bad JSON body).
    BadRequest(String),
    /// 400 with `validation-errors` (one entry per failing item).
    Validation(Vec<Value>),
    /// 401 problem json on the API (`https://httpstatus.es/401`).
    Unauthorized(String),
    /// 404 problem json.
    NotFound,
    /// Another problem+json status with a detail (402 tariff, 422 mode off).
    Status(u16, String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NoContent => {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
            }
            ApiError::BadRequest(detail) => problem(400, "Bad Request", &detail),
            ApiError::Validation(errors) => json_response(
                StatusCode::BAD_REQUEST,
                PROBLEM_JSON,
                &json!({
                    "validation-errors": errors,
                    "title": "Bad Request",
                    "type": "https://httpstatus.es/400",
                    "status": 400,
                    "detail": "Request validation failed",
                }),
            ),
            ApiError::Unauthorized(detail) => problem(401, "Unauthorized", &detail),
            ApiError::NotFound => problem(404, "Not Found", "Not Found"),
            ApiError::Status(status, detail) => {
                let title = match status {
                    402 => "Payment Required",
                    403 => "Forbidden",
                    422 => "Unprocessable Entity",
                    _ => "Bad Request",
                };
                problem(status, title, &detail)
            }
        }
    }
}

/// A problem+json answer in the `https://httpstatus.es/{status}` style of API v4.
pub(crate) fn problem(status: u16, title: &str, detail: &str) -> Response {
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        PROBLEM_JSON,
        &json!({"title": title, "type": format!("https://httpstatus.es/{status}"), "status": status, "detail": detail}),
    )
}

/// A JSON body with the given content type.
pub(crate) fn json_response<T: serde::Serialize + ?Sized>(
    status: StatusCode,
    content_type: &'static str,
    body: &T,
) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A 200 `application/hal+json` answer.
pub(crate) fn hal<T: serde::Serialize + ?Sized>(body: &T) -> Response {
    json_response(StatusCode::OK, HAL_JSON, body)
}

fn html(status: StatusCode, body: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

/// The gateway's 429: HTML, no `Retry-After`.
pub(crate) fn too_many_requests() -> Response {
    html(
        StatusCode::TOO_MANY_REQUESTS,
        "<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
    )
}

/// The nginx 403 of a blocked integration.
pub(crate) fn forbidden_blocked() -> Response {
    html(
        StatusCode::FORBIDDEN,
        "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
    )
}

/// A gateway error page (502/503/504) as nginx HTML, or as a JSON problem.
pub(crate) fn gateway_error(status: u16, as_json: bool) -> Response {
    if as_json {
        let title = match status {
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            _ => "Gateway Timeout",
        };
        return problem(status, title, title);
    }
    let (code, body) = match status {
        502 => (
            StatusCode::BAD_GATEWAY,
            "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
        ),
        503 => (
            StatusCode::SERVICE_UNAVAILABLE,
            "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
        ),
        _ => (
            StatusCode::GATEWAY_TIMEOUT,
            "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n",
        ),
    };
    html(code, body)
}

/// One `validation-errors` entry: the item's `request_id` and its errors.
pub(crate) fn item_errors(request_id: &str, errors: Vec<Value>) -> Value {
    json!({"request_id": request_id, "errors": errors})
}

/// One error of an item: a code, the JSON path inside the item, and a detail.
pub(crate) fn field_error(code: &str, path: &str, detail: &str) -> Value {
    json!({"code": code, "path": path, "detail": detail})
}
