//! What the stage tests share: a table built from a config the way the
//! proxy builds it, and requests as the server hands them over.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request};

use crate::client::body::ProxyBody;
use crate::table::{Route, Table};
use crate::Shared;

/// Upstreams point at the discard port: no stage test opens a socket.
const CONFIG: &str = r#"
listen: "127.0.0.1:0"
admin: "127.0.0.1:0"
shadow: {max_inflight: 1}
upstreams:
  legacy: {targets: ["http://127.0.0.1:9"]}
  new: {targets: ["http://127.0.0.1:9"], retries: 1}
  candidate: {targets: ["http://127.0.0.1:9"]}
routes:
  - {name: all, prefix: /, upstream: legacy, methods: [GET, HEAD, POST, OPTIONS]}
  - {name: admin, prefix: /, host: admin.example.com, upstream: legacy}
  - {name: api, prefix: /api, upstream: new, strip_prefix: true}
  - {name: orders, prefix: /orders, upstream: new, fallback: legacy}
  - {name: mirrored, prefix: /mirrored, upstream: legacy, shadow: {upstream: candidate}}
  - name: cut-over
    prefix: /cut-over
    split: [{upstream: candidate, weight: 100}, {upstream: legacy, weight: 0}]
    shadow: {upstream: candidate}
  - {name: limited, prefix: /limited, upstream: legacy, rate_limit: {rps: 1, burst: 1}}
"#;

/// The shared state for [`CONFIG`].
pub(super) fn shared() -> Arc<Shared> {
    Shared::from_text("stages.yaml", CONFIG).expect("the stage tests' config is valid")
}

/// The route table for [`CONFIG`].
pub(super) fn table() -> Arc<Table> {
    shared().table.load_full()
}

/// A bodiless request with these `Host` headers.
pub(super) fn request(method: Method, target: &str, hosts: &[&str]) -> Request<ProxyBody> {
    let mut req = Request::builder().method(method).uri(target).body(ProxyBody::empty()).expect("a valid request");
    for host in hosts {
        req.headers_mut().append(header::HOST, HeaderValue::from_str(host).expect("a valid Host"));
    }
    req
}

/// The route of [`CONFIG`] called `name`.
pub(super) fn route_named<'t>(table: &'t Table, name: &str) -> &'t Route {
    table.router.entries().iter().map(|(_, r)| r).find(|r| &*r.name == name).expect("a route of the config")
}
