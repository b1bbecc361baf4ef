//! Answer heads: those upstreams send (parsed, and their body's framing
//! decided), and those our server loop writes downstream.
//!
//! Upstream answers are parsed strictly, as nginx does, because framing is
//! where response splitting and desync live: both `Content-Length` and
//! `Transfer-Encoding`, more than one `Content-Length`, a transfer coding
//! other than `chunked`, obsolete line folding, or a head over [`MAX_HEAD`]
//! is an error (the client gets a 502 and the upstream connection is closed).
//! The body itself is decoded by [`super::body::Decoder`].

use std::io::Write as _;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use super::body::{Chunked, Decoder};
use super::{parse_length, Fields, Invalid, Kind, Spans, HEADROOM, MAX_HEADERS};

/// The largest answer head accepted (nginx's default is 4–8 KiB).
pub const MAX_HEAD: usize = 64 * 1024;

/// An answer's head as it arrived: its bytes, split off the read buffer,
/// with where each field sits kept by the caller ([`Spans`]). No header map
/// is built here: most answers go on to the client with their fields
/// copied from these bytes as they are ([`encode_head`]), and building and
/// dropping a map cost ~1.4k instructions of a proxied GET's ~18k.
/// [`Head::header_map`] builds one for those who need it.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub bytes: Bytes,
    /// What the fields say about framing.
    pub fields: Fields,
}

impl Head {
    /// The head's fields as a map, its values sharing the head's memory;
    /// `spans` are those its parse recorded.
    pub fn header_map(bytes: &Bytes, spans: &Spans) -> HeaderMap {
        // Room for the headers the proxy adds; hyper then parses the client's
        // next request on this connection into this same map, room included.
        let (headers, _) = super::header_map(bytes, spans.as_slice(), HEADROOM)
            .expect("httparse and the http crate accept the same field names");
        headers
    }
}

/// Parses heads off the front of `buf` until a final one (not 1xx, or
/// 101): interim answers (100 Continue, 103 Early Hints) are skipped.
/// `None` until a final head is complete; an error for a head longer than
/// [`MAX_HEAD`], whether it is still incomplete at that size or completes
/// past it in the read that brought its end. Where its fields sit goes
/// into `spans`.
pub fn parse_final_head(buf: &mut BytesMut, spans: &mut Spans) -> Result<Option<Head>, Invalid> {
    while let Some(head) = parse_head(buf, spans)? {
        if !head.status.is_informational() || head.status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Some(head));
        }
    }
    if buf.len() >= MAX_HEAD {
        return Err(Invalid("head too large"));
    }
    Ok(None)
}

/// Parses one head off the front of `buf`; `None` until it is complete.
fn parse_head(buf: &mut BytesMut, spans: &mut Spans) -> Result<Option<Head>, Invalid> {
    let (len, status, version) = {
        // Uninitialized: filling 100 empty slots per answer showed in profiles.
        let mut slots = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len =
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
                Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Err(Invalid("head too large")),
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(Invalid("too many header fields")),
                Err(_) => return Err(Invalid("malformed head")),
            };
        let code = parsed.code.unwrap_or_default();
        let status = StatusCode::from_u16(code).map_err(|_| Invalid("invalid status code"))?;
        let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
        spans.record(buf, parsed.headers);
        (len, status, version)
    };
    let bytes = buf.split_to(len).freeze();
    let fields = super::raw_fields(&bytes, spans.as_slice());
    Ok(Some(Head { status, version, bytes, fields }))
}

/// How an answer's body is delimited (RFC 9112 §6.3), and whether the
/// connection can carry another request after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub decoder: Decoder,
    pub keep_alive: bool,
}

/// The framing of an answer to a `method` request with a head whose fields
/// say `fields`; an error for framing that is ambiguous or not ours to
/// decode.
pub fn framing(method: &Method, status: StatusCode, version: Version, fields: &Fields) -> Result<Framing, Invalid> {
    let keep_alive = fields.keeps_alive(version) && status != StatusCode::SWITCHING_PROTOCOLS;
    if *method == Method::HEAD {
        // A broken upstream may send the body it announced (or that the
        // GET would have had: no length says "until close") anyway, late
        // enough to be read as the answer to the next request on this
        // connection, another user's: only `Content-Length: 0` is reused.
        let says_empty = !fields.announces_body() && fields.lengths > 0;
        return Ok(Framing { decoder: Decoder::Done, keep_alive: keep_alive && says_empty });
    }
    let no_body = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    if no_body {
        // The same late body after a 204 that carries any length or coding
        // (RFC 9110 forbids both there), or a 304 with a coding (its
        // Content-Length, the representation's, is legal and is left to the
        // idle-readiness check at checkout).
        let suspect = fields.codings > 0 || (status == StatusCode::NO_CONTENT && fields.lengths > 0);
        return Ok(Framing { decoder: Decoder::Done, keep_alive: keep_alive && !suspect });
    }
    if fields.lengths > 1 {
        return Err(Invalid("more than one Content-Length"));
    }
    if fields.codings > 0 {
        if fields.lengths > 0 {
            return Err(Invalid("both Content-Length and Transfer-Encoding"));
        }
        if fields.codings > 1 || !fields.chunked {
            return Err(Invalid("a transfer coding other than chunked"));
        }
        return Ok(Framing { decoder: Decoder::Chunked(Chunked::default()), keep_alive });
    }
    match (fields.lengths, fields.length) {
        (0, _) => Ok(Framing { decoder: Decoder::UntilClose, keep_alive: false }),
        (_, Some(0)) => Ok(Framing { decoder: Decoder::Done, keep_alive }),
        (_, Some(n)) => Ok(Framing { decoder: Decoder::Length(n), keep_alive }),
        (_, None) => Err(Invalid("invalid Content-Length")),
    }
}

/// The downstream request an answer is written for: what it decides about
/// the answer's head.
#[derive(Debug, Clone, Copy)]
pub struct Answering {
    /// A HEAD request: the head says what the body would be, and none follows.
    pub is_head: bool,
    pub version: Version,
    /// Whether the connection may stay open after the answer.
    pub keep_alive: bool,
}

impl Answering {
    /// Whether an answer with `status` sends a body (not to HEAD, not 1xx,
    /// 204 or 304).
    pub fn carries_body(&self, status: StatusCode) -> bool {
        !(self.is_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED)
    }
}

/// How the body of an answer written downstream is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimited {
    /// HEAD, 1xx, 204, 304: a head alone.
    HeadOnly,
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client and a body of unknown length: ends with the connection.
    UntilClose,
}

/// The fields the proxy adds to an answer's head (the request id, the
/// upstream's name), each when there is one.
pub type AddedFields<'a> = [Option<(&'a HeaderName, &'a HeaderValue)>; 2];

/// What [`encode_head`] wrote about the body and the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedHead {
    pub body: Delimited,
    /// The connection stays open after the body (the head says so).
    pub keep_alive: bool,
}

/// Writes an answer's head for a downstream client into `out` (cleared
/// first), with `fields` (name and value bytes; an upstream's as they
/// arrived, or a map's). Hop-by-hop fields are dropped (finish has taken
/// those a `Connection` names out of a map; a head passed on as it arrived
/// names none), and the framing fields are written afresh: the answer's
/// `Content-Length` when it is a valid one (else `exact_length`, the body's
/// known size), otherwise chunked on HTTP/1.1 or until close on HTTP/1.0;
/// `Connection` from `to`; `Date` when missing. `added` (the request id,
/// the upstream's name) go last, in place of any field of the same name.
pub fn encode_head<'f>(
    out: &mut Vec<u8>,
    status: StatusCode,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])>,
    exact_length: Option<u64>,
    to: Answering,
    added: AddedFields<'_>,
) -> EncodedHead {
    let added = added.iter().flatten();
    let bodiless = to.is_head || status.is_informational() || status == StatusCode::NOT_MODIFIED;
    let no_length = status.is_informational() || status == StatusCode::NO_CONTENT;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let (mut length, mut seen_length) = (None, false);
    let mut has_date = false;
    for (name, value) in fields {
        match Kind::of_bytes(name) {
            // Only the first: a HEAD or 304 answer may carry more (its
            // framing is not decoded), and the client gets one.
            Kind::ContentLength if seen_length => continue,
            Kind::ContentLength => {
                seen_length = true;
                length = parse_length(value);
                if no_length || length.is_none() {
                    continue;
                }
            }
            Kind::TransferEncoding | Kind::Connection | Kind::HopByHop => continue,
            Kind::Date => has_date = true,
            Kind::Other if added.clone().any(|(added, _)| name.eq_ignore_ascii_case(added.as_str().as_bytes())) => {
                continue
            }
            Kind::Other => {}
        }
        put_field(out, name, value);
    }
    for (name, value) in added {
        put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let body = if bodiless || no_length {
        Delimited::HeadOnly
    } else if let Some(n) = length {
        Delimited::Length(n)
    } else if let Some(n) = exact_length {
        let _ = write!(out, "content-length: {n}\r\n");
        Delimited::Length(n)
    } else if to.version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Delimited::Chunked
    } else {
        Delimited::UntilClose
    };
    if !has_date {
        with_date(|date| put_field(out, b"date", date));
    }
    let keep_alive = to.keep_alive && body != Delimited::UntilClose;
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if to.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    EncodedHead { body, keep_alive }
}

/// A map's fields as [`encode_head`] takes them.
pub fn map_fields(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers.iter().map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Calls `f` with the current `Date` value, formatted at most once a second
/// per thread, from the coarse clock (a few ms late at most, see
/// [`crate::clock`]).
fn with_date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
    }
    let second = crate::clock::unix_ms() / 1000;
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *at = second;
            let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(second);
            *text = httpdate::fmt_http_date(now).into_bytes();
        }
        f(text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        head_and_map(text).0
    }

    /// The parsed head of `text`, and its map.
    fn head_and_map(text: &str) -> (Head, HeaderMap) {
        let (mut buf, mut spans) = (BytesMut::from(text.as_bytes()), Spans::default());
        let head = parse_head(&mut buf, &mut spans).unwrap().expect("complete");
        let map = Head::header_map(&head.bytes, &spans);
        (head, map)
    }

    fn framing_of(text: &str) -> Result<Framing, Invalid> {
        let h = head(text);
        framing(&Method::GET, h.status, h.version, &h.fields)
    }

    #[test]
    fn a_head_shares_the_buffer_and_leaves_the_body_in_it() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\nok"[..]);
        let mut spans = Spans::default();
        let h = parse_head(&mut buf, &mut spans).unwrap().unwrap();
        assert_eq!(h.status, 200);
        let map = Head::header_map(&h.bytes, &spans);
        assert_eq!(map.get_all("x-a").iter().count(), 2);
        let value = map.get("x-a").unwrap().as_bytes().as_ptr() as usize;
        assert!((h.bytes.as_ptr() as usize..h.bytes.as_ptr() as usize + h.bytes.len()).contains(&value), "shared");
        assert_eq!(&buf[..], b"ok");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut partial, &mut spans).unwrap().is_none());
    }

    #[test]
    fn framing_facts_are_taken_as_the_map_is_built_and_match_the_map() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\nConnection: Keep-Alive , close\r\nX: 1\r\n\r\n");
        let expected = Fields {
            lengths: 1,
            length: Some(5),
            length_not_zero: true,
            close: true,
            keep_alive: true,
            ..Fields::default()
        };
        assert_eq!(h.fields, expected);
        for text in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding:  Chunked \r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
        ] {
            let (h, map) = head_and_map(text);
            assert_eq!(Fields::of(&map), h.fields, "{text}");
        }
        let two = head("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: x\r\n\r\n").fields;
        assert_eq!((two.lengths, two.length, two.length_not_zero), (2, Some(0), true));
        let codings = head("HTTP/1.1 200 OK\r\nTransfer-Encoding:  Chunked \r\nTransfer-Encoding: gzip\r\n\r\n").fields;
        assert_eq!((codings.codings, codings.chunked), (2, true));
    }

    #[test]
    fn interim_answers_are_skipped_and_an_endless_head_is_refused() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"[..]);
        let mut spans = Spans::default();
        assert_eq!(parse_final_head(&mut buf, &mut spans).unwrap().unwrap().status, 204);
        let mut endless = BytesMut::from(format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD)).as_str());
        assert_eq!(parse_final_head(&mut endless, &mut spans).err(), Some(Invalid("head too large")));
    }

    /// An answer head of exactly `len` bytes, with a body behind it.
    fn head_of_len(len: usize) -> Vec<u8> {
        let frame = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: \r\n\r\n".len();
        format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: {}\r\n\r\nok", "a".repeat(len - frame)).into_bytes()
    }

    /// Feeds `bytes` in reads of `read` bytes, parsing after each as the
    /// client does: the head's status, or the error.
    fn parse_in_reads(bytes: &[u8], read: usize) -> Result<u16, Invalid> {
        let mut buf = BytesMut::new();
        for piece in bytes.chunks(read) {
            buf.extend_from_slice(piece);
            if let Some(head) = parse_final_head(&mut buf, &mut Spans::default())? {
                assert!(b"ok".starts_with(&buf[..]), "the body is left in the buffer");
                return Ok(head.status.as_u16());
            }
        }
        panic!("the head never completed");
    }

    #[test]
    fn the_head_limit_holds_to_the_byte_in_one_read_or_many() {
        let (at_limit, over) = (head_of_len(MAX_HEAD), head_of_len(MAX_HEAD + 1));
        assert_eq!(at_limit.len(), MAX_HEAD + 2);
        // Reads of 8 KiB end exactly at the limit or with the head's last
        // bytes arriving in a read that crosses it.
        for read in [at_limit.len(), 8 * 1024, 8 * 1024 + 3, 1000] {
            assert_eq!(parse_in_reads(&at_limit, read), Ok(200), "reads of {read}");
            assert_eq!(parse_in_reads(&over, read), Err(Invalid("head too large")), "reads of {read}");
        }
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(framing_of(text).is_err(), "{text:?}");
        }
        // (A bare LF ending a head line is accepted, as RFC 9112 §2.2
        // allows: the head is written afresh to the client, so it cannot
        // split anything.)
        for text in
            ["HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 200 OK\r\nX\0: a\r\n\r\n"]
        {
            let mut buf = BytesMut::from(text.as_bytes());
            assert!(parse_head(&mut buf, &mut Spans::default()).is_err(), "{text:?}");
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let length = framing_of("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(length, Framing { decoder: Decoder::Length(5), keep_alive: true });
        let close = framing_of("HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(close, Framing { decoder: Decoder::UntilClose, keep_alive: false });
        let told = framing_of("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(!told.keep_alive);
        let old = framing_of("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(!old.keep_alive);
        let head_answer = |text: &str| {
            let h = head(text);
            framing(&Method::HEAD, h.status, h.version, &h.fields).unwrap()
        };
        let announced = head_answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(announced, Framing { decoder: Decoder::Done, keep_alive: false }, "a late body may follow");
        assert!(!head_answer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").keep_alive);
        assert!(head_answer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(!head_answer("HTTP/1.1 404 Not Found\r\n\r\n").keep_alive, "the GET's body would run until close");
        let not_modified = framing_of("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").unwrap();
        assert_eq!(not_modified, Framing { decoder: Decoder::Done, keep_alive: true }, "a 304's length is legal");
        for suspect in [
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let f = framing_of(suspect).unwrap();
            assert_eq!(f, Framing { decoder: Decoder::Done, keep_alive: false }, "a late body may follow {suspect:?}");
        }
        assert!(framing_of("HTTP/1.1 204 No Content\r\n\r\n").unwrap().keep_alive);
        let upgrade = framing_of("HTTP/1.1 101 Switching Protocols\r\n\r\n").unwrap();
        assert!(!upgrade.keep_alive);
    }

    /// The head `encode_head` writes for an upstream's answer with
    /// `fields`, without the `date` line it adds: the same from the head as it
    /// arrived and from its map.
    fn encoded(status: u16, fields: &[(&str, &str)], exact: Option<u64>, to: Answering) -> (String, EncodedHead) {
        let text: String = fields.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
        let (h, map) = head_and_map(&format!("HTTP/1.1 {status} X\r\n{text}\r\n"));
        let spans = parsed_spans(&h);
        let status = StatusCode::from_u16(status).unwrap();
        let (mut raw, mut mapped) = (Vec::new(), Vec::new());
        let head = encode_head(&mut raw, status, super::super::raw_pairs(&h.bytes, &spans), exact, to, [None, None]);
        assert_eq!(encode_head(&mut mapped, status, map_fields(&map), exact, to, [None, None]), head);
        let without_date = |out: Vec<u8>| {
            let text = String::from_utf8(out).unwrap();
            text.lines().filter(|l| !(l.starts_with("date: ") && l.ends_with(" GMT"))).collect::<Vec<_>>().join("\n")
        };
        let text = without_date(raw);
        // A map's names are in lower case; a head as it arrived keeps theirs.
        assert_eq!(text.to_lowercase(), without_date(mapped).to_lowercase());
        (text, head)
    }

    /// Where `h`'s fields sit, parsed again.
    fn parsed_spans(h: &Head) -> Vec<super::super::Span> {
        let mut spans = Spans::default();
        parse_head(&mut BytesMut::from(&h.bytes[..]), &mut spans).unwrap().unwrap();
        spans.as_slice().to_vec()
    }

    #[test]
    fn an_answer_head_is_framed_afresh_for_the_downstream_client() {
        let get = Answering { is_head: false, version: Version::HTTP_11, keep_alive: true };
        let (text, head) = encoded(200, &[("content-length", "5"), ("connection", "x")], None, get);
        assert_eq!(text, "HTTP/1.1 200 OK\ncontent-length: 5\n");
        assert_eq!(head, EncodedHead { body: Delimited::Length(5), keep_alive: true });
        let (text, head) = encoded(200, &[("transfer-encoding", "chunked")], None, get);
        assert_eq!(text, "HTTP/1.1 200 OK\ntransfer-encoding: chunked\n");
        assert_eq!(head.body, Delimited::Chunked);
        let (text, _) = encoded(200, &[], Some(3), Answering { keep_alive: false, ..get });
        assert_eq!(text, "HTTP/1.1 200 OK\ncontent-length: 3\nconnection: close\n");
        let old = Answering { is_head: false, version: Version::HTTP_10, keep_alive: true };
        assert_eq!(encoded(200, &[], None, old).1, EncodedHead { body: Delimited::UntilClose, keep_alive: false });
        let (text, head) = encoded(204, &[("content-length", "0")], None, get);
        assert_eq!((text.as_str(), head.body), ("HTTP/1.1 204 No Content\n", Delimited::HeadOnly));
        let to_head = Answering { is_head: true, ..get };
        assert_eq!(encoded(200, &[("content-length", "9")], None, to_head).1.body, Delimited::HeadOnly);
        assert!(!to_head.carries_body(StatusCode::OK) && !get.carries_body(StatusCode::NOT_MODIFIED));
        assert!(get.carries_body(StatusCode::OK));
        let mut out = Vec::new();
        encode_head(&mut out, StatusCode::OK, std::iter::empty(), None, get, [None, None]);
        assert!(String::from_utf8(out).unwrap().contains("\r\ndate: "), "a missing Date is added");
        let (text, _) = encoded(200, &[("Content-Length", "5"), ("Content-Length", "7")], None, to_head);
        assert_eq!(text, "HTTP/1.1 200 OK\nContent-Length: 5\n", "one Content-Length, the first");
        let (text, _) = encoded(200, &[("Date", "x"), ("Content-Length", "0")], None, get);
        assert_eq!(text, "HTTP/1.1 200 OK\nDate: x\nContent-Length: 0\n", "names keep their case; no second Date");
    }

    #[test]
    fn hop_by_hop_fields_never_reach_the_client() {
        let get = Answering { is_head: false, version: Version::HTTP_11, keep_alive: true };
        let hop = [
            ("Connection", "close"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("Proxy-Authenticate", "Basic"),
            ("Proxy-Authorization", "Basic eA=="),
            ("TE", "trailers"),
            ("Trailer", "x"),
            ("Upgrade", "websocket"),
            ("Content-Length", "0"),
        ];
        let (text, _) = encoded(200, &hop, None, get);
        assert_eq!(text, "HTTP/1.1 200 OK\nContent-Length: 0\n");
        // The same set as the map's strip: what one removes, the other skips.
        let mut map = HeaderMap::new();
        for (name, value) in hop {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static(value));
        }
        crate::headers::strip_hop_by_hop(&mut map, false);
        let kept: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(kept, ["content-length"]);
    }

    #[test]
    fn the_proxys_fields_are_written_in_place_of_the_upstreams() {
        let get = Answering { is_head: false, version: Version::HTTP_11, keep_alive: true };
        let (h, map) = head_and_map(
            "HTTP/1.1 200 OK\r\nX-Request-Id: upstream-made\r\nETag: \"v1\"\r\nX-Strangler-Upstream: spoofed\r\n\r\n",
        );
        let spans = parsed_spans(&h);
        let (id, upstream) = (HeaderValue::from_static("req-7"), HeaderValue::from_static("legacy"));
        let upstream_name = HeaderName::from_static("x-strangler-upstream");
        let added = [Some((&crate::headers::X_REQUEST_ID, &id)), Some((&upstream_name, &upstream))];
        let mut out = Vec::new();
        encode_head(&mut out, StatusCode::OK, super::super::raw_pairs(&h.bytes, &spans), Some(0), get, added);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.contains("\r\nx-request-id: req-7\r\n") && !text.contains("upstream-made"), "{text}");
        assert!(text.contains("\r\nx-strangler-upstream: legacy\r\n") && !text.contains("spoofed"), "{text}");
        assert!(text.contains("\r\nETag: \"v1\"\r\n"), "{text}");
        encode_head(&mut out, StatusCode::OK, map_fields(&map), Some(0), get, [None, None]);
        assert!(String::from_utf8(out).unwrap().contains("x-request-id: upstream-made"), "without an id: as it came");
    }
}
