//! Request-body helpers matching the monolith's `json_body()` and `req_str()`.

use crate::pagination::py_strip;
use crate::ApiError;
use axum::body::Body;
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value};

/// `TASKAPP_MAX_UPLOAD` default.
pub const DEFAULT_MAX_BODY: usize = 10 * 1024 * 1024;

/// Read the body (any Content-Type) as a JSON object.
/// too big -> 413; empty / not UTF-8 / not JSON -> 400 `malformed JSON body`;
/// not an object -> 400 `JSON body must be an object`.
pub async fn json_object(body: Body, max: usize) -> Result<Map<String, Value>, ApiError> {
    let bytes = match Limited::new(body, max).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                return Err(ApiError::payload_too_large(max));
            }
            return Err(ApiError::bad_request("malformed JSON body"));
        }
    };
    parse_json_object(&bytes)
}

pub fn parse_json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::bad_request("malformed JSON body"))?;
    let v: Value = serde_json::from_str(text).map_err(|_| ApiError::bad_request("malformed JSON body"))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request("JSON body must be an object")),
    }
}

/// `req_str(data, field, min_len, max_len, required, strip_check)`; `Ok(None)` = absent and optional.
pub fn req_str(
    data: &Map<String, Value>,
    field: &str,
    min_len: usize,
    max_len: usize,
    required: bool,
    strip_check: bool,
) -> Result<Option<String>, ApiError> {
    let v = match data.get(field) {
        None if required => return Err(ApiError::validation(field, format!("{field} is required"))),
        None => return Ok(None),
        Some(v) => v,
    };
    let s = v.as_str().ok_or_else(|| ApiError::validation(field, format!("{field} must be a string")))?;
    let n = if strip_check { py_strip(s).chars().count() } else { s.chars().count() };
    if n < min_len {
        if min_len == 1 {
            return Err(ApiError::validation(field, format!("{field} must not be empty")));
        }
        return Err(ApiError::validation(field, format!("{field} must be at least {min_len} characters")));
    }
    if s.chars().count() > max_len {
        return Err(ApiError::validation(field, format!("{field} must be at most {max_len} characters")));
    }
    Ok(Some(s.to_string()))
}
