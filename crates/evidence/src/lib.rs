//! # strangler-evidence
//!
//! What a shadow comparison found, and how it is judged. The proxy (which
//! writes the evidence live) and the offline tools (which read it back from
//! logs) share this crate, so a route's verdict is reached the same way
//! wherever it is asked for.
//!
//! - [`record`]: the diff record, one JSON object per line in the shadow-diff log.
//! - [`diff`]: comparing two answers to the same request.
//! - [`noise`]: which differences are noise (fields that differ between two
//!   answers of the primary), the one rule of the live shadow and the report.
//! - [`summary`]: the bounded, mergeable aggregate of records and the
//!   cutover verdict per route (the admin `/shadow` endpoint and
//!   `strangler report` both show it).
//!
//! A leaf: nothing here opens a socket, runs an async runtime or speaks HTTP
//! on the wire (the `http` crate is used for its header map only).

pub mod diff;
pub mod noise;
pub mod record;
pub mod summary;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
