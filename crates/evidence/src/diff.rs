//! Comparing two answers to the same request: the primary's (the client got
//! it) and the shadow's (only compared).
//!
//! - status codes;
//! - headers, names case-insensitively, minus ignored ones; `Content-Type`
//!   by media type (parameters such as `charset` do not count);
//! - bodies after decompression (gzip, deflate, br); JSON semantically (key
//!   order never matters, `1` equals `1.0`) with each differing field as a
//!   JSON pointer; other text line by line with a short unified diff; binary
//!   by length and SHA-256.
//!
//! Patterns (`ignore`, `unordered`, `redact`) are JSON pointers in which `*`
//! stands for any one key or index: `/items/*/etag`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use http::header::{self, HeaderMap};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::record::{DiffKind, Difference};

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Headers never compared by default: they differ between any two servers
/// or are transport details.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "server",
    "x-request-id",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "x-strangler-upstream",
    "x-strangler-shadow",
];

/// Headers whose values never reach a diff record.
pub const SENSITIVE_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie", "set-cookie"];

/// A JSON pointer pattern; `*` matches any one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<String>,
    text: String,
}

impl Pattern {
    /// Parses `/a/*/b`; the empty string is the whole document.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if !text.is_empty() && !text.starts_with('/') {
            return Err(format!("{text:?} is not a JSON pointer (it must start with '/')"));
        }
        Ok(Pattern { segments: split_pointer(text), text: text.to_string() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when `pointer` is exactly this pattern.
    pub fn matches(&self, pointer: &[String]) -> bool {
        self.segments.len() == pointer.len() && self.covers_prefix(pointer)
    }

    /// True when `pointer` is this pattern or lies beneath it.
    pub fn covers(&self, pointer: &[String]) -> bool {
        self.segments.len() <= pointer.len() && self.covers_prefix(pointer)
    }

    fn covers_prefix(&self, pointer: &[String]) -> bool {
        self.segments.iter().zip(pointer).all(|(p, s)| p == "*" || p == s)
    }
}

fn split_pointer(text: &str) -> Vec<String> {
    if text.is_empty() {
        return vec![];
    }
    text[1..].split('/').map(|s| s.replace("~1", "/").replace("~0", "~")).collect()
}

/// Writes segments as a JSON pointer (RFC 6901 escaping).
pub fn join_pointer(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.push_str(&s.replace('~', "~0").replace('/', "~1"));
    }
    out
}

/// Folds array indexes into `*`, so that `/items/3/id` and `/items/4/id`
/// count as one field.
pub fn fold_indexes(pointer: &str) -> String {
    let folded: Vec<String> = split_pointer(pointer)
        .into_iter()
        .map(|s| if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) { "*".to_string() } else { s })
        .collect();
    join_pointer(&folded)
}

/// How to compare two answers.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// Lower-case header names left out of the comparison (on top of the defaults).
    pub ignore_headers: BTreeSet<String>,
    /// Body fields left out of the comparison.
    pub ignore: Vec<Pattern>,
    /// Arrays compared as multisets.
    pub unordered: Vec<Pattern>,
    /// Body fields whose values never reach a record.
    pub redact: Vec<Pattern>,
    /// Bodies larger than this (after decompression) are compared by length and hash only.
    pub max_body: usize,
}

/// One answer, as far as it was read.
#[derive(Debug, Clone)]
pub struct Answer<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    /// The body as received (possibly compressed); empty when it was too large to keep.
    pub body: &'a [u8],
    /// Length and SHA-256 of the whole body as received.
    pub body_len: u64,
    pub body_sha256: [u8; 32],
    /// False when the body was longer than `max_body` and only hashed.
    pub body_complete: bool,
}

/// The result of comparing two answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    pub diffs: Vec<Difference>,
    /// Set when the bodies could only be compared by length and hash.
    pub hashed_only: bool,
}

/// Compares two answers field by field.
pub fn compare(primary: &Answer<'_>, shadow: &Answer<'_>, opts: &CompareOptions) -> Comparison {
    let mut out = Comparison::default();
    if primary.status != shadow.status {
        out.diffs.push(Difference {
            kind: DiffKind::Status,
            pointer: String::new(),
            primary: Value::from(primary.status),
            shadow: Value::from(shadow.status),
        });
    }
    compare_headers(primary.headers, shadow.headers, opts, &mut out.diffs);
    compare_bodies(primary, shadow, opts, &mut out);
    out
}

fn compare_headers(p: &HeaderMap, s: &HeaderMap, opts: &CompareOptions, out: &mut Vec<Difference>) {
    let names: BTreeSet<&str> = p.keys().chain(s.keys()).map(|n| n.as_str()).collect();
    for name in names {
        if DEFAULT_IGNORED_HEADERS.contains(&name) || opts.ignore_headers.contains(name) {
            continue;
        }
        let (pv, sv) = (header_value(p, name), header_value(s, name));
        let equal = if name == header::CONTENT_TYPE.as_str() {
            pv.as_deref().map(media_type) == sv.as_deref().map(media_type)
        } else {
            pv == sv
        };
        if !equal {
            let sensitive = SENSITIVE_HEADERS.contains(&name);
            let show = |v: Option<String>| match v {
                None => Value::Null,
                Some(_) if sensitive => Value::from(REDACTED),
                Some(v) => Value::from(v),
            };
            out.push(Difference {
                kind: DiffKind::Header,
                pointer: name.to_string(),
                primary: show(pv),
                shadow: show(sv),
            });
        }
    }
}

fn header_value(h: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> =
        h.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// `application/json; charset=utf-8` → `application/json`.
pub fn media_type(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn compare_bodies(p: &Answer<'_>, s: &Answer<'_>, opts: &CompareOptions, out: &mut Comparison) {
    let decoded = (
        p.body_complete.then(|| decode(p.headers, p.body, opts.max_body)).flatten(),
        s.body_complete.then(|| decode(s.headers, s.body, opts.max_body)).flatten(),
    );
    let (Some(pb), Some(sb)) = decoded else {
        out.hashed_only = true;
        if p.body_len != s.body_len || p.body_sha256 != s.body_sha256 {
            out.diffs.push(body_summary_diff(p, s));
        }
        return;
    };
    if pb == sb {
        return;
    }
    if let (Some(pj), Some(sj)) = (parse_json(p.headers, &pb), parse_json(s.headers, &sb)) {
        let mut path = Vec::new();
        diff_json(&pj, &sj, &mut path, opts, &mut out.diffs);
        return;
    }
    match (std::str::from_utf8(&pb), std::str::from_utf8(&sb)) {
        // With `redact` set, the route carries secrets; a text diff cannot be
        // redacted field by field, so only its size is shown.
        (Ok(pt), Ok(st)) if !opts.redact.is_empty() => out.diffs.push(Difference {
            kind: DiffKind::Body,
            pointer: String::new(),
            primary: Value::from(format!("{REDACTED} text body, {} lines", pt.lines().count())),
            shadow: Value::from(format!("{REDACTED} text body, {} lines", st.lines().count())),
        }),
        (Ok(pt), Ok(st)) => out.diffs.push(Difference {
            kind: DiffKind::Body,
            pointer: String::new(),
            primary: Value::from(short_unified_diff(pt, st)),
            shadow: Value::from(format!("{} lines", st.lines().count())),
        }),
        _ => out.diffs.push(body_summary_diff(p, s)),
    }
}

fn body_summary_diff(p: &Answer<'_>, s: &Answer<'_>) -> Difference {
    let describe = |a: &Answer<'_>| {
        let hash: String = a.body_sha256.iter().take(8).map(|b| format!("{b:02x}")).collect();
        serde_json::json!({"bytes": a.body_len, "sha256": hash})
    };
    Difference { kind: DiffKind::Body, pointer: String::new(), primary: describe(p), shadow: describe(s) }
}

/// Decompresses per `Content-Encoding`; `None` when it fails or exceeds `limit`.
pub fn decode(headers: &HeaderMap, body: &[u8], limit: usize) -> Option<Vec<u8>> {
    let encoding =
        headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_ascii_lowercase();
    let limit = limit as u64 + 1;
    let mut out = Vec::new();
    let read = match encoding.as_str() {
        "" | "identity" => return (body.len() as u64 <= limit).then(|| body.to_vec()),
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(body).take(limit).read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(body).take(limit).read_to_end(&mut out),
        "br" => brotli::Decompressor::new(body, 4096).take(limit).read_to_end(&mut out),
        _ => return None,
    };
    (read.is_ok() && (out.len() as u64) < limit).then_some(out)
}

fn parse_json(headers: &HeaderMap, body: &[u8]) -> Option<Value> {
    let declared = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(media_type);
    let looks_json = declared.as_deref().is_some_and(|m| m == "application/json" || m.ends_with("+json"));
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if !looks_json && !matches!(first, Some(b'{') | Some(b'[')) {
        return None;
    }
    serde_json::from_slice(body).ok()
}

fn ignored(path: &[String], opts: &CompareOptions) -> bool {
    opts.ignore.iter().any(|p| p.covers(path))
}

fn diff_json(p: &Value, s: &Value, path: &mut Vec<String>, opts: &CompareOptions, out: &mut Vec<Difference>) {
    if ignored(path, opts) {
        return;
    }
    match (p, s) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                path.push(key.clone());
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_json(x, y, path, opts, out),
                    (x, y) => push_body_diff(path, x.unwrap_or(&Value::Null), y.unwrap_or(&Value::Null), opts, out),
                }
                path.pop();
            }
        }
        (Value::Array(a), Value::Array(b)) if opts.unordered.iter().any(|u| u.matches(path)) => {
            let count = |items: &[Value]| {
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for item in items {
                    *counts.entry(canonical(&strip_ignored(item, path, opts)).to_string()).or_default() += 1;
                }
                counts
            };
            if count(a) != count(b) {
                push_body_diff(path, p, s, opts, out);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                path.push(i.to_string());
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => diff_json(x, y, path, opts, out),
                    (x, y) => push_body_diff(path, x.unwrap_or(&Value::Null), y.unwrap_or(&Value::Null), opts, out),
                }
                path.pop();
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            if !numbers_equal(a, b) {
                push_body_diff(path, p, s, opts, out);
            }
        }
        _ => {
            if p != s {
                push_body_diff(path, p, s, opts, out);
            }
        }
    }
}

fn numbers_equal(a: &Number, b: &Number) -> bool {
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

/// A value with numbers normalized, so `1` and `1.0` compare equal as strings.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
            _ => v.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), canonical(v))).collect::<Map<_, _>>()),
        _ => v.clone(),
    }
}

/// An element of an unordered array without its ignored fields (`/items/*/etag`).
fn strip_ignored(item: &Value, array_path: &[String], opts: &CompareOptions) -> Value {
    let mut path = array_path.to_vec();
    path.push("0".into());
    let mut item = item.clone();
    remove_matching(&mut item, &mut path, &opts.ignore);
    item
}

fn remove_matching(v: &mut Value, path: &mut Vec<String>, patterns: &[Pattern]) {
    if let Value::Object(map) = v {
        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            path.push(key.clone());
            if patterns.iter().any(|p| p.matches(path)) {
                map.remove(&key);
            } else if let Some(child) = map.get_mut(&key) {
                remove_matching(child, path, patterns);
            }
            path.pop();
        }
    }
}

fn push_body_diff(path: &[String], p: &Value, s: &Value, opts: &CompareOptions, out: &mut Vec<Difference>) {
    out.push(Difference {
        kind: DiffKind::Body,
        pointer: join_pointer(path),
        primary: redact(p, path, &opts.redact),
        shadow: redact(s, path, &opts.redact),
    });
}

/// `value` (found at `path`) with every field under a `redact` pattern replaced.
pub fn redact(value: &Value, path: &[String], patterns: &[Pattern]) -> Value {
    if patterns.iter().any(|p| p.covers(path)) {
        return Value::from(REDACTED);
    }
    match value {
        Value::Object(map) => {
            let mut path = path.to_vec();
            Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        path.push(k.clone());
                        let r = redact(v, &path, patterns);
                        path.pop();
                        (k.clone(), r)
                    })
                    .collect(),
            )
        }
        Value::Array(items) => {
            let mut path = path.to_vec();
            Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        path.push(i.to_string());
                        let r = redact(v, &path, patterns);
                        path.pop();
                        r
                    })
                    .collect(),
            )
        }
        _ => value.clone(),
    }
}

/// A short unified diff (3 lines of context, at most 40 lines).
fn short_unified_diff(a: &str, b: &str) -> String {
    let diff = similar::TextDiff::from_lines(a, b);
    let text = diff.unified_diff().context_radius(2).header("primary", "shadow").to_string();
    let mut lines: Vec<&str> = text.lines().take(41).collect();
    if lines.len() > 40 {
        lines.truncate(40);
        lines.push("…");
    }
    lines.join("\n")
}

/// SHA-256 of a body, for the hashed-only comparison.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Folds numeric and UUID-like segments: `/api/users/7` → `/api/users/{id}`.
pub fn endpoint_template(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').skip(1) {
        out.push('/');
        if is_id(segment) {
            out.push_str("{id}");
        } else {
            out.push_str(segment);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn is_id(segment: &str) -> bool {
    let numeric = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
    let uuid = segment.len() == 36
        && segment.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    let long_hex = segment.len() >= 16 && segment.bytes().all(|b| b.is_ascii_hexdigit());
    numeric || uuid || long_hex
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer<'a>(status: u16, headers: &'a HeaderMap, body: &'a [u8]) -> Answer<'a> {
        Answer { status, headers, body, body_len: body.len() as u64, body_sha256: sha256(body), body_complete: true }
    }

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h
    }

    fn opts() -> CompareOptions {
        CompareOptions { max_body: 1 << 20, ..Default::default() }
    }

    fn diffs(p: Value, s: Value, o: &CompareOptions) -> Vec<(String, Value, Value)> {
        let h = json_headers();
        let (pb, sb) = (p.to_string(), s.to_string());
        compare(&answer(200, &h, pb.as_bytes()), &answer(200, &h, sb.as_bytes()), o)
            .diffs
            .into_iter()
            .map(|d| (d.pointer, d.primary, d.shadow))
            .collect()
    }

    #[test]
    fn json_is_compared_semantically() {
        assert!(diffs(json!({"a": 1, "b": [1, 2]}), json!({"b": [1.0, 2], "a": 1.0}), &opts()).is_empty());
        assert_eq!(
            diffs(json!({"name": "x", "n": 1}), json!({"title": "x", "n": 2}), &opts()),
            vec![
                ("/n".into(), json!(1), json!(2)),
                ("/name".into(), json!("x"), Value::Null),
                ("/title".into(), Value::Null, json!("x")),
            ]
        );
    }

    #[test]
    fn ignore_and_unordered_patterns() {
        let mut o = opts();
        o.ignore = vec![Pattern::parse("/updated_at").unwrap(), Pattern::parse("/items/*/etag").unwrap()];
        o.unordered = vec![Pattern::parse("/items").unwrap()];
        let p = json!({"updated_at": 1, "items": [{"id": 1, "etag": "a"}, {"id": 2, "etag": "b"}]});
        let s = json!({"updated_at": 2, "items": [{"id": 2, "etag": "x"}, {"id": 1, "etag": "y"}]});
        assert!(diffs(p.clone(), s, &o).is_empty());
        let s2 = json!({"updated_at": 2, "items": [{"id": 2}, {"id": 3}]});
        assert_eq!(diffs(p, s2, &o).len(), 1);
    }

    #[test]
    fn ordered_arrays_report_positions() {
        let d = diffs(json!([1, 2, 3]), json!([1, 3, 2]), &opts());
        assert_eq!(d.iter().map(|d| d.0.as_str()).collect::<Vec<_>>(), vec!["/1", "/2"]);
    }

    #[test]
    fn status_headers_and_media_types() {
        let mut a = json_headers();
        a.insert("x-version", "1".parse().unwrap());
        a.insert("date", "today".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert(header::CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
        b.insert("set-cookie", "session=secret".parse().unwrap());
        let c = compare(&answer(200, &a, b"{}"), &answer(404, &b, b"{}"), &opts());
        let kinds: Vec<(DiffKind, &str)> = c.diffs.iter().map(|d| (d.kind, d.pointer.as_str())).collect();
        assert_eq!(
            kinds,
            vec![(DiffKind::Status, ""), (DiffKind::Header, "set-cookie"), (DiffKind::Header, "x-version")]
        );
        assert_eq!(c.diffs[1].shadow, json!(REDACTED), "cookies never reach a record");
    }

    #[test]
    fn gzip_and_brotli_are_decoded_before_comparing() {
        use std::io::Write;
        let body = br#"{"a":1}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(body).unwrap();
        let gz = gz.finish().unwrap();
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22).write_all(body).unwrap();
        let mut gz_headers = json_headers();
        gz_headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        let mut br_headers = json_headers();
        br_headers.insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        let plain = json_headers();
        let c = compare(&answer(200, &plain, body), &answer(200, &gz_headers, &gz), &opts());
        assert_eq!(c.diffs, vec![]);
        let c = compare(&answer(200, &br_headers, &br), &answer(200, &gz_headers, &gz), &opts());
        assert_eq!(c.diffs, vec![]);
    }

    #[test]
    fn text_and_binary_bodies() {
        let h = HeaderMap::new();
        let c = compare(&answer(200, &h, b"a\nb\nc\n"), &answer(200, &h, b"a\nB\nc\n"), &opts());
        let text = c.diffs[0].primary.as_str().unwrap();
        assert!(text.contains("-b") && text.contains("+B"), "{text}");
        let c = compare(&answer(200, &h, &[0, 159, 146, 150]), &answer(200, &h, &[0, 159, 146, 151]), &opts());
        assert_eq!(c.diffs[0].primary["bytes"], 4);
    }

    #[test]
    fn text_diffs_are_withheld_when_the_route_redacts() {
        let h = HeaderMap::new();
        let mut o = opts();
        o.redact = vec![Pattern::parse("/password").unwrap()];
        let c = compare(&answer(200, &h, b"password=hunter2\n"), &answer(200, &h, b"password=hunter3\n"), &o);
        let text = c.diffs[0].primary.to_string() + &c.diffs[0].shadow.to_string();
        assert!(!text.contains("hunter"), "{text}");
    }

    #[test]
    fn large_bodies_compare_by_hash() {
        let h = HeaderMap::new();
        let mut a = answer(200, &h, b"");
        a.body_complete = false;
        a.body_len = 10;
        let mut b = a.clone();
        assert!(compare(&a, &b, &opts()).diffs.is_empty());
        b.body_sha256[0] ^= 1;
        let c = compare(&a, &b, &opts());
        assert!(c.hashed_only);
        assert_eq!(c.diffs.len(), 1);
    }

    #[test]
    fn redaction_reaches_nested_values() {
        let mut o = opts();
        o.redact = vec![Pattern::parse("/password").unwrap(), Pattern::parse("/users/*/token").unwrap()];
        let d = diffs(json!({"password": "a", "users": [{"token": "t1"}]}), json!({"password": "b", "users": []}), &o);
        assert_eq!(d[0], ("/password".into(), json!(REDACTED), json!(REDACTED)));
        assert_eq!(d[1].1, json!({"token": REDACTED}));
    }

    #[test]
    fn endpoint_templates_fold_ids() {
        assert_eq!(endpoint_template("/api/users/42"), "/api/users/{id}");
        assert_eq!(endpoint_template("/api/tasks/7/comments"), "/api/tasks/{id}/comments");
        assert_eq!(endpoint_template("/x/123e4567-e89b-12d3-a456-426614174000"), "/x/{id}");
        assert_eq!(endpoint_template("/"), "/");
        assert_eq!(fold_indexes("/items/3/id"), "/items/*/id");
    }
}
