//! `strangler report`: cutover reports from shadow-diff records.
//!
//! [`source`] names where records come from (diff logs, a store), [`query`]
//! which of them count; [`collect`] reads every source twice — the noise
//! evidence of the whole fleet, then the records, each counted once and
//! judged again with that evidence — into a
//! [`Summary`](strangler_evidence::summary::Summary), whose view is judged in
//! `strangler-evidence` exactly as the live admin `/shadow` endpoint is.
//! [`input`] reads JSON-lines logs, [`markdown`] and [`html`] render the
//! view, and [`cli`] is the command.

pub mod chart;
pub mod cli;
pub mod collect;
pub mod html;
pub mod input;
pub mod markdown;
pub mod query;
pub mod source;
pub mod store;

#[cfg(test)]
mod tests;
