//! HTTP/1.1 on the wire: the one place where untrusted bytes are parsed.
//!
//! - [`request`]: request heads from downstream clients, read by our server
//!   loop ([`crate::server::h1`]): parsed, refused (400, 414, 431, 505), or
//!   left for hyper; and the heads our client writes upstream.
//! - [`response`]: answer heads from upstreams, read by our client
//!   ([`crate::client::h1`]), and how their bodies are framed; and the heads
//!   our server loop writes downstream.
//! - [`body`]: an upstream answer's body, decoded by length, chunks or close.
//!
//! No sockets here (and no import of `server` or `client`: the links above
//! are for the reader): the callers read and write, this module looks at
//! buffers only, so that it can be unit-tested and fuzzed without I/O. The
//! fuzz checks (`fuzz`) are compiled only for tests and with the `fuzzing`
//! feature, which the fuzz crate turns on; the shipped binary leaves them out.
//!
//! Both parsers run httparse over uninitialized header slots (filling 100
//! empty slots per head showed in profiles) and record where each field
//! sits ([`Span`]), so that header values share the head's memory instead of
//! being copied. An upstream's answer head is not made a map at all unless
//! something reads it as one: its fields go to the client from those spans
//! ([`raw_pairs`], [`response::encode_head`]).

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

pub mod body;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod request;
pub mod response;

/// Why an upstream's answer was refused: its head or its body's framing is
/// malformed or ambiguous (the downstream client gets a 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

/// The most header fields a head may have, in either direction (hyper's
/// limit too).
pub const MAX_HEADERS: usize = 100;

/// Header slots reserved beyond a head's own for those the proxy adds on
/// the way through (`X-Request-Id`, `X-Forwarded-*`), so the map never grows.
pub const HEADROOM: usize = 5;

/// Where one header's name and value sit in a head: offsets and lengths,
/// so that the values can share the head's memory once the parser's
/// borrow of the buffer has ended.
pub type Span = [u32; 4];

/// How many fields' [`Span`]s a head keeps on the stack; a head with more
/// puts them on the heap. Zeroing room for all [`MAX_HEADERS`] on each head
/// (1.6 KiB, twice a proxied request) showed in profiles; most heads have a
/// handful of fields.
const FEW_SPANS: usize = 16;

/// Where a head's fields sit (see [`Span`]): the first [`FEW_SPANS`] on the
/// stack, all of them on the heap when there are more.
#[derive(Default)]
pub struct Spans {
    few: [Span; FEW_SPANS],
    many: Vec<Span>,
    len: usize,
}

impl Spans {
    /// Records where `fields` sit relative to `base` (the start of the
    /// buffer they were parsed from), in place of what was recorded before.
    pub fn record(&mut self, base: &[u8], fields: &[httparse::Header<'_>]) {
        let base = base.as_ptr() as usize;
        let span = |field: &httparse::Header<'_>| {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            [name as u32, field.name.len() as u32, value as u32, field.value.len() as u32]
        };
        self.len = fields.len();
        if fields.len() <= FEW_SPANS {
            for (slot, field) in self.few.iter_mut().zip(fields) {
                *slot = span(field);
            }
        } else {
            self.many = fields.iter().map(span).collect();
        }
    }

    /// The spans recorded.
    pub fn as_slice(&self) -> &[Span] {
        if self.len <= FEW_SPANS {
            &self.few[..self.len]
        } else {
            &self.many
        }
    }
}

/// Builds the header map of a head split off its buffer; the values are
/// slices of `head`, not copies. `room` extra slots are reserved for the
/// headers the proxy adds on the way through. With the map, what its fields
/// say about framing and the connection ([`Fields`]), gathered on the way.
/// `None` for a name the `http` crate refuses.
///
/// The values are not checked again: httparse has checked each byte of
/// them, and the bytes it accepts in a value (tab, `0x20..=0x7E`,
/// `0x80..=0xFF`) are exactly those `HeaderValue` accepts. Checking them
/// again cost ~100 instructions per field. Debug builds (tests, fuzzing)
/// still check, and panic on a difference.
pub fn header_map(head: &Bytes, spans: &[Span], room: usize) -> Option<(HeaderMap, Fields)> {
    let mut headers = HeaderMap::with_capacity(spans.len() + room);
    let mut fields = Fields::default();
    for span in spans {
        let (name, value) = ranges(span);
        let name = field_name(&head[name])?;
        let value = head.slice(value);
        fields.see(Kind::of_name(&name), &value);
        // SAFETY: not a memory-safety contract: the bytes must be valid in a
        // header value, and httparse accepted them as one (see above).
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(value) };
        headers.append(name, value);
    }
    Some((headers, fields))
}

/// Where the fields of a head split off its buffer sit ([`Span`]s), and
/// what they say about framing: a head passed on as it arrived, without a
/// map (see [`crate::wire::response::Head`]).
pub fn raw_fields(head: &Bytes, spans: &[Span]) -> Fields {
    let mut fields = Fields::default();
    for (name, value) in raw_pairs(head, spans) {
        fields.see(Kind::of_bytes(name), value);
    }
    fields
}

/// Each field of a head as its name's and value's bytes.
pub fn raw_pairs<'h>(head: &'h [u8], spans: &'h [Span]) -> impl Iterator<Item = (&'h [u8], &'h [u8])> + 'h {
    spans.iter().map(move |span| {
        let (name, value) = ranges(span);
        (&head[name], &head[value])
    })
}

/// Where a field's name and value sit in its head.
fn ranges(&[name, name_len, value, value_len]: &Span) -> (Range<usize>, Range<usize>) {
    (name as usize..(name + name_len) as usize, value as usize..(value + value_len) as usize)
}

/// What a field's name means to the proxy's framing and hop-by-hop rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ContentLength,
    TransferEncoding,
    Connection,
    Date,
    /// One of the other names that describe a connection and never cross
    /// the proxy (RFC 9110 §7.6.1): `Keep-Alive`, `Proxy-Connection`,
    /// `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`, and
    /// `Upgrade` (tunnelled only through hyper's path, which keeps its own).
    HopByHop,
    Other,
}

impl Kind {
    /// The kind of a name as it arrived, in any case (a `tchar` name, as
    /// httparse accepts: see `field_name` on the fold).
    pub fn of_bytes(name: &[u8]) -> Kind {
        let is = |lower: &[u8]| folded_eq(name, lower);
        match name.len() {
            2 if name.eq_ignore_ascii_case(b"te") => Kind::HopByHop,
            4 if is(b"date") => Kind::Date,
            7 if is(b"trailer") || is(b"upgrade") => Kind::HopByHop,
            10 if is(b"connection") => Kind::Connection,
            10 if is(b"keep-alive") => Kind::HopByHop,
            14 if is(b"content-length") => Kind::ContentLength,
            16 if is(b"proxy-connection") => Kind::HopByHop,
            17 if is(b"transfer-encoding") => Kind::TransferEncoding,
            18 if is(b"proxy-authenticate") => Kind::HopByHop,
            19 if is(b"proxy-authorization") => Kind::HopByHop,
            _ => Kind::Other,
        }
    }

    /// The kind of a parsed name.
    pub fn of_name(name: &HeaderName) -> Kind {
        Kind::of_bytes(name.as_str().as_bytes())
    }
}

/// The well-known names most heads carry, in lower case, by length.
fn common_names(len: usize) -> &'static [(&'static [u8], HeaderName)] {
    use header::*;
    match len {
        4 => &[(b"host", HOST), (b"date", DATE)],
        6 => &[(b"accept", ACCEPT), (b"server", SERVER), (b"cookie", COOKIE)],
        10 => &[(b"user-agent", USER_AGENT), (b"connection", CONNECTION), (b"set-cookie", SET_COOKIE)],
        12 => &[(b"content-type", CONTENT_TYPE)],
        13 => {
            &[(b"cache-control", CACHE_CONTROL), (b"last-modified", LAST_MODIFIED), (b"authorization", AUTHORIZATION)]
        }
        14 => &[(b"content-length", CONTENT_LENGTH)],
        15 => &[(b"accept-encoding", ACCEPT_ENCODING), (b"accept-language", ACCEPT_LANGUAGE)],
        17 => &[(b"transfer-encoding", TRANSFER_ENCODING)],
        _ => &[],
    }
}

/// A parsed field's name. The common ones ([`common_names`]) are matched
/// here, eight bytes at a time with case folded; the `http` crate maps each
/// name byte by byte through a table first (~110 instructions a field,
/// four fields a proxied GET). Others go to the `http` crate; `None` for a
/// name it refuses.
///
/// Folding by `| 0x20` is exact on names httparse accepted: it lowers `A-Z`
/// and keeps `a-z` and `-`; the only other byte it turns into one of those
/// is CR (into `-`), which no name holds (a name's bytes are RFC 9110
/// `tchar`s).
fn field_name(name: &[u8]) -> Option<HeaderName> {
    for (lower, known) in common_names(name.len()) {
        if folded_eq(name, lower) {
            return Some(known.clone());
        }
    }
    HeaderName::from_bytes(name).ok()
}

/// `name` equals `lower` (lower-case letters and `-`, at least 4 bytes, as
/// long as `name`) with `name`'s case folded: loads of 8 (or 4) bytes, the
/// last one overlapping the one before.
fn folded_eq(name: &[u8], lower: &[u8]) -> bool {
    let n = name.len();
    debug_assert!(n == lower.len() && n >= 4);
    if n >= 8 {
        let folded = |i: usize| {
            let chunk = |b: &[u8]| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
            chunk(name) | 0x2020_2020_2020_2020 == chunk(lower)
        };
        (0..n - 8).step_by(8).all(folded) && folded(n - 8)
    } else {
        let folded = |i: usize| {
            let chunk = |b: &[u8]| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
            chunk(name) | 0x2020_2020 == chunk(lower)
        };
        folded(0) && folded(n - 4)
    }
}

/// What a head's fields say about its body's framing and its connection.
/// Gathered while the head's map is built, where each name is compared
/// anyway, so that deciding the framing takes no lookup in the map after
/// (three hashed lookups an answer, one a request, showed in profiles).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    /// How many `Content-Length` fields (counted up to 2).
    pub lengths: u8,
    /// The first `Content-Length`'s value, if it is a valid one ([`parse_length`]).
    pub length: Option<u64>,
    /// Some `Content-Length` is other than a valid `0` (it may hide a body).
    pub length_not_zero: bool,
    /// How many `Transfer-Encoding` fields (counted up to 2).
    pub codings: u8,
    /// The first `Transfer-Encoding` is `chunked` alone.
    pub chunked: bool,
    /// `Connection` lists `close`.
    pub close: bool,
    /// `Connection` lists `keep-alive`.
    pub keep_alive: bool,
    /// `Connection` lists another token: a field of that name is hop-by-hop.
    pub lists_others: bool,
}

impl Fields {
    /// The same facts, read from a map built elsewhere (hyper's).
    pub fn of(headers: &HeaderMap) -> Fields {
        let mut fields = Fields::default();
        for (name, value) in headers {
            fields.see(Kind::of_name(name), value.as_bytes());
        }
        fields
    }

    /// Takes in one field whose name is of `kind`.
    fn see(&mut self, kind: Kind, value: &[u8]) {
        if kind == Kind::ContentLength {
            let length = parse_length(value);
            if self.lengths == 0 {
                self.length = length;
            }
            self.lengths = (self.lengths + 1).min(2);
            self.length_not_zero |= length != Some(0);
        } else if kind == Kind::TransferEncoding {
            if self.codings == 0 {
                self.chunked = value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            self.codings = (self.codings + 1).min(2);
        } else if kind == Kind::Connection {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let (close, keep_alive) =
                    (token.eq_ignore_ascii_case(b"close"), token.eq_ignore_ascii_case(b"keep-alive"));
                self.close |= close;
                self.keep_alive |= keep_alive;
                self.lists_others |= !(close || keep_alive || token.is_empty());
            }
        }
    }

    /// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 closes it
    /// unless told `keep-alive`.
    pub fn keeps_alive(&self, version: Version) -> bool {
        if version == Version::HTTP_10 {
            self.keep_alive
        } else {
            !self.close
        }
    }

    /// Whether the head says a body follows it: chunked, or a
    /// `Content-Length` other than 0 (an invalid one counts: it may hide a
    /// body).
    pub fn announces_body(&self) -> bool {
        self.codings > 0 || self.length_not_zero
    }
}

/// A `Content-Length` value: digits only (no sign, no spaces, no list), at
/// most 18 of them. The one parser of that header in the proxy, both
/// directions, so that no two places disagree on a body's length.
pub fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Makes sure a read has at least a quarter of `room` to fill, growing the
/// buffer by `room` when it has less.
pub fn reserve_read_room(buf: &mut BytesMut, room: usize) {
    if buf.capacity() - buf.len() < room / 4 {
        buf.reserve(room);
    }
}

/// Writes all of `bytes` to `stream`. The socket nearly always takes a head
/// (and a small body behind it) whole at once: then it is one system call,
/// without the write future, the task's budget or the readiness bookkeeping
/// of `write_all` (~80 instructions), and a TCP socket has nothing to flush.
/// What it does not take goes out as it drains. For both sides: the answer
/// to the client, the request to the upstream.
pub async fn write_all(stream: &mut tokio::net::TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let written = match stream.try_write(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written < bytes.len() {
        tokio::io::AsyncWriteExt::write_all(stream, &bytes[written..]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_are_matched_as_the_http_crate_matches_them() {
        let tchars: Vec<u8> = (0x21..0x7f).filter(|b| !b"\"(),/:;<=>?@[\\]{}".contains(b)).collect();
        for len in 0..=20 {
            for (lower, known) in common_names(len) {
                assert!(lower.iter().all(|b| b.is_ascii_lowercase() || *b == b'-'), "{lower:?}");
                assert_eq!(HeaderName::from_bytes(lower).unwrap(), *known);
                let upper = lower.to_ascii_uppercase();
                assert_eq!(field_name(&upper), Some(known.clone()));
                // Every token byte in every place: the match and the crate agree.
                for i in 0..len {
                    for &b in &tchars {
                        let mut name = lower.to_vec();
                        name[i] = b;
                        assert_eq!(field_name(&name), HeaderName::from_bytes(&name).ok(), "{:?}", name);
                    }
                }
            }
        }
        assert_eq!(field_name(b"x-request-id"), Some(HeaderName::from_static("x-request-id")));
        assert_eq!(field_name(b"bad name"), None);
    }

    #[test]
    fn httparse_and_the_http_crate_accept_the_same_name_bytes() {
        // A head kept as it arrived is made a map later (`Head::header_map`),
        // which must not fail on a name httparse took.
        let mut names_taken = 0;
        for b in 0..=255u8 {
            let name = [b'x', b, b'y'];
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            head.extend_from_slice(&name);
            head.extend_from_slice(b": v\r\n\r\n");
            let mut slots = [httparse::EMPTY_HEADER; 1];
            let mut parsed = httparse::Response::new(&mut slots);
            let complete = parsed.parse(&head).is_ok_and(|s| s.is_complete());
            let taken = complete && parsed.headers[0].name.as_bytes() == name;
            assert!(!taken || HeaderName::from_bytes(&name).is_ok(), "byte {b:#x}");
            assert_eq!(Kind::of_bytes(&name), Kind::Other);
            names_taken += usize::from(taken);
        }
        assert_eq!(names_taken, 77, "the RFC 9110 tchars: letters, digits and 15 others");
        for (name, kind) in [
            (&b"Content-Length"[..], Kind::ContentLength),
            (b"TRANSFER-ENCODING", Kind::TransferEncoding),
            (b"connection", Kind::Connection),
            (b"Date", Kind::Date),
            (b"te", Kind::HopByHop),
            (b"Upgrade", Kind::HopByHop),
            (b"Proxy-Authorization", Kind::HopByHop),
            (b"content-lengthx", Kind::Other),
            (b"tf", Kind::Other),
        ] {
            assert_eq!(Kind::of_bytes(name), kind, "{:?}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn lengths_are_plain_digits() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"123"), Some(123));
        for bad in [&b""[..], b" 1", b"1 ", b"-1", b"+5", b"0x10", b"1,1", b"1234567890123456789"] {
            assert_eq!(parse_length(bad), None);
        }
    }
}
