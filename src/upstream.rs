//! Upstream groups: their targets, their timeouts and the pooled client that
//! reaches them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::ProxyBody;
use crate::metrics::UpstreamErrors;

/// The pooled HTTP client the proxy uses for upstream requests.
pub type HttpClient = Client<HttpConnector, ProxyBody>;

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One address requests can be sent to.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: Box<str>,
    pub scheme: Scheme,
    pub authority: Authority,
}

impl Target {
    /// Parses `http://host:port`; a path, query or credentials are refused.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| format!("URL {url:?} has no scheme"))?;
        if scheme != Scheme::HTTP {
            return Err(format!("URL {url:?}: only http:// targets are supported"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| format!("URL {url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("URL {url:?}: credentials in target URLs are not allowed"));
        }
        if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
            return Err(format!("URL {url:?}: a target must not have a path or query"));
        }
        Ok(Target { url: url.into(), scheme, authority })
    }

    /// The absolute URI of `path_and_query` on this target.
    pub fn uri(&self, path_and_query: PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).expect("scheme, authority and path make a valid URI")
    }
}

/// A named group of targets, with the client that reaches them.
pub struct Upstream {
    pub name: Arc<str>,
    pub targets: Box<[Target]>,
    pub connect_timeout: Duration,
    /// Deadline for the whole response head.
    pub timeout: Duration,
    pub client: HttpClient,
    pub errors: UpstreamErrors,
    next: AtomicUsize,
}

impl Upstream {
    pub fn new(
        name: &str,
        targets: Vec<Target>,
        connect_timeout: Duration,
        timeout: Duration,
        client: HttpClient,
        errors: UpstreamErrors,
    ) -> Self {
        Upstream {
            name: name.into(),
            targets: targets.into(),
            connect_timeout,
            timeout,
            client,
            errors,
            next: AtomicUsize::new(fastrand::usize(..)),
        }
    }

    /// The next target in round-robin order.
    pub fn pick(&self) -> &Target {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.targets[i % self.targets.len()]
    }
}

/// Clients shared across config versions, keyed by their connect timeout, so
/// a reload keeps the warm keep-alive pools.
#[derive(Default)]
pub struct ClientCache {
    clients: Mutex<HashMap<Duration, HttpClient>>,
}

impl ClientCache {
    /// The client for this connect timeout (made once; taken only at config load).
    pub fn get(&self, connect_timeout: Duration) -> HttpClient {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.entry(connect_timeout).or_insert_with(|| build_client(connect_timeout)).clone()
    }
}

fn build_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .set_host(false)
        .build(connector)
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
        assert!(Target::parse("http://u:p@h").is_err());
        assert!(Target::parse("not a url").is_err());
    }
}
