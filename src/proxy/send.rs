//! Stage 4, send: the request to its primary upstream, retried within the
//! upstream's budget, then to the route's fallback when the primary could
//! not answer and the request can be sent again. Each attempt holds one of
//! the upstream's concurrency slots until its answer's body ends.

use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{Request, StatusCode, Version};

use super::prepare::{Plan, RequestBody};
use super::timeout::within;
use super::Outcome;
use crate::client::body::{hold_slot, Answer, ProxyBody};
use crate::client::SendError;
use crate::error::ProxyError;
use crate::upstream::{Unavailable, Upstream};
use crate::wire::request::Added;

/// Sends the request as planned, recording in `outcome` which upstream
/// answered (the fallback, if it was asked).
pub(super) async fn send<'t>(
    plan: &Plan<'t, '_>,
    request: &mut Request<ProxyBody>,
    body: &mut RequestBody,
    outcome: &mut Outcome,
) -> Result<Answer, ProxyError> {
    let route = plan.route;
    let added = plan.forwarding.as_ref().map(|f| f.added());
    let mut attempt = Attempt {
        request,
        path_and_query: &plan.path_and_query,
        body,
        replayable: plan.replayable,
        added: added.as_ref(),
    };
    let result = attempt.send_to(&route.upstreams[plan.primary].upstream).await;
    if let Some(other) = plan.misdirect_to.filter(|_| misdirected(&result, attempt.body)) {
        // One hop only: the other side's answer, a 421 too, goes to the client.
        drop(result);
        let (from, to) = (&route.upstreams[plan.primary].upstream.name, &route.upstreams[other].upstream.name);
        route.misdirected.with_label_values(&[&route.name, from, to]).inc();
        tracing::debug!(route = %route.name, %from, %to, "421 from the primary; sending to the other side");
        outcome.upstream = Some(other);
        outcome.misdirected_from = Some(plan.primary);
        return attempt.send_to(&route.upstreams[other].upstream).await;
    }
    let Some(fallback) = plan.fallback else { return result };
    if !falls_back(&result, plan.replayable, attempt.body) {
        return result;
    }
    route.fallbacks.inc();
    outcome.upstream = Some(fallback);
    tracing::debug!(route = %route.name, from = %route.upstreams[plan.primary].upstream.name, "falling back");
    attempt.send_to(&route.upstreams[fallback].upstream).await
}

/// Whether the primary's result sends the request on to the fallback: the
/// primary could not answer, and the request can be sent again.
fn falls_back(result: &Result<Answer, ProxyError>, replayable: bool, body: &RequestBody) -> bool {
    failed(result) && replayable && body.available()
}

/// The primary answered `421 Misdirected Request` (RFC 9110 §15.5.20: not
/// processed, may be retried elsewhere) and the body can be sent again.
fn misdirected(result: &Result<Answer, ProxyError>, body: &RequestBody) -> bool {
    matches!(result, Ok(response) if response.status() == StatusCode::MISDIRECTED_REQUEST) && body.available()
}

/// A result worth trying elsewhere: a 502, 503 or 504 answer, or a failure
/// that was not the client's.
fn failed(result: &Result<Answer, ProxyError>) -> bool {
    match result {
        Ok(response) => is_gateway_error(response.status()),
        Err(e) => e.is_retryable(),
    }
}

/// 502, 503 and 504: the upstream could not answer; worth trying elsewhere.
fn is_gateway_error(status: StatusCode) -> bool {
    matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
}

/// One request on its way upstream, possibly over several attempts.
struct Attempt<'a> {
    /// The client's request, its body taken out (`body` is what is sent).
    request: &'a mut Request<ProxyBody>,
    path_and_query: &'a PathAndQuery,
    body: &'a mut RequestBody,
    /// The method allows sending the request more than once.
    replayable: bool,
    /// The proxy's headers, when the client is to write them.
    added: Option<&'a Added<'a>>,
}

impl Attempt<'_> {
    /// Sends to one upstream, retrying (within its budget) on connection
    /// failures and 502/503/504 when the body can be sent again.
    async fn send_to(&mut self, upstream: &Arc<Upstream>) -> Result<Answer, ProxyError> {
        let may_retry = upstream.settings.retries > 0 && self.replayable;
        if may_retry {
            upstream.budget.record_request();
        }
        let mut retries = 0;
        loop {
            let result = self.send_once(upstream).await;
            let can_retry = failed(&result)
                && may_retry
                && retries < upstream.settings.retries
                && matches!(self.body, RequestBody::Buffered(_))
                && upstream.budget.try_retry();
            if !can_retry {
                return result;
            }
            retries += 1;
            upstream.counters.retries.inc();
            tokio::time::sleep(crate::upstream::backoff(retries - 1)).await;
        }
    }

    async fn send_once(&mut self, upstream: &Arc<Upstream>) -> Result<Answer, ProxyError> {
        let permit = upstream.acquire().map_err(|why| match why {
            Unavailable::AllUnhealthy => ProxyError::NoHealthyTarget { upstream: upstream.name.to_string() },
            Unavailable::Overloaded => ProxyError::Overloaded { upstream: upstream.name.to_string() },
        })?;
        let body = self.body.take().ok_or_else(|| ProxyError::UpstreamFailed {
            upstream: upstream.name.to_string(),
            detail: "the request body was already sent and cannot be replayed".into(),
        })?;
        let mut request = Request::new(body);
        *request.method_mut() = self.request.method().clone();
        *request.uri_mut() = http::Uri::from(self.path_and_query.clone());
        *request.version_mut() = Version::HTTP_11;
        let headers = if self.body.available() {
            self.request.headers().clone()
        } else {
            std::mem::take(self.request.headers_mut())
        };
        crate::headers::put_map(request.headers_mut(), headers);
        let answer = {
            let sent = std::pin::pin!(upstream.connector.send_request(permit.target(), &mut request, self.added));
            within(upstream.settings.timeout, sent).await
        };
        let result = match answer {
            None => {
                upstream.counters.errors.timeout.inc();
                Err(ProxyError::UpstreamTimeout { upstream: upstream.name.to_string() })
            }
            Some(Err(e)) => Err(classify_upstream_error(upstream, e)),
            Some(Ok(answer)) => Ok(answer),
        };
        match &result {
            Ok(response) if !is_gateway_error(response.status()) => upstream.record_success(permit.target()),
            Err(ProxyError::BodyRead) => {}
            _ => upstream.record_failure(permit.target()),
        }
        // The slot is held until the response body ends, not just its head.
        result.map(|mut answer| {
            hold_slot(&mut answer, permit);
            answer
        })
    }
}

/// Whose fault a failed exchange was, counted on the upstream.
fn classify_upstream_error(upstream: &Upstream, e: SendError) -> ProxyError {
    let name = upstream.name.to_string();
    match e {
        SendError::ConnectTimeout(_) => {
            upstream.counters.errors.timeout.inc();
            ProxyError::UpstreamTimeout { upstream: name }
        }
        SendError::Connect(_) | SendError::Tls(_) => {
            upstream.counters.errors.connect.inc();
            ProxyError::UpstreamUnreachable { upstream: name }
        }
        // The client's upload failed (aborted, malformed): not the upstream's fault.
        SendError::Http(e) if caused_by_request_body(&e) => ProxyError::BodyRead,
        SendError::Http(e) => ProxyError::UpstreamFailed { upstream: name, detail: error_chain(&e) },
        SendError::Exchange(e) => ProxyError::UpstreamFailed { upstream: name, detail: e.to_string() },
    }
}

/// An error and every error beneath it.
fn error_sources<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |err| err.source())
}

fn caused_by_request_body(e: &(dyn std::error::Error + 'static)) -> bool {
    error_sources(e)
        .any(|err| err.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_user() || h.is_body_write_aborted()))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    error_sources(e).map(|err| err.to_string()).collect::<Vec<_>>().join(": ")
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Response;

    use super::*;

    fn answer(status: u16) -> Result<Answer, ProxyError> {
        let mut response = Response::new(crate::client::body::ProxyBody::empty());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok(Box::new(response))
    }

    fn kept() -> RequestBody {
        RequestBody::Buffered(Bytes::from_static(b"{}"))
    }

    #[test]
    fn a_primary_that_could_not_answer_falls_back() {
        for status in [502, 503, 504] {
            assert!(falls_back(&answer(status), true, &kept()), "{status}");
        }
        let unreachable = Err(ProxyError::UpstreamUnreachable { upstream: "new".into() });
        assert!(falls_back(&unreachable, true, &kept()));
        assert!(falls_back(&Err(ProxyError::Overloaded { upstream: "new".into() }), true, &kept()));
    }

    #[test]
    fn an_answer_or_the_clients_own_fault_does_not_fall_back() {
        for status in [200, 404, 500] {
            assert!(!falls_back(&answer(status), true, &kept()), "{status}");
        }
        assert!(!falls_back(&Err(ProxyError::BodyRead), true, &kept()));
    }

    #[test]
    fn a_request_that_cannot_be_sent_again_does_not_fall_back() {
        assert!(!falls_back(&answer(503), false, &kept()), "not replayable");
        let sent = RequestBody::Streamed(None);
        assert!(!falls_back(&answer(503), true, &sent), "its streamed body is gone");
    }
}
