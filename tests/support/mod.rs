//! Test support: real upstream servers, the real proxy (in-process or as the
//! binary) on ephemeral loopback ports, and small HTTP clients.

pub mod client;
pub mod handover;
pub mod postgres;
pub mod proxy;
pub mod stack;
pub mod upstream;

pub use client::*;
pub use handover::*;
pub use postgres::*;
pub use proxy::*;
pub use stack::*;
pub use upstream::*;
