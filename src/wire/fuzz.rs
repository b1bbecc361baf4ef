//! The checks the HTTP/1.1 fuzz targets run (`fuzz/fuzz_targets/h1_*.rs`,
//! and the plain loop in `fuzz/src/bin_loop.rs`). Compiled for this crate's
//! tests and with the `fuzzing` feature only: the shipped binary has none
//! of it.

use bytes::BytesMut;
use http::{header, Method};

use super::body::{Decoder, Step};
use super::request::{self, Head};
use super::response;

/// For the fuzz target `h1_request`: parses `data` as request heads,
/// whole and cut at `cut`. Never panics; a request our loop serves has no
/// body framing but a single `Content-Length: 0`, an origin-form target
/// and no CONNECT; what follows its head stays in the buffer byte for
/// byte; and a prefix is never a complete request the whole is not.
pub fn check_request(data: &[u8], cut: usize) {
    const LIMIT: usize = 8 * 1024;
    let mut buf = BytesMut::from(data);
    let whole = request::parse(&mut buf, LIMIT, || ());
    if let Ok(Some(Head::Inline(parsed))) = &whole {
        let headers = parsed.request.headers();
        assert!(!headers.contains_key(header::TRANSFER_ENCODING) && !headers.contains_key(header::UPGRADE));
        assert!(headers.get_all(header::CONTENT_LENGTH).iter().all(|v| v == "0"));
        assert!(headers.get_all(header::CONTENT_LENGTH).iter().count() <= 1);
        assert!(parsed.request.uri().path().starts_with('/') && parsed.request.method() != Method::CONNECT);
        assert_eq!(&buf[..], &data[data.len() - buf.len()..], "the bytes after a head changed");
    }
    let cut = cut.min(data.len());
    if let Ok(Some(Head::Inline(part))) = request::parse(&mut BytesMut::from(&data[..cut]), LIMIT, || ()) {
        let Ok(Some(Head::Inline(parsed))) = &whole else { panic!("a prefix is a request the whole is not") };
        assert_eq!(part.request.uri(), parsed.request.uri());
        assert_eq!(part.request.headers(), parsed.request.headers());
    }
}

/// For the fuzz target `h1_answer`: parses `data` as an answer (to a GET,
/// or to a HEAD when `head` is set) and decodes its body fed in two pieces
/// cut at `cut`. Never panics; a body never yields more than its
/// `Content-Length`, nor more bytes than arrived.
pub fn check_answer(data: &[u8], head: bool, cut: usize) {
    let mut buf = BytesMut::from(data);
    let mut spans = crate::wire::Spans::default();
    let Ok(Some(parsed)) = response::parse_final_head(&mut buf, &mut spans) else { return };
    let method = if head { Method::HEAD } else { Method::GET };
    // Every name httparse took makes a map (building it panics otherwise),
    // and what the map holds and what was read off the head's bytes agree.
    let map = response::Head::header_map(&parsed.bytes, &spans);
    assert_eq!(crate::wire::Fields::of(&map), parsed.fields);
    let Ok(framing) = response::framing(&method, parsed.status, parsed.version, &parsed.fields) else { return };
    let limit = match framing.decoder {
        Decoder::Length(n) => n,
        Decoder::Done => 0,
        _ => u64::MAX,
    };
    let rest = buf.split();
    let cut = cut.min(rest.len());
    let mut decoder = framing.decoder;
    let mut pending = BytesMut::new();
    let mut out = 0u64;
    for piece in [&rest[..cut], &rest[cut..]] {
        pending.extend_from_slice(piece);
        loop {
            match decoder.step(&mut pending) {
                Ok(Step::Data(d)) => out += d.len() as u64,
                Ok(Step::NeedMore) | Ok(Step::End) | Err(_) => break,
            }
            if decoder == Decoder::Done {
                break;
            }
        }
    }
    assert!(out <= limit && out <= rest.len() as u64, "decoded {out} of {} (limit {limit})", rest.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_check_holds_for_served_refused_and_handed_off_heads() {
        for data in [
            &b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
        ] {
            for cut in [0, 5, 16, data.len()] {
                check_request(data, cut);
            }
        }
    }

    #[test]
    fn the_answer_check_holds_for_length_chunked_and_close_framed_bodies() {
        for data in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello and more"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close",
        ] {
            for (head, cut) in [(false, 0), (false, 3), (true, 7)] {
                check_answer(data, head, cut);
            }
        }
    }
}
