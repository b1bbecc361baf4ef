//! Per-route rate limits: a token bucket per key (client IP or a header).
//! Each replica keeps its own buckets: across a fleet the limit a client
//! meets is `replicas × rps`.
//! Buckets live in a few sharded maps, touched only by routes that set
//! `rate_limit`; idle buckets are pruned so a flood of keys cannot grow
//! memory without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::header::{HeaderMap, HeaderName};

use crate::split::stable_hash;

/// What identifies a client for the limit.
#[derive(Debug, Clone)]
pub enum RateKey {
    ClientIp,
    Header(HeaderName),
}

const SHARDS: usize = 16;
const PRUNE_ABOVE: usize = 8192;

/// A token-bucket limiter for one route.
pub struct RateLimiter {
    pub rps: f64,
    pub burst: f64,
    pub key: RateKey,
    shards: [Mutex<HashMap<Box<[u8]>, Bucket>>; SHARDS],
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rps: f64, burst: f64, key: RateKey) -> Self {
        RateLimiter { rps, burst, key, shards: Default::default() }
    }

    /// `Ok` to let the request through, or how long until a token is free.
    /// `client` gives the downstream client's address (asked only for a
    /// `client_ip` key: behind trusted proxies it reads `X-Forwarded-For`).
    pub fn check(&self, headers: &HeaderMap, client: impl FnOnce() -> IpAddr) -> Result<(), Duration> {
        let mut ip_buf = [0u8; 16];
        let key: &[u8] = match &self.key {
            RateKey::ClientIp => match client() {
                IpAddr::V4(v4) => {
                    ip_buf[..4].copy_from_slice(&v4.octets());
                    &ip_buf[..4]
                }
                IpAddr::V6(v6) => {
                    ip_buf.copy_from_slice(&v6.octets());
                    &ip_buf
                }
            },
            RateKey::Header(name) => headers.get(name).map_or(&b""[..], |v| v.as_bytes()),
        };
        let shard = &self.shards[(stable_hash(key, 7) as usize) % SHARDS];
        let mut buckets = shard.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if buckets.len() > PRUNE_ABOVE {
            let full_after = Duration::from_secs_f64(self.burst / self.rps);
            buckets.retain(|_, b| now.duration_since(b.last) < full_after);
        }
        let bucket = match buckets.get_mut(key) {
            Some(b) => b,
            None => buckets.entry(key.into()).or_insert(Bucket { tokens: self.burst, last: now }),
        };
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rps).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rps))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_then_refill() {
        let limiter = RateLimiter::new(10.0, 3.0, RateKey::ClientIp);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let h = HeaderMap::new();
        for _ in 0..3 {
            assert!(limiter.check(&h, || ip).is_ok());
        }
        let wait = limiter.check(&h, || ip).unwrap_err();
        assert!(wait <= Duration::from_millis(101), "{wait:?}");
        std::thread::sleep(Duration::from_millis(120));
        assert!(limiter.check(&h, || ip).is_ok());
        assert!(limiter.check(&h, || "127.0.0.2".parse().unwrap()).is_ok(), "keys are separate");
    }

    #[test]
    fn a_header_key_never_asks_for_the_client_address() {
        let limiter = RateLimiter::new(10.0, 1.0, RateKey::Header(HeaderName::from_static("x-api-key")));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k1".parse().unwrap());
        assert!(limiter.check(&h, || unreachable!("the address is not the key")).is_ok());
        assert!(limiter.check(&h, || unreachable!("the address is not the key")).is_err());
    }
}
