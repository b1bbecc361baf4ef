//! Preview: what an edit of `routes.yaml` moves, before it is applied.
//!
//! The running proxy keeps a bounded sample of its recent traffic
//! ([`sample`]: method, host, normalized path and a hash of the sticky key —
//! no header or query values); `POST /preview` on the admin API and
//! `strangler check NEW.yaml --preview URL` route that sample through the
//! table in force and through the proposed one ([`compare`]), and report the
//! share of requests whose route or upstream would change, the sticky keys
//! that would move, the routes that would receive nothing and the requests
//! no route would take. [`lint`] finds, without traffic, the routes no
//! request can reach; [`text`] prints a preview for people.
//!
//! Routing here is the proxy's own ([`crate::router::Router`] and
//! [`crate::split::Split`]), but pure: health and fallbacks are left out,
//! so an upstream that is down today does not show as a move.

pub mod compare;
pub mod lint;
pub mod sample;
pub mod text;

pub use compare::{compare, Move, Preview, RouteMoves, Unreachable};
pub use lint::{never_matching, NeverMatches};
pub use sample::{Sample, Sampler, StickyHash};
