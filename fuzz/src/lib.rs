//! The fuzz checks, shared by the libFuzzer targets (`fuzz_targets/`) and
//! the plain random loop (`src/bin_loop.rs`).

use std::borrow::Cow;

use http::{HeaderMap, HeaderValue, Method};
use strangler::diff::{compare, sha256, Answer, CompareOptions, Pattern};
use strangler::path::normalize;
use strangler::router::{RouteKey, Router};

/// The config validator on arbitrary text (pure: no metrics, no shared
/// state): errors, never panics; an accepted config parses the same way
/// twice and its hash is stable.
pub fn check_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let source = strangler::config::Source { file: "fuzz.yaml", text };
    let parsed = source.parse();
    match strangler::table::validate("fuzz.yaml", text) {
        Ok(plan) => {
            assert!(parsed.is_ok(), "validate accepted what Source::parse refused");
            assert_eq!(plan.hash, strangler::table::content_hash(text));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// Splits an input into a path (first line), an optional host (second) and
/// route prefixes (the rest).
fn lines(data: &[u8]) -> Vec<Cow<'_, str>> {
    data.split(|&b| b == b'\n').map(String::from_utf8_lossy).collect()
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// The path normalizer and the router: never panic; normalize is idempotent,
/// its output is absolute with no dot segments or `//`; a match's prefix is
/// a whole-segment prefix of the path (`*` = one segment) and `prefix_len`
/// cuts the path at a segment boundary.
pub fn check_path_router(data: &[u8]) {
    let parts = lines(data);
    let Some(raw_path) = parts.first() else { return };
    let normalized = match normalize(raw_path) {
        Ok(n) => n.into_owned(),
        Err(_) => return,
    };
    let again = normalize(&normalized).unwrap_or_else(|e| panic!("{raw_path:?} -> {normalized:?} -> {e:?}"));
    assert_eq!(again, normalized, "normalize is not idempotent on {raw_path:?}");
    assert!(normalized.starts_with('/'), "{raw_path:?} -> {normalized:?}");
    assert!(!normalized.contains("//"), "{raw_path:?} -> {normalized:?}");
    for seg in normalized.split('/') {
        assert!(seg != "." && seg != "..", "{raw_path:?} -> {normalized:?} keeps a dot segment");
    }

    let host = parts.get(1).map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty());
    let mut entries = Vec::new();
    for (i, p) in parts.iter().skip(2).take(64).enumerate() {
        let Ok(prefix) = normalize(p) else { continue };
        let prefix = if prefix.len() > 1 { prefix.trim_end_matches('/').to_string() } else { prefix.into_owned() };
        let route_host = if i % 3 == 1 { host.clone() } else { None };
        let methods = if i % 4 == 2 { Some(vec![Method::GET]) } else { None };
        entries.push((RouteKey { prefix, host: route_host, methods }, i));
    }
    let Ok(router) = Router::new(entries) else { return };
    for method in [Method::GET, Method::POST] {
        let Some(m) = router.lookup(&normalized, host.as_deref(), &method) else { continue };
        let want = segments(&m.key.prefix);
        let got = segments(&normalized);
        assert!(want.len() <= got.len(), "{:?} matched {normalized:?}", m.key.prefix);
        for (w, g) in want.iter().zip(&got) {
            assert!(*w == "*" || w == g, "{:?} matched {normalized:?} (segment {w:?} vs {g:?})", m.key.prefix);
        }
        assert!(m.prefix_len <= normalized.len(), "prefix_len past the end");
        let rest = &normalized[m.prefix_len..];
        assert!(rest.is_empty() || rest.starts_with('/') || m.key.prefix == "/", "prefix_len cuts a segment: {rest:?}");
        if let Some(methods) = &m.key.methods {
            assert!(methods.contains(&method));
        }
        if let Some(h) = &m.key.host {
            assert_eq!(Some(h.as_str()), host.as_deref());
        }
    }
}

fn answer_headers(flags: u8) -> HeaderMap {
    let mut h = HeaderMap::new();
    let ct = match flags % 3 {
        0 => "application/json",
        1 => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    h.insert("content-type", HeaderValue::from_static(ct));
    if flags & 4 != 0 {
        h.insert("content-encoding", HeaderValue::from_static("gzip"));
    }
    if flags & 8 != 0 {
        h.insert("x-flag", HeaderValue::from_static("1"));
    }
    h
}

fn mk<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Answer<'a> {
    Answer { status: 200, headers, body, body_len: body.len() as u64, body_sha256: sha256(body), body_complete: true }
}

/// The JSON differ on arbitrary pairs: never panics; an answer compared with
/// itself has no differences.
pub fn check_diff(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (flags, rest) = (data[0], &data[1..]);
    let split = rest.iter().position(|&b| b == 0x1e).unwrap_or(rest.len());
    let (a, b) = (&rest[..split], rest.get(split + 1..).unwrap_or(&[]));
    let mut opts = CompareOptions { max_body: 1 << 16, ..CompareOptions::default() };
    if flags & 16 != 0 {
        opts.ignore = ["/id", "/items/*", "/**/nonce"].iter().filter_map(|p| Pattern::parse(p).ok()).collect();
    }
    if flags & 32 != 0 {
        opts.unordered = ["/items", "/"].iter().filter_map(|p| Pattern::parse(p).ok()).collect();
    }
    let (ha, hb) = (answer_headers(flags), answer_headers(flags >> 1));
    let (ha, hb) = (&ha, &hb);
    let (pa, pb) = (mk(ha, a), mk(hb, b));
    let _ = compare(&pa, &pb, &opts);
    let _ = compare(&pb, &pa, &opts);
    let same = compare(&pa, &pa, &opts);
    assert!(same.diffs.is_empty(), "compare(a, a) found differences: {:?}", same.diffs);
    let same = compare(&pb, &pb, &opts);
    assert!(same.diffs.is_empty(), "compare(b, b) found differences: {:?}", same.diffs);
}

/// The upstream answer codec (`wire::response`, `wire::body`) on arbitrary bytes: the first
/// byte picks GET or HEAD and where the body is cut in two.
pub fn check_h1_answer(data: &[u8]) {
    let Some((&control, answer)) = data.split_first() else { return };
    strangler::wire::fuzz::check_answer(answer, control & 1 == 1, usize::from(control >> 1));
}

/// The downstream request head parser (`wire::request`) on arbitrary bytes:
/// the first byte says where to cut the input for the prefix check.
pub fn check_h1_request(data: &[u8]) {
    let Some((&control, request)) = data.split_first() else { return };
    strangler::wire::fuzz::check_request(request, usize::from(control) * 4);
}
