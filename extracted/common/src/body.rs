//! Request-body helpers matching the monolith's `json_body()` and `req_str()`.

use crate::pagination::py_strip;
use crate::ApiError;
use axum::body::Body;
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value};
use std::borrow::Cow;

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
    let text = python_literals(text);
    let v = parse_deep(&text)?.ok_or_else(|| ApiError::bad_request("malformed JSON body"))?;
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

/// Deepest JSON nesting (arrays and objects) that the monolith parses: Python's
/// recursion limit (1000) minus the frames of gunicorn, Flask and the handler.
/// Measured with gunicorn sync workers: 971 parses, 981 fails. Deeper bodies
/// raise RecursionError, which the monolith answers with a 500 `internal_error`.
pub const PY_MAX_JSON_DEPTH: usize = 975;

/// Parses like the monolith as far as nesting goes: `Ok(None)` = not JSON,
/// Err(500) = nested deeper than Python can parse. serde_json stops at 128
/// levels by default; deep documents are parsed without that limit on a
/// thread with a large stack.
fn parse_deep(text: &str) -> Result<Option<Value>, ApiError> {
    let depth = json_depth(text);
    if depth > PY_MAX_JSON_DEPTH {
        return Err(ApiError::internal());
    }
    if depth < 100 {
        return Ok(serde_json::from_str(text).ok());
    }
    let unbounded = |text: &str| {
        let mut de = serde_json::Deserializer::from_str(text);
        de.disable_recursion_limit();
        let v = <Value as serde::Deserialize>::deserialize(&mut de).ok()?;
        de.end().ok().map(|_| v)
    };
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(64 * 1024 * 1024)
            .spawn_scoped(s, || unbounded(text))
            .map_err(|_| ApiError::internal())?
            .join()
            .map_err(|_| ApiError::internal())
    })
}

/// Maximum nesting of `[`/`{` outside strings.
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &c in text.as_bytes() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Python's `json.loads` (the monolith) also accepts `NaN`, `Infinity`,
/// `-Infinity` and number literals beyond f64's range (a float nan/inf; an
/// int for huge integer literals), where serde_json fails. Outside strings,
/// each such token is rewritten to a finite number of the same kind (float
/// `0.5`, integer `99999999999999999999`), so that type checks (`body must be
/// a string`, ignored unknown fields) answer as the monolith does.
/// Python's `json.loads` also accepts lone UTF-16 surrogates (`"\ud800"`),
/// which serde_json refuses; the monolith then fails (500) only when it
/// stores such a string. They are rewritten to this noncharacter, which
/// [`has_lone_surrogate`] finds where the monolith would store the value.
pub const LONE_SURROGATE: char = '\u{FDD0}';
const LONE_SURROGATE_ESCAPE: &str = "\\ufdd0";

/// True when a string held a lone surrogate in the request (see [`LONE_SURROGATE`]).
pub fn has_lone_surrogate(s: &str) -> bool {
    s.contains(LONE_SURROGATE)
}

/// A `\uXXXX` escape in a JSON string.
enum Escape {
    LoneSurrogate,
    /// A valid escape of this many bytes (12 for a surrogate pair).
    Valid(usize),
}

/// The escape at `i`; `None` when it is not four hex digits.
fn unicode_escape_at(b: &[u8], i: usize) -> Option<Escape> {
    let code = |at: usize| -> Option<u32> {
        let hex = b.get(at + 2..at + 6)?;
        u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let unit = code(i)?;
    Some(match unit {
        0xD800..=0xDBFF => {
            let low = (b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u')).then(|| code(i + 6)).flatten();
            match low {
                Some(0xDC00..=0xDFFF) => Escape::Valid(12),
                _ => Escape::LoneSurrogate,
            }
        }
        // A pair's low half is skipped with its high half, so one seen here is lone.
        0xDC00..=0xDFFF => Escape::LoneSurrogate,
        _ => Escape::Valid(6),
    })
}

pub fn python_literals(text: &str) -> Cow<'_, str> {
    let b = text.as_bytes();
    let mut out: Option<String> = None;
    let (mut i, mut copied) = (0, 0);
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        let replace = |len: usize, with: &'static str| Some((len, with));
        let found = if in_string {
            match c {
                b'\\' if b.get(i + 1) == Some(&b'u') => match unicode_escape_at(b, i) {
                    Some(Escape::LoneSurrogate) => replace(6, LONE_SURROGATE_ESCAPE),
                    Some(Escape::Valid(len)) => {
                        i += len;
                        continue;
                    }
                    None => {
                        i += 2;
                        continue;
                    }
                },
                b'\\' => {
                    i += 2;
                    continue;
                }
                b'"' => {
                    in_string = false;
                    i += 1;
                    continue;
                }
                _ => {
                    i += 1;
                    continue;
                }
            }
        } else if c == b'"' {
            in_string = true;
            None
        } else if b[i..].starts_with(b"NaN") {
            replace(3, "0.5")
        } else if b[i..].starts_with(b"Infinity") {
            replace(8, "0.5")
        } else if b[i..].starts_with(b"-Infinity") {
            replace(9, "0.5")
        } else if c == b'-' || c.is_ascii_digit() {
            let len = b[i..].iter().take_while(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')).count();
            let token = &text[i..i + len];
            match token.parse::<f64>() {
                Ok(f) if f.is_infinite() => {
                    let float = token.contains(['.', 'e', 'E']);
                    replace(len, if float { "0.5" } else { "99999999999999999999" })
                }
                _ => {
                    i += len.max(1);
                    continue;
                }
            }
        } else {
            None
        };
        match found {
            Some((len, with)) => {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                o.push_str(&text[copied..i]);
                o.push_str(with);
                i += len;
                copied = i;
            }
            None => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

#[cfg(test)]
mod python_literal_tests {
    use super::*;

    #[test]
    fn lone_surrogates_become_a_marker_and_pairs_stay() {
        let parsed = parse_json_object(br#"{"a":"x\ud800y","b":"\ud83d\ude00","c":"\udc00","d":"\u0041"}"#).unwrap();
        assert!(has_lone_surrogate(parsed["a"].as_str().unwrap()));
        assert_eq!(parsed["b"], "\u{1F600}");
        assert!(has_lone_surrogate(parsed["c"].as_str().unwrap()));
        assert_eq!(parsed["d"], "A");
    }

    #[test]
    fn non_finite_literals_parse_like_python() {
        for (input, want) in [
            (r#"{"body": NaN}"#, r#"{"body": 0.5}"#),
            (r#"{"body":Infinity,"x":[-Infinity, 1e400, -1E+999, 1e10]}"#, r#"{"body":0.5,"x":[0.5, 0.5, 0.5, 1e10]}"#),
            (r#"{"body": "NaN Infinity 1e400 \" NaN"}"#, r#"{"body": "NaN Infinity 1e400 \" NaN"}"#),
        ] {
            assert_eq!(python_literals(input), want);
        }
        let big_int = format!("{{\"x\": 1{}}}", "0".repeat(400));
        assert_eq!(python_literals(&big_int), r#"{"x": 99999999999999999999}"#);
        let m = parse_json_object(br#"{"body": NaN}"#).unwrap();
        assert!(m["body"].is_f64());
        assert!(matches!(python_literals(r#"{"body": "plain", "n": -12.5e3}"#), Cow::Borrowed(_)));
        assert!(parse_json_object(b"{\"body\": Nan}").is_err());
        assert!(parse_json_object(b"{\"body\": +Infinity}").is_err());
    }

    #[test]
    fn nesting_like_python() {
        let nested = |d: usize| format!("{{\"body\": \"x\", \"e\": {}{}}}", "[".repeat(d), "]".repeat(d));
        assert_eq!(json_depth(&nested(3)), 4);
        assert_eq!(json_depth(r#"{"a": "[[[{{"}"#), 1);
        for d in [10, 200, PY_MAX_JSON_DEPTH - 1] {
            assert_eq!(parse_json_object(nested(d).as_bytes()).unwrap()["body"], "x", "depth {d}");
        }
        for d in [PY_MAX_JSON_DEPTH, 100_000] {
            assert_eq!(parse_json_object(nested(d).as_bytes()).unwrap_err().status.as_u16(), 500, "depth {d}");
        }
        let unbalanced = format!("{{\"body\": {}", "[".repeat(500));
        assert_eq!(parse_json_object(unbalanced.as_bytes()).unwrap_err().status.as_u16(), 400);
    }
}
