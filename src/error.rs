//! Errors the proxy answers itself, as JSON bodies that say whose fault it was:
//! `downstream` (the client's request), `upstream` (the service behind us) or
//! `internal` (the proxy).

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::client::body::ProxyBody;
use crate::path::PathError;

/// A request the proxy could not complete.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad path: {0}")]
    BadPath(PathError),
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("no route matches {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("upstream {upstream} could not be reached")]
    UpstreamUnreachable { upstream: String },
    #[error("upstream {upstream} did not answer in time")]
    UpstreamTimeout { upstream: String },
    #[error("upstream {upstream} failed: {detail}")]
    UpstreamFailed { upstream: String, detail: String },
    #[error("the request body could not be read")]
    BodyRead,
    #[error("rate limit exceeded; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    #[error("upstream {upstream} has no healthy target")]
    NoHealthyTarget { upstream: String },
    #[error("upstream {upstream} is at its max_concurrent limit")]
    Overloaded { upstream: String },
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: String,
    status: u16,
    fault: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadPath(_) | ProxyError::BadRequest(_) | ProxyError::BodyRead => StatusCode::BAD_REQUEST,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NoHealthyTarget { .. } | ProxyError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::UpstreamUnreachable { .. } => "upstream_unreachable",
            ProxyError::UpstreamTimeout { .. } => "upstream_timeout",
            ProxyError::UpstreamFailed { .. } => "upstream_failed",
            ProxyError::BodyRead => "body_read_failed",
            ProxyError::RateLimited { .. } => "rate_limited",
            ProxyError::NoHealthyTarget { .. } => "no_healthy_target",
            ProxyError::Overloaded { .. } => "upstream_overloaded",
        }
    }

    pub fn fault(&self) -> &'static str {
        match self {
            ProxyError::BadPath(_)
            | ProxyError::BadRequest(_)
            | ProxyError::NoRoute { .. }
            | ProxyError::BodyRead
            | ProxyError::RateLimited { .. } => "downstream",
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamFailed { .. }
            | ProxyError::NoHealthyTarget { .. }
            | ProxyError::Overloaded { .. } => "upstream",
        }
    }

    /// Worth another attempt (elsewhere): the upstream was not reached or gave no answer.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamUnreachable { .. }
                | ProxyError::UpstreamTimeout { .. }
                | ProxyError::UpstreamFailed { .. }
                | ProxyError::NoHealthyTarget { .. }
                | ProxyError::Overloaded { .. }
        )
    }

    /// The JSON response for this error.
    pub fn into_response(self, request_id: Option<&HeaderValue>) -> Response<ProxyBody> {
        let path = match &self {
            ProxyError::NoRoute { path, .. } => Some(path.as_str()),
            _ => None,
        };
        let mut response = json_error(self.status(), self.code(), self.fault(), self.to_string(), path, request_id);
        if let ProxyError::RateLimited { retry_after } = self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }
}

/// A JSON error response in the proxy's one error shape.
pub fn json_error(
    status: StatusCode,
    code: &'static str,
    fault: &'static str,
    message: String,
    path: Option<&str>,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let body = ErrorBody {
        error: code,
        message,
        status: status.as_u16(),
        fault,
        path,
        request_id: request_id.and_then(|v| v.to_str().ok()),
    };
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    bytes.push(b'\n');
    let mut response = Response::new(ProxyBody::full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(id) = request_id {
        response.headers_mut().insert(crate::headers::X_REQUEST_ID.clone(), id.clone());
    }
    response
}
