//! The diff record: one JSON object per line in the shadow-diff log.
//!
//! Field names are an interface that ops tooling parses: add fields, never
//! rename or remove them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How one shadowed request compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffRecord {
    /// RFC 3339 UTC time the client request arrived, e.g. `2026-11-25T20:26:10.123Z`.
    pub ts: String,
    /// The user's request (its `X-Request-Id`), as in the access log.
    pub request_id: String,
    /// Unique id of this record (a UUIDv7, time-ordered): a reader counts a record given twice once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The replica that wrote it: `POD_NAME`, else the hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The routes.yaml version in force when it was written (`Table.hash`, as on `/config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The `X-Request-Id` the candidate was sent: the mirrored copy is a
    /// request of its own (it carries `request_id` in
    /// `X-Strangler-Shadow-Of`). `None` when no copy was sent.
    #[serde(default)]
    pub shadow_request_id: Option<String>,
    /// The downstream client's address, behind `trusted_proxies` the one
    /// they forwarded (absent in records written before it was added).
    #[serde(default)]
    pub client_ip: Option<String>,
    pub route: String,
    /// Path template with numeric and UUID segments folded: `/api/users/{id}`.
    pub endpoint: String,
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query: Option<String>,
    pub primary: PrimarySide,
    pub shadow: ShadowSide,
    pub result: Outcome,
    /// Why a request was `skipped` or a `shadow_error`.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub diffs: Vec<Difference>,
    /// Pointers that differed between two answers of the primary (excluded from `diffs`).
    #[serde(default)]
    pub noise: Vec<String>,
}

/// The primary's answer, the one the client got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrimarySide {
    pub upstream: String,
    pub status: Option<u16>,
    pub latency_ms: Option<f64>,
    pub body_bytes: Option<u64>,
}

/// The candidate's answer, only compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowSide {
    pub upstream: String,
    pub status: Option<u16>,
    pub latency_ms: Option<f64>,
    pub body_bytes: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

/// The verdict of one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Match,
    Mismatch,
    ShadowError,
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::Mismatch => "mismatch",
            Outcome::ShadowError => "shadow_error",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub kind: DiffKind,
    /// JSON pointer for body fields (`/items/3/name`), the lower-case header
    /// name for headers, `""` for the status or a whole body.
    pub pointer: String,
    /// The primary's value (`null` when absent); for text bodies a short unified diff.
    pub primary: Value,
    pub shadow: Value,
}

/// What differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    Status,
    Header,
    Body,
}

/// Reasons a sampled request was not compared (`skipped` or `shadow_error`).
pub mod reason {
    pub const TOO_LARGE: &str = "too_large";
    pub const SHADOW_TIMEOUT: &str = "shadow_timeout";
    pub const SHADOW_ERROR: &str = "shadow_error";
    pub const INFLIGHT_CAP: &str = "inflight_cap";
    pub const NOT_COMPARABLE: &str = "not_comparable";
    pub const PRIMARY_ERROR: &str = "primary_error";
}
