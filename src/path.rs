//! Request-path normalization: done once, before matching, so the route that is
//! chosen and the path the upstream receives are always the same string.
//!
//! The rules follow RFC 3986 §6.2.2 (percent-decoding of unreserved characters,
//! upper-case hex in the escapes that stay) and §5.2.4 (removal of `.` and `..`
//! segments), plus the merging of repeated slashes. Anything that different
//! backends could read in different ways is refused instead of guessed at:
//! encoded slashes and backslashes, raw backslashes, NUL, fragments, dot
//! segments carrying `;` parameters (Tomcat reads `..;x` as `..`), bytes that
//! do not decode to UTF-8 (overlong forms of `.` and `/`), and any path that
//! climbs above `/`. This is the class of bug behind Envoy CVE-2019-9901 and
//! CVE-2021-29492 and Traefik CVE-2025-32431.

use std::borrow::Cow;

/// Why a path was refused; each becomes a 400 naming the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path climbs above '/'")]
    ClimbsAboveRoot,
    #[error("the path holds an encoded slash or backslash (%2F, %5C)")]
    EncodedSeparator,
    #[error("the path holds a backslash")]
    Backslash,
    #[error("the path holds a NUL byte")]
    Nul,
    #[error("the path holds a fragment ('#')")]
    Fragment,
    #[error("the path holds a dot segment with parameters ('..;' or '.;')")]
    DotSegmentWithParams,
    #[error("the path holds a malformed percent-escape")]
    BadPercentEncoding,
    #[error("the path does not decode to valid UTF-8")]
    InvalidUtf8,
    #[error("the path holds a control character")]
    ControlCharacter,
}

/// The bytes [`normalize`] passes over without a second look: all but
/// those its scan stops at (`\`, NUL, `#`, control bytes, `%`, `/` and
/// `.`). One table lookup a byte: the scan's chain of comparisons cost
/// ~20 instructions a byte of every request's path.
static PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        plain[b] = !matches!(byte, b'\\' | b'#' | b'%' | b'/' | b'.') && byte >= 0x20 && byte != 0x7f;
        b += 1;
    }
    plain
};

/// Normalizes `path` (without its query). Borrows when the path is already
/// normal, which is the common case, so most requests allocate nothing here.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut needs_rewrite = false;
    let mut has_escapes = false;
    for (i, &b) in bytes.iter().enumerate() {
        if PLAIN[b as usize] {
            continue;
        }
        match b {
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            b'#' => return Err(PathError::Fragment),
            b if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            b'%' => has_escapes = true,
            b'/' if bytes.get(i + 1) == Some(&b'/') => needs_rewrite = true,
            b'.' if bytes[i - 1] == b'/' => needs_rewrite = true,
            _ => {}
        }
    }
    if !has_escapes && !needs_rewrite {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = if has_escapes { Cow::Owned(decode_unreserved(path)?) } else { Cow::Borrowed(path) };
    remove_dot_segments(&decoded).map(Cow::Owned)
}

/// Decodes escapes of unreserved characters and upper-cases the hex of the
/// others, refusing escapes that would change how the path splits.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    // Bytes, not chars: a raw non-ASCII byte (UTF-8 in the request target) is
    // copied as is, never re-encoded as a Latin-1 char.
    let mut out = Vec::with_capacity(path.len());
    let mut fully_decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            fully_decoded.push(b);
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).and_then(|&c| hex_value(c));
        let lo = bytes.get(i + 2).and_then(|&c| hex_value(c));
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(PathError::BadPercentEncoding);
        };
        let value = hi << 4 | lo;
        match value {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0 => return Err(PathError::Nul),
            v if v < 0x20 || v == 0x7f => return Err(PathError::ControlCharacter),
            v if is_unreserved(v) => out.push(v),
            v => out.extend_from_slice(&[b'%', HEX_UPPER[(v >> 4) as usize], HEX_UPPER[(v & 0xf) as usize]]),
        }
        fully_decoded.push(value);
        i += 3;
    }
    if std::str::from_utf8(&fully_decoded).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    // Only ASCII was added to bytes copied from a `str`: still UTF-8.
    String::from_utf8(out).map_err(|_| PathError::InvalidUtf8)
}

/// Resolves `.` and `..`, merges empty segments, keeps one trailing slash
/// where the input ended in a directory (`/a/`, `/a/.`, `/a/b/..`).
fn remove_dot_segments(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if kept.pop().is_none() {
                    return Err(PathError::ClimbsAboveRoot);
                }
                trailing_slash = true;
            }
            s if s.starts_with(".;") || s.starts_with("..;") => return Err(PathError::DotSegmentWithParams),
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    Ok(out)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_plain_bytes_are_exactly_those_a_one_byte_path_keeps_as_it_is() {
        for b in 0u8..0x80 {
            let path = format!("/{}", b as char);
            let kept = matches!(normalize(&path), Ok(Cow::Borrowed(_)));
            assert_eq!(PLAIN[usize::from(b)], kept, "byte {b:#04x}");
        }
        assert!((0x80..=0xff).all(|b| PLAIN[b]), "bytes of multi-byte characters are plain");
    }

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(normalize("/api/users/7"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/a/b.json"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(norm("/a/./b").unwrap(), "/a/b");
        assert_eq!(norm("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(norm("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("//").unwrap(), "/");
        assert_eq!(norm("/api/users/").unwrap(), "/api/users/");
        assert_eq!(norm("/api/users/../admin").unwrap(), "/api/admin");
        assert_eq!(norm("/.hidden/x").unwrap(), "/.hidden/x");
    }

    #[test]
    fn percent_decoding_of_unreserved_only() {
        assert_eq!(norm("/api/%75sers").unwrap(), "/api/users");
        assert_eq!(norm("/api/users/%2e%2e/admin").unwrap(), "/api/admin");
        assert_eq!(norm("/api/users/%2E%2E/%2E%2E/admin").unwrap(), "/admin");
        assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
        assert_eq!(norm("/a%3ab").unwrap(), "/a%3Ab");
        assert_eq!(norm("/caf%C3%A9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn refusals() {
        assert_eq!(norm("/.."), Err(PathError::ClimbsAboveRoot));
        assert_eq!(norm("/a/../.."), Err(PathError::ClimbsAboveRoot));
        assert_eq!(norm("/%2e%2e/x"), Err(PathError::ClimbsAboveRoot));
        assert_eq!(norm("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a%5cb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a\\b"), Err(PathError::Backslash));
        assert_eq!(norm("/a\0b"), Err(PathError::Nul));
        assert_eq!(norm("/a%00b"), Err(PathError::Nul));
        assert_eq!(norm("/a#b"), Err(PathError::Fragment));
        assert_eq!(norm("/a/..;x/b"), Err(PathError::DotSegmentWithParams));
        assert_eq!(norm("/a/.;x/b"), Err(PathError::DotSegmentWithParams));
        assert_eq!(norm("/a/%2e%2e;x/b"), Err(PathError::DotSegmentWithParams));
        assert_eq!(norm("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(norm("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(norm("/%c0%ae%c0%ae/x"), Err(PathError::InvalidUtf8));
        assert_eq!(norm("/%c0%af"), Err(PathError::InvalidUtf8));
        assert_eq!(norm("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(norm("/a%0ab"), Err(PathError::ControlCharacter));
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            Just(".".to_string()),
            Just("..".to_string()),
            Just("".to_string()),
            Just("%2e".to_string()),
            Just("%2E%2e".to_string()),
            Just("%41".to_string()),
            Just("%20".to_string()),
            "[a-z0-9_.~-]{1,6}",
        ];
        prop::collection::vec(segment, 0..8).prop_map(|segs| format!("/{}", segs.join("/")))
    }

    proptest! {
        #[test]
        fn normalization_is_idempotent(p in path_strategy()) {
            if let Ok(once) = normalize(&p) {
                let twice = normalize(&once).expect("a normalized path stays valid");
                prop_assert_eq!(once.as_ref(), twice.as_ref());
            }
        }

        #[test]
        fn normalized_paths_have_no_dot_segments(p in path_strategy()) {
            if let Ok(n) = normalize(&p) {
                prop_assert!(n.starts_with('/'));
                prop_assert!(!n.contains("//"));
                for seg in n.split('/') {
                    prop_assert!(seg != "." && seg != "..");
                }
            }
        }

        #[test]
        fn arbitrary_input_never_panics(p in "/[ -~]{0,40}") {
            let _ = normalize(&p);
        }
    }
}
