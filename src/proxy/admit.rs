//! Stage 2, admit: whether the route takes the request now. Only the
//! route's rate limit is checked here; an upstream's concurrency cap
//! (`max_concurrent`) is a slot per attempt, taken in `send`.

use http::header::HeaderMap;

use super::Downstream;
use crate::error::ProxyError;
use crate::table::Route;

/// Lets the request through, or refuses it with a 429 that says how many
/// whole seconds until the client's bucket has a token again.
pub(super) fn admit(route: &Route, headers: &HeaderMap, downstream: &Downstream) -> Result<(), ProxyError> {
    let Some(limiter) = &route.rate_limit else { return Ok(()) };
    limiter.check(headers, downstream.remote.ip()).map_err(|wait| {
        route.rate_limited.inc();
        ProxyError::RateLimited { retry_after: wait.as_secs_f64().ceil().max(1.0) as u64 }
    })
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::super::testing::{route_named as route, table};
    use super::*;

    #[test]
    fn a_client_past_the_burst_gets_a_429_with_retry_after() {
        let table = table();
        let limited = route(&table, "limited");
        let client = Downstream::new("192.0.2.7:5000".parse().unwrap(), "http");
        assert!(admit(limited, &HeaderMap::new(), &client).is_ok(), "the burst lets one through");
        let refused = admit(limited, &HeaderMap::new(), &client).expect_err("the bucket is empty");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(matches!(refused, ProxyError::RateLimited { retry_after: 1 }), "{refused:?}");
        assert_eq!(limited.rate_limited.get(), 1);
        let other = Downstream::new("192.0.2.8:5000".parse().unwrap(), "http");
        assert!(admit(limited, &HeaderMap::new(), &other).is_ok(), "buckets are per client");
    }

    #[test]
    fn a_route_without_a_limit_admits_everything() {
        let table = table();
        let client = Downstream::new("192.0.2.7:5000".parse().unwrap(), "http");
        for _ in 0..100 {
            assert!(admit(route(&table, "all"), &HeaderMap::new(), &client).is_ok());
        }
    }
}
