//! Sample diff records for tests (this crate's, and the offline tools'
//! through the `testkit` feature).

use serde_json::Value;

use crate::record::{DiffKind, DiffRecord, Difference, Outcome, PrimarySide, ShadowSide};
use crate::summary::stats;

/// Record `i` of `route`: a GET answered 200 by both sides, with `result` and `diffs`.
pub fn record(i: u64, route: &str, result: Outcome, diffs: Vec<(DiffKind, &str, Value, Value)>) -> DiffRecord {
    DiffRecord {
        ts: stats::format_ms(1_795_000_000_000 + i as i64 * 1000),
        request_id: format!("req-{i}"),
        shadow_request_id: None,
        id: None,
        instance: None,
        config_hash: None,
        client_ip: None,
        route: route.into(),
        endpoint: "/api/users/{id}".into(),
        method: "GET".into(),
        path: format!("/api/users/{i}"),
        query: None,
        primary: PrimarySide {
            upstream: "legacy".into(),
            status: Some(200),
            latency_ms: Some(10.0),
            body_bytes: Some(100),
        },
        shadow: ShadowSide {
            upstream: "users".into(),
            status: Some(200),
            latency_ms: Some(20.0),
            body_bytes: Some(100),
            error: None,
        },
        result,
        reason: None,
        diffs: diffs
            .into_iter()
            .map(|(kind, pointer, primary, shadow)| Difference { kind, pointer: pointer.into(), primary, shadow })
            .collect(),
        noise: vec![],
    }
}
