//! Bearer-token authentication, reproducing the monolith's `authenticate()`
//! (PyJWT `jwt.decode(..., algorithms=["HS256"], options={"require": ["exp","iat","sub"]})`).

use crate::pagination::{py_int, py_strip, PyInt};
use crate::ApiError;
use axum::http::{header, HeaderMap};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

/// Outcome of checking the `Authorization` header: the claimed user id
/// (the caller must still check that the user exists -> else `invalid token`).
pub fn verify_bearer(headers: &HeaderMap, secret: &str) -> Result<i64, ApiError> {
    let header = match headers.get(header::AUTHORIZATION) {
        None => return Err(ApiError::unauthorized("missing bearer token")),
        Some(h) => h.as_bytes(),
    };
    // Werkzeug decodes header bytes as latin-1.
    let header: String = header.iter().map(|b| *b as char).collect();
    if header.is_empty() {
        return Err(ApiError::unauthorized("missing bearer token"));
    }
    let (scheme, token) = match header.find(' ') {
        Some(i) => (&header[..i], &header[i + 1..]),
        None => (header.as_str(), ""),
    };
    let token = py_strip(token);
    if scheme.to_lowercase() != "bearer" || token.is_empty() {
        return Err(ApiError::unauthorized("missing bearer token"));
    }
    verify_token(token, secret)
}

fn now_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Python `int(x)` for a JSON claim value.
fn claim_int(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i as f64)
            } else if let Some(u) = n.as_u64() {
                Some(u as f64)
            } else {
                n.as_f64().filter(|f| f.is_finite()).map(|f| f.trunc())
            }
        }
        Value::String(s) => match py_int(s) {
            PyInt::Value(i) => Some(i as f64),
            PyInt::TooBig { negative } => Some(if negative { f64::MIN } else { f64::MAX }),
            PyInt::Invalid => None,
        },
        _ => None,
    }
}

pub fn verify_token(token: &str, secret: &str) -> Result<i64, ApiError> {
    let invalid = || ApiError::unauthorized("invalid token");
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data =
        decode::<Value>(token, &DecodingKey::from_secret(secret.as_bytes()), &validation).map_err(|_| invalid())?;
    let claims = data.claims.as_object().ok_or_else(invalid)?;
    // require: exp, iat, sub (present and not null)
    for c in ["exp", "iat", "sub"] {
        if claims.get(c).is_none_or(Value::is_null) {
            return Err(invalid());
        }
    }
    let now = now_f64();
    let iat = claim_int(&claims["iat"]).ok_or_else(invalid)?;
    if iat > now {
        return Err(invalid());
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = claim_int(nbf).ok_or_else(invalid)?;
        if nbf > now {
            return Err(invalid());
        }
    }
    let exp = claim_int(&claims["exp"]).ok_or_else(invalid)?;
    if exp <= now {
        return Err(ApiError::unauthorized("token expired"));
    }
    if let Some(aud) = claims.get("aud") {
        let empty = match aud {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Bool(b) => !b,
            Value::Object(o) => o.is_empty(),
            Value::Number(n) => n.as_f64() == Some(0.0),
        };
        if !empty {
            return Err(invalid());
        }
    }
    if let Some(jti) = claims.get("jti") {
        if !jti.is_string() {
            return Err(invalid());
        }
    }
    let sub = claims["sub"].as_str().ok_or_else(invalid)?;
    match py_int(sub) {
        PyInt::Value(v) => Ok(v),
        _ => Err(invalid()),
    }
}
