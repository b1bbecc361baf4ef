//! `?page=&per_page=` exactly like the monolith's `int_arg` + `paginate`,
//! plus URL id parsing like Werkzeug's `<int:...>` converter.

use crate::ApiError;

pub const DEFAULT_PER_PAGE: i64 = 20;
pub const MAX_PER_PAGE: i64 = 100;

/// Python's `str.isspace()` (adds U+001C..U+001F to Rust's White_Space).
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// Result of Python's `int(s)` on a string.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum PyInt {
    Value(i64),
    /// A valid integer that does not fit in i64 (Python would accept it,
    /// SQLite would then fail with OverflowError -> 500).
    TooBig {
        negative: bool,
    },
    Invalid,
}

/// Python's `int(s)` for base-10 strings (ASCII digits; whitespace, sign, `_` separators).
pub fn py_int(s: &str) -> PyInt {
    let t = py_strip(s);
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return PyInt::Invalid;
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    if !clean.bytes().all(|b| b.is_ascii_digit()) {
        return PyInt::Invalid;
    }
    let signed = if neg { format!("-{clean}") } else { clean };
    match signed.parse::<i64>() {
        Ok(v) => PyInt::Value(v),
        Err(_) => PyInt::TooBig { negative: neg },
    }
}

/// Monolith `int_arg(name, default, minimum)`: first value of the query parameter.
pub fn int_arg(query: Option<&str>, name: &str, default: i64, minimum: i64) -> Result<i64, ApiError> {
    let raw =
        query.and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned()));
    let raw = match raw {
        None => return Ok(default),
        Some(r) if r.is_empty() => return Ok(default),
        Some(r) => r,
    };
    match py_int(&raw) {
        PyInt::Invalid => Err(ApiError::validation(name, format!("{name} must be an integer"))),
        PyInt::Value(v) if v < minimum => Err(ApiError::validation(name, format!("{name} must be >= {minimum}"))),
        PyInt::TooBig { negative: true } => Err(ApiError::validation(name, format!("{name} must be >= {minimum}"))),
        PyInt::Value(v) => Ok(v),
        // Python keeps the big int; the SQL parameter then overflows -> 500.
        PyInt::TooBig { negative: false } => Ok(i64::MAX),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Page {
    pub page: i64,
    pub per_page: i64,
    pub offset: i64,
}

/// Parse `page` / `per_page` like the monolith (page first, then per_page).
pub fn parse_page(query: Option<&str>) -> Result<Page, ApiError> {
    let page = int_arg(query, "page", 1, 1)?;
    let per_page = int_arg(query, "per_page", DEFAULT_PER_PAGE, 1)?.min(MAX_PER_PAGE);
    if page == i64::MAX {
        // page was bigger than i64: Python echoes it but SQLite overflows first.
        return Err(ApiError::internal());
    }
    let offset = (page - 1).checked_mul(per_page).ok_or_else(ApiError::internal)?;
    Ok(Page { page, per_page, offset })
}

/// Werkzeug `<int:id>` converter: `\d+` (ASCII here). `None` -> HTML 404;
/// `Some(Err)` -> the integer overflows SQLite (500 in the monolith).
pub fn parse_path_id(s: &str) -> Option<Result<i64, ApiError>> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<i64>().map_err(|_| ApiError::internal()))
}

pub fn page_json(items: Vec<serde_json::Value>, p: &Page, total: i64) -> serde_json::Value {
    serde_json::json!({"items": items, "page": p.page, "per_page": p.per_page, "total": total})
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ints() {
        assert_eq!(py_int(" 12 "), PyInt::Value(12));
        assert_eq!(py_int("+1_0"), PyInt::Value(10));
        assert_eq!(py_int("1__0"), PyInt::Invalid);
        assert_eq!(py_int("1.5"), PyInt::Invalid);
        assert_eq!(py_int(""), PyInt::Invalid);
        assert_eq!(parse_page(Some("page=2&per_page=500")).unwrap(), Page { page: 2, per_page: 100, offset: 100 });
        assert_eq!(parse_page(Some("page=0")).unwrap_err().message, "page must be >= 1");
        assert_eq!(parse_page(Some("per_page=x")).unwrap_err().field.as_deref(), Some("per_page"));
        assert_eq!(parse_page(Some("page=&per_page=")).unwrap().per_page, 20);
    }
}
