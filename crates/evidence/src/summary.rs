//! Cutover summaries of shadow-diff records.
//!
//! [`Summary`] is a streaming, mergeable aggregate of [`DiffRecord`]s with
//! bounded memory: the proxy feeds it live (`Summary::add`) for its admin
//! endpoint, and `strangler report` feeds it from one log per replica and
//! merges them. [`Summary::view`] turns it into a [`Report`]: per route and
//! per endpoint match rates with 95% Wilson intervals, the triage view
//! (mismatches grouped by the exact set of differing fields), the top fields
//! with examples, noise with a pasteable `ignore:` snippet, skipped requests,
//! shadow errors, latency quantiles, match rate over time and a verdict.
//! [`Summary::to_json`] is the machine-readable form (stable field names).
//!
//! Bounds: 3 examples per field and per group, 200 distinct fields, groups and
//! noise fields per endpoint (the rest is counted as `other`), 500 endpoints
//! per route, 50 distinct error messages, 480 latency buckets, 512 time
//! buckets per route, 100 instances and config versions.

pub mod stats;

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::noise;
use crate::record::{DiffKind, DiffRecord, Outcome};
use stats::{fold_pointer, parse_rfc3339_ms, wilson, Histogram, Quantiles};

/// Examples kept per field and per triage group.
pub const MAX_EXAMPLES: usize = 3;
/// Distinct fields, triage groups and noise fields kept per endpoint.
pub const MAX_DISTINCT: usize = 200;
/// Distinct (method, endpoint) pairs kept per route; the rest are merged into one.
pub const MAX_ENDPOINTS: usize = 500;
/// Distinct shadow error messages kept per endpoint.
pub const MAX_MESSAGES: usize = 50;
/// Time buckets kept per route before they are widened.
pub const MAX_TIME_BUCKETS: usize = 512;
/// An example value longer than this (as JSON text) is cut.
pub const MAX_VALUE_CHARS: usize = 400;
/// The endpoint name under which endpoints beyond [`MAX_ENDPOINTS`] are counted.
pub const OTHER_ENDPOINTS: &str = "(other endpoints)";
/// Distinct instances and config versions counted; the rest are `(other)`.
pub const MAX_INSTANCES: usize = 100;
/// What a record without an `instance` or `config_hash` (written before they
/// existed) is counted under.
pub const UNKNOWN: &str = "(unknown)";

/// How a report is judged and how much of it is shown.
#[derive(Debug, Clone, Serialize)]
pub struct ViewOptions {
    /// A route is ready when its match rate is at least this (percent).
    pub min_match: f64,
    /// ... over at least this many compared requests.
    pub min_samples: u64,
    /// Rows shown in the triage and top-field lists.
    #[serde(skip)]
    pub max_rows: usize,
    /// Target number of points in the match-rate-over-time series.
    #[serde(skip)]
    pub time_buckets: usize,
    /// Also break every route down per endpoint.
    #[serde(skip)]
    pub endpoints: bool,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions { min_match: 99.9, min_samples: 1000, max_rows: 20, time_buckets: 50, endpoints: true }
    }
}

/// Where the records came from (filled in by the reader of `strangler report`;
/// empty in the live summary).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inputs {
    /// The sources read: files, and stores (shown without their password).
    pub files: Vec<String>,
    /// Records read (non-blank lines of a file, rows of a store), valid or not.
    pub lines: u64,
    /// Lines that were not a valid record (reported on stderr and skipped).
    pub corrupt_lines: u64,
    /// Records left out by `--route`, `--since`, `--until` or `--instance`.
    pub filtered_out: u64,
    /// Records whose `id` was already counted (the same record given twice,
    /// e.g. by two overlapping exports): counted once.
    pub duplicates_ignored: u64,
}

/// The streaming aggregate. `Default` is empty; `add` and `merge` grow it.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    routes: HashMap<String, RouteAgg>,
    records: u64,
    bad_timestamps: u64,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    instances: Capped<u64, MAX_INSTANCES>,
    config_hashes: Capped<u64, MAX_INSTANCES>,
    pub inputs: Inputs,
}

#[derive(Debug, Clone, Default)]
struct RouteAgg {
    /// endpoint → method → stats
    endpoints: HashMap<String, Vec<(String, Stats)>>,
    pairs: usize,
    timeline: Timeline,
    /// The route's first record (for the rate at which it gathers samples).
    first_ms: Option<i64>,
}

/// A map that keeps at most `MAX` keys and counts what it had to leave out.
#[derive(Debug, Clone)]
struct Capped<T, const MAX: usize> {
    map: HashMap<String, T>,
    other: u64,
}

impl<T, const MAX: usize> Default for Capped<T, MAX> {
    fn default() -> Self {
        Capped { map: HashMap::new(), other: 0 }
    }
}

trait Tally: Default {
    fn tally(&self) -> u64;
    fn absorb(&mut self, other: Self);
}

impl Tally for u64 {
    fn tally(&self) -> u64 {
        *self
    }
    fn absorb(&mut self, other: Self) {
        *self += other
    }
}

impl<T: Tally, const MAX: usize> Capped<T, MAX> {
    /// The entry for `key`, or `None` (and `other` counted) when full.
    fn entry(&mut self, key: &str) -> Option<&mut T> {
        if !self.map.contains_key(key) {
            if self.map.len() >= MAX {
                self.other += 1;
                return None;
            }
            self.map.insert(key.to_string(), T::default());
        }
        self.map.get_mut(key)
    }

    fn merge(&mut self, other: Capped<T, MAX>) {
        self.other += other.other;
        for (k, v) in other.map {
            if let Some(mine) = self.map.get_mut(&k) {
                mine.absorb(v);
            } else if self.map.len() < MAX {
                self.map.insert(k, v);
            } else {
                self.other += v.tally();
            }
        }
    }

    /// Entries by count, largest first (ties by key).
    fn sorted(&self) -> Vec<(&String, &T)> {
        let mut v: Vec<_> = self.map.iter().collect();
        v.sort_by(|a, b| b.1.tally().cmp(&a.1.tally()).then_with(|| a.0.cmp(b.0)));
        v
    }
}

/// A request, as an example of a triage group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRef {
    pub request_id: String,
    pub method: String,
    pub path: String,
}

/// One concrete difference: what the primary said and what the shadow said.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    pub ts: String,
    pub request_id: String,
    pub method: String,
    pub path: String,
    /// The exact pointer (before index folding).
    pub pointer: String,
    pub primary: Value,
    pub shadow: Value,
}

#[derive(Debug, Clone, Default)]
struct GroupAgg {
    fields: Vec<String>,
    count: u64,
    examples: Vec<RequestRef>,
}

impl Tally for GroupAgg {
    fn tally(&self) -> u64 {
        self.count
    }
    fn absorb(&mut self, other: Self) {
        self.count += other.count;
        fill(&mut self.examples, other.examples);
    }
}

#[derive(Debug, Clone)]
struct FieldAgg {
    kind: DiffKind,
    count: u64,
    examples: Vec<Example>,
}

impl Default for FieldAgg {
    fn default() -> Self {
        FieldAgg { kind: DiffKind::Body, count: 0, examples: Vec::new() }
    }
}

impl Tally for FieldAgg {
    fn tally(&self) -> u64 {
        self.count
    }
    fn absorb(&mut self, other: Self) {
        self.count += other.count;
        fill(&mut self.examples, other.examples);
    }
}

fn fill<T>(mine: &mut Vec<T>, theirs: Vec<T>) {
    for e in theirs {
        if mine.len() >= MAX_EXAMPLES {
            break;
        }
        mine.push(e);
    }
}

/// Counts for one endpoint (and, merged, for one route).
#[derive(Debug, Clone, Default)]
struct Stats {
    matched: u64,
    mismatched: u64,
    shadow_errors: u64,
    skipped: u64,
    by_kind: [u64; 3],
    groups: Capped<GroupAgg, MAX_DISTINCT>,
    fields: Capped<FieldAgg, MAX_DISTINCT>,
    noise: Capped<u64, MAX_DISTINCT>,
    noise_records: u64,
    /// Mismatches as written that count as matches: every difference was noise for the fleet.
    rejudged: u64,
    skipped_reasons: Capped<u64, 32>,
    error_reasons: Capped<u64, 32>,
    error_messages: Capped<u64, MAX_MESSAGES>,
    primary_latency: Histogram,
    shadow_latency: Histogram,
}

fn kind_index(kind: DiffKind) -> usize {
    match kind {
        DiffKind::Status => 0,
        DiffKind::Header => 1,
        DiffKind::Body => 2,
    }
}

/// The field a difference is counted under: `status`, `header:NAME`, or the
/// body pointer with array indexes folded (`""` for a whole text or binary body).
/// The same name noise is known by ([`noise::key`]).
pub fn field_label(kind: DiffKind, pointer: &str) -> String {
    noise::key(kind, pointer)
}

/// A value cut to [`MAX_VALUE_CHARS`] of JSON text (as a string) when longer.
fn clip(v: &Value) -> Value {
    match v {
        Value::String(s) if s.len() <= MAX_VALUE_CHARS => v.clone(),
        Value::String(s) => Value::String(cut(s, MAX_VALUE_CHARS)),
        Value::Array(_) | Value::Object(_) => {
            let text = v.to_string();
            if text.len() <= MAX_VALUE_CHARS {
                v.clone()
            } else {
                Value::String(cut(&text, MAX_VALUE_CHARS))
            }
        }
        _ => v.clone(),
    }
}

fn cut(s: &str, max: usize) -> String {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end == s.len() {
        s.to_string()
    } else {
        format!("{}…", &s[..end])
    }
}

fn full_path(r: &DiffRecord) -> String {
    match r.query.as_deref() {
        Some(q) if !q.is_empty() => format!("{}?{}", r.path, q),
        _ => r.path.clone(),
    }
}

impl Stats {
    fn add(&mut self, r: &DiffRecord) {
        if let Some(ms) = r.primary.latency_ms {
            self.primary_latency.add(ms);
        }
        if let Some(ms) = r.shadow.latency_ms {
            if r.result != Outcome::ShadowError {
                self.shadow_latency.add(ms);
            }
        }
        if !r.noise.is_empty() {
            self.noise_records += 1;
            for n in &r.noise {
                if let Some(c) = self.noise.entry(&noise::normalize(n)) {
                    *c += 1;
                }
            }
        }
        match r.result {
            Outcome::Match => self.matched += 1,
            Outcome::Mismatch => self.add_mismatch(r),
            Outcome::Skipped => {
                self.skipped += 1;
                if let Some(c) = self.skipped_reasons.entry(r.reason.as_deref().unwrap_or("unknown")) {
                    *c += 1;
                }
            }
            Outcome::ShadowError => {
                self.shadow_errors += 1;
                if let Some(c) = self.error_reasons.entry(r.reason.as_deref().unwrap_or("unknown")) {
                    *c += 1;
                }
                let message = r.shadow.error.as_deref().or(r.reason.as_deref()).unwrap_or("unknown");
                if let Some(c) = self.error_messages.entry(&cut(message, 200)) {
                    *c += 1;
                }
            }
        }
    }

    fn add_mismatch(&mut self, r: &DiffRecord) {
        self.mismatched += 1;
        let mut kinds = [false; 3];
        let mut labels: Vec<(String, usize)> = Vec::with_capacity(r.diffs.len());
        for (i, d) in r.diffs.iter().enumerate() {
            kinds[kind_index(d.kind)] = true;
            labels.push((field_label(d.kind, &d.pointer), i));
        }
        for (k, seen) in kinds.iter().enumerate() {
            self.by_kind[k] += *seen as u64;
        }
        labels.sort();
        labels.dedup_by(|a, b| a.0 == b.0);
        for (label, i) in &labels {
            let d = &r.diffs[*i];
            if let Some(f) = self.fields.entry(label) {
                f.kind = d.kind;
                f.count += 1;
                if f.examples.len() < MAX_EXAMPLES {
                    f.examples.push(Example {
                        ts: r.ts.clone(),
                        request_id: r.request_id.clone(),
                        method: r.method.clone(),
                        path: full_path(r),
                        pointer: d.pointer.clone(),
                        primary: clip(&d.primary),
                        shadow: clip(&d.shadow),
                    });
                }
            }
        }
        let key = labels.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>().join("\n");
        if let Some(g) = self.groups.entry(&key) {
            if g.count == 0 {
                g.fields = labels.iter().map(|(l, _)| l.clone()).collect();
            }
            g.count += 1;
            if g.examples.len() < MAX_EXAMPLES {
                g.examples.push(RequestRef {
                    request_id: r.request_id.clone(),
                    method: r.method.clone(),
                    path: full_path(r),
                });
            }
        }
    }

    fn merge(&mut self, o: Stats) {
        self.matched += o.matched;
        self.mismatched += o.mismatched;
        self.shadow_errors += o.shadow_errors;
        self.skipped += o.skipped;
        for k in 0..3 {
            self.by_kind[k] += o.by_kind[k];
        }
        self.groups.merge(o.groups);
        self.fields.merge(o.fields);
        self.noise.merge(o.noise);
        self.noise_records += o.noise_records;
        self.rejudged += o.rejudged;
        self.skipped_reasons.merge(o.skipped_reasons);
        self.error_reasons.merge(o.error_reasons);
        self.error_messages.merge(o.error_messages);
        self.primary_latency.merge(&o.primary_latency);
        self.shadow_latency.merge(&o.shadow_latency);
    }
}

/// Matches, mismatches and shadow errors over time, in buckets of round
/// widths (1 s, 5 s, 10 s, 30 s, 1 min, ... 1 day, 1 week) that widen as the
/// span grows so that at most [`MAX_TIME_BUCKETS`] exist.
#[derive(Debug, Clone)]
struct Timeline {
    width_s: i64,
    /// Bucket index (start / width) → counts by [`MATCHED`], [`MISMATCHED`], [`ERRORS`].
    buckets: BTreeMap<i64, [u64; 3]>,
}

const MATCHED: usize = 0;
const MISMATCHED: usize = 1;
const ERRORS: usize = 2;

impl Default for Timeline {
    fn default() -> Self {
        Timeline { width_s: 1, buckets: BTreeMap::new() }
    }
}

/// Bucket widths in seconds; each divides the next, so buckets widen exactly.
const WIDTHS: &[i64] = &[1, 5, 10, 30, 60, 300, 600, 1800, 3600, 10_800, 21_600, 43_200, 86_400, 604_800];

fn wider(width_s: i64) -> i64 {
    WIDTHS.iter().copied().find(|w| *w > width_s).unwrap_or(width_s * 2)
}

/// Buckets of `width_s` from the one holding `from_ms` to the one holding `to_ms`.
fn bucket_count(width_s: i64, from_ms: i64, to_ms: i64) -> i64 {
    to_ms.div_euclid(1000).div_euclid(width_s) - from_ms.div_euclid(1000).div_euclid(width_s) + 1
}

/// The one bucket width of a report: the narrowest round width, no
/// narrower than `narrowest`, that shows `from_ms..=to_ms` in at most `target` buckets.
fn report_width(narrowest: i64, from_ms: i64, to_ms: i64, target: usize) -> i64 {
    let mut width = narrowest.max(1);
    while bucket_count(width, from_ms, to_ms) > target.max(2) as i64 {
        width = wider(width);
    }
    width
}

impl Timeline {
    fn add(&mut self, ms: i64, column: usize) {
        let idx = ms.div_euclid(1000).div_euclid(self.width_s);
        self.buckets.entry(idx).or_default()[column] += 1;
        while self.buckets.len() > MAX_TIME_BUCKETS {
            self.widen(wider(self.width_s));
        }
    }

    fn widen(&mut self, width_s: i64) {
        if width_s <= self.width_s {
            return;
        }
        let factor = width_s / self.width_s;
        let mut out: BTreeMap<i64, [u64; 3]> = BTreeMap::new();
        for (idx, c) in std::mem::take(&mut self.buckets) {
            add3(out.entry(idx.div_euclid(factor)).or_default(), c);
        }
        self.buckets = out;
        self.width_s = width_s;
    }

    fn merge(&mut self, mut o: Timeline) {
        let width = self.width_s.max(o.width_s);
        self.widen(width);
        o.widen(width);
        for (idx, c) in o.buckets {
            add3(self.buckets.entry(idx).or_default(), c);
        }
        while self.buckets.len() > MAX_TIME_BUCKETS {
            self.widen(wider(self.width_s));
        }
    }

    /// Every bucket of `width_s` (at least this timeline's width) from the
    /// one holding `from_ms` to the one holding `to_ms`, empty ones included.
    fn view(&self, width_s: i64, from_ms: i64, to_ms: i64) -> TimelineView {
        let mut t = self.clone();
        t.widen(width_s);
        let w = t.width_s;
        let (Some(&first), Some(&last)) = (t.buckets.keys().next(), t.buckets.keys().next_back()) else {
            return TimelineView { bucket_seconds: w as u64, end: None, buckets: vec![] };
        };
        let first = first.min(from_ms.div_euclid(1000).div_euclid(w));
        let last = last.max(to_ms.div_euclid(1000).div_euclid(w));
        let buckets = (first..=last)
            .map(|idx| {
                let c = t.buckets.get(&idx).copied().unwrap_or_default();
                let n = c[MATCHED] + c[MISMATCHED];
                TimePoint {
                    start: stats::format_ms(idx * w * 1000),
                    compared: n,
                    matched: c[MATCHED],
                    mismatched: c[MISMATCHED],
                    shadow_error: c[ERRORS],
                    match_percent: (n > 0).then(|| pct(c[MATCHED], n)),
                }
            })
            .collect();
        TimelineView { bucket_seconds: w as u64, end: Some(stats::format_ms((last + 1) * w * 1000)), buckets }
    }
}

fn add3(into: &mut [u64; 3], c: [u64; 3]) {
    for (a, b) in into.iter_mut().zip(c) {
        *a += b;
    }
}

fn pct(a: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        a as f64 * 100.0 / n as f64
    }
}

impl Summary {
    pub fn new() -> Summary {
        Summary::default()
    }

    /// Records aggregated so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Counts one record.
    pub fn add(&mut self, r: &DiffRecord) {
        self.add_judged(r, false);
    }

    /// Counts one record that a reader judged again ([`crate::noise::FleetNoise::rejudge`]);
    /// `rejudged` says its mismatch became a match.
    pub fn add_judged(&mut self, r: &DiffRecord, rejudged: bool) {
        self.records += 1;
        let ms = parse_rfc3339_ms(&r.ts);
        match ms {
            Some(ms) => {
                self.first_ms = Some(self.first_ms.map_or(ms, |f| f.min(ms)));
                self.last_ms = Some(self.last_ms.map_or(ms, |l| l.max(ms)));
            }
            None => self.bad_timestamps += 1,
        }
        if let Some(c) = self.instances.entry(r.instance.as_deref().unwrap_or(UNKNOWN)) {
            *c += 1;
        }
        if let Some(c) = self.config_hashes.entry(r.config_hash.as_deref().unwrap_or(UNKNOWN)) {
            *c += 1;
        }
        let route = match self.routes.get_mut(r.route.as_str()) {
            Some(route) => route,
            None => self.routes.entry(r.route.clone()).or_default(),
        };
        if let Some(ms) = ms {
            route.first_ms = Some(route.first_ms.map_or(ms, |f| f.min(ms)));
            let column = match r.result {
                Outcome::Match => Some(MATCHED),
                Outcome::Mismatch => Some(MISMATCHED),
                Outcome::ShadowError => Some(ERRORS),
                Outcome::Skipped => None,
            };
            if let Some(column) = column {
                route.timeline.add(ms, column);
            }
        }
        let stats = route.stats_for(&r.endpoint, &r.method);
        stats.add(r);
        stats.rejudged += rejudged as u64;
    }

    /// Adds another summary's counts (another replica's log, another thread's share).
    pub fn merge(&mut self, other: Summary) {
        self.records += other.records;
        self.bad_timestamps += other.bad_timestamps;
        self.first_ms = match (self.first_ms, other.first_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_ms = match (self.last_ms, other.last_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.inputs.files.extend(other.inputs.files);
        self.inputs.lines += other.inputs.lines;
        self.inputs.corrupt_lines += other.inputs.corrupt_lines;
        self.inputs.filtered_out += other.inputs.filtered_out;
        self.inputs.duplicates_ignored += other.inputs.duplicates_ignored;
        self.instances.merge(other.instances);
        self.config_hashes.merge(other.config_hashes);
        for (name, theirs) in other.routes {
            let mine = self.routes.entry(name).or_default();
            mine.timeline.merge(theirs.timeline);
            mine.first_ms = match (mine.first_ms, theirs.first_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            for (endpoint, methods) in theirs.endpoints {
                for (method, stats) in methods {
                    mine.stats_for(&endpoint, &method).merge(stats);
                }
            }
        }
    }

    /// The report: judged with `opts`, routes sorted by name. Every route's
    /// timeline has the same buckets, over the span of the whole report.
    pub fn view(&self, opts: &ViewOptions) -> Report {
        let mut names: Vec<&String> = self.routes.keys().collect();
        names.sort();
        let (from_ms, to_ms) = (self.first_ms.unwrap_or(0), self.last_ms.unwrap_or(0));
        let narrowest = self.routes.values().map(|r| r.timeline.width_s).max().unwrap_or(1);
        let width = report_width(narrowest, from_ms, to_ms, opts.time_buckets);
        let mut totals = Stats::default();
        let mut routes = Vec::new();
        for name in names {
            let agg = &self.routes[name];
            let mut all = Stats::default();
            let mut endpoints = Vec::new();
            for (endpoint, methods) in &agg.endpoints {
                for (method, stats) in methods {
                    all.merge(stats.clone());
                    if opts.endpoints {
                        endpoints.push(EndpointView {
                            method: method.clone(),
                            endpoint: endpoint.clone(),
                            stats: stats.view(opts),
                        });
                    }
                }
            }
            endpoints.sort_by(|a, b| {
                b.stats.counts.sampled.cmp(&a.stats.counts.sampled).then_with(|| {
                    (a.endpoint.as_str(), a.method.as_str()).cmp(&(b.endpoint.as_str(), b.method.as_str()))
                })
            });
            let stats = all.view(opts);
            // The pace at which the route gathers samples: compared requests
            // since its first record, up to the end of the report.
            let elapsed_s = agg.first_ms.map_or(0.0, |f| (to_ms - f) as f64 / 1000.0);
            let per_second = (elapsed_s >= 1.0).then(|| stats.counts.compared as f64 / elapsed_s);
            let verdict = Verdict::judge(&stats, opts, per_second);
            totals.merge(all);
            routes.push(RouteView {
                route: name.clone(),
                verdict,
                stats,
                timeline: agg.timeline.view(width, from_ms, to_ms),
                endpoints,
            });
        }
        let totals = totals.counts();
        Report {
            generated_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            options: opts.clone(),
            inputs: self.inputs.clone(),
            span: Span {
                first: self.first_ms.map(stats::format_ms),
                last: self.last_ms.map(stats::format_ms),
                bad_timestamps: self.bad_timestamps,
            },
            ready: !routes.is_empty() && routes.iter().all(|r| r.verdict.ready),
            totals,
            instances: counts_of(&self.instances),
            config_hashes: counts_of(&self.config_hashes),
            routes,
        }
    }

    /// The report as JSON: what `strangler report --format json` prints and
    /// what the admin `/shadow` endpoint serves.
    pub fn to_json(&self, opts: &ViewOptions) -> Value {
        serde_json::to_value(self.view(opts)).expect("a report is always valid JSON")
    }
}

impl RouteAgg {
    fn stats_for(&mut self, endpoint: &str, method: &str) -> &mut Stats {
        let known = self.endpoints.get(endpoint).is_some_and(|m| m.iter().any(|(k, _)| k == method));
        let (endpoint, method) =
            if known || self.pairs < MAX_ENDPOINTS { (endpoint, method) } else { (OTHER_ENDPOINTS, "*") };
        let methods = match self.endpoints.get_mut(endpoint) {
            Some(_) => self.endpoints.get_mut(endpoint).unwrap(),
            None => self.endpoints.entry(endpoint.to_string()).or_default(),
        };
        let pos = match methods.iter().position(|(k, _)| k == method) {
            Some(pos) => pos,
            None => {
                methods.push((method.to_string(), Stats::default()));
                self.pairs += 1;
                methods.len() - 1
            }
        };
        &mut methods[pos].1
    }
}

/// The whole report (the JSON summary's top level).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub options: ViewOptions,
    pub inputs: Inputs,
    pub span: Span,
    pub totals: Counts,
    /// Every route is ready.
    pub ready: bool,
    /// Records per replica that wrote them (`(unknown)`: written before records named it).
    pub instances: Vec<NameCount>,
    /// Records per routes.yaml version in force when they were written.
    pub config_hashes: Vec<NameCount>,
    pub routes: Vec<RouteView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Span {
    pub first: Option<String>,
    pub last: Option<String>,
    /// Records whose `ts` could not be read (counted, left out of the time series).
    pub bad_timestamps: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Every record (all outcomes).
    pub sampled: u64,
    /// `match` + `mismatch`.
    pub compared: u64,
    #[serde(rename = "match")]
    pub matched: u64,
    #[serde(rename = "mismatch")]
    pub mismatched: u64,
    pub shadow_error: u64,
    pub skipped: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    pub route: String,
    pub verdict: Verdict,
    #[serde(flatten)]
    pub stats: StatsView,
    pub timeline: TimelineView,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    pub method: String,
    pub endpoint: String,
    #[serde(flatten)]
    pub stats: StatsView,
}

/// Ready to cut over, or why not.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub ready: bool,
    /// Empty when ready.
    pub reasons: Vec<String>,
    /// With too few samples: about how long until there are enough, at the
    /// pace the route gathered them so far (seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples_eta_seconds: Option<u64>,
}

impl Verdict {
    /// `per_second`: compared requests per second so far, when known.
    fn judge(s: &StatsView, opts: &ViewOptions, per_second: Option<f64>) -> Verdict {
        let mut reasons = Vec::new();
        let mut samples_eta_seconds = None;
        let n = s.counts.compared;
        if n < opts.min_samples {
            let mut reason = format!("not enough samples: {n} < {}", opts.min_samples);
            match per_second.filter(|r| *r > 0.0) {
                Some(rate) => {
                    let eta = ((opts.min_samples - n) as f64 / rate).ceil() as u64;
                    samples_eta_seconds = Some(eta);
                    reason.push_str(&format!(", about {} more at the current rate ({})", about(eta), pace(rate)));
                }
                None if n == 0 => reason.push_str(", none compared yet"),
                None => {}
            }
            reasons.push(reason);
        }
        if let Some(rate) = &s.match_rate {
            if rate.percent < opts.min_match {
                reasons.push(format!("match rate {}% < {}%", fmt_pct(rate.percent), opts.min_match));
            }
        }
        // A shadow that fails more often than the mismatch budget is not ready either.
        let attempted = n + s.counts.shadow_error;
        if attempted > 0 {
            let error_pct = pct(s.counts.shadow_error, attempted);
            if error_pct > 100.0 - opts.min_match + 1e-9 {
                reasons.push(format!(
                    "shadow errors {:.2}% of compared-or-failed requests > {}%",
                    error_pct,
                    fmt_pct(100.0 - opts.min_match)
                ));
            }
        }
        Verdict { ready: reasons.is_empty(), reasons, samples_eta_seconds }
    }
}

/// A duration in words, as precise as an estimate deserves: `under a
/// minute`, `25m`, `3h 10m`, `4days 6h`.
pub fn about(seconds: u64) -> String {
    if seconds < 60 {
        return "under a minute".to_string();
    }
    let rounded = if seconds < 2 * 86_400 { (seconds + 30) / 60 * 60 } else { (seconds + 1800) / 3600 * 3600 };
    humantime::format_duration(std::time::Duration::from_secs(rounded)).to_string()
}

/// A rate of compared requests in the unit that reads best: `12 per minute`.
pub fn pace(per_second: f64) -> String {
    let (v, unit) = if per_second >= 1.0 {
        (per_second, "second")
    } else if per_second * 60.0 >= 1.0 {
        (per_second * 60.0, "minute")
    } else if per_second * 3600.0 >= 1.0 {
        (per_second * 3600.0, "hour")
    } else {
        (per_second * 86_400.0, "day")
    };
    if v >= 10.0 {
        format!("{v:.0} compared per {unit}")
    } else {
        format!("{v:.1} compared per {unit}")
    }
}

/// A percentage with as many decimals as it takes to not round up to 100.
pub fn fmt_pct(p: f64) -> String {
    if p > 100.0 - 1e-9 {
        return "100.0".to_string();
    }
    for decimals in 1..=4 {
        let s = format!("{p:.decimals$}");
        if p >= 100.0 || s != format!("{:.decimals$}", 100.0) {
            return s;
        }
    }
    "99.9999".to_string()
}

#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub percent: f64,
    pub ci95_low: f64,
    pub ci95_high: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ByKind {
    pub status: u64,
    pub header: u64,
    pub body: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    /// The exact set of differing fields.
    pub fields: Vec<String>,
    pub count: u64,
    /// Share of the mismatches (percent).
    pub percent: f64,
    pub examples: Vec<RequestRef>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldView {
    pub field: String,
    pub kind: DiffKind,
    /// Mismatched requests in which the field differs.
    pub count: u64,
    pub percent: f64,
    pub examples: Vec<Example>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NameCount {
    pub name: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorsView {
    pub count: u64,
    pub by_reason: Vec<NameCount>,
    pub top_messages: Vec<NameCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyView {
    pub primary: Quantiles,
    pub shadow: Quantiles,
}

/// A route's match rate over time. Every route of a report has the same
/// buckets, from the report's first record to its last.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineView {
    pub bucket_seconds: u64,
    /// The end of the last bucket (`None` without buckets).
    pub end: Option<String>,
    pub buckets: Vec<TimePoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimePoint {
    pub start: String,
    pub compared: u64,
    #[serde(rename = "match")]
    pub matched: u64,
    #[serde(rename = "mismatch")]
    pub mismatched: u64,
    pub shadow_error: u64,
    pub match_percent: Option<f64>,
}

/// Everything counted for a route or an endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    pub counts: Counts,
    /// `None` before any request was compared.
    pub match_rate: Option<Rate>,
    /// Matches (counted in `match`) that were written as mismatches: every
    /// field that differed is noise, seen so by some replica of the fleet.
    pub rejudged_as_match: u64,
    /// Mismatched requests with at least one difference of each kind.
    pub mismatches_by_kind: ByKind,
    /// Mismatches grouped by the exact set of differing fields, largest first.
    pub triage: Vec<GroupView>,
    /// Mismatches in groups not listed.
    pub triage_other: u64,
    pub fields: Vec<FieldView>,
    pub fields_other: u64,
    /// Fields that differ between two answers of the primary itself.
    pub noise: Vec<NameCount>,
    pub noise_other: u64,
    /// A `shadow:` snippet for routes.yaml that ignores the noise fields.
    pub ignore_snippet: Option<String>,
    pub skipped: Vec<NameCount>,
    pub shadow_errors: ErrorsView,
    pub latency: LatencyView,
}

impl Stats {
    fn counts(&self) -> Counts {
        Counts {
            sampled: self.matched + self.mismatched + self.shadow_errors + self.skipped,
            compared: self.matched + self.mismatched,
            matched: self.matched,
            mismatched: self.mismatched,
            shadow_error: self.shadow_errors,
            skipped: self.skipped,
        }
    }

    fn view(&self, opts: &ViewOptions) -> StatsView {
        let counts = self.counts();
        let n = counts.compared;
        let match_rate = (n > 0).then(|| {
            let (lo, hi) = wilson(self.matched, n);
            Rate { percent: pct(self.matched, n), ci95_low: lo * 100.0, ci95_high: hi * 100.0 }
        });
        let rows = opts.max_rows;
        let groups = self.groups.sorted();
        let triage_other = self.groups.other + groups.iter().skip(rows).map(|(_, g)| g.count).sum::<u64>();
        let triage = groups
            .into_iter()
            .take(rows)
            .map(|(_, g)| GroupView {
                fields: g.fields.clone(),
                count: g.count,
                percent: pct(g.count, self.mismatched),
                examples: g.examples.clone(),
            })
            .collect();
        let fields = self.fields.sorted();
        let fields_other = (fields.len().saturating_sub(rows) as u64) + self.fields.other;
        let fields = fields
            .into_iter()
            .take(rows)
            .map(|(name, f)| FieldView {
                field: name.clone(),
                kind: f.kind,
                count: f.count,
                percent: pct(f.count, self.mismatched),
                examples: f.examples.clone(),
            })
            .collect();
        let noise_all = self.noise.sorted();
        let noise: Vec<NameCount> =
            noise_all.iter().map(|(k, v)| NameCount { name: (*k).clone(), count: **v }).collect();
        StatsView {
            counts,
            match_rate,
            rejudged_as_match: self.rejudged,
            mismatches_by_kind: ByKind { status: self.by_kind[0], header: self.by_kind[1], body: self.by_kind[2] },
            triage,
            triage_other,
            fields,
            fields_other,
            ignore_snippet: ignore_snippet(noise.iter().map(|n| n.name.as_str())),
            noise,
            noise_other: self.noise.other,
            skipped: counts_of(&self.skipped_reasons),
            shadow_errors: ErrorsView {
                count: self.shadow_errors,
                by_reason: counts_of(&self.error_reasons),
                top_messages: counts_of(&self.error_messages).into_iter().take(10).collect(),
            },
            latency: LatencyView { primary: self.primary_latency.quantiles(), shadow: self.shadow_latency.quantiles() },
        }
    }
}

fn counts_of<const MAX: usize>(c: &Capped<u64, MAX>) -> Vec<NameCount> {
    let mut v: Vec<NameCount> = c.sorted().into_iter().map(|(k, v)| NameCount { name: k.clone(), count: *v }).collect();
    if c.other > 0 {
        v.push(NameCount { name: "(other)".into(), count: c.other });
    }
    v
}

/// The `shadow:` lines for routes.yaml that ignore these noise fields:
/// body pointers under `ignore:`, header names under `ignore_headers:`.
pub fn ignore_snippet<'a>(fields: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut body: Vec<String> = Vec::new();
    let mut headers: Vec<String> = Vec::new();
    for f in fields {
        if let Some(h) = f.strip_prefix("header:") {
            headers.push(h.to_string());
        } else if f.starts_with('/') {
            body.push(fold_pointer(f));
        } else if !f.is_empty() && f != "status" {
            headers.push(f.to_ascii_lowercase());
        }
    }
    body.sort();
    body.dedup();
    headers.sort();
    headers.dedup();
    if body.is_empty() && headers.is_empty() {
        return None;
    }
    let list =
        |v: &[String]| v.iter().map(|s| serde_json::to_string(s).unwrap_or_default()).collect::<Vec<_>>().join(", ");
    let mut out = String::from("shadow:\n");
    if !body.is_empty() {
        out.push_str(&format!("  ignore: [{}]\n", list(&body)));
    }
    if !headers.is_empty() {
        out.push_str(&format!("  ignore_headers: [{}]\n", list(&headers)));
    }
    Some(out)
}

#[cfg(test)]
mod tests;
