//! Stage 5, finish: the upstream's answer made the client's, and the
//! request counted and logged, whether it was answered or refused.

use std::net::IpAddr;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::Outcome;
use crate::client::body::ProxyBody;
use crate::error::ProxyError;
use crate::headers;
use crate::shadow::ResponseTap;
use crate::table::Table;

/// Edits the answer for the client: hop-by-hop headers out, the request id
/// in, the client's protocol version whatever the upstream spoke. A 101
/// the client asked for is tunnelled (and keeps `Upgrade`); one it did not
/// ask for is the upstream's fault. A running mirror gets its copy of the
/// answer as it streams to the client.
pub(super) fn finish(
    mut response: Response<ProxyBody>,
    downstream_upgrade: Option<OnUpgrade>,
    downstream_version: Version,
    request_id: &HeaderValue,
    tap: Option<ResponseTap>,
    outcome: &Outcome<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        match downstream_upgrade {
            Some(downstream) => tunnel(downstream, hyper::upgrade::on(&mut response)),
            None => {
                return Err(ProxyError::UpstreamFailed {
                    upstream: outcome.used().map_or_else(String::new, |u| u.upstream.name.to_string()),
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
    hdrs.insert(headers::X_REQUEST_ID.clone(), request_id.clone());
    // Answer in the client's protocol version, whatever the upstream spoke.
    *response.version_mut() = downstream_version;
    Ok(match tap {
        Some(tap) => tap.tee(response, outcome.used().map_or_else(|| "".into(), |u| u.upstream.name.clone())),
        None => response,
    })
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

/// Whether access log lines are written (then the client's address is
/// resolved for every request, before the stages need it).
pub(super) fn access_logged() -> bool {
    tracing::enabled!(target: "strangler::access", tracing::Level::INFO)
}

/// Counts the request on the route and upstream that served it, names that
/// upstream in the answer when the table says so, and writes the access
/// log line, with the downstream client's address (`client_ip`). Runs for
/// refused requests too (their answer is the error's).
pub(super) fn record(
    mut response: Response<ProxyBody>,
    table: &Table,
    method: &Method,
    outcome: &Outcome<'_>,
    request_id: &HeaderValue,
    client_ip: Option<IpAddr>,
    start: Instant,
) -> Response<ProxyBody> {
    if let Some(used) = outcome.used() {
        used.stats.record(method, response.status(), start.elapsed());
        if let Some(name) = &table.upstream_header {
            response.headers_mut().insert(name.clone(), used.upstream.name_header.clone());
        }
    }
    access_log(method, outcome, request_id, client_ip, &response, start);
    response
}

fn access_log(
    method: &Method,
    outcome: &Outcome<'_>,
    request_id: &HeaderValue,
    client_ip: Option<IpAddr>,
    response: &Response<ProxyBody>,
    start: Instant,
) {
    if !access_logged() {
        return;
    }
    let bytes = response.headers().get(header::CONTENT_LENGTH).and_then(|v| crate::wire::parse_length(v.as_bytes()));
    tracing::info!(
        target: "strangler::access",
        request_id = request_id.to_str().unwrap_or(""),
        client_ip = client_ip.map(tracing::field::display),
        method = %method,
        path = outcome.path.as_deref().unwrap_or("-"),
        route = outcome.route.map_or("-", |r| &r.name),
        upstream = outcome.used().map_or("-", |u| &u.upstream.name),
        misdirected_from = outcome.route.zip(outcome.misdirected_from).map(|(r, i)| &*r.upstreams[i].upstream.name),
        status = response.status().as_u16(),
        duration_ms = start.elapsed().as_secs_f64() * 1000.0,
        bytes,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream_answer(status: u16, headers: &[(&'static str, &str)]) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        *response.version_mut() = Version::HTTP_11;
        for (name, value) in headers {
            response.headers_mut().append(header::HeaderName::from_static(name), HeaderValue::from_str(value).unwrap());
        }
        response
    }

    #[test]
    fn the_answer_loses_hop_by_hop_headers_and_gains_the_request_id_and_the_clients_version() {
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
        let response = finish(answer, None, Version::HTTP_2, &id, None, &Outcome::default()).unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        let headers = response.headers();
        assert_eq!(headers.get("x-request-id"), Some(&id));
        assert_eq!(headers.get("etag").unwrap(), "\"v1\"");
        for gone in ["connection", "keep-alive", "x-internal"] {
            assert!(!headers.contains_key(gone), "{gone}");
        }
    }

    #[test]
    fn a_101_to_a_request_that_asked_for_no_upgrade_is_a_502() {
        let answer = upstream_answer(101, &[("connection", "upgrade"), ("upgrade", "websocket")]);
        let id = HeaderValue::from_static("req-1");
        let err = finish(answer, None, Version::HTTP_11, &id, None, &Outcome::default()).expect_err("refused");
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        assert!(err.to_string().contains("answered 101 to a request that asked for no upgrade"), "{err}");
    }

    #[test]
    fn the_answer_names_the_upstream_that_served_it_and_a_refusal_names_none() {
        let table = super::super::testing::table();
        let id = HeaderValue::from_static("req-1");
        let served = Outcome {
            route: Some(super::super::testing::route_named(&table, "all")),
            upstream: Some(0),
            ..Outcome::default()
        };
        let response = record(upstream_answer(200, &[]), &table, &Method::GET, &served, &id, None, Instant::now());
        assert_eq!(response.headers().get("x-strangler-upstream").unwrap(), "legacy");
        let refused = Outcome { upstream: None, ..served };
        let response = record(upstream_answer(429, &[]), &table, &Method::GET, &refused, &id, None, Instant::now());
        assert!(!response.headers().contains_key("x-strangler-upstream"));
    }
}
