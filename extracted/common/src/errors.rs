//! API errors rendered exactly like the monolith's `APIError.to_response()`,
//! and Werkzeug's HTML 404 / 405 pages.

use crate::flask_json::json_response;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Further members of the JSON body, e.g. a 421's `owner` and `epoch`.
    pub extra: Vec<(&'static str, Value)>,
    /// `Retry-After` in seconds (a 503 that will pass once a replica catches up).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, error, message: message.into(), field: None, extra: Vec::new(), retry_after: None }
    }
    /// 421: this side did not process the request and names the side that can
    /// (`owner`, with its ownership `epoch`); the proxy retries it there once.
    pub fn misdirected(owner: &str, epoch: i64, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::MISDIRECTED_REQUEST, "misdirected", message);
        e.extra = vec![("owner", Value::from(owner)), ("epoch", Value::from(epoch))];
        e
    }
    /// 409 on an ownership change asked of a side that does not own the feature.
    pub fn not_owner(owner: &str, epoch: i64, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::CONFLICT, "conflict", message);
        e.extra = vec![("owner", Value::from(owner)), ("epoch", Value::from(epoch))];
        e
    }
    /// 503 with `Retry-After`: the answer depends on data this side has not applied yet.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.retry_after = Some(retry_after_secs);
        e
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "validation_error", message);
        e.field = Some(field.to_string());
        e
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(entity: &str, id: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{entity} {id} not found"))
    }
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds the maximum upload size of {limit} bytes"),
        )
    }
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal server error")
    }
    pub fn body(&self) -> Value {
        let mut m = Map::new();
        m.insert("error".into(), Value::String(self.error.into()));
        m.insert("message".into(), Value::String(self.message.clone()));
        if let Some(f) = &self.field {
            m.insert("field".into(), Value::String(f.clone()));
        }
        for (k, v) in &self.extra {
            m.insert((*k).into(), v.clone());
        }
        Value::Object(m)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = json_response(self.status, &self.body());
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        tracing::error!(error = %e, "database error");
        ApiError::internal()
    }
}

pub const HTML_404: &str = "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n<p>The requested URL was not found on the server. If you entered the URL manually please check your spelling and try again.</p>\n";
pub const HTML_405: &str = "<!doctype html>\n<html lang=en>\n<title>405 Method Not Allowed</title>\n<h1>Method Not Allowed</h1>\n<p>The method is not allowed for the requested URL.</p>\n";

fn html(status: StatusCode, body: &'static str) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}

/// Werkzeug's 404 page (note: it DOES end with a newline, 207 bytes;
/// CONTRACT.md says "no trailing newline") (unknown URL, non-integer id, trailing slash variants).
pub fn html_not_found() -> Response {
    html(StatusCode::NOT_FOUND, HTML_404)
}

/// Werkzeug's 405 page with an `Allow` header (e.g. `"GET, HEAD, OPTIONS"`).
pub fn html_method_not_allowed(allow: &str) -> Response {
    let mut resp = html(StatusCode::METHOD_NOT_ALLOWED, HTML_405);
    if let Ok(v) = HeaderValue::from_str(allow) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// Flask's automatic OPTIONS answer: 200, empty body, `Allow` header.
pub fn options_response(allow: &str) -> Response {
    let mut resp = html(StatusCode::OK, "");
    if let Ok(v) = HeaderValue::from_str(allow) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes() {
        assert_eq!(HTML_404.len(), 207);
        assert_eq!(HTML_405.len(), 153);
    }
}
