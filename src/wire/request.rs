//! Request heads: those downstream clients send (parsed, or refused), and
//! those our client writes upstream.
//!
//! A head is served by our own loop ([`Head::Inline`]) only when it is the
//! common request, one without a body or an upgrade: any `Transfer-Encoding`,
//! any `Content-Length` but a single `0`, `Expect`, `Upgrade`, CONNECT, or a
//! target that is not origin-form leaves the head in the buffer for hyper
//! ([`Head::HandOff`]). Framing that could be ambiguous is thus never decided
//! here.
//!
//! A head that cannot be parsed, one with a line that ends in a bare LF
//! (httparse takes it, as RFC 9112 §2.2 allows; a proxy is safer refusing
//! what the upstream behind it might read otherwise), or one whose target
//! carries a fragment (`#`, never part of a request target: RFC 9112 §3.2;
//! HAProxy refuses it too) is refused with a 400, a version other than 1.0/1.1 with a 505, a head over the size limit or with more than
//! [`MAX_HEADERS`] fields with a 431, and a target too long for a URI with a
//! 414 (see [`Refusal`]).

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use super::{Spans, HEADROOM, MAX_HEADERS};
use crate::headers::{add_forwarded, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID};

/// The longest target the `http` crate takes into a `Uri`.
pub const MAX_URI: usize = u16::MAX as usize - 1;

/// A request head, parsed. Not boxed: one per request, moved out at once,
/// where a box would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Head<B> {
    /// One our loop serves, split off the buffer.
    Inline(Parsed<B>),
    /// One for hyper; nothing was taken off the buffer.
    HandOff,
}

/// A request our loop serves, its header values sharing the head's memory.
pub struct Parsed<B> {
    /// Boxed: the request (320 bytes with its body) would otherwise be
    /// copied whole at each step out to the server's loop and into the
    /// proxy's future (`Result`, `Option`, `Head`, `Parsed`, each future).
    pub request: Box<Request<B>>,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
}

/// Why a head was refused; each becomes a JSON error and a closed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    /// A `#` in the target: a fragment is the client's business, never sent.
    Fragment,
    Version,
    TooLarge,
    TargetTooLong,
    /// Not the parser's: the head did not arrive within the header timeout.
    Timeout,
}

impl Refusal {
    /// The answer's status, its error code and its message.
    pub fn describe(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Refusal::Malformed => (StatusCode::BAD_REQUEST, "bad_request", "malformed request head"),
            Refusal::Fragment => {
                (StatusCode::BAD_REQUEST, "bad_request", "a request target must not carry a fragment ('#')")
            }
            Refusal::Version => {
                (StatusCode::HTTP_VERSION_NOT_SUPPORTED, "http_version_not_supported", "only HTTP/1.0 and 1.1 here")
            }
            Refusal::TooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large",
                "request head too large or too many header fields",
            ),
            Refusal::TargetTooLong => (StatusCode::URI_TOO_LONG, "uri_too_long", "request target too long"),
            Refusal::Timeout => {
                (StatusCode::REQUEST_TIMEOUT, "request_timeout", "request head not received within the header timeout")
            }
        }
    }
}

/// Parses the head at the front of `buf`: `None` until it is complete.
/// A request for our loop is split off the buffer, its header values
/// sharing that memory, with the body `empty_body` makes; one for hyper is
/// left in place.
pub fn parse<B>(
    buf: &mut BytesMut,
    max_head: usize,
    empty_body: impl FnOnce() -> B,
) -> Result<Option<Head<B>>, Refusal> {
    let mut spans = Spans::default();
    let (len, method, target, version) = {
        // Uninitialized: filling 100 empty slots per request shows in profiles.
        let mut slots = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut []);
        let len =
            match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, buf, &mut slots) {
                Ok(httparse::Status::Complete(len)) if len <= max_head => len,
                Ok(httparse::Status::Partial) if buf.len() < max_head => return Ok(None),
                Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooLarge),
                Err(httparse::Error::Version) if names_a_version(buf) => return Err(Refusal::Version),
                Err(_) => return Err(Refusal::Malformed),
            };
        let (method, path) = (parsed.method.unwrap_or_default(), parsed.path.unwrap_or_default());
        if !lines_end_in_crlf(&buf[..len], parsed.headers) {
            return Err(Refusal::Malformed);
        }
        if !is_inline(method, path, parsed.headers) {
            // hyper's URI parser would drop a fragment without a word.
            return if path.contains('#') { Err(Refusal::Fragment) } else { Ok(Some(Head::HandOff)) };
        }
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| Refusal::Malformed)?;
        let start = path.as_ptr() as usize - buf.as_ptr() as usize;
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        spans.record(buf, parsed.headers);
        (len, method, start..start + path.len(), version)
    };
    let head = buf.split_to(len).freeze();
    let (too_long, target_len) = (target.len() >= MAX_URI, target.len());
    let uri = Uri::from_maybe_shared(head.slice(target)).map_err(|_| {
        if too_long {
            Refusal::TargetTooLong
        } else {
            Refusal::Malformed
        }
    })?;
    // The `http` crate cuts a fragment off without a word: the URI is then
    // shorter than the target (a length compared, not the target scanned).
    if uri.path_and_query().map_or(0, |pq| pq.as_str().len()) != target_len {
        return Err(Refusal::Fragment);
    }
    let (headers, fields) = super::header_map(&head, spans.as_slice(), HEADROOM).ok_or(Refusal::Malformed)?;
    let keep_alive = fields.keeps_alive(version);
    let mut request = Box::new(Request::new(empty_body()));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    crate::headers::put_map(request.headers_mut(), headers);
    Ok(Some(Head::Inline(Parsed { request, keep_alive })))
}

/// Whether every line of a parsed `head` ends in CRLF, not a bare LF. Every
/// LF of a head httparse took ends a line: the request line's and each
/// header line's sit just before the next header's name, the last header
/// line's and the empty line's at the end. A few bytes are looked at, not
/// the whole head.
fn lines_end_in_crlf(head: &[u8], fields: &[httparse::Header<'_>]) -> bool {
    let base = head.as_ptr() as usize;
    head.ends_with(b"\r\n\r\n") && fields.iter().all(|f| head.get(f.name.as_ptr() as usize - base - 2) == Some(&b'\r'))
}

/// Whether the request line ends in an `HTTP/` version (one httparse does
/// not take), rather than in garbage.
fn names_a_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let version = line.trim_ascii().rsplit(|&b| b == b' ').next().unwrap_or_default();
    version.starts_with(b"HTTP/")
}

/// Whether our loop serves the request: an origin-form target, not
/// CONNECT, no body (no `Transfer-Encoding`, no `Content-Length` but one
/// `0`), and no `Upgrade` or `Expect`.
fn is_inline(method: &str, path: &str, headers: &[httparse::Header<'_>]) -> bool {
    if method == "CONNECT" || !path.starts_with('/') {
        return false;
    }
    let mut lengths = 0;
    for field in headers {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            if lengths > 1 || field.value != b"0" {
                return false;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return false;
        }
    }
    true
}

/// The headers the proxy adds to a request on its way upstream:
/// `X-Forwarded-For` (the peer appended to the client's chain, all its lines
/// joined into one), `X-Forwarded-Proto` and `X-Forwarded-Host` (set, or
/// removed when there is no host) and `X-Request-Id` (set). [`encode_head`]
/// writes them straight into the head, in place of the request's own of
/// those names, so that the common request never hashes these custom names
/// into its map (four inserts and a lookup were ~5% of a proxied GET's
/// instructions); [`Added::insert_into`] puts them into the map for whoever
/// encodes it otherwise (hyper, a mirrored copy).
#[derive(Debug, Clone, Copy)]
pub struct Added<'a> {
    /// The TCP peer's address, appended to `X-Forwarded-For`.
    pub peer_ip: &'a HeaderValue,
    /// `http` or `https`.
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
    pub request_id: &'a HeaderValue,
}

impl Added<'_> {
    /// The same headers, put into `headers`.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        add_forwarded(headers, self.peer_ip, self.proto, self.host.cloned());
        headers.insert(X_REQUEST_ID.clone(), self.request_id.clone());
    }

    /// Whether `name` is one the proxy sets (the request's own is not sent).
    fn replaces(name: &HeaderName) -> bool {
        // Custom names all: a standard one fails the first comparison at once.
        name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST || name == X_REQUEST_ID
    }

    /// Writes the headers, `X-Forwarded-For` after the client's chain.
    fn encode(&self, out: &mut Vec<u8>, headers: &HeaderMap, has_chain: bool) {
        out.extend_from_slice(b"x-forwarded-for: ");
        if has_chain {
            for line in headers.get_all(&X_FORWARDED_FOR) {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(self.peer_ip.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(self.proto.as_bytes());
        if let Some(host) = self.host {
            out.extend_from_slice(b"\r\nx-forwarded-host: ");
            out.extend_from_slice(host.as_bytes());
        }
        out.extend_from_slice(b"\r\nx-request-id: ");
        out.extend_from_slice(self.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes a bodiless request's line and headers for an upstream, in
/// origin form, with the headers the proxy adds (`added`). `Host` is
/// already in the map; a request whose method normally carries a body says
/// so with `Content-Length: 0`.
pub fn encode_head<B>(out: &mut Vec<u8>, request: &Request<B>, added: Option<&Added<'_>>) {
    out.clear();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(if target.is_empty() { b"/" } else { target.as_bytes() });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_chain = false;
    for (name, value) in request.headers() {
        if added.is_some() && Added::replaces(name) {
            has_chain |= name == X_FORWARDED_FOR;
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(added) = added {
        added.encode(out, request.headers(), has_chain);
    }
    if expects_body(request.method()) && !request.headers().contains_key(header::CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn expects_body(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Option<Head<()>>, Refusal> {
        parse(&mut BytesMut::from(text), 64 * 1024, || ())
    }

    fn inline(text: &str) -> Parsed<()> {
        match parse_text(text) {
            Ok(Some(Head::Inline(parsed))) => parsed,
            Ok(Some(Head::HandOff)) => panic!("handed to hyper: {text:?}"),
            other => panic!("not parsed: {text:?}: {:?}", other.map(|h| h.is_some())),
        }
    }

    fn goes_to_hyper(text: &str) -> bool {
        matches!(parse_text(text), Ok(Some(Head::HandOff)))
    }

    #[test]
    fn a_bodiless_request_is_parsed_with_values_in_the_buffer() {
        let mut buf = BytesMut::from("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\nGET /next");
        let Ok(Some(Head::Inline(parsed))) = parse(&mut buf, 1024, || ()) else { panic!("not parsed") };
        assert_eq!(parsed.request.method(), Method::GET);
        assert_eq!(parsed.request.uri(), "/a?b=1");
        assert_eq!(parsed.request.headers()["host"], "x");
        assert_eq!(parsed.request.headers()["x-a"], "1");
        assert!(parsed.keep_alive);
        assert_eq!(&buf[..], b"GET /next", "a pipelined request stays in the buffer");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        assert!(!inline("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!inline("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(inline("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert_eq!(inline("GET / HTTP/1.0\r\n\r\n").request.version(), Version::HTTP_10);
    }

    #[test]
    fn bodies_upgrades_and_unusual_targets_go_to_hyper() {
        assert!(goes_to_hyper("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"));
        assert!(goes_to_hyper("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(goes_to_hyper("GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"));
        assert!(goes_to_hyper("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"));
        assert!(goes_to_hyper("PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"));
        assert!(goes_to_hyper("CONNECT x:443 HTTP/1.1\r\n\r\n"));
        assert!(goes_to_hyper("GET http://x/ HTTP/1.1\r\n\r\n"));
        assert!(goes_to_hyper("OPTIONS * HTTP/1.1\r\n\r\n"));
        assert_eq!(inline("DELETE /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n").request.method(), Method::DELETE);
    }

    #[test]
    fn bad_heads_are_refused_with_the_right_reason() {
        assert_eq!(parse_text("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n").err(), Some(Refusal::Malformed));
        assert_eq!(parse_text("GET / HTTP/1.2\r\n\r\n").err(), Some(Refusal::Version));
        assert_eq!(parse_text("NOT A REQUEST\r\n\r\n").err(), Some(Refusal::Malformed));
        assert_eq!(parse_text("GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n").err(), Some(Refusal::Malformed));
        assert_eq!(parse_text("GET /a#b HTTP/1.1\r\n\r\n").err(), Some(Refusal::Fragment));
        for target in ["/", "/a?", "/a?b=%23&c", "/a;b/%23?x", "/{\"q\"}"] {
            assert_eq!(inline(&format!("GET {target} HTTP/1.1\r\n\r\n")).request.uri(), target);
        }
        for bare_lf in [
            "GET / HTTP/1.1\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\n",
            "GET / HTTP/1.1\n\n",
            "POST / HTTP/1.1\nContent-Length: 1\n\nx",
        ] {
            assert_eq!(parse_text(bare_lf).err(), Some(Refusal::Malformed), "{bare_lf:?}");
        }
        assert_eq!(parse_text("GET /a?q=1# HTTP/1.1\r\n\r\n").err(), Some(Refusal::Fragment));
        assert_eq!(parse_text("POST /a#b HTTP/1.1\r\nContent-Length: 1\r\n\r\nx").err(), Some(Refusal::Fragment));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(parse_text(&format!("GET / HTTP/1.1\r\n{many}\r\n")).err(), Some(Refusal::TooLarge));
        let mut big = BytesMut::from(format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000)).as_str());
        assert_eq!(parse(&mut big, 1024, || ()).err(), Some(Refusal::TooLarge));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI));
        assert_eq!(parse(&mut BytesMut::from(long.as_str()), 1 << 20, || ()).err(), Some(Refusal::TargetTooLong));
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        for text in ["", "GE", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: x\r\n"] {
            assert!(matches!(parse_text(text), Ok(None)), "{text:?}");
        }
    }

    #[test]
    fn request_heads_are_origin_form_with_a_length_only_where_a_body_is_expected() {
        let mut out = Vec::new();
        let mut request = http::Request::new(());
        *request.uri_mut() = http::Uri::from_static("/a?b=1");
        request.headers_mut().insert(header::HOST, http::HeaderValue::from_static("up"));
        encode_head(&mut out, &request, None);
        assert_eq!(out, b"GET /a?b=1 HTTP/1.1\r\nhost: up\r\n\r\n");
        *request.method_mut() = Method::POST;
        encode_head(&mut out, &request, None);
        assert_eq!(out, b"POST /a?b=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 0\r\n\r\n");
    }

    /// The head `encode_head` writes with `added`, and the one hyper would
    /// be given: the same request with the headers inserted into its map.
    fn both_ways(headers: &[(&'static str, &'static str)], added: &Added<'_>) -> (String, HeaderMap) {
        let mut request = http::Request::new(());
        *request.uri_mut() = http::Uri::from_static("/a");
        for (name, value) in headers {
            request.headers_mut().append(*name, HeaderValue::from_static(value));
        }
        let mut out = Vec::new();
        encode_head(&mut out, &request, Some(added));
        let mut inserted = request.headers().clone();
        added.insert_into(&mut inserted);
        (String::from_utf8(out).unwrap(), inserted)
    }

    /// The header fields of a written head, by name (lower case), values in order.
    fn fields(head: &str) -> Vec<(String, String)> {
        let mut fields: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(": "))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
            .collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        fields
    }

    #[test]
    fn added_headers_are_written_as_inserting_them_would_send_them() {
        let (peer, id, host) =
            (HeaderValue::from_static("10.0.0.7"), HeaderValue::from_static("req-9"), HeaderValue::from_static("shop"));
        let added = Added { peer_ip: &peer, proto: "https", host: Some(&host), request_id: &id };
        let client = [
            ("host", "shop"),
            ("x-forwarded-for", "198.51.100.1"),
            ("accept", "*/*"),
            ("x-forwarded-for", "203.0.113.5, 192.0.2.8"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil"),
            ("x-request-id", "req-9"),
        ];
        let (head, inserted) = both_ways(&client, &added);
        let expected: Vec<(String, String)> = {
            let mut v: Vec<(String, String)> =
                inserted.iter().map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap().to_string())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        assert_eq!(fields(&head), expected, "{head}");
        assert!(head.contains("x-forwarded-for: 198.51.100.1, 203.0.113.5, 192.0.2.8, 10.0.0.7\r\n"), "{head}");
        assert_eq!(head.matches("x-forwarded-proto").count(), 1, "the client's is not sent: {head}");
        let no_host = Added { host: None, ..added };
        let (head, inserted) = both_ways(&[("x-forwarded-host", "evil"), ("x-a", "1")], &no_host);
        assert!(!head.contains("x-forwarded-host") && !inserted.contains_key("x-forwarded-host"), "{head}");
        assert!(head.contains("x-forwarded-for: 10.0.0.7\r\n") && head.contains("x-a: 1\r\n"), "{head}");
    }
}
