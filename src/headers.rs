//! Header edits on the way through, all in place on the message's own map.
//!
//! Order matters: hop-by-hop headers (and every header the client named in
//! `Connection`) are removed before the proxy adds its own, so a client can
//! never make the proxy delete `X-Forwarded-For` or `X-Request-Id`.

use std::cell::RefCell;

use bytes::Bytes;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// W3C Trace Context: the span a request belongs to, `version-traceid-parentid-flags`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C Trace Context: vendors' state for the trace; meaningless without a valid `traceparent`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
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
    // One search for the request that is no upgrade (nearly all).
    has(headers, &header::UPGRADE)
        && !tokens(headers, &header::UPGRADE).any(|p| p.eq_ignore_ascii_case("h2c"))
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
/// `peer_ip` is the TCP peer's address, whoever the client behind it is
/// (see [`crate::forwarded`]): each hop appends the one it saw, so the chain
/// stays true. Several `X-Forwarded-For` field lines are one list (RFC 9110
/// §5.3): all of them are kept, in order, in the one line sent on.
pub fn add_forwarded(headers: &mut HeaderMap, peer_ip: &HeaderValue, proto: &'static str, host: Option<HeaderValue>) {
    let mut prior = headers.get_all(&X_FORWARDED_FOR).iter();
    let xff = match prior.next() {
        Some(first) => {
            let mut joined = Vec::with_capacity(first.len() + 2 + peer_ip.len());
            joined.extend_from_slice(first.as_bytes());
            for line in prior.chain(std::iter::once(peer_ip)) {
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(line.as_bytes());
            }
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| peer_ip.clone())
        }
        None => peer_ip.clone(),
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
    match values(headers, &X_REQUEST_ID).next() {
        Some(v) if is_sane_request_id(v) => v.clone(),
        _ => new_request_id(),
    }
}

/// Maps with at most this many fields are searched in order, not looked up.
const SCAN_AT_MOST: usize = 8;

/// Every value of `name` in `headers`, in order. Over the few fields most
/// messages carry, the names are compared in order: cheaper than the map's
/// lookup, which hashes the name (a custom one byte by byte; ~90
/// instructions even for a well-known one). Over more fields, looked up.
pub fn values<'h>(headers: &'h HeaderMap, name: &'h HeaderName) -> Values<'h> {
    if headers.len() > SCAN_AT_MOST {
        Values::Looked(headers.get_all(name).iter())
    } else {
        Values::Scanned(headers.iter(), name)
    }
}

/// Whether `headers` holds `name` (see [`values`]). The names alone are
/// searched: one entry per name, its values not visited.
pub fn has(headers: &HeaderMap, name: &HeaderName) -> bool {
    if headers.keys_len() > SCAN_AT_MOST {
        headers.contains_key(name)
    } else {
        headers.keys().any(|field| field == name)
    }
}

/// Drops `map`, skipping the work when it has never held anything: an
/// empty map as `HeaderMap::new()` makes it (which, its documentation
/// says, does not allocate) owns no memory, and dropping it still walks its
/// three empty collections, ~60 instructions. A request makes and discards
/// several: the empty map a new request or answer starts with, replaced by
/// the one read from the wire, and an answer's map left empty because our
/// client kept its head as it arrived.
pub fn discard(map: HeaderMap) {
    if map.capacity() == 0 {
        std::mem::forget(map);
    }
}

/// Puts `map` in `slot` (a request's or answer's map), discarding the empty
/// one it replaces (see [`discard`]).
pub fn put_map(slot: &mut HeaderMap, map: HeaderMap) {
    discard(std::mem::replace(slot, map));
}

/// The values [`values`] finds.
pub enum Values<'h> {
    Scanned(http::header::Iter<'h, HeaderValue>, &'h HeaderName),
    Looked(http::header::ValueIter<'h, HeaderValue>),
}

impl<'h> Iterator for Values<'h> {
    type Item = &'h HeaderValue;

    fn next(&mut self) -> Option<&'h HeaderValue> {
        match self {
            Values::Scanned(fields, name) => fields.find_map(|(field, value)| (field == *name).then_some(value)),
            Values::Looked(found) => found.next(),
        }
    }
}

fn is_sane_request_id(v: &HeaderValue) -> bool {
    (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// A process-unique id: the thread's random prefix and its count of ids, as
/// hex. Per thread, so that the workers share no counter (one they all
/// wrote on every request would be a cache line passed between cores); the
/// 64-bit prefixes, drawn per thread, keep the threads' ids apart.
///
/// Ids are written [`IDS_AHEAD`] at a time into one buffer, and each is a
/// slice of it: one allocation per batch rather than one per request, and
/// no byte check (hex is a valid header value; debug builds check anyway).
/// With each id counted up in place (not written out), a proxied GET takes
/// ~90 instructions for its id instead of ~210. A batch's buffer is freed
/// when the last of its ids is.
pub fn new_request_id() -> HeaderValue {
    thread_local! {
        // The next id (the prefix, then the count), and the ids written ahead.
        static NEXT: RefCell<([u8; ID_LEN], Bytes)> = RefCell::new((first_id(), Bytes::new()));
    }
    NEXT.with_borrow_mut(|(next, ahead)| {
        if ahead.is_empty() {
            let mut batch = Vec::with_capacity(IDS_AHEAD * ID_LEN);
            for _ in 0..IDS_AHEAD {
                batch.extend_from_slice(next);
                increment_hex(&mut next[16..]);
            }
            *ahead = Bytes::from(batch);
        }
        let id = ahead.split_to(ID_LEN);
        // SAFETY: not a memory-safety contract: the bytes must be valid in a
        // header value, and lower-case hex is.
        unsafe { HeaderValue::from_maybe_shared_unchecked(id) }
    })
}

/// A thread's first request id: its random prefix and a count of 0.
fn first_id() -> [u8; ID_LEN] {
    let mut id = [b'0'; ID_LEN];
    id[..16].copy_from_slice(&prefix_hex());
    id
}

/// Adds one to a number written in lower-case hex, in place (wrapping):
/// most often one digit changes, where writing the number out takes a step
/// per digit.
fn increment_hex(digits: &mut [u8]) {
    for digit in digits.iter_mut().rev() {
        match *digit {
            b'9' => *digit = b'a',
            b'f' => {
                *digit = b'0';
                continue;
            }
            _ => *digit += 1,
        }
        return;
    }
}

/// A request id's length: 16 hex digits of prefix, 16 of count.
const ID_LEN: usize = 32;
/// How many ids a thread writes at once ([`new_request_id`]).
const IDS_AHEAD: usize = 64;

/// A `traceparent` for a new span in the same trace as `parent` (W3C Trace
/// Context): the same trace id and flags (the sampled flag kept), a new
/// random parent id, version `00`. `None` when `parent` is not a valid
/// `traceparent`: lower-case hex fields, a trace id and a parent id that are
/// not all zeros, version `ff` refused, version `00` exactly 55 characters; a
/// later version is read by the `00` layout and must end there or at a `-`.
pub fn next_span(parent: &HeaderValue) -> Option<HeaderValue> {
    let b = parent.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (version, trace_id, parent_id, flags) = (&b[..2], &b[3..35], &b[36..52], &b[53..55]);
    let hex = |field: &[u8]| field.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zeros = |field: &[u8]| field.iter().all(|&c| c == b'0');
    let valid = [version, trace_id, parent_id, flags].into_iter().all(hex)
        && version != b"ff"
        && (if version == b"00" { b.len() == 55 } else { b.len() == 55 || b[55] == b'-' })
        && !zeros(trace_id)
        && !zeros(parent_id);
    if !valid {
        return None;
    }
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    out[3..35].copy_from_slice(trace_id);
    out[35] = b'-';
    loop {
        write_hex(&mut out[36..52], fastrand::u64(1..));
        if out[36..52] != *parent_id {
            break;
        }
    }
    out[52] = b'-';
    out[53..55].copy_from_slice(flags);
    Some(HeaderValue::from_bytes(&out).expect("hex is a valid header value"))
}

fn prefix_hex() -> [u8; 16] {
    let mut hex = [0u8; 16];
    write_hex(&mut hex, fastrand::u64(..));
    hex
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

    /// `discard` forgets only maps that own no memory: a map that held a
    /// field keeps its table when cleared, and is dropped as usual.
    #[test]
    fn only_a_map_that_never_allocated_counts_as_empty_for_discard() {
        assert_eq!(HeaderMap::new().capacity(), 0);
        assert_eq!(http::Request::new(()).headers().capacity(), 0);
        assert_eq!(HeaderMap::<HeaderValue>::default().capacity(), 0);
        let mut used = HeaderMap::new();
        used.insert(header::HOST, HeaderValue::from_static("a"));
        used.clear();
        assert!(used.capacity() > 0);
        assert!(HeaderMap::<HeaderValue>::with_capacity(1).capacity() > 0);
    }

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
    fn forwarded_for_keeps_every_field_line_in_order() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR.clone(), "10.0.0.1".parse().unwrap());
        h.append(X_FORWARDED_FOR.clone(), "10.0.0.2, 10.0.0.3".parse().unwrap());
        add_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), "http", None);
        let lines: Vec<_> = h.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(lines, ["10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]);
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
    fn new_request_ids_differ_within_a_thread_and_across_threads() {
        let ids = || (0..1000).map(|_| new_request_id()).collect::<Vec<_>>();
        let (mine, theirs) = (ids(), std::thread::spawn(ids).join().unwrap());
        let all: std::collections::HashSet<&HeaderValue> = mine.iter().chain(&theirs).collect();
        assert_eq!(all.len(), 2000);
        assert!(all.iter().all(|id| id.len() == 32 && id.as_bytes().iter().all(u8::is_ascii_hexdigit)));
        // Written ahead in batches, they still count up one by one, across batches.
        let count = |id: &HeaderValue| u64::from_str_radix(&id.to_str().unwrap()[16..], 16).unwrap();
        assert!(mine
            .windows(2)
            .all(|w| count(&w[1]) == count(&w[0]) + 1 && w[0].as_bytes()[..16] == w[1].as_bytes()[..16]));
    }

    #[test]
    fn hex_counts_up_by_one_and_wraps() {
        for n in [0u64, 9, 15, 16, 0x9f, 0xff, 0xabc, u64::MAX - 1, u64::MAX] {
            let (mut digits, mut expected) = ([0u8; 16], [0u8; 16]);
            write_hex(&mut digits, n);
            write_hex(&mut expected, n.wrapping_add(1));
            increment_hex(&mut digits);
            assert_eq!(digits, expected, "{n:#x}");
        }
    }

    #[test]
    fn fields_are_found_in_order_among_few_fields_and_among_many() {
        for fields in [0, 3, SCAN_AT_MOST, SCAN_AT_MOST + 1, 40] {
            let mut h = HeaderMap::new();
            for i in 0..fields {
                h.insert(HeaderName::from_bytes(format!("x-field-{i}").as_bytes()).unwrap(), HeaderValue::from(i));
            }
            assert_eq!(request_id(&h).len(), 32, "none given: a new one");
            h.append(X_REQUEST_ID.clone(), HeaderValue::from_static("first"));
            h.append(X_REQUEST_ID.clone(), HeaderValue::from_static("second"));
            assert_eq!(request_id(&h), "first", "{fields} other fields");
            let all: Vec<&HeaderValue> = values(&h, &X_REQUEST_ID).collect();
            assert_eq!(all, ["first", "second"], "{fields} other fields");
            assert!(has(&h, &X_REQUEST_ID) && !has(&h, &header::HOST), "{fields} other fields");
        }
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn span(value: &str) -> Option<String> {
        next_span(&HeaderValue::from_str(value).unwrap()).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn a_new_span_keeps_the_trace_id_and_the_flags_and_changes_the_parent_id() {
        let child = span(PARENT).expect("a valid traceparent");
        assert_eq!(child.len(), 55);
        assert_eq!(&child[..36], &PARENT[..36], "version and trace id");
        assert_ne!(&child[36..52], &PARENT[36..52], "a new parent id");
        assert!(child[36..52].bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(&child[36..52], "0000000000000000");
        assert_eq!(&child[52..], "-01", "sampled stays sampled");
        let unsampled = span(&PARENT.replace("-01", "-00")).unwrap();
        assert!(unsampled.ends_with("-00"), "not sampled stays not sampled");
        assert_ne!(span(PARENT), span(PARENT), "each copy its own span");
    }

    #[test]
    fn a_later_version_is_read_by_the_first_layout_and_answered_as_version_00() {
        let later = format!("cc{}-what-the-future-adds", &PARENT[2..]);
        let child = span(&later).expect("a later version is understood");
        assert_eq!(&child[..36], &PARENT[..36]);
        assert_eq!(child.len(), 55);
        assert!(span(&format!("cc{}x", &PARENT[2..])).is_none(), "a later version must end a field at a dash");
    }

    #[test]
    fn an_invalid_traceparent_gives_no_span() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(span(bad), None, "{bad:?}");
        }
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
