//! # strangler-offline
//!
//! The tools that work on shadow-diff logs after the fact, outside the proxy:
//!
//! - [`report`]: `strangler report`, the cutover report (HTML, Markdown or
//!   JSON) from one log per replica.
//! - [`replay`]: `strangler replay`, re-sends logged mismatches to a new
//!   build and shows which are fixed.
//!
//! The records, the comparison and the verdict come from
//! [`strangler_evidence`], the same code the proxy uses live, so a report
//! judges a route exactly as the admin `/shadow` endpoint does. The
//! `strangler` binary wires both commands; the proxy library does not
//! depend on this crate.

pub mod replay;
pub mod report;
