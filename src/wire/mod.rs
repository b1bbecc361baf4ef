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
//! being copied.

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
/// headers the proxy adds on the way through. `None` for a name the `http`
/// crate refuses.
///
/// The values are not checked again: httparse has checked each byte of
/// them, and the bytes it accepts in a value (tab, `0x20..=0x7E`,
/// `0x80..=0xFF`) are exactly those `HeaderValue` accepts. Checking them
/// again cost ~100 instructions per field. Debug builds (tests, fuzzing)
/// still check, and panic on a difference.
pub fn header_map(head: &Bytes, spans: &[Span], room: usize) -> Option<HeaderMap> {
    let mut headers = HeaderMap::with_capacity(spans.len() + room);
    for &[name, name_len, value, value_len] in spans {
        let name = HeaderName::from_bytes(&head[name as usize..(name + name_len) as usize]).ok()?;
        let value = head.slice(value as usize..(value + value_len) as usize);
        // SAFETY: not a memory-safety contract: the bytes must be valid in a
        // header value, and httparse accepted them as one (see above).
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(value) };
        headers.append(name, value);
    }
    Some(headers)
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

/// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 closes it
/// unless told `keep-alive`.
pub fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    if version == Version::HTTP_10 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

/// Makes sure a read has at least a quarter of `room` to fill, growing the
/// buffer by `room` when it has less.
pub fn reserve_read_room(buf: &mut BytesMut, room: usize) {
    if buf.capacity() - buf.len() < room / 4 {
        buf.reserve(room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_plain_digits() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"123"), Some(123));
        for bad in [&b""[..], b" 1", b"1 ", b"-1", b"+5", b"0x10", b"1,1", b"1234567890123456789"] {
            assert_eq!(parse_length(bad), None);
        }
    }
}
