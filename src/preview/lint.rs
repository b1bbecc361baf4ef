//! Routes no request can reach, found without traffic.
//!
//! The router's precedence (longest prefix, then literal over `*`, then host,
//! then methods; see [`crate::router`]) decides among the routes that end at
//! the same depth the same way whatever follows, so a route is reachable if
//! and only if it wins for a request for exactly its own prefix — with each
//! `*` a segment no route names, its own host (or a host no route names) and
//! one of its methods. This module asks the router that question for every
//! route and every method it allows, among those the web uses (`CONNECT` is
//! refused before routing, so a route allowing only `CONNECT` never matches;
//! `TRACE` and extension methods are not asked about). Two routes with the
//! same prefix, host and methods are already refused when the config is
//! validated, so what is left here is a route without `methods` whose every
//! common method is taken by routes with `methods` at the same prefix.

use std::collections::{BTreeSet, HashSet};

use http::Method;

use crate::config::{ConfigError, Source};
use crate::router::{RouteKey, Router};

/// The methods a route without `methods` is asked about.
pub const COMMON_METHODS: [Method; 7] =
    [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS];

/// A route that can never match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeverMatches {
    /// Its index in the router's entries.
    pub index: usize,
    /// Its name.
    pub route: String,
    /// The routes that take its requests.
    pub taken_by: Vec<String>,
    /// Why, for people.
    pub detail: String,
}

/// Every route of `router` that no request can reach; `name` names an entry.
pub fn never_matching<T>(router: &Router<T>, name: impl Fn(&T) -> &str) -> Vec<NeverMatches> {
    let entries = router.entries();
    let segment = unused("probe", entries.iter().flat_map(|(key, _)| key.prefix.split('/')));
    let host = unused("probe.invalid", entries.iter().filter_map(|(key, _)| key.host.as_deref()));
    let mut dead = Vec::new();
    for (index, (key, value)) in entries.iter().enumerate() {
        let path = probe_path(key, &segment);
        let methods = allowed_methods(key);
        if methods.is_empty() {
            dead.push(NeverMatches {
                index,
                route: name(value).to_string(),
                taken_by: vec![],
                detail: "it allows only CONNECT, which the proxy refuses before routing".into(),
            });
            continue;
        }
        let mut taken_by = BTreeSet::new();
        let mut reached = false;
        for method in &methods {
            match router.lookup(&path, Some(key.host.as_deref().unwrap_or(&host)), method) {
                Some(found) if found.index == index => {
                    reached = true;
                    break;
                }
                Some(found) => {
                    taken_by.insert(name(&entries[found.index].1).to_string());
                }
                None => {}
            }
        }
        if !reached {
            let methods: Vec<String> = methods.iter().map(Method::to_string).collect();
            let taken_by: Vec<String> = taken_by.into_iter().collect();
            dead.push(NeverMatches {
                index,
                route: name(value).to_string(),
                detail: format!(
                    "{} {} every {} request under {}",
                    taken_by.join(", "),
                    if taken_by.len() == 1 { "takes" } else { "take" },
                    methods.join(", "),
                    key.prefix
                ),
                taken_by,
            });
        }
    }
    dead
}

/// The lints `strangler check` prints, each at its route's line and column:
/// warnings, unless no route at all can match (the config would answer
/// every request with a 404), which `fatal` says.
pub fn check<T>(file: &str, text: &str, router: &Router<T>, name: impl Fn(&T) -> &str) -> (Vec<ConfigError>, bool) {
    let source = Source { file, text };
    let dead = never_matching(router, name);
    let fatal = !router.entries().is_empty() && dead.len() == router.entries().len();
    let lints = dead
        .into_iter()
        .map(|d| {
            source.error_at(
                &[&format!("name: {}", d.route)],
                format!("route {:?} can never match: {}", d.route, d.detail),
            )
        })
        .collect();
    (lints, fatal)
}

/// The methods a route is asked about: its own but `CONNECT`, or the common ones.
fn allowed_methods(key: &RouteKey) -> Vec<Method> {
    match &key.methods {
        Some(methods) => methods.iter().filter(|m| **m != Method::CONNECT).cloned().collect(),
        None => COMMON_METHODS.to_vec(),
    }
}

/// The route's own prefix as a request path, each `*` a segment no route names.
fn probe_path(key: &RouteKey, wildcard: &str) -> String {
    let path: Vec<&str> = key.prefix.split('/').map(|s| if s == "*" { wildcard } else { s }).collect();
    match path.join("/") {
        p if p.is_empty() => "/".into(),
        p => p,
    }
}

/// `base`, lengthened until it is none of `taken`.
fn unused<'a>(base: &str, taken: impl Iterator<Item = &'a str>) -> String {
    let taken: HashSet<&str> = taken.collect();
    let mut name = base.to_string();
    while taken.contains(name.as_str()) {
        name.insert(0, 'x');
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(prefix: &str, host: Option<&str>, methods: Option<&[Method]>) -> RouteKey {
        RouteKey { prefix: prefix.into(), host: host.map(str::to_string), methods: methods.map(|m| m.to_vec()) }
    }

    fn dead(keys: Vec<(RouteKey, &'static str)>) -> Vec<(String, Vec<String>)> {
        let router = Router::new(keys).expect("no duplicates");
        never_matching(&router, |name| *name).into_iter().map(|d| (d.route, d.taken_by)).collect()
    }

    #[test]
    fn routes_that_win_somewhere_are_reachable() {
        let keys = vec![
            (key("/", None, None), "all"),
            (key("/api", None, None), "api"),
            (key("/api/users", None, None), "users"),
            (key("/api/*", None, None), "any-api"),
            (key("/api/*/comments", None, None), "comments"),
            (key("/api/users", Some("admin.example.com"), None), "admin-users"),
            (key("/api/users", None, Some(&[Method::POST])), "user-writes"),
        ];
        assert_eq!(dead(keys), vec![]);
    }

    #[test]
    fn a_route_without_methods_whose_every_method_is_taken_never_matches() {
        let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
        let writes = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
        let keys = vec![
            (key("/api/comments", None, Some(&reads)), "reads"),
            (key("/api/comments", None, Some(&writes)), "writes"),
            (key("/api/comments", None, None), "rest"),
            (key("/", None, None), "all"),
        ];
        assert_eq!(dead(keys), vec![("rest".to_string(), vec!["reads".to_string(), "writes".to_string()])]);
    }

    #[test]
    fn a_route_allowing_only_connect_never_matches() {
        let keys = vec![(key("/", None, None), "all"), (key("/tunnel", None, Some(&[Method::CONNECT])), "tunnel")];
        assert_eq!(dead(keys), vec![("tunnel".to_string(), vec![])]);
    }

    #[test]
    fn a_wildcard_is_probed_with_a_segment_no_route_names() {
        // `/probe` is a literal here: a probe with that segment would lose to it.
        let keys = vec![(key("/probe", None, None), "literal"), (key("/*", None, None), "wild")];
        assert_eq!(dead(keys), vec![]);
    }

    #[test]
    fn check_locates_each_lint_and_is_fatal_only_when_nothing_can_match() {
        let text = "routes:\n  - name: all\n    prefix: /\n  - name: tunnel\n    prefix: /t\n";
        let router =
            Router::new(vec![(key("/", None, None), "all"), (key("/t", None, Some(&[Method::CONNECT])), "tunnel")])
                .unwrap();
        let (lints, fatal) = check("r.yaml", text, &router, |n| *n);
        assert!(!fatal);
        assert_eq!(lints.len(), 1);
        assert!(lints[0].to_string().starts_with("r.yaml:4:5: route \"tunnel\" can never match"), "{}", lints[0]);
        let router = Router::new(vec![(key("/t", None, Some(&[Method::CONNECT])), "tunnel")]).unwrap();
        assert!(check("r.yaml", text, &router, |n| *n).1, "no route can match: fatal");
    }
}
