//! A step's evidence from Prometheus, summed over every replica it scrapes
//! (`rollout.prometheus: http://prometheus:9090`): the fleet's shadow
//! comparisons, and the answers and p99 of `from` and `to` on the route,
//! over the step's window so far. Each query is kept with its reading so
//! `rollout status` shows the PromQL behind every number.

use std::time::Duration;

use serde::Deserialize;

use super::machine::Evidence;

/// How long one query may take; a slow Prometheus pauses the gates, never
/// the pilot.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// The PromQL for one figure of the evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Queries {
    pub matched: String,
    pub mismatched: String,
    pub from_requests: String,
    pub from_5xx: String,
    pub to_requests: String,
    pub to_5xx: String,
    pub from_p99: String,
    pub to_p99: String,
}

/// The queries for `route` from `from` to `to` over the last `window_s` seconds.
pub fn queries(route: &str, from: &str, to: &str, window_s: u64) -> Queries {
    let w = window_s.max(1);
    let route = escape(route);
    let shadow = |result: &str| {
        format!(r#"sum(increase(strangler_shadow_requests_total{{route="{route}",result="{result}"}}[{w}s]))"#)
    };
    let answers = |upstream: &str, extra: &str| {
        let upstream = escape(upstream);
        format!(r#"sum(increase(strangler_requests_total{{route="{route}",upstream="{upstream}"{extra}}}[{w}s]))"#)
    };
    let p99 = |upstream: &str| {
        let upstream = escape(upstream);
        format!(
            r#"histogram_quantile(0.99, sum by (le) (increase(strangler_request_duration_seconds_bucket{{route="{route}",upstream="{upstream}"}}[{w}s])))"#
        )
    };
    Queries {
        matched: shadow("match"),
        mismatched: shadow("mismatch"),
        from_requests: answers(from, ""),
        from_5xx: answers(from, r#",status_class="5xx""#),
        to_requests: answers(to, ""),
        to_5xx: answers(to, r#",status_class="5xx""#),
        from_p99: p99(from),
        to_p99: p99(to),
    }
}

/// A label value inside double quotes in PromQL.
fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"")
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    value: (f64, String),
}

/// Runs one instant query; `None` for an empty result (no such series yet).
async fn scalar(client: &reqwest::Client, base: &str, query: &str) -> Result<Option<f64>, String> {
    let url = format!("{base}/api/v1/query");
    let response = client
        .get(&url)
        .query(&[("query", query)])
        .timeout(QUERY_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("prometheus {base}: {e}"))?;
    let status = response.status();
    let answer: Answer = response.json().await.map_err(|e| format!("prometheus {base}: {status}: {e}"))?;
    if answer.status != "success" {
        return Err(format!("prometheus {base}: {}", answer.error.unwrap_or(answer.status)));
    }
    let value = answer.data.and_then(|d| d.result.into_iter().next()).map(|s| s.value.1);
    match value.as_deref() {
        None | Some("NaN") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| format!("prometheus {base}: not a number: {v}")),
    }
}

/// The evidence over the window, or why Prometheus could not give it.
pub async fn evidence(client: &reqwest::Client, base: &str, q: &Queries) -> Result<Evidence, String> {
    let count = |v: Option<f64>| v.unwrap_or(0.0).round().max(0.0) as u64;
    let (matched, mismatched) = (scalar(client, base, &q.matched).await?, scalar(client, base, &q.mismatched).await?);
    let matched = count(matched);
    Ok(Evidence {
        compared: matched + count(mismatched),
        matched,
        from_requests: count(scalar(client, base, &q.from_requests).await?),
        from_5xx: count(scalar(client, base, &q.from_5xx).await?),
        to_requests: count(scalar(client, base, &q.to_requests).await?),
        to_5xx: count(scalar(client, base, &q.to_5xx).await?),
        from_p99: scalar(client, base, &q.from_p99).await?,
        to_p99: scalar(client, base, &q.to_p99).await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queries_sum_the_fleet_over_the_steps_window_and_escape_labels() {
        let q = queries("items", "legacy", "comments", 90);
        assert_eq!(
            q.to_5xx,
            r#"sum(increase(strangler_requests_total{route="items",upstream="comments",status_class="5xx"}[90s]))"#
        );
        assert!(q.from_p99.starts_with("histogram_quantile(0.99, sum by (le) (increase("), "{}", q.from_p99);
        let odd = queries(r#"a"b\c"#, "x", "y", 0);
        assert!(odd.matched.contains(r#"route="a\"b\\c""#), "{}", odd.matched);
        assert!(odd.matched.ends_with("[1s]))"), "a window is at least a second");
    }
}
