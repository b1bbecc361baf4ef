//! The targets of an upstream: their addresses, their live state (health,
//! ejection, load), and the permit a request holds while it uses one. A
//! leaf below both the connections ([`super`]) and the upstream groups
//! ([`crate::upstream`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::{Authority, Scheme, Uri};
use prometheus::IntGauge;

use super::pool::PoolRef;

/// One address requests can be sent to, with its live state.
pub struct Target {
    pub url: Box<str>,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `host:port` to connect to (the scheme's port when the URL names none).
    pub address: Box<str>,
    /// The target's idle connections (shared by every upstream that lists
    /// the same URL with the same connection settings), and how long they
    /// are kept idle.
    pub pool: PoolRef,
    pub state: Arc<TargetState>,
}

/// Health and load of one target; kept across config reloads (keyed by
/// upstream name and URL) so a reload does not forget an outage.
pub struct TargetState {
    /// Verdict of the active health check (true until a check says otherwise).
    pub healthy: AtomicBool,
    /// Until when (ms since the epoch) passive outlier detection keeps it out.
    pub ejected_until_ms: AtomicU64,
    pub ejections: AtomicU32,
    pub consecutive_failures: AtomicU32,
    pub in_flight: AtomicUsize,
    pub healthy_gauge: IntGauge,
}

impl TargetState {
    pub fn new(healthy_gauge: IntGauge) -> Self {
        healthy_gauge.set(1);
        TargetState {
            healthy: AtomicBool::new(true),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            healthy_gauge,
        }
    }

    /// Takes traffic: passing active checks and not ejected.
    pub fn available(&self, now_ms: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms
    }

    /// Sets the active-check verdict; returns true when it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let changed = self.healthy.swap(healthy, Ordering::Relaxed) != healthy;
        self.healthy_gauge.set(healthy as i64);
        changed
    }
}

impl Target {
    /// Parses `http://host:port`; a path, query or credentials are refused.
    pub fn parse(url: &str) -> Result<(Scheme, Authority), String> {
        let uri: Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| format!("URL {url:?} has no scheme"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!("URL {url:?}: only http:// and https:// targets are supported"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| format!("URL {url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("URL {url:?}: credentials in target URLs are not allowed"));
        }
        if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
            return Err(format!("URL {url:?}: a target must not have a path or query"));
        }
        Ok((scheme, authority))
    }

    /// `host:port` to connect to.
    pub fn address(scheme: &Scheme, authority: &Authority) -> Box<str> {
        match authority.port_u16() {
            Some(_) => authority.as_str().into(),
            None => {
                let port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
                format!("{}:{port}", authority.host()).into()
            }
        }
    }
}

/// An upstream's targets, with the count of requests in flight to any of
/// them (what `max_concurrent` caps). Shared by the upstream and its
/// permits, so a permit can give its slots back without knowing the upstream.
pub struct Targets {
    list: Box<[Target]>,
    in_flight: AtomicUsize,
}

impl std::ops::Deref for Targets {
    type Target = [Target];

    fn deref(&self) -> &[Target] {
        &self.list
    }
}

impl Targets {
    pub fn new(list: Vec<Target>) -> Self {
        Targets { list: list.into(), in_flight: AtomicUsize::new(0) }
    }

    /// Requests in flight to these targets now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes a slot for target `index`, unless `max` are already taken.
    pub fn try_acquire(self: &Arc<Self>, index: usize, max: Option<usize>) -> Option<Permit> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        if max.is_some_and(|max| before >= max) {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.list[index].state.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Permit { targets: self.clone(), index })
    }
}

/// Holds one concurrency slot of an upstream and one of a target, for as
/// long as the exchange lasts (it travels with the response body).
pub struct Permit {
    targets: Arc<Targets>,
    index: usize,
}

impl Permit {
    pub fn target(&self) -> &Target {
        &self.targets.list[self.index]
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit({})", self.target().url)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.targets.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.target().state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_parsing() {
        assert!(Target::parse("http://127.0.0.1:5000").is_ok());
        assert!(Target::parse("http://127.0.0.1:5000/").is_ok());
        assert!(Target::parse("127.0.0.1:5000").is_err());
        assert!(Target::parse("http://h:1/base").is_err());
        assert!(Target::parse("ftp://h").is_err());
        assert!(Target::parse("https://h:8443").is_ok());
        assert!(Target::parse("http://u:p@h").is_err());
        assert!(Target::parse("not a url").is_err());
    }
}
