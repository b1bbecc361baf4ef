//! Active health checks: one task per target of each upstream that sets
//! `health_check`, asking `GET path` every interval. A target turns
//! unhealthy after `unhealthy_after` failures in a row and healthy again
//! after `healthy_after` successes. A task ends by itself when its config
//! version is no longer in use (it holds only a weak reference).

use std::sync::{Arc, Weak};

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request};

use crate::client::body::ProxyBody;
use crate::table::Table;
use crate::upstream::Upstream;

/// Starts the checks for every upstream of `table` that asks for them.
pub fn spawn_for(table: &Table) {
    for upstream in table.upstreams.values() {
        if upstream.settings.health_check.is_some() {
            for index in 0..upstream.targets.len() {
                tokio::spawn(check_loop(Arc::downgrade(upstream), index));
            }
        }
    }
}

async fn check_loop(upstream: Weak<Upstream>, index: usize) {
    let (mut failures, mut successes) = (0u32, 0u32);
    loop {
        let interval = match upstream.upgrade() {
            Some(u) => u.settings.health_check.as_ref().map(|h| h.interval),
            None => None,
        };
        let Some(interval) = interval else { return };
        tokio::time::sleep(interval).await;
        let Some(upstream) = upstream.upgrade() else { return };
        let Some(check) = upstream.settings.health_check.clone() else { return };
        let target = &upstream.targets[index];
        let ok = probe(&upstream, index, &check.path, check.timeout).await;
        if ok {
            successes += 1;
            failures = 0;
        } else {
            failures += 1;
            successes = 0;
        }
        let healthy = target.state.healthy.load(std::sync::atomic::Ordering::Relaxed);
        if healthy && failures >= check.unhealthy_after {
            target.state.set_healthy(false);
            tracing::warn!(upstream = %upstream.name, target = %target.url, failures, "target marked unhealthy by its health check");
        } else if !healthy && successes >= check.healthy_after {
            target.state.set_healthy(true);
            // A target that recovered starts with a clean outlier record.
            target.state.ejected_until_ms.store(0, std::sync::atomic::Ordering::Relaxed);
            target.state.ejections.store(0, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(upstream = %upstream.name, target = %target.url, "target healthy again");
        }
    }
}

async fn probe(upstream: &Upstream, index: usize, path: &str, timeout: std::time::Duration) -> bool {
    let target = &upstream.targets[index];
    let Ok(pq) = PathAndQuery::try_from(path) else { return false };
    let mut req = Request::new(ProxyBody::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = http::Uri::from(pq);
    req.headers_mut().insert(header::USER_AGENT, HeaderValue::from_static("strangler-health-check"));
    let exchange = async {
        let response = upstream.connector.send(target, req).await.ok()?;
        let ok = response.status().is_success();
        crate::client::read_to_end(response.into_body(), |_| {}).await.ok()?;
        Some(ok)
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten().unwrap_or(false)
}
