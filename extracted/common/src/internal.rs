//! The `X-Internal-Token` rule of `/internal/*`, as on the monolith: when a
//! token is configured, a request must carry exactly that value, else 401.

use crate::ApiError;
use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

/// Header naming the shared secret of service-to-service calls.
pub const TOKEN_HEADER: &str = "X-Internal-Token";

/// `Ok` when no token is configured or the header matches it (compared in constant time).
pub fn check_token(headers: &HeaderMap, expected: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = expected.filter(|t| !t.is_empty()) else { return Ok(()) };
    let got = headers.get(TOKEN_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if bool::from(got.ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::unauthorized("missing or invalid X-Internal-Token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(token: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = token {
            h.insert(TOKEN_HEADER, t.parse().unwrap());
        }
        h
    }

    #[test]
    fn no_configured_token_lets_every_request_through() {
        assert!(check_token(&with(None), None).is_ok());
        assert!(check_token(&with(None), Some("")).is_ok());
    }

    #[test]
    fn a_configured_token_must_be_sent_exactly() {
        assert!(check_token(&with(Some("s3cret")), Some("s3cret")).is_ok());
        for sent in [None, Some(""), Some("s3cre"), Some("s3cret "), Some("S3CRET")] {
            let e = check_token(&with(sent), Some("s3cret")).unwrap_err();
            assert_eq!((e.status.as_u16(), e.message.as_str()), (401, "missing or invalid X-Internal-Token"));
        }
    }
}
