//! Header edits on the way through, all in place on the message's own map.
//!
//! Order matters: hop-by-hop headers (and every header the client named in
//! `Connection`) are removed before the proxy adds its own, so a client can
//! never make the proxy delete `X-Forwarded-For` or `X-Request-Id`.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection and never cross the proxy (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
];

/// Headers a `Connection` list may not remove: framing and routing depend on them.
fn protected(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH
}

/// Removes hop-by-hop headers. `Upgrade` is kept only when `keep_upgrade`
/// (the caller then sets `Connection: upgrade` again itself).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none: one pass over the names (cheap comparisons
    // of well-known headers) spares a hashed lookup per hop-by-hop name.
    let any = headers.keys().any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(&name));
    if !any {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = tokens(headers, &header::CONNECTION)
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .filter(|name| !(protected(name) || keep_upgrade && name == header::UPGRADE))
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

/// True for an HTTP/1.1 protocol-upgrade request (WebSocket and the like).
/// `h2c` is never tunnelled: a raw HTTP/2 connection to an upstream would
/// bypass per-request routing, method limits and path normalization.
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    let h2c = tokens(headers, &header::UPGRADE).any(|p| p.eq_ignore_ascii_case("h2c"));
    !h2c && headers.contains_key(header::UPGRADE)
        && tokens(headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The comma-separated tokens of every value of a list header, trimmed.
fn tokens<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h str> {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// Marks a message as an upgrade again after the hop-by-hop strip.
pub fn set_upgrade(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Adds the `X-Forwarded-*` headers: `For` appended, `Proto` and `Host` set.
pub fn add_forwarded(headers: &mut HeaderMap, client_ip: &HeaderValue, proto: &'static str, host: Option<HeaderValue>) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(prior) => {
            let mut joined = Vec::with_capacity(prior.len() + 2 + client_ip.len());
            joined.extend_from_slice(prior.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone())
        }
        None => client_ip.clone(),
    };
    headers.insert(X_FORWARDED_FOR.clone(), xff);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// The request id: the client's when it is sane, else a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if is_sane_request_id(v) => v.clone(),
        _ => new_request_id(),
    }
}

fn is_sane_request_id(v: &HeaderValue) -> bool {
    (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// A process-unique id: a random per-process prefix and a counter, as hex.
pub fn new_request_id() -> HeaderValue {
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| fastrand::u64(..));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 32];
    write_hex(&mut buf[..16], prefix);
    write_hex(&mut buf[16..], n);
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

fn write_hex(out: &mut [u8], mut v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_headers_go_but_not_ours() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, x-forwarded-for, x-secret, host".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::HOST, "a".parse().unwrap());
        h.insert(X_FORWARDED_FOR.clone(), "10.0.0.1".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        add_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), "http", None);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::TE).is_none());
        assert_eq!(h.get(header::HOST).unwrap(), "a");
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "127.0.0.1");
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR.clone(), "10.0.0.1".parse().unwrap());
        add_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), "http", Some(HeaderValue::from_static("h")));
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1, 127.0.0.1");
        assert_eq!(h.get(&X_FORWARDED_HOST).unwrap(), "h");
    }

    #[test]
    fn request_ids_are_unique_and_kept() {
        assert_ne!(new_request_id(), new_request_id());
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID.clone(), "abc-1".parse().unwrap());
        assert_eq!(request_id(&h), "abc-1");
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_untouched() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "a".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
        h.insert(KEEP_ALIVE.clone(), "timeout=5".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "keep-alive goes");
    }

    #[test]
    fn h2c_is_not_an_upgrade_we_tunnel() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade, HTTP2-Settings".parse().unwrap());
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        assert!(!is_upgrade_request(&h));
    }

    #[test]
    fn upgrade_detection() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert!(h.get(header::CONNECTION).is_none());
    }
}
