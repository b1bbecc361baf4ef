//! Test support: real upstream servers, the real proxy (in-process or as the
//! binary) on ephemeral loopback ports, and small HTTP clients.

pub mod client;
pub mod handover;
pub mod postgres;
pub mod prometheus;
pub mod proxy;
pub mod rollout;
pub mod stack;
pub mod upstream;

pub use client::*;
pub use handover::*;
pub use postgres::*;
pub use prometheus::*;
pub use proxy::*;
pub use rollout::*;
pub use stack::*;
pub use upstream::*;
