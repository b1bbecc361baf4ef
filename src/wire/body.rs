//! An upstream answer's body on the wire (RFC 9112 §6.3, §7.1): decoded
//! by its length, by chunks, or until the connection closes. Chunks are
//! decoded strictly, more so than nginx: a malformed chunk, a bare LF, an
//! oversized chunk size, anything after the size but whitespace then a `;`
//! extension or the CRLF (`5 6` is not 5; RFC 9112 §7.1.1), a chunk extension over [`MAX_CHUNK_EXT`] or
//! trailers over [`MAX_TRAILERS`] is an error (the trailers and extensions
//! themselves are skipped). Data is split off the read buffer, never copied.

use bytes::{Buf, Bytes, BytesMut};

use super::Invalid;

/// The largest trailer section of a chunked answer (trailers are dropped).
pub const MAX_TRAILERS: usize = 16 * 1024;
/// The longest chunk extension accepted (they are skipped).
pub const MAX_CHUNK_EXT: usize = 4096;

/// Where the body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunked),
    /// Everything until the upstream closes the connection.
    UntilClose,
    Done,
}

/// The chunked decoder's state (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunked {
    /// Reading the hex chunk size: its value and digit count so far.
    #[default]
    SizeStart,
    Size(u64, u8),
    /// Whitespace after the chunk size (bytes so far): only more of it, a
    /// `;` extension or the CRLF may follow.
    SizeSpace(u64, usize),
    /// Skipping a chunk extension.
    Extension(u64, usize),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines (bytes seen so far), then CRLF.
    TrailerLineStart(usize),
    TrailerLine(usize),
    TrailerLineLf(usize),
    EndLf,
}

/// What the decoder produced from the buffered bytes.
pub enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

impl Decoder {
    /// Decodes what `buf` holds; framing bytes are consumed, data is split
    /// off without a copy.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, Invalid> {
        match self {
            Decoder::Done => Ok(Step::End),
            Decoder::Length(remaining) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let take = (*remaining).min(buf.len() as u64) as usize;
                *remaining -= take as u64;
                if *remaining == 0 {
                    *self = Decoder::Done;
                }
                Ok(Step::Data(buf.split_to(take).freeze()))
            }
            Decoder::UntilClose if buf.is_empty() => Ok(Step::NeedMore),
            Decoder::UntilClose => Ok(Step::Data(buf.split().freeze())),
            Decoder::Chunked(state) => {
                let step = state.step(buf, false)?;
                if matches!(step, Step::End) {
                    *self = Decoder::Done;
                }
                Ok(step)
            }
        }
    }

    /// Right after data: consumes the framing already buffered behind it (a
    /// chunked body's `0\r\n\r\n`), so that the end is seen at once
    /// rather than at the next read. Stops before any further data.
    pub fn read_framing(&mut self, buf: &mut BytesMut) -> Result<(), Invalid> {
        if let Decoder::Chunked(state) = self {
            if let Step::End = state.step(buf, true)? {
                *self = Decoder::Done;
            }
        }
        Ok(())
    }
}

impl Chunked {
    /// With `framing_only`, stops before any data: used to see whether the
    /// body's end is already buffered right behind the last data.
    fn step(&mut self, buf: &mut BytesMut, framing_only: bool) -> Result<Step, Invalid> {
        use Chunked::*;
        loop {
            if let Data(remaining) = *self {
                if buf.is_empty() || framing_only {
                    return Ok(Step::NeedMore);
                }
                let take = remaining.min(buf.len() as u64) as usize;
                *self = if take as u64 == remaining { DataCr } else { Data(remaining - take as u64) };
                return Ok(Step::Data(buf.split_to(take).freeze()));
            }
            if buf.is_empty() {
                return Ok(Step::NeedMore);
            }
            let byte = buf[0];
            buf.advance(1);
            *self = match (*self, byte) {
                (SizeStart, _) => match hex(byte) {
                    Some(d) => Size(u64::from(d), 1),
                    None => return Err(Invalid("invalid chunk size")),
                },
                (Size(_, 16), _) if hex(byte).is_some() => return Err(Invalid("chunk size too large")),
                (Size(n, digits), _) if hex(byte).is_some() => Size(n << 4 | u64::from(hex(byte).unwrap()), digits + 1),
                (Size(n, _), b'\r') => SizeLf(n),
                (Size(n, _), b';') => Extension(n, 1),
                (Size(n, _), b' ' | b'\t') => SizeSpace(n, 1),
                (SizeSpace(_, len) | Extension(_, len), _) if len > MAX_CHUNK_EXT => {
                    return Err(Invalid("chunk extension too long"))
                }
                (SizeSpace(n, len), b' ' | b'\t') => SizeSpace(n, len + 1),
                (SizeSpace(n, len), b';') => Extension(n, len + 1),
                (SizeSpace(n, _), b'\r') => SizeLf(n),
                (SizeSpace(..), _) => return Err(Invalid("invalid chunk size")),
                (Extension(n, _), b'\r') => SizeLf(n),
                (Extension(_, _), b'\n') => return Err(Invalid("bare LF in a chunk extension")),
                (Extension(n, len), _) => Extension(n, len + 1),
                (SizeLf(0), b'\n') => TrailerLineStart(0),
                (SizeLf(n), b'\n') => Data(n),
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => SizeStart,
                (TrailerLineStart(_), b'\r') => EndLf,
                (TrailerLineStart(_) | TrailerLine(_), b'\n') => return Err(Invalid("bare LF in trailers")),
                (TrailerLineStart(seen) | TrailerLine(seen), _) if seen >= MAX_TRAILERS => {
                    return Err(Invalid("trailers too large"))
                }
                (TrailerLine(seen), b'\r') => TrailerLineLf(seen + 1),
                (TrailerLineStart(seen) | TrailerLine(seen), _) => TrailerLine(seen + 1),
                (TrailerLineLf(seen), b'\n') => TrailerLineStart(seen + 1),
                (EndLf, b'\n') => return Ok(Step::End),
                _ => return Err(Invalid("malformed chunked body")),
            };
        }
    }
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a whole chunked body given in pieces: the data and whether
    /// nothing followed it, or the error (`incomplete` when it never ended).
    fn dechunk(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool), Invalid> {
        let mut decoder = Decoder::Chunked(Chunked::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match decoder.step(&mut buf)? {
                    Step::Data(d) => out.extend_from_slice(&d),
                    Step::NeedMore => break,
                    Step::End => return Ok((out, buf.is_empty())),
                }
            }
        }
        Err(Invalid("incomplete"))
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let body: &[u8] = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for cut in 0..body.len() {
            let (data, clean) = dechunk(&[&body[..cut], &body[cut..]]).unwrap();
            assert_eq!(data, b"hello 0123456789", "cut at {cut}");
            assert!(clean);
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(dechunk(&bytes).unwrap().0, b"hello 0123456789");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"11111111111111111\r\n",
            b"-1\r\n",
            b"\r\n",
            b"0\r\nX-T: 1\n\r\n",
            b"0\r\n\n",
            b"5 6\r\nhello\r\n0\r\n\r\n",
            b"5\t6\r\nhello\r\n0\r\n\r\n",
            b"5 x;a=b\r\nhello\r\n0\r\n\r\n",
            b"0 0\r\n\r\n",
        ] {
            let decoded = dechunk(&[bad]);
            assert!(matches!(decoded, Err(e) if e.0 != "incomplete"), "{:?}", String::from_utf8_lossy(bad));
        }
        let long_space = [&b"1"[..], &[b' '; MAX_CHUNK_EXT + 10][..]].concat();
        assert_eq!(dechunk(&[&long_space]).err(), Some(Invalid("chunk extension too long")));
        let long_ext = [&b"1;"[..], &[b'a'; MAX_CHUNK_EXT + 10][..]].concat();
        assert_eq!(dechunk(&[&long_ext]).err(), Some(Invalid("chunk extension too long")));
        let huge_trailers = [&b"0\r\n"[..], &[b'a'; MAX_TRAILERS + 10][..]].concat();
        assert_eq!(dechunk(&[&huge_trailers]).err(), Some(Invalid("trailers too large")));
    }

    #[test]
    fn whitespace_after_a_chunk_size_may_precede_only_an_extension_or_the_line_end() {
        let body: &[u8] = b"5 \t;a=b\r\nhello\r\n1 \r\n!\r\n0 ;end\r\n\r\n";
        for cut in 0..body.len() {
            assert_eq!(dechunk(&[&body[..cut], &body[cut..]]).unwrap().0, b"hello!", "cut at {cut}");
        }
    }

    #[test]
    fn bytes_after_a_chunked_end_are_left_for_the_caller() {
        let (_, clean) = dechunk(&[b"0\r\n\r\nHTTP/1.1 200 OK"]).unwrap();
        assert!(!clean, "stray bytes make the connection unusable");
    }

    #[test]
    fn the_end_behind_the_last_data_is_read_with_it() {
        let mut decoder = Decoder::Chunked(Chunked::default());
        let mut buf = BytesMut::from(&b"2\r\nok\r\n0\r\n\r\n"[..]);
        assert!(matches!(decoder.step(&mut buf), Ok(Step::Data(d)) if d == "ok"));
        decoder.read_framing(&mut buf).unwrap();
        assert_eq!(decoder, Decoder::Done);
        assert!(buf.is_empty());
    }
}
