//! Stage 2, admit: whether the route takes the request now. Only the
//! route's rate limit is checked here; an upstream's concurrency cap
//! (`max_concurrent`) is a slot per attempt, taken in `send`.

use http::header::HeaderMap;

use super::ClientIp;
use crate::error::ProxyError;
use crate::table::Route;

/// Lets the request through, or refuses it with a 429 that says how many
/// whole seconds until the client's bucket has a token again. The client's
/// address is resolved only for a `client_ip` limit.
pub(super) fn admit(route: &Route, headers: &HeaderMap, client: &mut ClientIp<'_>) -> Result<(), ProxyError> {
    let Some(limiter) = &route.rate_limit else { return Ok(()) };
    limiter.check(headers, || client.get(headers)).map_err(|wait| {
        route.rate_limited.inc();
        ProxyError::RateLimited { retry_after: wait.as_secs_f64().ceil().max(1.0) as u64 }
    })
}

#[cfg(test)]
mod tests {
    use http::header::HeaderValue;
    use http::StatusCode;

    use super::super::testing::{route_named as route, table};
    use super::super::Downstream;
    use super::*;
    use crate::forwarded::TrustedProxies;

    fn downstream(peer: &str) -> Downstream {
        Downstream::new(format!("{peer}:5000").parse().unwrap(), "http")
    }

    fn forwarded_for(chain: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static(chain));
        headers
    }

    #[test]
    fn a_client_past_the_burst_gets_a_429_with_retry_after() {
        let table = table();
        let limited = route(&table, "limited");
        let none = TrustedProxies::default();
        let client = downstream("192.0.2.7");
        let admit = |d: &Downstream| admit(limited, &HeaderMap::new(), &mut ClientIp::new(d, &none));
        assert!(admit(&client).is_ok(), "the burst lets one through");
        let refused = admit(&client).expect_err("the bucket is empty");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(matches!(refused, ProxyError::RateLimited { retry_after: 1 }), "{refused:?}");
        assert_eq!(limited.rate_limited.get(), 1);
        assert!(admit(&downstream("192.0.2.8")).is_ok(), "buckets are per client");
    }

    #[test]
    fn behind_a_trusted_proxy_the_bucket_is_the_forwarded_clients() {
        let table = table();
        let limited = route(&table, "limited");
        let lb = downstream("10.0.0.5");
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".to_string()]).unwrap();
        let admit = |headers: &HeaderMap, trusted| admit(limited, headers, &mut ClientIp::new(&lb, trusted));
        assert!(admit(&forwarded_for("203.0.113.1"), &trusted).is_ok());
        assert!(admit(&forwarded_for("203.0.113.2"), &trusted).is_ok(), "another client, its own bucket");
        assert!(admit(&forwarded_for("198.51.100.9, 203.0.113.1"), &trusted).is_err(), "a spoofed entry");
        let untrusted = TrustedProxies::default();
        assert!(admit(&forwarded_for("203.0.113.3"), &untrusted).is_ok(), "the balancer's own bucket");
        assert!(admit(&forwarded_for("203.0.113.4"), &untrusted).is_err(), "shared by all behind it");
    }

    #[test]
    fn a_route_without_a_limit_admits_everything_and_resolves_nothing() {
        let table = table();
        let (client, trusted) = (downstream("10.0.0.5"), TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap());
        for _ in 0..100 {
            let mut ip = ClientIp::new(&client, &trusted);
            assert!(admit(route(&table, "all"), &forwarded_for("203.0.113.1"), &mut ip).is_ok());
            assert_eq!(ip.resolved, None, "no header was read");
        }
    }
}
