//! One integration-test binary (faster to link than one per file).
//! Every test runs the real proxy against real upstream servers on loopback.

mod support;

mod access_log;
mod admin;
mod answers;
mod architecture;
mod autopilot_fleet;
mod cli;
mod e2e;
mod errors;
mod fleet;
mod front;
mod handover;
mod headers;
mod hostile;
mod lifecycle;
mod misdirected;
mod observability;
mod path_safety;
mod pooling;
mod preview;
mod protocols;
mod reload;
mod report;
mod rollout;
mod routing;
mod shadow;
mod soak;
mod tls;
mod traffic;
