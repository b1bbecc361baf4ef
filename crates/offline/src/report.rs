//! `strangler report`: cutover reports from shadow-diff logs.
//!
//! [`input`] reads the logs (one per replica, in parallel) into a
//! [`Summary`](strangler_evidence::summary::Summary), whose view is judged
//! in `strangler-evidence` exactly as the live admin `/shadow` endpoint is;
//! [`markdown`] and [`html`] render that view, and [`cli`] is the command.

pub mod cli;
pub mod html;
pub mod input;
pub mod markdown;

#[cfg(test)]
mod tests;
