//! Route lookup: a segment trie, so the cost of a lookup depends on the depth
//! of the request path, not on how many routes the table holds.
//!
//! Precedence, as documented in `routes.yaml`: the longest matching prefix
//! wins (counted in whole segments); at the same length a literal segment
//! beats `*`, position by position from the left; then a route with `host`
//! beats one without, then a route with `methods` beats one without. The
//! order of routes in the file never matters.

use std::collections::HashMap;

use http::Method;

/// What a route matches on, as written in the config (prefix already normalized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteKey {
    /// Normalized prefix: starts with `/`, no trailing slash except for `/` itself.
    pub prefix: String,
    /// Lower-case host without port.
    pub host: Option<String>,
    pub methods: Option<Vec<Method>>,
}

impl RouteKey {
    fn segments(&self) -> impl Iterator<Item = &str> {
        self.prefix.split('/').filter(|s| !s.is_empty())
    }

    fn matches_host(&self, host: Option<&str>) -> bool {
        match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
            (Some(_), None) => false,
        }
    }

    fn matches_method(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// Two keys that would both claim the same request at the same rank.
    fn overlaps(&self, other: &RouteKey) -> bool {
        self.prefix == other.prefix
            && self.host == other.host
            && match (&self.methods, &other.methods) {
                (None, None) => true,
                (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
                _ => false,
            }
    }
}

/// Two routes that match exactly the same requests: the table would be ambiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateMatch {
    pub first: usize,
    pub second: usize,
}

/// The outcome of a lookup.
#[derive(Debug)]
pub struct Match<'a, T> {
    pub value: &'a T,
    pub key: &'a RouteKey,
    /// Index of the route in the order the router was built from.
    pub index: usize,
    /// Bytes of the path covered by the prefix (for `strip_prefix`).
    pub prefix_len: usize,
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    wildcard: Option<Box<Node>>,
    /// Routes ending here, most specific first.
    routes: Vec<usize>,
}

/// An immutable route table built once per config version.
#[derive(Debug)]
pub struct Router<T> {
    root: Node,
    entries: Vec<(RouteKey, T)>,
}

#[derive(Clone, Copy)]
struct Found {
    depth: usize,
    index: usize,
    prefix_len: usize,
}

impl<T> Router<T> {
    /// Builds the trie; refuses two routes that match the same requests.
    pub fn new(entries: Vec<(RouteKey, T)>) -> Result<Self, DuplicateMatch> {
        let mut root = Node::default();
        for (index, (key, _)) in entries.iter().enumerate() {
            let mut node = &mut root;
            for segment in key.segments() {
                node = if segment == "*" {
                    node.wildcard.get_or_insert_with(Default::default)
                } else {
                    node.literal.entry(segment.into()).or_default()
                };
            }
            if let Some(&first) = node.routes.iter().find(|&&i| entries[i].0.overlaps(key)) {
                return Err(DuplicateMatch { first, second: index });
            }
            node.routes.push(index);
        }
        sort_by_specificity(&mut root, &entries);
        Ok(Router { root, entries })
    }

    /// Finds the route for a normalized path (no query), host (no port) and method.
    pub fn lookup(&self, path: &str, host: Option<&str>, method: &Method) -> Option<Match<'_, T>> {
        let rest = path.strip_prefix('/')?;
        let mut best = None;
        self.search(&self.root, rest, 0, 0, host, method, &mut best);
        best.map(|found| {
            let (key, value) = &self.entries[found.index];
            Match { value, key, index: found.index, prefix_len: found.prefix_len }
        })
    }

    /// All routes, in the order they were given.
    pub fn entries(&self) -> &[(RouteKey, T)] {
        &self.entries
    }

    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        node: &Node,
        rest: &str,
        consumed: usize,
        depth: usize,
        host: Option<&str>,
        method: &Method,
        best: &mut Option<Found>,
    ) {
        let beats_best = best.is_none_or(|b| depth > b.depth);
        if beats_best {
            let hit = node.routes.iter().copied().find(|&i| {
                let key = &self.entries[i].0;
                key.matches_host(host) && key.matches_method(method)
            });
            if let Some(index) = hit {
                *best = Some(Found { depth, index, prefix_len: consumed });
            }
        }
        let (segment, next) = match find_byte(rest, b'/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if segment.is_empty() {
            return;
        }
        let consumed = consumed + 1 + segment.len();
        if let Some(child) = node.literal.get(segment) {
            self.search(child, next, consumed, depth + 1, host, method, best);
        }
        if let Some(child) = &node.wildcard {
            self.search(child, next, consumed, depth + 1, host, method, best);
        }
    }
}

fn sort_by_specificity<T>(node: &mut Node, entries: &[(RouteKey, T)]) {
    node.routes.sort_by_key(|&i| {
        let key = &entries[i].0;
        (key.host.is_none(), key.methods.is_none())
    });
    for child in node.literal.values_mut() {
        sort_by_specificity(child, entries);
    }
    if let Some(child) = node.wildcard.as_deref_mut() {
        sort_by_specificity(child, entries);
    }
}

/// The host of a `Host` value (or an authority) as routes match it: port
/// and a trailing dot dropped (`Example.com.:8080` → `Example.com`; matching
/// ignores case). `None` when the value is not a valid `host[:port]`:
/// userinfo, an empty host, a port that is not a number, stray characters.
pub fn host_for_matching(value: &str) -> Option<&str> {
    host_bytes_for_matching(value.as_bytes())
}

/// [`host_for_matching`] of a header value's bytes, checked in one pass
/// each over the host and the port (a `Host` value need not be checked as
/// text first: only ASCII passes).
pub fn host_bytes_for_matching(value: &[u8]) -> Option<&str> {
    let (host, port) = match value {
        [b'[', rest @ ..] => {
            let end = rest.iter().position(|&b| b == b']')?;
            let port = match &rest[end + 1..] {
                [] => None,
                [b':', port @ ..] => Some(port),
                _ => return None,
            };
            (&rest[..end], port)
        }
        _ => match value.iter().position(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        },
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
            return None;
        }
    }
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || !host.iter().all(|&b| HOST_BYTES[b as usize]) {
        return None;
    }
    // SAFETY: every byte of `host` is one of `HOST_BYTES`, all ASCII, so it
    // is UTF-8 (`from_utf8` would check it again: ~100 instructions).
    Some(unsafe { std::str::from_utf8_unchecked(host) })
}

/// The bytes a host may hold: letters, digits, `-`, `.`, `_`, and `:`
/// (inside brackets, an IPv6 address).
const HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b':');
        b += 1;
    }
    table
};

/// Where the ASCII byte `b` first is in `s` (a char boundary, being ASCII).
/// A plain loop: `str::find` of a char sets up a memchr search, ~125
/// instructions for a short host or path segment, twice a request.
fn find_byte(s: &str, b: u8) -> Option<usize> {
    debug_assert!(b.is_ascii());
    s.bytes().position(|c| c == b)
}

/// Strips the port from a `Host` value (`example.com:8080`, `[::1]:80`).
pub fn host_without_port(host: &str) -> &str {
    host_for_matching(host).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(prefix: &str) -> RouteKey {
        RouteKey { prefix: prefix.into(), host: None, methods: None }
    }

    fn router(keys: Vec<RouteKey>) -> Router<usize> {
        Router::new(keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect()).unwrap()
    }

    fn pick(r: &Router<usize>, path: &str) -> Option<usize> {
        r.lookup(path, None, &Method::GET).map(|m| *m.value)
    }

    #[test]
    fn longest_segment_prefix_wins() {
        let r = router(vec![key("/"), key("/api/users"), key("/api")]);
        assert_eq!(pick(&r, "/api/users"), Some(1));
        assert_eq!(pick(&r, "/api/users/"), Some(1));
        assert_eq!(pick(&r, "/api/users/7"), Some(1));
        assert_eq!(pick(&r, "/api/usersettings"), Some(2));
        assert_eq!(pick(&r, "/other"), Some(0));
        assert_eq!(pick(&r, "/"), Some(0));
    }

    #[test]
    fn no_match_without_catch_all() {
        let r = router(vec![key("/api")]);
        assert_eq!(pick(&r, "/"), None);
        assert_eq!(pick(&r, "/apix"), None);
    }

    #[test]
    fn literal_beats_wildcard_at_same_length() {
        let r = router(vec![key("/api/tasks/*/comments"), key("/api/tasks/special/comments"), key("/api/tasks")]);
        assert_eq!(pick(&r, "/api/tasks/7/comments"), Some(0));
        assert_eq!(pick(&r, "/api/tasks/special/comments"), Some(1));
        assert_eq!(pick(&r, "/api/tasks/7"), Some(2));
        assert_eq!(pick(&r, "/api/tasks/7/other"), Some(2));
    }

    #[test]
    fn longer_wildcard_beats_shorter_literal() {
        let r = router(vec![key("/a/b"), key("/a/*/c")]);
        assert_eq!(pick(&r, "/a/b/c"), Some(1));
        assert_eq!(pick(&r, "/a/b/d"), Some(0));
    }

    #[test]
    fn host_then_methods_break_ties() {
        let mut with_host = key("/api");
        with_host.host = Some("api.example.com".into());
        let mut with_methods = key("/api");
        with_methods.methods = Some(vec![Method::POST]);
        let r = router(vec![key("/api"), with_methods, with_host]);
        assert_eq!(r.lookup("/api", Some("API.example.com"), &Method::POST).map(|m| *m.value), Some(2));
        assert_eq!(r.lookup("/api", Some("other"), &Method::POST).map(|m| *m.value), Some(1));
        assert_eq!(r.lookup("/api", None, &Method::GET).map(|m| *m.value), Some(0));
    }

    #[test]
    fn shorter_route_serves_when_longer_one_filters_out() {
        let mut get_only = key("/api/users");
        get_only.methods = Some(vec![Method::GET]);
        let r = router(vec![key("/"), get_only]);
        assert_eq!(r.lookup("/api/users/1", None, &Method::POST).map(|m| *m.value), Some(0));
    }

    #[test]
    fn duplicates_are_refused() {
        let mut a = key("/x");
        a.methods = Some(vec![Method::GET, Method::POST]);
        let mut b = key("/x");
        b.methods = Some(vec![Method::POST]);
        let err = Router::new(vec![(a, ()), (b, ())]).unwrap_err();
        assert_eq!(err, DuplicateMatch { first: 0, second: 1 });
        assert!(Router::new(vec![(key("/x"), ()), (key("/x"), ())]).is_err());
    }

    #[test]
    fn prefix_len_covers_the_matched_segments() {
        let r = router(vec![key("/api/users"), key("/t/*/c")]);
        assert_eq!(r.lookup("/api/users/7", None, &Method::GET).unwrap().prefix_len, 10);
        assert_eq!(r.lookup("/t/12/c/x", None, &Method::GET).unwrap().prefix_len, 7);
    }

    #[test]
    fn host_port_is_ignored() {
        assert_eq!(host_without_port("a.example:8080"), "a.example");
        assert_eq!(host_without_port("a.example"), "a.example");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert_eq!(host_for_matching("Admin.Example.com.:80"), Some("Admin.Example.com"));
        assert_eq!(host_for_matching("[::1]"), Some("::1"));
        for bad in ["user@admin.example.com", "a:80:90", "a:", "a:port", "", ":80", "a b", "a/b", "[::1"] {
            assert_eq!(host_for_matching(bad), None, "{bad}");
        }
        // A header value's bytes: only ASCII passes.
        assert_eq!(host_bytes_for_matching(b"a.example:80"), Some("a.example"));
        assert_eq!(host_bytes_for_matching(b"caf\xc3\xa9.example"), None);
        assert_eq!(host_bytes_for_matching(b"a\xff"), None);
    }

    proptest! {
        /// Whatever the table and path, the chosen route's prefix is a
        /// whole-segment prefix of the path (with `*` standing for one segment).
        #[test]
        fn match_is_always_a_segment_prefix(
            prefixes in prop::collection::vec(prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("*"), Just("ab")], 0..4), 1..12),
            path in prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("ab"), Just("c")], 0..6),
        ) {
            let mut seen = std::collections::HashSet::new();
            let keys: Vec<RouteKey> = prefixes
                .into_iter()
                .map(|segs| format!("/{}", segs.join("/")))
                .filter(|p| seen.insert(p.clone()))
                .map(|p| key(&p))
                .collect();
            let r = router(keys);
            let path = format!("/{}", path.join("/"));
            if let Some(m) = r.lookup(&path, None, &Method::GET) {
                let want: Vec<&str> = m.key.prefix.split('/').filter(|s| !s.is_empty()).collect();
                let got: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
                prop_assert!(want.len() <= got.len());
                for (w, g) in want.iter().zip(&got) {
                    prop_assert!(*w == "*" || w == g);
                }
                let consumed = &path[..m.prefix_len];
                prop_assert_eq!(consumed.split('/').filter(|s| !s.is_empty()).count(), want.len());
            }
        }
    }
}
