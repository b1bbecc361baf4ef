//! Stage 5, finish: the upstream's answer made the client's, and the
//! request counted and logged, whether it was answered or refused
//! ([`Exchange`]: metrics at the answer's head, the access-log line at its
//! end).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::{ClientIp, Outcome};
use crate::access_log::{key, Line};
use crate::client::body::{Answer, ProxyBody};
use crate::error::ProxyError;
use crate::headers;
use crate::shadow::ResponseTap;
use crate::table::Table;

/// Edits the answer for the client: hop-by-hop headers out, the client's
/// protocol version whatever the upstream spoke. A 101 the client asked for
/// is tunnelled (and keeps `Upgrade`); one it did not ask for is the
/// upstream's fault. A running mirror gets its copy of the answer as it
/// streams to the client, with the request id in its head as the client
/// gets it; otherwise the server adds the request id as it writes the head
/// (`X-Request-Id` is a custom name, costly to hash into the map).
pub(super) fn finish(
    mut response: Answer,
    downstream_upgrade: Option<OnUpgrade>,
    downstream_version: Version,
    request_id: &HeaderValue,
    tap: Option<ResponseTap>,
    upstream: Option<&Arc<str>>,
) -> Result<Answer, ProxyError> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        match downstream_upgrade {
            Some(downstream) => tunnel(downstream, hyper::upgrade::on(&mut *response)),
            None => {
                return Err(ProxyError::UpstreamFailed {
                    upstream: upstream.map_or_else(String::new, |u| u.to_string()),
                    detail: "answered 101 to a request that asked for no upgrade".into(),
                })
            }
        }
    }
    let hdrs = response.headers_mut();
    headers::strip_hop_by_hop(hdrs, switching);
    if switching {
        headers::set_upgrade(hdrs);
    }
    // Answer in the client's protocol version, whatever the upstream spoke.
    *response.version_mut() = downstream_version;
    Ok(match tap {
        Some(tap) => {
            answer_headers(&mut response).insert(headers::X_REQUEST_ID.clone(), request_id.clone());
            Box::new(tap.tee(*response, upstream.map_or_else(|| "".into(), Arc::clone)))
        }
        None => response,
    })
}

/// The answer's map, whole: an upstream's head our client kept as it
/// arrived ([`crate::client::body::fill_headers`]) is made a map here and
/// loses its hop-by-hop fields, as `finish` strips a map. For every
/// reader of the answer's map (the mirror, hyper's server); our
/// HTTP/1.1 loop writes such a head from its bytes, without a map.
pub fn answer_headers(response: &mut Response<ProxyBody>) -> &mut http::HeaderMap {
    if crate::client::body::fill_headers(response) {
        // A head whose `Connection` names fields is never kept as it arrived.
        headers::strip_hop_by_hop(response.headers_mut(), false);
    }
    response.headers_mut()
}

/// Copies bytes both ways once both sides have switched protocols.
fn tunnel(downstream: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut downstream = TokioIo::new(downstream);
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
            tracing::debug!(error = %e, "tunnel closed with an error");
        }
    });
}

/// One request's passage, from its head to its answer's last byte: what
/// the metrics and the access log need to know. [`super::handle`] puts it
/// where the server keeps it; the server counts the body bytes it writes
/// ([`Exchange::sent`]) and drops it when the answer has ended, or the
/// client has gone. A sampled request's access-log line is written then
/// (`Drop`), as nginx logs a request: with the bytes really sent and the
/// whole time taken. Dropped before its answer was ready (the client left),
/// it is logged with status 499, nginx's "client closed request".
pub struct Exchange {
    pub(super) table: Arc<Table>,
    pub(super) request_id: HeaderValue,
    pub(super) method: Method,
    pub(super) start: Instant,
    pub(super) outcome: Outcome,
    /// `None` until the answer's head is ready.
    status: Option<StatusCode>,
    body_bytes_sent: u64,
    /// Set for a request the access log samples.
    pub(super) access: Option<AccessFields>,
}

/// What only the access log reads, taken from the request when it is sampled.
pub(super) struct AccessFields {
    /// The target as the client sent it (a cheap clone: shared bytes);
    /// its path is logged, never its query.
    uri: Uri,
    client_ip: IpAddr,
    user_agent: Option<HeaderValue>,
}

impl AccessFields {
    /// The fields of `req` if the access log samples it (then the client's
    /// address is resolved now: a request refused early is logged with it).
    pub(super) fn sample(table: &Table, req: &Request<ProxyBody>, client: &mut ClientIp<'_>) -> Option<AccessFields> {
        table.access_log.as_ref().filter(|log| log.sampled())?;
        Some(AccessFields {
            uri: req.uri().clone(),
            client_ip: client.get(req.headers()),
            user_agent: req.headers().get(header::USER_AGENT).cloned(),
        })
    }
}

impl Exchange {
    pub(super) fn new(table: Arc<Table>, request_id: HeaderValue, method: Method, start: Instant) -> Self {
        Exchange {
            table,
            request_id,
            method,
            start,
            outcome: Outcome::default(),
            status: None,
            body_bytes_sent: 0,
            access: None,
        }
    }

    /// The request's id, which the server writes into the answer's head
    /// (`X-Request-Id`, replacing any the upstream sent).
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    /// Counts `n` bytes of the answer's body as written to the client.
    pub fn sent(&mut self, n: usize) {
        self.body_bytes_sent += n as u64;
    }

    /// The server answered with another status than the proxy's answer (an
    /// answer that failed before its first byte became a 502).
    pub fn answered_with(&mut self, status: StatusCode) {
        self.status = Some(status);
    }

    /// Counts the request on the route and upstream that served it. Runs
    /// for refused requests too (their answer is the error's).
    pub(super) fn record(&mut self, response: Answer) -> Answer {
        if let Some(used) = self.outcome.used(&self.table) {
            used.stats.record(&self.method, response.status(), self.start.elapsed());
        }
        self.status = Some(response.status());
        response
    }

    /// The field that names the upstream that served the request, when the
    /// table says to add one (`upstream_header`); the server writes it into
    /// the answer's head, as it does the request id, replacing the upstream's.
    pub fn upstream_header(&self) -> Option<(&HeaderName, &HeaderValue)> {
        let name = self.table.upstream_header.as_ref()?;
        Some((name, &self.outcome.used(&self.table)?.upstream.name_header))
    }

    /// The access-log fields, in order (after `ts`): `client_ip`, `method`,
    /// `path`, `route`, `upstream`, `misdirected_from` (only when set),
    /// `status`, `body_bytes_sent`, `duration_us`, `user_agent`,
    /// `request_id`, `config_hash`.
    fn fields(&self, access: &AccessFields, line: &mut Line<'_>) {
        let route = self.outcome.route(&self.table);
        let name = |i: usize| route.map(|r| r.upstreams[i].upstream.name.as_bytes());
        line.ip(key!("client_ip"), access.client_ip);
        // A method is a token: no quote, backslash or control byte.
        line.plain(key!("method"), self.method.as_str());
        line.string(key!("path"), access.uri.path().as_bytes());
        line.string_or_null(key!("route"), route.map(|r| r.name.as_bytes()));
        line.string_or_null(key!("upstream"), self.outcome.upstream.and_then(name));
        if let Some(from) = self.outcome.misdirected_from.and_then(name) {
            line.string(key!("misdirected_from"), from);
        }
        line.number(key!("status"), self.status.map_or(CLIENT_CLOSED_REQUEST, |s| s.as_u16()).into());
        line.number(key!("body_bytes_sent"), self.body_bytes_sent);
        line.number(key!("duration_us"), self.start.elapsed().as_micros() as u64);
        line.string_or_null(key!("user_agent"), access.user_agent.as_ref().map(HeaderValue::as_bytes));
        line.string(key!("request_id"), self.request_id.as_bytes());
        // SHA-256 in hex.
        line.plain(key!("config_hash"), &self.table.hash);
    }
}

/// nginx's status for a request whose client left before the answer.
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Drop for Exchange {
    fn drop(&mut self) {
        let (Some(access), Some(log)) = (&self.access, &self.table.access_log) else { return };
        log.sink().append(|line| self.fields(access, line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream_answer(status: u16, headers: &[(&'static str, &str)]) -> Answer {
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        *response.version_mut() = Version::HTTP_11;
        for (name, value) in headers {
            response.headers_mut().append(header::HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
        }
        Box::new(response)
    }

    #[test]
    fn the_answer_loses_hop_by_hop_headers_and_gets_the_clients_version() {
        let answer = upstream_answer(
            200,
            &[
                ("connection", "keep-alive, x-internal"),
                ("keep-alive", "timeout=5"),
                ("x-internal", "1"),
                ("etag", "\"v1\""),
            ],
        );
        let id = HeaderValue::from_static("req-1");
        let response = finish(answer, None, Version::HTTP_2, &id, None, None).unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        let headers = response.headers();
        assert_eq!(headers.get("x-request-id"), None, "the server writes it into the head");
        assert_eq!(headers.get("etag").unwrap(), "\"v1\"");
        for gone in ["connection", "keep-alive", "x-internal"] {
            assert!(!headers.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn a_101_to_a_request_that_asked_for_no_upgrade_is_a_502() {
        let answer = upstream_answer(101, &[("connection", "upgrade"), ("upgrade", "websocket")]);
        let id = HeaderValue::from_static("req-1");
        let err = finish(answer, None, Version::HTTP_11, &id, None, None).expect_err("refused");
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert!(err.to_string().contains("answered 101 to a request that asked for no upgrade"), "{err}");
    }

    fn exchange(table: &Arc<Table>, outcome: Outcome) -> Exchange {
        let id = HeaderValue::from_static("req-1");
        let mut exchange = Exchange::new(table.clone(), id, Method::GET, Instant::now());
        exchange.outcome = outcome;
        exchange
    }

    /// The route of the stage tests' table called `name`, as an outcome.
    fn served_by(table: &Table, name: &str, upstream: Option<usize>) -> Outcome {
        let route = table.router.entries().iter().position(|(_, r)| &*r.name == name);
        Outcome { route, upstream, ..Outcome::default() }
    }

    #[test]
    fn the_answer_names_the_upstream_that_served_it_and_a_refusal_names_none() {
        let table = super::super::testing::table();
        let served = exchange(&table, served_by(&table, "all", Some(0)));
        let (name, value) = served.upstream_header().expect("named");
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-strangler-upstream", "legacy"));
        let refused = exchange(&table, served_by(&table, "all", None));
        assert!(refused.upstream_header().is_none());
    }

    /// The access-log line `exchange` writes, parsed.
    fn line_of(exchange: &Exchange, access: &AccessFields) -> serde_json::Value {
        let mut out = Vec::new();
        crate::access_log::write_line(&mut out, b"2026-11-26T10:00:00Z", |line| exchange.fields(access, line));
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    fn access(target: &str, user_agent: Option<&[u8]>) -> AccessFields {
        AccessFields {
            uri: target.parse().unwrap(),
            client_ip: "203.0.113.9".parse().unwrap(),
            user_agent: user_agent.map(|ua| HeaderValue::from_bytes(ua).unwrap()),
        }
    }

    #[test]
    fn an_access_line_has_every_field_of_the_request_and_its_answer() {
        let table = super::super::testing::table();
        let mut served = exchange(&table, served_by(&table, "orders", Some(1)));
        served.outcome.misdirected_from = Some(0);
        served.record(upstream_answer(201, &[]));
        served.sent(51);
        served.sent(49);
        let line = line_of(&served, &access("/orders/7?token=secret", Some(b"curl/8.5")));
        let expected = serde_json::json!({
            "ts": "2026-11-26T10:00:00Z",
            "client_ip": "203.0.113.9",
            "method": "GET",
            "path": "/orders/7",
            "route": "orders",
            "upstream": "legacy",
            "misdirected_from": "new",
            "status": 201,
            "body_bytes_sent": 100,
            "user_agent": "curl/8.5",
            "request_id": "req-1",
            "config_hash": table.hash,
            "duration_us": line["duration_us"],
        });
        assert_eq!(line, expected);
        assert!(line["duration_us"].is_u64(), "{line}");
        let keys: Vec<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(!keys.contains(&"token") && !line.to_string().contains("secret"), "never the query: {line}");
    }

    #[test]
    fn a_refused_request_and_one_whose_client_left_are_logged_with_what_is_known() {
        let table = super::super::testing::table();
        let mut refused = exchange(&table, Outcome::default());
        refused.record(upstream_answer(404, &[]));
        let line = line_of(&refused, &access("/nowhere", None));
        assert_eq!(
            (line["route"].clone(), line["upstream"].clone()),
            (serde_json::Value::Null, serde_json::Value::Null)
        );
        assert_eq!(line["user_agent"], serde_json::Value::Null);
        assert_eq!(line["status"], 404);
        assert!(line.get("misdirected_from").is_none(), "only when set: {line}");
        let left = exchange(&table, served_by(&table, "all", Some(0)));
        let line = line_of(&left, &access("/slow", None));
        assert_eq!(line["status"], 499, "nginx's client closed request");
        assert_eq!(line["body_bytes_sent"], 0);
        assert_eq!(line["route"], "all");
    }

    #[test]
    fn hostile_paths_and_user_agents_stay_inside_their_json_strings() {
        let table = super::super::testing::table();
        let mut served = exchange(&table, served_by(&table, "all", Some(0)));
        served.record(upstream_answer(200, &[]));
        // What a header value can hold: no control byte but tab, any byte above 0x7F.
        let ua = b"evil\"agent\\ \t \xff\xfe tail";
        let hostile = access("/a%22b/\"quoted\"/{x}", Some(ua));
        assert!(hostile.uri.path().contains('"'), "the path keeps its quotes: {}", hostile.uri.path());
        let line = line_of(&served, &hostile);
        assert_eq!(line["user_agent"], "evil\"agent\\ \t \u{fffd}\u{fffd} tail");
        assert_eq!(line["path"], hostile.uri.path());
        assert_eq!(line["status"], 200, "the fields after the hostile ones are intact");
    }
}
