//! Code shared by the services extracted from the legacy Flask monolith:
//! Flask-compatible JSON and error rendering, Werkzeug's HTML 404/405 pages,
//! RFC 822 dates, pagination, JWT authentication (PyJWT-compatible checks),
//! SQLite helpers, the change-feed sync loop, a service's own change feed
//! (outbox), the internal-token rule and the server runner.

pub mod auth;
pub mod body;
pub mod dates;
pub mod db;
pub mod errors;
pub mod flask_json;
pub mod internal;
pub mod outbox;
pub mod pagination;
pub mod server;
pub mod sync;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use errors::ApiError;
