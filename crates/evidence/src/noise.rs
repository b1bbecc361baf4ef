//! Noise: fields that differ between two answers of the primary itself, so
//! their differences say nothing about the candidate.
//!
//! One rule decides whether a difference is noise, wherever it is asked:
//! the live shadow (which learns noise per route as it probes) and
//! `strangler report` (which gathers the noise evidence of the whole fleet
//! first and then judges every record again, [`FleetNoise::rejudge`]). A
//! difference is noise when it is not a status difference and its
//! [`field_key`] is among the known noise keys.

use std::collections::{BTreeSet, HashMap};

use crate::record::{DiffKind, DiffRecord, Difference, Outcome};
use crate::summary::stats::fold_pointer;

/// Noise keys kept per (route, endpoint); more are ignored (a route whose
/// every field varies has no use for a longer list).
pub const MAX_KEYS: usize = 500;
/// Endpoints with noise kept per route; the noise of further endpoints is
/// ignored, so their records keep the verdict they were written with.
pub const MAX_ENDPOINTS: usize = 500;

/// The name a difference is known by, in noise evidence and in counts:
/// `status`, `header:NAME` (lower case), or the body pointer with array
/// indexes folded (`/items/*/etag`; `""` for a whole text or binary body).
pub fn field_key(d: &Difference) -> String {
    key(d.kind, &d.pointer)
}

/// [`field_key`] for a kind and a pointer.
pub fn key(kind: DiffKind, pointer: &str) -> String {
    match kind {
        DiffKind::Status => "status".to_string(),
        DiffKind::Header => format!("header:{}", pointer.to_ascii_lowercase()),
        DiffKind::Body => fold_pointer(pointer),
    }
}

/// A noise entry as a record carries it, as a key: records written before
/// pointers were folded carry `/items/3/etag`, which is `/items/*/etag`.
pub fn normalize(entry: &str) -> String {
    match entry.strip_prefix("header:") {
        Some(name) => format!("header:{}", name.to_ascii_lowercase()),
        None => fold_pointer(entry),
    }
}

/// Whether `d` is noise, given the noise keys known for its route: the one
/// rule both the live shadow and the report apply.
pub fn is_noise(d: &Difference, known: &BTreeSet<String>) -> bool {
    d.kind != DiffKind::Status && known.contains(&field_key(d))
}

/// Removes the differences that are noise under `known` from a mismatch,
/// adds their keys to its `noise` evidence, and makes it a match when
/// nothing else differs. Returns true when it turned a mismatch into a match.
pub fn strip(record: &mut DiffRecord, known: &BTreeSet<String>) -> bool {
    if record.result != Outcome::Mismatch || known.is_empty() {
        return false;
    }
    let mut stripped: Vec<String> = Vec::new();
    record.diffs.retain(|d| {
        let noisy = is_noise(d, known);
        if noisy {
            stripped.push(field_key(d));
        }
        !noisy
    });
    if stripped.is_empty() {
        return false;
    }
    for key in stripped {
        if !record.noise.iter().any(|n| normalize(n) == key) {
            record.noise.push(key);
        }
    }
    if record.diffs.is_empty() {
        record.result = Outcome::Match;
        return true;
    }
    false
}

/// The noise evidence of a whole data set, per route and endpoint: a key
/// seen as noise in any record (from any replica, at any time) is noise for
/// every record of that route and endpoint.
#[derive(Debug, Clone, Default)]
pub struct FleetNoise {
    routes: HashMap<String, HashMap<String, BTreeSet<String>>>,
}

impl FleetNoise {
    /// Adds the noise entries of one record of `route` and `endpoint`.
    pub fn add<'a>(&mut self, route: &str, endpoint: &str, entries: impl IntoIterator<Item = &'a str>) {
        let mut entries = entries.into_iter().peekable();
        if entries.peek().is_none() {
            return;
        }
        let endpoints = match self.routes.get_mut(route) {
            Some(e) => e,
            None => self.routes.entry(route.to_string()).or_default(),
        };
        if !endpoints.contains_key(endpoint) {
            if endpoints.len() >= MAX_ENDPOINTS {
                return;
            }
            endpoints.insert(endpoint.to_string(), BTreeSet::new());
        }
        let Some(keys) = endpoints.get_mut(endpoint) else { return };
        for entry in entries {
            if keys.len() >= MAX_KEYS {
                break;
            }
            keys.insert(normalize(entry));
        }
    }

    /// Adds the noise evidence of a record.
    pub fn add_record(&mut self, r: &DiffRecord) {
        self.add(&r.route, &r.endpoint, r.noise.iter().map(String::as_str));
    }

    /// Adds another share of the evidence (another file's, another thread's).
    pub fn merge(&mut self, other: FleetNoise) {
        for (route, endpoints) in other.routes {
            for (endpoint, keys) in endpoints {
                self.add(&route, &endpoint, keys.iter().map(String::as_str));
            }
        }
    }

    /// The noise keys known for a route and endpoint.
    pub fn keys(&self, route: &str, endpoint: &str) -> Option<&BTreeSet<String>> {
        self.routes.get(route)?.get(endpoint)
    }

    /// Judges a record again with the fleet's noise ([`strip`] with the keys
    /// of its route and endpoint). True when a mismatch became a match.
    pub fn rejudge(&self, record: &mut DiffRecord) -> bool {
        if record.result != Outcome::Mismatch {
            return false;
        }
        match self.keys(&record.route, &record.endpoint) {
            Some(known) => strip(record, known),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testkit::record;

    fn keys(k: &[&str]) -> BTreeSet<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keys_fold_indexes_and_lower_header_names() {
        let d = |kind, p: &str| Difference { kind, pointer: p.into(), primary: json!(1), shadow: json!(2) };
        assert_eq!(field_key(&d(DiffKind::Body, "/items/3/etag")), "/items/*/etag");
        assert_eq!(field_key(&d(DiffKind::Header, "ETag")), "header:etag");
        assert_eq!(field_key(&d(DiffKind::Status, "")), "status");
        assert_eq!(normalize("/items/7/etag"), "/items/*/etag");
        assert_eq!(normalize("header:X-Trace"), "header:x-trace");
    }

    #[test]
    fn a_mismatch_of_noise_only_becomes_a_match_and_status_is_never_noise() {
        let known = keys(&["/nonce", "header:etag", "status"]);
        let mut r = record(1, "r", Outcome::Mismatch, vec![(DiffKind::Body, "/nonce", json!("a"), json!("b"))]);
        assert!(strip(&mut r, &known));
        assert_eq!((r.result, r.diffs.len(), r.noise.clone()), (Outcome::Match, 0, vec!["/nonce".to_string()]));

        let mut r = record(
            2,
            "r",
            Outcome::Mismatch,
            vec![(DiffKind::Status, "", json!(200), json!(500)), (DiffKind::Header, "etag", json!("x"), json!("y"))],
        );
        assert!(!strip(&mut r, &known));
        assert_eq!(r.result, Outcome::Mismatch);
        assert_eq!(r.diffs.len(), 1, "the noise field is gone, the status stays");
        assert_eq!(r.noise, vec!["header:etag".to_string()]);
    }

    #[test]
    fn fleet_noise_is_per_route_and_endpoint() {
        let mut fleet = FleetNoise::default();
        let mut prober = record(1, "users", Outcome::Match, vec![]);
        prober.noise = vec!["/items/0/nonce".into()];
        fleet.add_record(&prober);
        let diff = || vec![(DiffKind::Body, "/items/4/nonce", json!(1), json!(2))];
        let mut same = record(2, "users", Outcome::Mismatch, diff());
        assert!(fleet.rejudge(&mut same));
        let mut other_endpoint = record(3, "users", Outcome::Mismatch, diff());
        other_endpoint.endpoint = "/api/users".into();
        assert!(!fleet.rejudge(&mut other_endpoint));
        let mut other_route = record(4, "comments", Outcome::Mismatch, diff());
        assert!(!fleet.rejudge(&mut other_route));
    }
}
