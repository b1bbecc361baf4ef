//! Shadowing: a sampled copy of a route's traffic goes to a candidate
//! upstream, and its answer is compared with the primary's (the one the
//! client got) in a task of its own. The client's response never waits for
//! the shadow, is never changed by it, and a slow, dead or failing shadow
//! changes nothing for the client: shadow work is capped (`max_inflight`),
//! bounded in time (`timeout`) and in memory (`max_body`).
//!
//! Every sampled request that could not be compared is recorded with a
//! reason; nothing is dropped silently. Records go to the diff log (one JSON
//! object per line, rotated by size), to the fleet store when one is set
//! (`shadow.store`, see `strangler_store`), to metrics, and to the live
//! summary behind the admin `/shadow` endpoint.
//!
//! Every record carries an `id` (UUIDv7), the `instance` that wrote it and
//! the `config_hash` its request was routed by. Noise learned here (fields
//! that differ between two answers of the primary) is shared through the
//! store, and what any replica learned is merged in every few seconds, so
//! the whole fleet judges a route alike.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use http_body::Body as _;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::client::body::{Capture, Captured, OnEnd, ProxyBody, Tee};
use crate::config::{RawShadow, RawShadowLog};
use crate::diff::{self, Answer, CompareOptions};
use crate::headers::{self, TRACEPARENT, TRACESTATE, X_REQUEST_ID};
use crate::metrics::Metrics;
use crate::record::{reason, DiffKind, DiffRecord, Difference, Outcome, PrimarySide, ShadowSide};
use crate::split::stable_hash;
use crate::upstream::Upstream;
use strangler_store::{NoisePointer, Row, Store, StoreMetrics, StoreSettings};

/// Marks mirrored requests; a request that carries it is never mirrored again.
pub static X_STRANGLER_SHADOW: HeaderName = HeaderName::from_static("x-strangler-shadow");
/// On a mirrored request: the `X-Request-Id` of the user's request it copies
/// (the copy has an id of its own).
pub static X_STRANGLER_SHADOW_OF: HeaderName = HeaderName::from_static("x-strangler-shadow-of");

/// Distinct pointers per route in `strangler_shadow_field_mismatches_total`; the rest count as `other`.
const MAX_POINTER_LABELS: usize = 200;
/// Distinct noise fields remembered per route (over all its endpoints).
const MAX_NOISE_FIELDS: usize = 500;

/// Puts the calling thread (the shadow's runtime, the diff-log writer) in
/// Linux's `SCHED_IDLE` class: mirroring is best-effort, so it runs only on
/// CPU time no live request wants. A worker that wakes preempts it at once;
/// under EEVDF a nice value (before: `nice 10`) can let a burst of shadow
/// answers finish its slice before the worker runs. A starved shadow fills
/// its in-flight cap and drops copies, counted as `inflight_cap`. The class is
/// per thread, so the workers keep theirs.
fn yield_to_live_traffic() {
    let idle = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread and `idle` outlives the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "shadow thread keeps its scheduling class");
    }
}

/// A route's learned noise: per endpoint, the fields that differ between two
/// answers of the primary.
#[derive(Default)]
struct RouteNoise {
    fields: usize,
    endpoints: HashMap<String, BTreeSet<String>>,
}

impl RouteNoise {
    /// Adds `field` for `endpoint`; whether it is new (and within the bound).
    fn add(&mut self, endpoint: &str, field: &str) -> bool {
        if self.fields >= MAX_NOISE_FIELDS {
            return false;
        }
        let known = match self.endpoints.get_mut(endpoint) {
            Some(known) => known,
            None => self.endpoints.entry(endpoint.to_string()).or_default(),
        };
        let new = !known.contains(field) && known.insert(field.to_string());
        self.fields += usize::from(new);
        new
    }
}

/// This replica's name: `POD_NAME` (Kubernetes' downward API), else the hostname.
fn instance_name() -> String {
    let named = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    named(std::env::var("POD_NAME").ok())
        .or_else(|| named(std::fs::read_to_string("/proc/sys/kernel/hostname").ok()))
        .or_else(|| named(std::env::var("HOSTNAME").ok()))
        .unwrap_or_else(|| "unknown".to_string())
}

/// Where the sample key comes from.
#[derive(Debug, Clone)]
pub enum SampleKey {
    Header(HeaderName),
    Cookie(String),
}

/// A route's shadow settings, validated, before upstream names are resolved.
/// What [`validate`] makes of a `shadow:` block; [`ShadowRoute::instantiate`]
/// turns it into the route's [`ShadowRoute`] once the upstreams exist.
pub struct ShadowPlan {
    /// The candidate upstream, by name.
    pub upstream: String,
    /// The upstream asked a second time to learn noise, by name.
    pub noise: Option<String>,
    pub settings: ShadowSettings,
}

/// What a route's shadow does, besides which upstreams it asks.
pub struct ShadowSettings {
    pub sample: f64,
    pub sample_key: Option<SampleKey>,
    pub methods: Vec<Method>,
    pub max_body: usize,
    pub timeout: Duration,
    pub compare: CompareOptions,
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_headers: Vec<HeaderName>,
}

/// Checks the store settings of the top-level `shadow:` section; errors
/// carry (key, message) so the caller can point at the key in the file.
/// Pure: the DSN is parsed, nothing is read or connected.
pub fn validate_store(raw: &RawShadowLog) -> Result<(), (&'static str, String)> {
    if raw.store_queue == 0 {
        return Err(("store_queue", "shadow.store_queue must be at least 1".into()));
    }
    if raw.retention < Duration::from_secs(60) {
        return Err(("retention", "shadow.retention must be at least 1m (e.g. 14d)".into()));
    }
    let Some(text) = &raw.store else {
        return match raw.password_file {
            Some(_) => Err(("password_file", "shadow.password_file is for the store: set shadow.store too".into())),
            None => Ok(()),
        };
    };
    let dsn = strangler_store::Dsn::parse(text).map_err(|m| ("store", m))?;
    if dsn.has_password() && raw.password_file.is_some() {
        return Err((
            "password_file",
            format!(
                "the store {dsn} has a password in it already: give it once (the DSN, password_file or PGPASSWORD)"
            ),
        ));
    }
    Ok(())
}

/// Checks a route's `shadow:` block; errors carry (offending value, message)
/// so the caller can point at the value in the file. Pure: no I/O, no
/// metrics, no shared state, and upstream names are left to the caller.
pub fn validate(raw: &RawShadow) -> Result<ShadowPlan, (String, String)> {
    if !(0.0..=1.0).contains(&raw.sample) {
        return Err(("sample".into(), format!("shadow.sample must be between 0.0 and 1.0, not {}", raw.sample)));
    }
    let methods = match &raw.methods {
        Some(list) => crate::config::parse_methods(list).map_err(|m| ("methods".to_string(), m))?,
        None => vec![Method::GET, Method::HEAD],
    };
    if !raw.unsafe_writes {
        if let Some(write) = methods.iter().find(|m| !matches!(**m, Method::GET | Method::HEAD | Method::OPTIONS)) {
            return Err((
                write.to_string(),
                format!("shadow would mirror {write} requests, which write: set `unsafe_writes: true` only if the shadow has its own scratch database"),
            ));
        }
    }
    let patterns = |list: &[String]| {
        list.iter().map(|p| diff::Pattern::parse(p).map_err(|m| (p.clone(), m))).collect::<Result<Vec<_>, _>>()
    };
    let header_name = |h: &str| {
        HeaderName::from_bytes(h.as_bytes()).map_err(|_| (h.to_string(), format!("invalid header name {h:?}")))
    };
    let sample_key = match raw.sample_key.as_deref() {
        None => None,
        Some(k) => Some(match k.split_once(':') {
            Some(("header", name)) => SampleKey::Header(header_name(name)?),
            Some(("cookie", name)) if !name.is_empty() => SampleKey::Cookie(name.to_string()),
            _ => return Err((k.to_string(), format!("sample_key {k:?} must be header:NAME or cookie:NAME"))),
        }),
    };
    let edits = raw.headers.clone().unwrap_or_default();
    let set_headers = edits
        .set
        .iter()
        .map(|(k, v)| {
            let value = HeaderValue::from_str(v).map_err(|_| (v.clone(), format!("invalid header value {v:?}")))?;
            Ok((header_name(k)?, value))
        })
        .collect::<Result<Vec<_>, (String, String)>>()?;
    let remove_headers = edits.remove.iter().map(|h| header_name(h)).collect::<Result<Vec<_>, _>>()?;
    let compare = CompareOptions {
        ignore_headers: raw.ignore_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
        ignore: patterns(&raw.ignore)?,
        unordered: patterns(&raw.unordered)?,
        redact: patterns(&raw.redact)?,
        max_body: raw.max_body.0 as usize,
    };
    Ok(ShadowPlan {
        upstream: raw.upstream.clone(),
        noise: raw.noise.clone(),
        settings: ShadowSettings {
            sample: raw.sample,
            sample_key,
            methods,
            max_body: raw.max_body.0 as usize,
            timeout: raw.timeout,
            compare,
            set_headers,
            remove_headers,
        },
    })
}

/// A route's shadow settings, ready to serve: what the proxy asks whether a
/// request is mirrored, and what the shadow task sends and compares with.
pub struct ShadowRoute {
    pub upstream: Arc<Upstream>,
    pub noise: Option<Arc<Upstream>>,
    pub settings: ShadowSettings,
    /// The config version this route belongs to (`Table.hash`), for its records.
    pub config_hash: Arc<str>,
}

impl ShadowRoute {
    /// A validated plan with its upstreams resolved (`upstream` and `noise`
    /// are the ones `plan` names).
    pub fn instantiate(
        plan: ShadowPlan,
        upstream: Arc<Upstream>,
        noise: Option<Arc<Upstream>>,
        config_hash: Arc<str>,
    ) -> ShadowRoute {
        ShadowRoute { upstream, noise, settings: plan.settings, config_hash }
    }

    /// Whether this request is mirrored: method allowed, not itself a
    /// mirrored request, and sampled.
    pub fn wants(&self, method: &Method, headers: &HeaderMap) -> bool {
        if !self.settings.methods.contains(method) || headers.contains_key(&X_STRANGLER_SHADOW) {
            return false;
        }
        if self.settings.sample >= 1.0 {
            return true;
        }
        let key = self.settings.sample_key.as_ref().and_then(|k| match k {
            SampleKey::Header(name) => headers.get(name).map(|v| v.as_bytes().to_vec()),
            SampleKey::Cookie(name) => {
                crate::split::StickyKey::Cookie(name.as_str().into()).extract(headers).map(|v| v.to_vec())
            }
        });
        let point = match key {
            Some(key) => stable_hash(&key, SAMPLE_SEED) as f64 / u64::MAX as f64,
            None => fastrand::f64(),
        };
        point < self.settings.sample
    }
}

const SAMPLE_SEED: u64 = 0x5a4d_91e0;

/// What the proxy tells the shadow about a request it may mirror, borrowed
/// for as long as [`PendingMirror::start`] looks at it.
pub struct RequestFacts<'a> {
    pub route: &'a Arc<str>,
    pub request_id: &'a HeaderValue,
    /// The downstream client's address (see [`crate::forwarded`]).
    pub client_ip: IpAddr,
    pub method: &'a Method,
    /// The normalized path.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// What the primary is sent (after `strip_prefix`).
    pub path_and_query: &'a PathAndQuery,
    /// The request's headers after the proxy's edits.
    pub headers: &'a HeaderMap,
    pub primary_upstream: &'a Arc<str>,
}

/// A mirrored request as the shadow task sends it and records it.
struct MirroredRequest {
    route: Arc<str>,
    /// The user's request's id (the copies get their own).
    request_id: String,
    client_ip: IpAddr,
    method: Method,
    path: String,
    query: Option<String>,
    path_and_query: PathAndQuery,
    /// The primary request's headers after the proxy's edits.
    headers: HeaderMap,
    received: SystemTime,
    primary_upstream: Arc<str>,
    /// The config version the request was routed by.
    config_hash: Arc<str>,
}

impl MirroredRequest {
    /// An owned copy of the facts, with `headers` (empty for a request that
    /// is only recorded as skipped).
    fn new(facts: &RequestFacts<'_>, headers: HeaderMap, config_hash: &Arc<str>) -> Self {
        MirroredRequest {
            route: facts.route.clone(),
            request_id: facts.request_id.to_str().unwrap_or_default().to_string(),
            client_ip: facts.client_ip,
            method: facts.method.clone(),
            path: facts.path.to_string(),
            query: facts.query.map(str::to_string),
            path_and_query: facts.path_and_query.clone(),
            headers,
            received: SystemTime::now(),
            primary_upstream: facts.primary_upstream.clone(),
            config_hash: config_hash.clone(),
        }
    }
}

/// A mirror started for one request, not yet running: it holds an in-flight
/// slot and waits for the request body. Exactly one of [`Self::skip`],
/// [`Self::spawn_with_copy`] or [`Self::spawn_with_tee`] consumes it.
/// Boxed: only mirrored requests pay for it, and every request's future
/// stays smaller.
#[must_use = "a started mirror is spawned or skipped, or the sampled request goes unrecorded"]
pub struct PendingMirror(Box<Pending>);

struct Pending {
    runtime: Arc<ShadowRuntime>,
    shadow: Arc<ShadowRoute>,
    request: MirroredRequest,
    primary_tx: oneshot::Sender<PrimaryAnswer>,
    primary_rx: oneshot::Receiver<PrimaryAnswer>,
    permit: OwnedSemaphorePermit,
    started: Instant,
}

impl PendingMirror {
    /// Starts mirroring a request its route samples, or records it as
    /// skipped at the in-flight cap (`None`). At the cap every sampled
    /// request lands here: no header copy, and the record is made by the
    /// diff-log writer, off this thread.
    pub fn start(runtime: &Arc<ShadowRuntime>, shadow: &Arc<ShadowRoute>, facts: RequestFacts<'_>) -> Option<Self> {
        let Some(permit) = runtime.try_permit() else {
            let request = MirroredRequest::new(&facts, HeaderMap::new(), &shadow.config_hash);
            runtime.record_skip_later(request, &shadow.upstream.name, reason::INFLIGHT_CAP);
            return None;
        };
        let request = MirroredRequest::new(&facts, facts.headers.clone(), &shadow.config_hash);
        let (primary_tx, primary_rx) = oneshot::channel();
        Some(PendingMirror(Box::new(Pending {
            runtime: runtime.clone(),
            shadow: shadow.clone(),
            request,
            primary_tx,
            primary_rx,
            permit,
            started: Instant::now(),
        })))
    }

    /// Gives up on mirroring this request, with a recorded reason.
    pub fn skip(self, why: &str) {
        let pending = *self.0;
        pending.runtime.record_skip(&pending.request, &pending.shadow.upstream.name, why);
    }

    /// Starts the shadow task with a copy of a request body the proxy holds
    /// whole (kept for a replay).
    pub fn spawn_with_copy(self, body: &Bytes) -> ResponseTap {
        self.spawn(MirrorBody::Ready(body.clone()))
    }

    /// Starts the shadow task with the body the client is still sending:
    /// `body` is wrapped in a tee that streams it on to the primary and
    /// hands the shadow a copy when it ends. A body that is not streamed
    /// from the client, or is already over, mirrors as empty.
    pub fn spawn_with_tee(self, body: &mut ProxyBody) -> ResponseTap {
        let streaming = matches!(body, ProxyBody::Streamed(incoming) if !incoming.is_end_stream());
        if !streaming {
            return self.spawn(MirrorBody::Ready(Bytes::new()));
        }
        let (tx, rx) = oneshot::channel();
        let on_end: OnEnd = Box::new(move |captured| {
            let _ = tx.send(captured);
        });
        let streamed = std::mem::replace(body, ProxyBody::empty());
        *body = Tee::wrap(streamed, self.0.shadow.settings.max_body, on_end);
        self.spawn(MirrorBody::Pending(rx))
    }

    fn spawn(self, body: MirrorBody) -> ResponseTap {
        let Pending { runtime, shadow, request, primary_tx, primary_rx, permit, started } = *self.0;
        let max_body = shadow.settings.max_body;
        runtime.spawn(shadow, request, body, primary_rx, permit);
        ResponseTap(Box::new(Tap { primary_tx, max_body, started }))
    }
}

/// The running mirror's hold on the primary's answer: [`Self::tee`] hands
/// the shadow task a copy of the response the client gets. Dropped instead
/// (the primary failed), the comparison is recorded as `primary_error`.
/// Boxed, as [`PendingMirror`] is.
#[must_use = "the shadow task waits for the primary's answer"]
pub struct ResponseTap(Box<Tap>);

struct Tap {
    primary_tx: oneshot::Sender<PrimaryAnswer>,
    max_body: usize,
    started: Instant,
}

impl ResponseTap {
    /// Streams the primary's answer to the client while keeping a copy for
    /// the comparison; the copy is handed over when the body ends.
    /// `upstream` is the one that answered (the fallback's name if it did).
    pub fn tee(self, response: Response<ProxyBody>, upstream: Arc<str>) -> Response<ProxyBody> {
        let Tap { primary_tx: tx, max_body, started } = *self.0;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let latency = started.elapsed();
        if response.body().is_end_stream() {
            let captured = Captured { body: Bytes::new(), len: 0, sha256: diff::sha256(b""), within_limit: true };
            let _ = tx.send(PrimaryAnswer { upstream, status, headers, latency, captured: Some(captured) });
            return response;
        }
        let on_end: OnEnd = Box::new(move |captured| {
            let _ = tx.send(PrimaryAnswer { upstream, status, headers, latency, captured });
        });
        response.map(|body| Tee::wrap(body, max_body, on_end))
    }
}

/// The request body for the shadow: known now, or when the client's body
/// (teed to the primary) ends.
enum MirrorBody {
    Ready(Bytes),
    Pending(oneshot::Receiver<Option<Captured>>),
}

/// The primary's answer, sent once its body has ended.
struct PrimaryAnswer {
    /// The upstream that answered (the fallback's name if it did).
    upstream: Arc<str>,
    status: u16,
    headers: HeaderMap,
    latency: Duration,
    captured: Option<Captured>,
}

/// Shadow state shared by all config versions: the in-flight cap, the log
/// writer, learned noise, metrics and the live summary.
pub struct ShadowRuntime {
    settings: RawShadowLog,
    inflight: Arc<Semaphore>,
    log: Mutex<Option<mpsc::Sender<LogItem>>>,
    /// Closed when the diff-log writer's thread has written its last line.
    log_written: Mutex<Option<oneshot::Receiver<()>>>,
    /// This replica's name in its records: `POD_NAME`, else the hostname.
    instance: Arc<str>,
    /// Noise learned here or by any replica (through the store).
    noise: Mutex<HashMap<Arc<str>, RouteNoise>>,
    /// `strangler_shadow_noise_fields{route}`: fields known as noise.
    noise_fields: IntGaugeVec,
    /// The fleet store, once started (with `shadow.store`).
    store: std::sync::OnceLock<Store>,
    /// Its metrics, registered with the runtime's.
    store_metrics: Option<StoreMetrics>,
    pointer_labels: Mutex<HashMap<Arc<str>, HashSet<String>>>,
    /// Routes that left the config (see [`ShadowRuntime::forget_route`]).
    gone: Mutex<HashSet<String>>,
    requests: IntCounterVec,
    dropped: IntCounterVec,
    latency: HistogramVec,
    field_mismatches: IntCounterVec,
    /// Live summary behind the admin `/shadow` endpoint (bounded in size).
    pub summary: Mutex<crate::summary::Summary>,
    /// The shadow's own thread and runtime (see [`ShadowThread`]).
    thread: std::sync::OnceLock<ShadowThread>,
}

/// A thread with its own runtime where mirrored requests are sent, read and
/// compared, away from the workers that serve live traffic. A slow shadow
/// answers in bursts (a whole in-flight cap at once); handled on a worker,
/// such a burst delayed the live requests queued behind it (primary p99
/// +17–34% in the slow-shadow benchmark, +11% with a cap of 16). Stops when
/// the runtime that owns it is dropped and its last task is done.
struct ShadowThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl ShadowThread {
    fn start() -> std::io::Result<ShadowThread> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("strangler-shadow".into()).spawn(move || {
            yield_to_live_traffic();
            runtime.block_on(async {
                // Shadow fetches pool their connections on this thread.
                let sweeper = tokio::spawn(crate::client::sweep_idle_pools());
                let _ = stopped.await;
                sweeper.abort();
            });
        })?;
        Ok(ShadowThread { handle, _stop: stop })
    }
}

impl ShadowRuntime {
    /// The routes of the version now in force: counted again if they had left.
    pub fn serve_routes<'a>(&self, routes: impl Iterator<Item = &'a str>) {
        let mut gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        if !gone.is_empty() {
            for route in routes {
                gone.remove(route);
            }
        }
    }

    /// Creates each shadowed route's result series at 0, so the fleet's
    /// match-rate rules and alerts see `mismatch` as 0 rather than absent
    /// (a ratio over a missing series is no answer, not "all matched").
    pub fn precreate_series<'a>(&self, shadowed: impl Iterator<Item = &'a str>) {
        for route in shadowed {
            for outcome in [Outcome::Match, Outcome::Mismatch, Outcome::ShadowError, Outcome::Skipped] {
                self.requests.with_label_values(&[route, outcome.as_str()]);
            }
        }
    }

    /// Forgets a route that left the config: its metric series and what
    /// was learned of its noise (the live summary keeps its history).
    pub fn forget_route(&self, route: &str) {
        self.gone.lock().unwrap_or_else(|e| e.into_inner()).insert(route.to_string());
        for vec in [&self.requests, &self.dropped, &self.field_mismatches] {
            crate::metrics::remove_where(vec, &[("route", route)]);
        }
        crate::metrics::remove_where(&self.latency, &[("route", route)]);
        crate::metrics::remove_where(&self.noise_fields, &[("route", route)]);
        self.noise.lock().unwrap_or_else(|e| e.into_inner()).remove(route);
        self.pointer_labels.lock().unwrap_or_else(|e| e.into_inner()).remove(route);
    }

    pub fn new(settings: Option<RawShadowLog>, metrics: &Metrics) -> Arc<Self> {
        let settings = settings.unwrap_or_default();
        let requests = metrics.register(
            IntCounterVec::new(
                Opts::new("strangler_shadow_requests_total", "Shadowed requests by route and result."),
                &["route", "result"],
            )
            .unwrap(),
        );
        let dropped = metrics.register(
            IntCounterVec::new(
                Opts::new("strangler_shadow_dropped_total", "Sampled requests not compared, by route and reason."),
                &["route", "reason"],
            )
            .unwrap(),
        );
        let latency = metrics.register(
            HistogramVec::new(
                HistogramOpts::new(
                    "strangler_shadow_latency_seconds",
                    "Response time of primary and shadow, by route.",
                )
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["route", "side"],
            )
            .unwrap(),
        );
        let field_mismatches = metrics.register(
            IntCounterVec::new(
                Opts::new(
                    "strangler_shadow_field_mismatches_total",
                    "Mismatches by route and field (bounded; the rest is 'other').",
                ),
                &["route", "pointer"],
            )
            .unwrap(),
        );
        let noise_fields = metrics.register(
            IntGaugeVec::new(
                Opts::new(
                    "strangler_shadow_noise_fields",
                    "Fields known as noise (they differ between two answers of the primary), by route: learned here or, with a store, by any replica.",
                ),
                &["route"],
            )
            .unwrap(),
        );
        let store_metrics = match settings.store {
            Some(_) => match StoreMetrics::register(&metrics.registry) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(error = %e, "cannot register the store's metrics; the store stays off");
                    None
                }
            },
            None => None,
        };
        Arc::new(ShadowRuntime {
            inflight: Arc::new(Semaphore::new(settings.max_inflight)),
            settings,
            log: Mutex::new(None),
            log_written: Mutex::new(None),
            instance: instance_name().into(),
            noise: Mutex::default(),
            noise_fields,
            store: std::sync::OnceLock::new(),
            store_metrics,
            pointer_labels: Mutex::default(),
            gone: Mutex::default(),
            requests,
            dropped,
            latency,
            field_mismatches,
            summary: Mutex::default(),
            thread: std::sync::OnceLock::new(),
        })
    }

    /// Starts the diff-log writer and the shadow's thread (once; needs the
    /// runtime).
    pub fn start_background(self: &Arc<Self>) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if log.is_none() {
            let (tx, rx) = mpsc::channel(16_384);
            let settings = self.settings.clone();
            // Weak: the runtime holds the writer's sender; the writer ends
            // when that is dropped.
            let runtime = Arc::downgrade(self);
            let (written_tx, written_rx) = oneshot::channel::<()>();
            // A thread of its own, not the runtime's blocking pool: dropping
            // the runtime waits for blocking tasks, and this one ends only
            // when the log closes (see [`Self::shut_down`]).
            let writer = std::thread::Builder::new().name("strangler-diff-log".into()).spawn(move || {
                let _written = written_tx;
                yield_to_live_traffic();
                write_log(rx, settings, runtime);
            });
            match writer {
                Ok(_) => {
                    *log = Some(tx);
                    *self.log_written.lock().unwrap_or_else(|e| e.into_inner()) = Some(written_rx);
                }
                Err(e) => tracing::error!(error = %e, "no thread for the shadow diff log; records are not written"),
            }
        }
        drop(log);
        self.start_store();
        if self.thread.get().is_none() {
            match ShadowThread::start() {
                Ok(lane) => {
                    let _ = self.thread.set(lane);
                }
                Err(e) => tracing::warn!(error = %e, "no thread for the shadow; mirrored requests share the workers"),
            }
        }
    }

    /// Starts the fleet store's thread when `shadow.store` is set (once).
    fn start_store(self: &Arc<Self>) {
        let (Some(text), Some(metrics)) = (&self.settings.store, &self.store_metrics) else { return };
        if self.store.get().is_some() {
            return;
        }
        let dsn = match strangler_store::Dsn::parse(text) {
            Ok(dsn) => dsn,
            Err(e) => return tracing::error!(error = %e, "the shadow store stays off"),
        };
        let settings = StoreSettings {
            dsn,
            password_file: self.settings.password_file.as_ref().map(PathBuf::from),
            retention: self.settings.retention,
            queue: self.settings.store_queue,
            instance: self.instance.to_string(),
        };
        let runtime = Arc::downgrade(self);
        let on_noise = move |pointers: Vec<NoisePointer>| {
            if let Some(runtime) = runtime.upgrade() {
                runtime.merge_noise(&pointers);
            }
        };
        match Store::start(settings, metrics.clone(), on_noise) {
            Ok(store) => {
                let _ = self.store.set(store);
            }
            Err(e) => tracing::error!(error = %e, "no thread for the shadow store; it stays off"),
        }
    }

    /// This replica's name in its records (`POD_NAME`, else the hostname).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// At shutdown, after the drain, within `within` in all: waits for the
    /// copies still in flight to be compared, closes the diff log and waits
    /// for its writer to write what it holds, then for the store to have
    /// every record. What is left after `within` is lost, and said so.
    pub async fn shut_down(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let all = u32::try_from(self.settings.max_inflight).unwrap_or(u32::MAX);
        if tokio::time::timeout_at(deadline, self.inflight.acquire_many(all)).await.is_err() {
            tracing::warn!(?within, "shadow copies still in flight at shutdown are not recorded");
        }
        self.log.lock().unwrap_or_else(|e| e.into_inner()).take();
        let written = self.log_written.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(written) = written {
            if tokio::time::timeout_at(deadline, written).await.is_err() {
                tracing::warn!(?within, "shadow records not yet written to the diff log at shutdown are lost");
            }
        }
        self.flush_store(deadline.saturating_duration_since(tokio::time::Instant::now()));
    }

    /// Waits (up to `within`) until the store has every record queued for
    /// it. Nothing to wait for without a store.
    fn flush_store(&self, within: Duration) {
        if let Some(store) = self.store.get() {
            if !store.flush(within) {
                tracing::warn!(?within, "shadow records still queued for the store at shutdown are lost");
            }
        }
    }

    /// Noise that replicas learned (through the store), added to what this
    /// one judges with; routes no longer in the config are left out.
    fn merge_noise(&self, pointers: &[NoisePointer]) {
        let gone = self.gone.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut noise = self.noise.lock().unwrap_or_else(|e| e.into_inner());
        for p in pointers.iter().filter(|p| !gone.contains(&p.route)) {
            let route: Arc<str> = p.route.as_str().into();
            let known = noise.entry(route).or_default();
            if known.add(&p.endpoint, &p.pointer) {
                self.noise_fields.with_label_values(&[&p.route]).set(known.fields as i64);
            }
        }
    }

    /// A slot for one shadow request, or `None` at the in-flight cap.
    fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.inflight.clone().try_acquire_owned().ok()
    }

    /// Records a sampled request that was not mirrored at all.
    fn record_skip(&self, request: &MirroredRequest, shadow_upstream: &str, why: &str) {
        let record = base_record(request, shadow_upstream, Outcome::Skipped, Some(why));
        self.finish(record);
    }

    /// As [`Self::record_skip`], but the record is made, counted and
    /// written by the diff-log writer's thread when there is one: at the
    /// in-flight cap every sampled request is skipped, and doing that work
    /// on a worker cost live requests ~3.5 µs each.
    fn record_skip_later(&self, request: MirroredRequest, shadow_upstream: &Arc<str>, why: &'static str) {
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = log.as_ref() else {
            drop(log);
            return self.record_skip(&request, shadow_upstream, why);
        };
        let route = request.route.clone();
        let skip = Box::new(Skip { request, shadow_upstream: shadow_upstream.clone(), why });
        if tx.try_send(LogItem::Skip(skip)).is_err() {
            drop(log);
            if self.metered(&route) {
                self.dropped.with_label_values(&[&route, "log_backpressure"]).inc();
            }
        }
    }

    /// Mirrors one request and compares the answers, in a task of its own.
    fn spawn(
        self: &Arc<Self>,
        shadow: Arc<ShadowRoute>,
        request: MirroredRequest,
        body: MirrorBody,
        primary: oneshot::Receiver<PrimaryAnswer>,
        permit: OwnedSemaphorePermit,
    ) {
        let runtime = self.clone();
        let task = async move {
            let _permit = permit;
            let record = runtime.compare_one(&shadow, request, body, primary).await;
            runtime.finish(record);
        };
        match self.thread.get() {
            Some(lane) => drop(lane.handle.spawn(task)),
            None => drop(tokio::spawn(task)),
        }
    }

    async fn compare_one(
        &self,
        shadow: &ShadowRoute,
        request: MirroredRequest,
        body: MirrorBody,
        primary: oneshot::Receiver<PrimaryAnswer>,
    ) -> DiffRecord {
        let shadow_name = shadow.upstream.name.to_string();
        let body = match body {
            MirrorBody::Ready(bytes) => bytes,
            MirrorBody::Pending(rx) => match rx.await {
                Ok(Some(c)) if c.within_limit => c.body,
                Ok(Some(_)) => return base_record(&request, &shadow_name, Outcome::Skipped, Some(reason::TOO_LARGE)),
                _ => return base_record(&request, &shadow_name, Outcome::Skipped, Some(reason::PRIMARY_ERROR)),
            },
        };
        let mut headers = request.headers.clone();
        for name in &shadow.settings.remove_headers {
            headers.remove(name);
        }
        for (name, value) in &shadow.settings.set_headers {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(X_STRANGLER_SHADOW.clone(), HeaderValue::from_static("1"));
        // Each copy (the candidate's, the noise call's) is a request of its
        // own: its own id and span, the user's id beside them.
        let ask = |upstream: Arc<Upstream>| {
            let mut headers = headers.clone();
            let id = identify_copy(&mut headers, &request.request_id);
            let fetched = fetch(
                upstream,
                request.method.clone(),
                request.path_and_query.clone(),
                headers,
                body.clone(),
                shadow.settings.timeout,
                shadow.settings.max_body,
            );
            (id, fetched)
        };
        let (shadow_id, shadow_fetch) = ask(shadow.upstream.clone());
        let noise_fut = async {
            match &shadow.noise {
                Some(noise) => Some(ask(noise.clone()).1.await),
                None => None,
            }
        };
        let (shadow_answer, noise_answer) = tokio::join!(shadow_fetch, noise_fut);
        // The primary's body may still be streaming to the client: wait for
        // it, but not forever.
        let wait = shadow.settings.timeout.max(Duration::from_secs(30));
        let mut record = match tokio::time::timeout(wait, primary).await {
            Ok(Ok(primary)) => self.judge(shadow, &request, primary, shadow_answer, noise_answer),
            _ => base_record(&request, &shadow_name, Outcome::Skipped, Some(reason::PRIMARY_ERROR)),
        };
        record.shadow_request_id = shadow_id.to_str().ok().map(str::to_string);
        record
    }

    fn judge(
        &self,
        shadow: &ShadowRoute,
        request: &MirroredRequest,
        primary: PrimaryAnswer,
        shadow_answer: Result<Fetched, FetchError>,
        noise_answer: Option<Result<Fetched, FetchError>>,
    ) -> DiffRecord {
        let shadow_name = shadow.upstream.name.to_string();
        let mut record = base_record(request, &shadow_name, Outcome::Match, None);
        record.primary.upstream = primary.upstream.to_string();
        record.primary.status = Some(primary.status);
        record.primary.latency_ms = Some(primary.latency.as_secs_f64() * 1000.0);
        record.primary.body_bytes = primary.captured.as_ref().map(|c| c.len);
        if self.metered(&request.route) {
            self.latency.with_label_values(&[&request.route, "primary"]).observe(primary.latency.as_secs_f64());
        }
        let fetched = match shadow_answer {
            Ok(f) => f,
            Err(e) => {
                record.result = Outcome::ShadowError;
                record.reason = Some(e.reason().to_string());
                record.shadow.error = Some(e.to_string());
                return record;
            }
        };
        record.shadow.status = Some(fetched.status);
        record.shadow.latency_ms = Some(fetched.latency.as_secs_f64() * 1000.0);
        record.shadow.body_bytes = Some(fetched.captured.len);
        if self.metered(&request.route) {
            self.latency.with_label_values(&[&request.route, "shadow"]).observe(fetched.latency.as_secs_f64());
        }
        let Some(primary_body) = &primary.captured else {
            record.result = Outcome::Skipped;
            record.reason = Some(reason::NOT_COMPARABLE.into());
            return record;
        };
        let primary_view = answer_view(primary.status, &primary.headers, primary_body);
        let shadow_view = answer_view(fetched.status, &fetched.headers, &fetched.captured);
        let mut comparison = diff::compare(&primary_view, &shadow_view, &shadow.settings.compare);

        let noisy_now: BTreeSet<String> = match noise_answer {
            // Only a second answer of the same kind teaches noise: an error
            // page from the noise call is not evidence that fields vary.
            Some(Ok(noise))
                if noise.status == primary.status && noise.captured.within_limit && primary_body.within_limit =>
            {
                let noise_view = answer_view(noise.status, &noise.headers, &noise.captured);
                diff::compare(&primary_view, &noise_view, &shadow.settings.compare)
                    .diffs
                    .iter()
                    .filter(|d| d.kind != DiffKind::Status)
                    .map(field_key)
                    .collect()
            }
            _ => BTreeSet::new(),
        };
        let learned = self.learn_noise(&request.route, &record.endpoint, &noisy_now);
        let mut excluded = BTreeSet::new();
        comparison.diffs.retain(|d| {
            let key = field_key(d);
            let noisy = strangler_evidence::noise::is_noise(d, &learned);
            if noisy {
                excluded.insert(key);
            }
            !noisy
        });
        record.noise = noisy_now.union(&excluded).cloned().collect();
        record.result = if comparison.diffs.is_empty() { Outcome::Match } else { Outcome::Mismatch };
        record.diffs = comparison.diffs;
        record
    }

    /// Adds newly seen noise fields for a route's endpoint (shared with the
    /// fleet through the store) and returns all that is known for it.
    fn learn_noise(&self, route: &Arc<str>, endpoint: &str, fields: &BTreeSet<String>) -> BTreeSet<String> {
        let mut noise = self.noise.lock().unwrap_or_else(|e| e.into_inner());
        let known = noise.entry(route.clone()).or_default();
        let mut learned = false;
        for field in fields {
            if known.add(endpoint, field) {
                learned = true;
                if let Some(store) = self.store.get() {
                    store.publish_noise(NoisePointer {
                        route: route.to_string(),
                        endpoint: endpoint.to_string(),
                        pointer: field.clone(),
                    });
                }
            }
        }
        if learned && self.metered(route) {
            self.noise_fields.with_label_values(&[route]).set(known.fields as i64);
        }
        known.endpoints.get(endpoint).cloned().unwrap_or_default()
    }

    /// Counts, summarizes and logs a finished record.
    fn finish(&self, mut record: DiffRecord) {
        let Some(line) = self.account(&mut record) else { return };
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = log.as_ref() {
            if tx.try_send(LogItem::Line(line)).is_err() && self.metered(&record.route) {
                self.dropped.with_label_values(&[&record.route, "log_backpressure"]).inc();
            }
        }
    }

    /// Names, counts and summarizes a finished record, and hands it to the
    /// store; its log line.
    fn account(&self, record: &mut DiffRecord) -> Option<String> {
        record.id = Some(uuid::Uuid::now_v7().to_string());
        record.instance = Some(self.instance.to_string());
        let route = record.route.as_str();
        if self.metered(route) {
            self.count(record);
        }
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).add(record);
        let line = serde_json::to_string(record).ok()?;
        if let Some(store) = self.store.get() {
            store.send(Row::of(record, line.clone()));
        }
        Some(line)
    }

    /// Whether `route` is still in the config: a mirror that finishes after
    /// its route was removed is logged and summarized, but brings no series
    /// back.
    fn metered(&self, route: &str) -> bool {
        !self.gone.lock().unwrap_or_else(|e| e.into_inner()).contains(route)
    }

    /// The record's metrics.
    fn count(&self, record: &DiffRecord) {
        let route = record.route.as_str();
        self.requests.with_label_values(&[route, record.result.as_str()]).inc();
        if let Some(why) = &record.reason {
            self.dropped.with_label_values(&[route, why]).inc();
        }
        if record.result == Outcome::Mismatch {
            let mut labels = self.pointer_labels.lock().unwrap_or_else(|e| e.into_inner());
            let seen = labels.entry(Arc::from(route)).or_default();
            for d in &record.diffs {
                let pointer = field_key(d);
                let label = if seen.contains(&pointer) || seen.len() < MAX_POINTER_LABELS {
                    seen.insert(pointer.clone());
                    pointer
                } else {
                    "other".to_string()
                };
                self.field_mismatches.with_label_values(&[route, &label]).inc();
            }
        }
    }
}

/// The name a differing field is counted under: `status`, `header:NAME`, or
/// a body pointer with array indexes folded (`/items/*/id`) — the evidence
/// crate's rule, which the report applies too.
fn field_key(d: &Difference) -> String {
    strangler_evidence::noise::field_key(d)
}

fn answer_view<'a>(status: u16, headers: &'a HeaderMap, captured: &'a Captured) -> Answer<'a> {
    Answer {
        status,
        headers,
        body: &captured.body,
        body_len: captured.len,
        body_sha256: captured.sha256,
        body_complete: captured.within_limit,
    }
}

fn base_record(request: &MirroredRequest, shadow_upstream: &str, result: Outcome, why: Option<&str>) -> DiffRecord {
    DiffRecord {
        ts: humantime::format_rfc3339_millis(request.received).to_string(),
        request_id: request.request_id.clone(),
        shadow_request_id: None,
        // `id` and `instance` are given by `ShadowRuntime::account`, when the record is final.
        id: None,
        instance: None,
        config_hash: Some(request.config_hash.to_string()),
        client_ip: Some(request.client_ip.to_string()),
        route: request.route.to_string(),
        endpoint: diff::endpoint_template(&request.path),
        method: request.method.to_string(),
        path: request.path.clone(),
        query: request.query.as_deref().map(redact_query),
        primary: PrimarySide {
            upstream: request.primary_upstream.to_string(),
            status: None,
            latency_ms: None,
            body_bytes: None,
        },
        shadow: ShadowSide {
            upstream: shadow_upstream.to_string(),
            status: None,
            latency_ms: None,
            body_bytes: None,
            error: None,
        },
        result,
        reason: why.map(str::to_string),
        diffs: Vec::<Difference>::new(),
        noise: vec![],
    }
}

/// Makes the headers of a mirrored copy those of a request of its own, so
/// the candidate's work never shows up as the user's request in logs and
/// traces: a new `X-Request-Id` (returned), the user's in
/// `X-Strangler-Shadow-Of`, and in `traceparent` a new span of the user's
/// trace (same trace id and flags, new parent id). An invalid or repeated
/// `traceparent` is not forwarded, nor then is `tracestate`. Applied after
/// the route's `shadow.headers` edits: they cannot change the ids, and a
/// `traceparent` they removed stays removed.
fn identify_copy(headers: &mut HeaderMap, user_request_id: &str) -> HeaderValue {
    let id = headers::new_request_id();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    if let Ok(user) = HeaderValue::from_str(user_request_id) {
        headers.insert(X_STRANGLER_SHADOW_OF.clone(), user);
    }
    let mut parents = headers.get_all(&TRACEPARENT).iter();
    let span = match (parents.next(), parents.next()) {
        (None, _) => return id,
        (Some(parent), None) => headers::next_span(parent),
        (Some(_), Some(_)) => None,
    };
    match span {
        Some(span) => {
            headers.insert(TRACEPARENT.clone(), span);
        }
        None => {
            headers.remove(&TRACEPARENT);
            headers.remove(&TRACESTATE);
        }
    }
    id
}

/// The query string with the values of credential-like parameters
/// (`access_token`, `api_key`, `password`, `sig`, ...) replaced, so secrets
/// carried in URLs never reach the diff log.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if sensitive_query_key(key) => format!("{key}={}", diff::REDACTED),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn sensitive_query_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    const PARTS: [&str; 9] =
        ["token", "secret", "passw", "auth", "session", "signature", "apikey", "api_key", "credential"];
    PARTS.iter().any(|p| key.contains(p)) || matches!(key.as_str(), "key" | "sig" | "code")
}

/// An answer read whole (up to the body limit; beyond it, hashed).
struct Fetched {
    status: u16,
    headers: HeaderMap,
    latency: Duration,
    captured: Captured,
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

impl FetchError {
    fn reason(&self) -> &'static str {
        match self {
            FetchError::Timeout(_) => reason::SHADOW_TIMEOUT,
            FetchError::Failed(_) => reason::SHADOW_ERROR,
        }
    }
}

async fn fetch(
    upstream: Arc<Upstream>,
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, FetchError> {
    let started = Instant::now();
    // Mirrored traffic takes no concurrency slot and leaves the targets'
    // outlier records alone: the shadow (or a second ask of the primary for
    // noise) must never get a target ejected or a client request refused.
    let target = upstream
        .pick()
        .ok_or_else(|| FetchError::Failed(format!("upstream {} has no healthy target", upstream.name)))?;
    let mut request = Request::new(ProxyBody::full(body));
    *request.method_mut() = method;
    *request.uri_mut() = http::Uri::from(path_and_query);
    *request.headers_mut() = headers;
    let exchange = async {
        let response = upstream.connector.send(target, request).await.map_err(|e| FetchError::Failed(e.to_string()))?;
        let latency = started.elapsed();
        let (parts, body) = response.into_parts();
        let mut capture = Capture::new(max_body);
        crate::client::read_to_end(body, |data| capture.observe(data))
            .await
            .map_err(|e| FetchError::Failed(format!("reading the body: {e}")))?;
        let captured = capture.finish();
        Ok(Fetched { status: parts.status.as_u16(), headers: parts.headers, latency, captured })
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or(Err(FetchError::Timeout(timeout)))
}

/// `shadow.log: off`: no diff log file.
pub const LOG_OFF: &str = "off";

/// How long the diff-log writer lets records gather before a write.
const LOG_GATHER: Duration = Duration::from_millis(10);

/// What the diff-log writer receives.
enum LogItem {
    /// A finished record, as its log line.
    Line(String),
    /// A request that was not mirrored: the writer makes its record.
    Skip(Box<Skip>),
}

struct Skip {
    request: MirroredRequest,
    shadow_upstream: Arc<str>,
    why: &'static str,
}

impl LogItem {
    /// The line to write; a skip is made into its record and counted here.
    fn into_line(self, runtime: &std::sync::Weak<ShadowRuntime>) -> Option<String> {
        match self {
            LogItem::Line(line) => Some(line),
            LogItem::Skip(skip) => {
                let mut record = base_record(&skip.request, &skip.shadow_upstream, Outcome::Skipped, Some(skip.why));
                runtime.upgrade()?.account(&mut record)
            }
        }
    }
}

/// The diff-log writer: one line per record, rotated past `max_log_size`
/// into `log.1` … `log.N`; `-` writes to stdout, `off` nowhere (records are
/// still made here, for the store and the metrics).
fn write_log(mut rx: mpsc::Receiver<LogItem>, settings: RawShadowLog, runtime: std::sync::Weak<ShadowRuntime>) {
    if settings.log == LOG_OFF {
        while let Some(item) = rx.blocking_recv() {
            std::thread::sleep(LOG_GATHER);
            drop(item.into_line(&runtime));
            while let Ok(more) = rx.try_recv() {
                drop(more.into_line(&runtime));
            }
        }
        return;
    }
    let to_stdout = settings.log == "-";
    let path = PathBuf::from(&settings.log);
    let open = |path: &PathBuf| std::fs::OpenOptions::new().create(true).append(true).open(path);
    let mut file = if to_stdout {
        None
    } else {
        match open(&path) {
            Ok(f) => Some(std::io::BufWriter::new(f)),
            Err(e) => {
                tracing::error!(error = %e, log = %path.display(), "cannot open the shadow diff log; records go to stdout");
                None
            }
        }
    };
    let mut written = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    while let Some(line) = rx.blocking_recv() {
        // Let records gather for a moment: one wake-up and one write per
        // batch, not per record (at thousands of records a second, one
        // wake-up each competed with the proxy for the cores).
        std::thread::sleep(LOG_GATHER);
        let mut batch: Vec<String> = line.into_line(&runtime).into_iter().collect();
        while let Ok(more) = rx.try_recv() {
            batch.extend(more.into_line(&runtime));
            if batch.len() >= 16_384 {
                break;
            }
        }
        match file.as_mut() {
            None => {
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                for line in &batch {
                    let _ = writeln!(out, "{line}");
                }
                let _ = out.flush();
            }
            Some(f) => {
                for line in &batch {
                    let _ = writeln!(f, "{line}");
                    written += line.len() as u64 + 1;
                }
                let _ = f.flush();
                if written >= settings.max_log_size.0 {
                    rotate(&path, settings.max_log_files);
                    if let Ok(new) = open(&path) {
                        *f = std::io::BufWriter::new(new);
                    }
                    written = 0;
                }
            }
        }
    }
}

fn rotate(path: &std::path::Path, keep: u32) {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    let _ = std::fs::remove_file(numbered(keep.max(1)));
    for n in (1..keep.max(1)).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    let _ = std::fs::rename(path, numbered(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validated(yaml: &str) -> Result<ShadowPlan, (String, String)> {
        validate(&serde_yaml::from_str::<RawShadow>(yaml).expect("a shadow block"))
    }

    #[test]
    fn validation_keeps_upstream_names_for_the_caller_to_resolve() {
        let plan = validated("{upstream: no-such-upstream, noise: nor-this-one}").expect("valid");
        assert_eq!((plan.upstream.as_str(), plan.noise.as_deref()), ("no-such-upstream", Some("nor-this-one")));
        assert_eq!(plan.settings.methods, [Method::GET, Method::HEAD], "reads only, by default");
        assert_eq!(plan.settings.sample, 1.0);
    }

    #[test]
    fn validation_names_the_offending_value() {
        let refused = |yaml| validated(yaml).err().expect("refused");
        assert_eq!(refused("{upstream: c, sample: 1.5}").0, "sample");
        assert_eq!(refused("{upstream: c, sample_key: ip}").0, "ip");
        assert_eq!(refused("{upstream: c, ignore: [no-slash]}").0, "no-slash");
        assert_eq!(refused("{upstream: c, headers: {set: {\"bad name\": x}}}").0, "bad name");
    }

    #[test]
    fn mirroring_writes_needs_unsafe_writes() {
        let (value, message) = validated("{upstream: c, methods: [get, post]}").err().expect("refused");
        assert_eq!(value, "POST");
        assert!(message.contains("unsafe_writes: true"), "{message}");
        let plan = validated("{upstream: c, methods: [get, post], unsafe_writes: true}").expect("allowed");
        assert_eq!(plan.settings.methods, [Method::GET, Method::POST]);
    }

    #[test]
    fn a_sample_rate_outside_zero_to_one_is_refused_in_the_users_words() {
        let raw: crate::config::RawShadow = serde_yaml::from_str("{upstream: u, sample: 1.5}").unwrap();
        let Err((value, message)) = validate(&raw) else { panic!("accepted sample 1.5") };
        assert_eq!(value, "sample");
        assert_eq!(message, "shadow.sample must be between 0.0 and 1.0, not 1.5");
    }

    #[test]
    fn a_copy_gets_its_own_id_and_span_and_names_the_users_request() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut copy = HeaderMap::new();
        copy.insert(&X_REQUEST_ID, HeaderValue::from_static("user-1"));
        copy.insert(&TRACEPARENT, HeaderValue::from_static(parent));
        copy.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
        let id = identify_copy(&mut copy, "user-1");
        assert_eq!(copy[&X_REQUEST_ID], id);
        assert_ne!(id, "user-1");
        assert_eq!(copy[&X_STRANGLER_SHADOW_OF], "user-1");
        let span = copy[&TRACEPARENT].to_str().unwrap();
        assert!(span.starts_with(&parent[..36]) && span.ends_with("-01") && span != parent, "{span}");
        assert_eq!(copy[&TRACESTATE], "vendor=1", "kept with a valid traceparent");
        assert_ne!(identify_copy(&mut copy.clone(), "user-1"), id, "every copy its own id");
    }

    #[test]
    fn a_copy_drops_an_invalid_or_repeated_traceparent_with_its_tracestate() {
        let parent = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        for parents in [vec![HeaderValue::from_static("00-nonsense")], vec![parent.clone(), parent]] {
            let mut copy = HeaderMap::new();
            for p in parents {
                copy.append(&TRACEPARENT, p);
            }
            copy.insert(&TRACESTATE, HeaderValue::from_static("vendor=1"));
            identify_copy(&mut copy, "user-1");
            assert!(!copy.contains_key(&TRACEPARENT) && !copy.contains_key(&TRACESTATE), "{copy:?}");
        }
        let mut untraced = HeaderMap::new();
        identify_copy(&mut untraced, "user-1");
        assert!(!untraced.contains_key(&TRACEPARENT), "no trace is started for a request that had none");
    }

    #[test]
    fn credentials_in_queries_are_redacted() {
        assert_eq!(
            super::redact_query("page=2&access_token=abc&api_key=k&sig=s&q=monkey"),
            "page=2&access_token=[redacted]&api_key=[redacted]&sig=[redacted]&q=monkey"
        );
    }
}
