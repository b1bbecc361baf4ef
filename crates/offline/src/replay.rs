//! `strangler replay FILE --upstream URL`: re-sends the requests of logged
//! mismatches to a new build of a service and reports which are now fixed.
//!
//! Only safe methods (GET, HEAD, OPTIONS) are replayed; others are counted
//! and skipped. The log holds no request headers (`Authorization` and the
//! like are never logged), so the developer passes what the service needs
//! with `--header 'Name: value'`.
//!
//! Without `--primary`, a mismatch is fixed when the new answer's status is
//! the recorded primary status and every recorded difference now has the
//! primary's recorded value (body fields by JSON pointer, headers by name).
//! A whole-body text or binary difference cannot be checked that way and
//! stays "still different" (use `--primary`). With `--primary URL`, the
//! request also goes to the primary and the two answers are compared in full
//! with [`diff::compare`], ignoring the record's noise fields.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde_json::Value;
use strangler_evidence::diff::{self, Answer, CompareOptions, Pattern};
use strangler_evidence::record::{DiffKind, DiffRecord, Outcome};
use strangler_evidence::summary::field_label;

use crate::report::input;

/// The largest answer body read (larger ones are an error).
pub const MAX_BODY: usize = 16 << 20;
/// Still-different and error rows listed one by one; the rest are counted.
pub const MAX_LISTED: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayFormat {
    Text,
    Json,
}

/// The arguments of `strangler replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A diff log (`.jsonl` or gzip-compressed); `-` reads stdin.
    pub file: PathBuf,
    /// Base URL of the new build, e.g. `http://127.0.0.1:7001`.
    #[arg(long)]
    pub upstream: String,
    /// Also ask the primary at this URL and compare the two answers in full.
    #[arg(long)]
    pub primary: Option<String>,
    /// An extra request header, `'Name: value'` (repeatable), e.g. a token.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Only this route's mismatches.
    #[arg(long)]
    pub route: Option<String>,
    /// At most this many requests.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[arg(long, value_enum, default_value_t = ReplayFormat::Text)]
    pub format: ReplayFormat,
}

/// What became of one replayed mismatch.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Fixed,
    StillDifferent { fields: Vec<String> },
    Error { error: String },
}

/// A replayed request that is not fixed.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub request_id: String,
    pub method: String,
    pub endpoint: String,
    pub path: String,
    #[serde(flatten)]
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub fixed: u64,
    pub still_different: u64,
    pub error: u64,
}

/// The outcome of a replay.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub upstream: String,
    pub primary: Option<String>,
    /// Mismatch records read (after `--route`).
    pub mismatches: u64,
    pub replayed: u64,
    /// Mismatches not replayed because their method is not safe, by method.
    pub skipped_unsafe: BTreeMap<String, u64>,
    pub corrupt_lines: u64,
    /// Per `METHOD endpoint`.
    pub endpoints: BTreeMap<String, Tally>,
    pub total: Tally,
    /// Requests that are not fixed (at most [`MAX_LISTED`]).
    pub not_fixed: Vec<Row>,
    pub not_fixed_unlisted: u64,
}

/// Runs the command; returns the process exit code (0 unless it could not run).
pub fn run(args: ReplayArgs) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let report = runtime.block_on(replay(&args))?;
    match args.format {
        ReplayFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        ReplayFormat::Text => print!("{}", render(&report)),
    }
    Ok(0)
}

fn base_url(text: &str, flag: &str) -> anyhow::Result<String> {
    let uri: Uri = text.parse().map_err(|e| anyhow::anyhow!("{flag} {text:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => anyhow::bail!("{flag} {text:?}: only http:// is supported, not {other}://"),
        None => anyhow::bail!("{flag} {text:?}: give a full URL like http://127.0.0.1:7001"),
    }
    Ok(text.trim_end_matches('/').to_string())
}

fn parse_headers(list: &[String]) -> anyhow::Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for h in list {
        let (name, value) =
            h.split_once(':').ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected 'Name: value'"))?;
        let name =
            HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| anyhow::anyhow!("--header {h:?}: {e}"))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|e| anyhow::anyhow!("--header {h:?}: {e}"))?;
        map.append(name, value);
    }
    Ok(map)
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

struct Ctx {
    client: HttpClient,
    upstream: String,
    primary: Option<String>,
    headers: HeaderMap,
    timeout: Duration,
}

/// Replays the log's mismatches as `args` says.
pub async fn replay(args: &ReplayArgs) -> anyhow::Result<ReplayReport> {
    let ctx = Arc::new(Ctx {
        client: Client::builder(TokioExecutor::new()).build_http(),
        upstream: base_url(&args.upstream, "--upstream")?,
        primary: args.primary.as_deref().map(|p| base_url(p, "--primary")).transpose()?,
        headers: parse_headers(&args.headers)?,
        timeout: args.timeout,
    });
    let mut report =
        ReplayReport { upstream: ctx.upstream.clone(), primary: ctx.primary.clone(), ..Default::default() };

    // A reader thread streams the wanted records; at most `concurrency` are in flight.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<DiffRecord>(64);
    let (path, route, limit) = (args.file.clone(), args.route.clone(), args.limit.unwrap_or(usize::MAX));
    let reader = std::thread::spawn(move || -> anyhow::Result<(u64, BTreeMap<String, u64>, u64)> {
        let name = path.display().to_string();
        let mut input = input::open(&path, None).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let (mut mismatches, mut unsafe_methods, mut corrupt, mut sent) = (0u64, BTreeMap::new(), 0u64, 0usize);
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        while sent < limit {
            buf.clear();
            if input.read_until(b'\n', &mut buf)? == 0 {
                break;
            }
            line_no += 1;
            let line = buf.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let record: DiffRecord = match serde_json::from_slice(line) {
                Ok(r) => r,
                Err(e) => {
                    corrupt += 1;
                    eprintln!("{name}:{line_no}: invalid record: {e}");
                    continue;
                }
            };
            if record.result != Outcome::Mismatch || route.as_ref().is_some_and(|r| r != &record.route) {
                continue;
            }
            mismatches += 1;
            if !matches!(record.method.to_ascii_uppercase().as_str(), "GET" | "HEAD" | "OPTIONS") {
                *unsafe_methods.entry(record.method.to_ascii_uppercase()).or_insert(0) += 1;
                continue;
            }
            sent += 1;
            if tx.blocking_send(record).is_err() {
                break;
            }
        }
        Ok((mismatches, unsafe_methods, corrupt))
    });

    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let finish = |report: &mut ReplayReport, (record, verdict): (DiffRecord, Verdict)| {
        report.replayed += 1;
        let tally = report.endpoints.entry(format!("{} {}", record.method, record.endpoint)).or_default();
        for t in [tally, &mut report.total] {
            match &verdict {
                Verdict::Fixed => t.fixed += 1,
                Verdict::StillDifferent { .. } => t.still_different += 1,
                Verdict::Error { .. } => t.error += 1,
            }
        }
        if verdict != Verdict::Fixed {
            if report.not_fixed.len() < MAX_LISTED {
                report.not_fixed.push(Row {
                    request_id: record.request_id.clone(),
                    method: record.method.clone(),
                    endpoint: record.endpoint.clone(),
                    path: path_and_query(&record),
                    verdict,
                });
            } else {
                report.not_fixed_unlisted += 1;
            }
        }
    };
    while let Some(record) = rx.recv().await {
        let permit = semaphore.clone().acquire_owned().await?;
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let verdict = check(&ctx, &record).await;
            drop(permit);
            (record, verdict)
        });
        while let Some(done) = tasks.try_join_next() {
            finish(&mut report, done?);
        }
    }
    while let Some(done) = tasks.join_next().await {
        finish(&mut report, done?);
    }
    let (mismatches, unsafe_methods, corrupt) =
        reader.join().map_err(|_| anyhow::anyhow!("the log reader panicked"))??;
    report.mismatches = mismatches;
    report.skipped_unsafe = unsafe_methods;
    report.corrupt_lines = corrupt;
    report.not_fixed.sort_by(|a, b| (&a.endpoint, &a.path).cmp(&(&b.endpoint, &b.path)));
    Ok(report)
}

fn path_and_query(r: &DiffRecord) -> String {
    match r.query.as_deref() {
        Some(q) if !q.is_empty() => format!("{}?{}", r.path, q),
        _ => r.path.clone(),
    }
}

/// One answer, fully read.
struct Got {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

async fn fetch(ctx: &Ctx, base: &str, record: &DiffRecord) -> Result<Got, String> {
    let uri: Uri = format!("{base}{}", path_and_query(record)).parse().map_err(|e| format!("bad request URI: {e}"))?;
    let method = Method::from_bytes(record.method.to_ascii_uppercase().as_bytes()).map_err(|e| e.to_string())?;
    let mut req = Request::builder().method(method).uri(uri).body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    req.headers_mut().extend(ctx.headers.clone());
    if let Ok(id) = HeaderValue::from_str(&record.request_id) {
        req.headers_mut().entry("x-request-id").or_insert(id);
    }
    let work = async {
        let resp = ctx.client.request(req).await.map_err(|e| format!("{base}: {}", error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("{base}: reading the body: {e}"))?
            .to_bytes();
        Ok(Got { status: parts.status.as_u16(), headers: parts.headers, body })
    };
    tokio::time::timeout(ctx.timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("{base}: no answer within {}", humantime::format_duration(ctx.timeout))))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn check(ctx: &Ctx, record: &DiffRecord) -> Verdict {
    let new = match fetch(ctx, &ctx.upstream, record).await {
        Ok(got) => got,
        Err(error) => return Verdict::Error { error },
    };
    let fields = match &ctx.primary {
        Some(primary) => match fetch(ctx, primary, record).await {
            Ok(p) => against_primary(record, &p, &new),
            Err(error) => return Verdict::Error { error },
        },
        None => against_record(record, &new),
    };
    if fields.is_empty() {
        Verdict::Fixed
    } else {
        Verdict::StillDifferent { fields }
    }
}

fn answer(g: &Got) -> Answer<'_> {
    Answer {
        status: g.status,
        headers: &g.headers,
        body: &g.body,
        body_len: g.body.len() as u64,
        body_sha256: diff::sha256(&g.body),
        body_complete: true,
    }
}

/// The fields (report labels) that still differ, comparing two live answers in full.
fn against_primary(record: &DiffRecord, primary: &Got, new: &Got) -> Vec<String> {
    let mut opts = CompareOptions { max_body: MAX_BODY, ..CompareOptions::default() };
    for n in &record.noise {
        if n.starts_with('/') {
            if let Ok(p) = Pattern::parse(n) {
                opts.ignore.push(p);
            }
        } else if !n.is_empty() {
            opts.ignore_headers.insert(n.to_ascii_lowercase());
        }
    }
    let (p, s) = (&answer(primary), &answer(new));
    let comparison = diff::compare(p, s, &opts);
    labels(comparison.diffs.iter().map(|d| (d.kind, d.pointer.as_str())))
}

fn labels<'a>(diffs: impl Iterator<Item = (DiffKind, &'a str)>) -> Vec<String> {
    let mut out: Vec<String> = diffs.map(|(k, p)| field_label(k, p)).collect();
    out.sort();
    out.dedup();
    out
}

/// The fields that still differ from the primary's recorded values.
fn against_record(record: &DiffRecord, new: &Got) -> Vec<String> {
    let mut still = Vec::new();
    if let Some(status) = record.primary.status {
        if status != new.status {
            still.push((DiffKind::Status, ""));
        }
    }
    let mut body: Option<Option<Value>> = None;
    for d in &record.diffs {
        let same = match d.kind {
            DiffKind::Status => true, // checked above
            DiffKind::Header => {
                let values: Vec<String> = new
                    .headers
                    .get_all(d.pointer.as_str())
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                let got = (!values.is_empty()).then(|| values.join(", "));
                match (&d.primary, got) {
                    (Value::String(s), _) if s == diff::REDACTED => true,
                    (Value::Null, None) => true,
                    (Value::String(want), Some(got)) if d.pointer.eq_ignore_ascii_case("content-type") => {
                        diff::media_type(want) == diff::media_type(&got)
                    }
                    (Value::String(want), Some(got)) => *want == got,
                    _ => false,
                }
            }
            // A whole-body text or binary diff cannot be checked against a summary.
            DiffKind::Body if d.pointer.is_empty() => false,
            DiffKind::Body => {
                let doc = body.get_or_insert_with(|| {
                    diff::decode(&new.headers, &new.body, MAX_BODY)
                        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                });
                match doc {
                    None => false,
                    Some(doc) => match (&d.primary, doc.pointer(&d.pointer)) {
                        (Value::String(s), _) if s == diff::REDACTED => true,
                        (Value::Null, None) => true,
                        (want, Some(got)) => json_eq(want, got),
                        (_, None) => false,
                    },
                }
            }
        };
        if !same {
            still.push((d.kind, d.pointer.as_str()));
        }
    }
    labels(still.into_iter())
}

/// JSON equality where `1` equals `1.0` and key order does not matter.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(x), Some(y), _, _) => x == y,
            (_, _, Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// The text table.
pub fn render(r: &ReplayReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let mode = match &r.primary {
        Some(p) => format!("compared in full with the primary at {p}"),
        None => "checked against the primary's recorded values".to_string(),
    };
    let _ = writeln!(o, "replayed {} of {} mismatches against {} ({mode})", r.replayed, r.mismatches, r.upstream);
    if !r.skipped_unsafe.is_empty() {
        let list: Vec<String> = r.skipped_unsafe.iter().map(|(m, n)| format!("{m} {n}")).collect();
        let total: u64 = r.skipped_unsafe.values().sum();
        let _ = writeln!(o, "skipped {total} with unsafe methods ({})", list.join(", "));
    }
    if r.corrupt_lines > 0 {
        let _ = writeln!(o, "{} corrupt line(s) skipped", r.corrupt_lines);
    }
    let width = r.endpoints.keys().map(|k| k.chars().count()).max().unwrap_or(0).max(8);
    let _ = writeln!(o, "\n{:<width$}  {:>7}  {:>15}  {:>7}", "ENDPOINT", "FIXED", "STILL DIFFERENT", "ERROR");
    for (endpoint, t) in &r.endpoints {
        let _ = writeln!(o, "{endpoint:<width$}  {:>7}  {:>15}  {:>7}", t.fixed, t.still_different, t.error);
    }
    let t = &r.total;
    let _ = writeln!(o, "{:<width$}  {:>7}  {:>15}  {:>7}", "total", t.fixed, t.still_different, t.error);
    let still: Vec<&Row> =
        r.not_fixed.iter().filter(|row| matches!(row.verdict, Verdict::StillDifferent { .. })).collect();
    if !still.is_empty() {
        let _ = writeln!(o, "\nstill different:");
        for row in still {
            if let Verdict::StillDifferent { fields } = &row.verdict {
                let fields: Vec<String> =
                    fields.iter().map(|f| if f.is_empty() { "(whole body)".to_string() } else { f.clone() }).collect();
                let _ = writeln!(o, "  {} {}  {}  {}", row.method, row.path, row.request_id, fields.join(", "));
            }
        }
    }
    let errors: Vec<&Row> = r.not_fixed.iter().filter(|row| matches!(row.verdict, Verdict::Error { .. })).collect();
    if !errors.is_empty() {
        let _ = writeln!(o, "\nerrors:");
        for row in errors {
            if let Verdict::Error { error } = &row.verdict {
                let _ = writeln!(o, "  {} {}  {}  {}", row.method, row.path, row.request_id, error);
            }
        }
    }
    if r.not_fixed_unlisted > 0 {
        let _ = writeln!(o, "  ... and {} more not listed", r.not_fixed_unlisted);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use strangler_evidence::record::{Difference, PrimarySide, ShadowSide};

    fn record(diffs: Vec<Difference>) -> DiffRecord {
        DiffRecord {
            ts: "2026-11-25T20:00:00Z".into(),
            request_id: "r1".into(),
            shadow_request_id: None,
            id: None,
            instance: None,
            config_hash: None,
            client_ip: None,
            route: "users".into(),
            endpoint: "/u/{id}".into(),
            method: "GET".into(),
            path: "/u/1".into(),
            query: None,
            primary: PrimarySide { upstream: "legacy".into(), status: Some(200), latency_ms: None, body_bytes: None },
            shadow: ShadowSide {
                upstream: "new".into(),
                status: Some(200),
                latency_ms: None,
                body_bytes: None,
                error: None,
            },
            result: Outcome::Mismatch,
            reason: None,
            diffs,
            noise: vec![],
        }
    }

    fn got(status: u16, body: Value) -> Got {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
        headers.insert("etag", HeaderValue::from_static("\"v1\""));
        Got { status, headers, body: Bytes::from(body.to_string()) }
    }

    fn d(kind: DiffKind, pointer: &str, primary: Value) -> Difference {
        Difference { kind, pointer: pointer.into(), primary, shadow: json!("whatever") }
    }

    #[test]
    fn recorded_values_decide_fixed() {
        let r = record(vec![
            d(DiffKind::Body, "/email", json!("a@x")),
            d(DiffKind::Body, "/n", json!(1)),
            d(DiffKind::Body, "/gone", Value::Null),
            d(DiffKind::Header, "etag", json!("\"v1\"")),
            d(DiffKind::Header, "content-type", json!("application/json")),
        ]);
        assert!(against_record(&r, &got(200, json!({"email": "a@x", "n": 1.0}))).is_empty());
        assert_eq!(against_record(&r, &got(200, json!({"email": "A@x", "n": 1, "gone": 3}))), vec!["/email", "/gone"]);
        assert_eq!(against_record(&r, &got(404, json!({"email": "a@x", "n": 1}))), vec!["status"]);
        let whole = record(vec![d(DiffKind::Body, "", json!("--- primary"))]);
        assert_eq!(against_record(&whole, &got(200, json!({}))), vec![""]);
    }

    #[test]
    fn full_comparison_ignores_the_records_noise() {
        let mut r = record(vec![]);
        r.noise = vec!["/updated_at".into()];
        let p = got(200, json!({"a": 1, "updated_at": 5}));
        assert!(against_primary(&r, &p, &got(200, json!({"a": 1, "updated_at": 6}))).is_empty());
        assert_eq!(against_primary(&r, &p, &got(200, json!({"a": 2, "updated_at": 6}))), vec!["/a"]);
    }
}
