//! The config file as written by ops (`routes.yaml`), and its loading.
//!
//! Raw types mirror the YAML one to one and refuse unknown keys; they are then
//! checked and turned into a [`crate::table::Table`], the typed form the hot
//! path reads. A config error always names the file and, where it can be
//! found, the line and column of the offending value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Top level of `routes.yaml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Proxy listener address; changing it needs a restart.
    pub listen: String,
    /// Admin listener address; loopback unless set otherwise.
    #[serde(default = "default_admin")]
    pub admin: String,
    pub upstreams: BTreeMap<String, RawUpstream>,
    pub routes: Vec<RawRoute>,
    /// Response header naming the upstream that answered; `""` switches it off.
    #[serde(default = "default_upstream_header")]
    pub upstream_header: String,
    /// Where shadow-diff records go and how much shadow traffic may be in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<RawShadowLog>,
    /// TLS termination on `listen` (a change needs a restart; the
    /// certificate files themselves rotate live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    /// Addresses and CIDR ranges of the load balancers in front of the
    /// proxy, whose `X-Forwarded-For` is believed for the client's address
    /// (see [`crate::forwarded`]); empty, the client is the TCP peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// `off`, or where and how the access log is written (absent: JSON
    /// lines on stderr, every request; see [`crate::access_log`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<RawAccessLog>,
    /// Where routes' rollout progress is kept and how often it is evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autopilot: Option<RawAutopilot>,
}

/// `access_log:` as written: `off`, or its settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RawAccessLog {
    /// `access_log: off` (or `false`): no access log.
    Off(AccessLogOff),
    On(RawAccessLogSettings),
}

/// The word `off`, as `/config` shows it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessLogOff;

impl Serialize for AccessLogOff {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("off")
    }
}

/// Where the access log goes, which share of requests it keeps, and how it
/// batches its writes (nginx's `access_log path buffer= flush=`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLogSettings {
    /// A file (appended to, created if missing) or `-` for stderr.
    #[serde(default = "default_access_log_path")]
    pub path: String,
    /// Fraction of requests logged, 0.0 to 1.0.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Each worker's buffer: written out when it holds this much.
    #[serde(default = "default_access_log_buffer")]
    pub buffer: ByteSize,
    /// A line waits at most this long in a buffer before it is written.
    #[serde(default = "default_access_log_flush", with = "humantime_serde")]
    pub flush: Duration,
}

impl Default for RawAccessLogSettings {
    fn default() -> Self {
        RawAccessLogSettings {
            path: default_access_log_path(),
            sample: default_sample(),
            buffer: default_access_log_buffer(),
            flush: default_access_log_flush(),
        }
    }
}

fn default_access_log_path() -> String {
    "-".into()
}
fn default_access_log_buffer() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_access_log_flush() -> Duration {
    Duration::from_secs(1)
}

impl<'de> Deserialize<'de> for RawAccessLog {
    /// A visitor rather than `untagged`, so that a wrong key or value inside
    /// the settings keeps serde_yaml's line and column.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawAccessLog;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`off` or a map of access_log settings (path, sample, buffer, flush)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawAccessLog, E> {
                match v {
                    "off" => Ok(RawAccessLog::Off(AccessLogOff)),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawAccessLog, E> {
                match v {
                    false => Ok(RawAccessLog::Off(AccessLogOff)),
                    true => Ok(RawAccessLog::On(RawAccessLogSettings::default())),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawAccessLog, A::Error> {
                RawAccessLogSettings::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawAccessLog::On)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The autopilot's settings (see [`crate::rollout`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutopilot {
    /// Where rollout progress and the audit trail live: a state file for one
    /// instance (default `./strangler-rollouts.json`), or the fleet's
    /// PostgreSQL, `postgres://USER@HOST:PORT/DB?sslmode=…`, which every
    /// replica follows and one at a time decides for. Shown with its
    /// password masked.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "masked_dsn")]
    pub state: Option<String>,
    /// A file whose first line is the PostgreSQL state's password (a mounted
    /// Secret); else the DSN's password, else `PGPASSWORD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Time between two evaluations of the gates (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde::option")]
    pub interval: Option<Duration>,
}

/// TLS on the listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The default certificate chain (PEM) and its key (PEM, RSA or ECDSA).
    pub cert: String,
    pub key: String,
    /// More certificates, chosen by SNI against their subject alternative names.
    #[serde(default)]
    pub sni: Vec<RawCertPair>,
    /// An extra plain-HTTP listener, e.g. `0.0.0.0:80`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain_listen: Option<String>,
    /// The plain listener answers every request with a redirect to HTTPS.
    #[serde(default)]
    pub redirect_https: bool,
}

impl RawTls {
    /// Every certificate, the default first.
    pub fn pairs(&self) -> Vec<RawCertPair> {
        let mut pairs = vec![RawCertPair { cert: self.cert.clone(), key: self.key.clone() }];
        pairs.extend(self.sni.iter().cloned());
        pairs
    }
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: String,
    pub key: String,
}

/// TLS towards an `https://` upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// Trust only this CA (PEM) instead of the webpki roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// Client certificate and key for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Top-level shadow settings (shared by every shadowing route).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadowLog {
    /// Diff log path; `-` writes the records to stdout (for a cluster's log
    /// pipeline); `off` writes none (with a `store`, records go there only).
    #[serde(default = "default_shadow_log")]
    pub log: String,
    /// The fleet store, `postgres://USER@HOST:PORT/DB?sslmode=…`: every
    /// replica writes its records and learned noise there (beside `log`).
    /// Shown with its password masked.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "masked_dsn")]
    pub store: Option<String>,
    /// A file whose first line is the store's password (a mounted Secret);
    /// else the DSN's password, else `PGPASSWORD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// How long the store keeps records (`14d`); enforced by one replica at a time.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Records held while the store is slow or down; beyond them, records
    /// are dropped and counted (`strangler_shadow_records_dropped_total`).
    #[serde(default = "default_store_queue")]
    pub store_queue: usize,
    /// Shadow requests in flight across all routes; beyond it, drop and count.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// The log is rotated past this size (`log.1`, `log.2`, ...).
    #[serde(default = "default_max_log_size")]
    pub max_log_size: ByteSize,
    #[serde(default = "default_max_log_files")]
    pub max_log_files: u32,
}

impl Default for RawShadowLog {
    fn default() -> Self {
        RawShadowLog {
            log: default_shadow_log(),
            store: None,
            password_file: None,
            retention: default_retention(),
            store_queue: default_store_queue(),
            max_inflight: default_max_inflight(),
            max_log_size: default_max_log_size(),
            max_log_files: default_max_log_files(),
        }
    }
}

fn default_shadow_log() -> String {
    "./shadow-diffs.jsonl".into()
}
fn default_retention() -> Duration {
    strangler_store::DEFAULT_RETENTION
}
fn default_store_queue() -> usize {
    strangler_store::DEFAULT_QUEUE
}
/// The store's DSN as `/config` shows it: password masked.
fn masked_dsn<S: serde::Serializer>(dsn: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match dsn {
        Some(dsn) => s.serialize_str(&strangler_store::dsn::mask(dsn)),
        None => s.serialize_none(),
    }
}
fn default_max_inflight() -> usize {
    256
}
fn default_max_log_size() -> ByteSize {
    ByteSize(100 << 20)
}
fn default_max_log_files() -> u32 {
    5
}

/// Mirroring of a route's traffic to a candidate upstream, for comparison only.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub upstream: String,
    /// Fraction of matching requests mirrored, 0.0 to 1.0.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Default GET and HEAD; writes only with `unsafe_writes: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub unsafe_writes: bool,
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    #[serde(default = "default_shadow_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub ignore_headers: Vec<String>,
    #[serde(default)]
    pub ignore: Vec<String>,
    #[serde(default)]
    pub unordered: Vec<String>,
    /// Body fields whose values never reach the diff log (on top of the
    /// `Authorization`, `Cookie` and `Set-Cookie` headers, always redacted).
    #[serde(default)]
    pub redact: Vec<String>,
    /// An upstream asked the same request a second time to learn noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<String>,
    /// `header:NAME` or `cookie:NAME`: sample whole sessions instead of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<RawHeaderEdits>,
}

impl RawShadow {
    /// Shadowing to `upstream` with every other setting at its default (a
    /// rollout's implied comparison).
    pub fn of(upstream: &str) -> RawShadow {
        let mut only = serde_yaml::Mapping::new();
        only.insert("upstream".into(), upstream.into());
        serde_yaml::from_value(only.into()).expect("every other key of `shadow` has a default")
    }
}

fn default_sample() -> f64 {
    1.0
}
fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_shadow_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Edits to the mirrored request's headers.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderEdits {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

fn default_upstream_header() -> String {
    "X-Strangler-Upstream".into()
}

fn default_admin() -> String {
    "127.0.0.1:9901".into()
}

/// One upstream group: where requests for it go and how long to wait.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub targets: Vec<String>,
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// How long a connection to one of its targets is kept idle for reuse
    /// before the proxy closes it (default 60 s): keep it below the
    /// targets' own keep-alive timeout.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Extra attempts for idempotent requests after a connection failure or a 502/503/504.
    #[serde(default)]
    pub retries: u32,
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    /// Requests in flight to this upstream beyond which the proxy answers 503 at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<RawHealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier: Option<RawOutlier>,
    /// Settings for `https://` targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawUpstreamTls>,
}

/// How a target is picked among the healthy ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    #[default]
    RoundRobin,
    /// Power of two choices: the less busy of two random targets.
    LeastRequest,
}

/// Active health checking of every target of an upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_health_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_three")]
    pub unhealthy_after: u32,
    #[serde(default = "default_two")]
    pub healthy_after: u32,
}

fn default_health_path() -> String {
    "/healthz".into()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_three() -> u32 {
    3
}
fn default_two() -> u32 {
    2
}

/// Passive outlier ejection: a target failing this many requests in a row is
/// taken out of rotation for a growing interval.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_base_ejection", with = "humantime_serde")]
    pub base_ejection: Duration,
    #[serde(default = "default_max_ejection", with = "humantime_serde")]
    pub max_ejection: Duration,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(5)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}

impl Default for RawOutlier {
    fn default() -> Self {
        RawOutlier {
            consecutive_failures: default_consecutive_failures(),
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
        }
    }
}

/// One share of a canary split.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    pub upstream: String,
    pub weight: u32,
}

/// Where the key for sticky assignment comes from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// A per-route token bucket.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub rps: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
    /// `client_ip` (default) or `header:NAME`.
    #[serde(default = "default_rate_key")]
    pub key: String,
}

fn default_rate_key() -> String {
    "client_ip".into()
}

/// A byte size written as a number or with a unit: `65536`, `64KiB`, `1MiB`, `10MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => parse_byte_size(&t).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `64KiB`, `1MiB`, `10MB`, `512` into bytes.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("invalid size {text:?} (use e.g. 65536, 64KiB, 1MiB)"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" | "K" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" | "M" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" | "G" => 1 << 30,
        other => return Err(format!("invalid size unit {other:?} in {text:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("size {text:?} is too large"))
}

/// One route: which requests it takes and where they go.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub prefix: String,
    /// The one upstream (or use `split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// A weighted canary split between upstreams (instead of `upstream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Vec<RawSplit>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<RawSticky>,
    /// Upstream that answers when the chosen one cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Non-idempotent methods that may also fall back (their bodies are replayed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_methods: Option<Vec<String>>,
    /// Largest request body kept in memory so that it can be replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_buffer: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RawRateLimit>,
    /// Mirror matching requests to a candidate and compare the answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<RawShadow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default)]
    pub strip_prefix: bool,
    /// The route's autopilot: traffic moves from `upstream` to `rollout.to`
    /// in steps, gated on evidence (see [`crate::rollout`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RawRollout>,
}

/// Method names as routes write them (any case), as `http` methods.
pub fn parse_methods(list: &[String]) -> Result<Vec<http::Method>, String> {
    list.iter()
        .map(|m| {
            http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| format!("invalid method {m:?}"))
        })
        .collect()
}

/// A config that cannot be used, with where the fault is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// The text of a config file with its name, so that errors can point into it.
pub struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// An error at the first place where `anchors` occur in order (each one
    /// searched after the previous), or with no location if they do not.
    pub fn error_at(&self, anchors: &[&str], message: impl Into<String>) -> ConfigError {
        let (line, column) = match self.locate(anchors) {
            Some((l, c)) => (Some(l), Some(c)),
            None => (None, None),
        };
        ConfigError { file: self.file.to_string(), line, column, message: message.into() }
    }

    fn locate(&self, anchors: &[&str]) -> Option<(usize, usize)> {
        let mut from = 0;
        let mut at = None;
        for anchor in anchors.iter().filter(|a| !a.is_empty()) {
            let found = from + self.text[from..].find(anchor)?;
            at = Some(found);
            from = found + anchor.len();
        }
        let offset = at?;
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        Some((line, column))
    }

    /// Parses the YAML into raw types; serde_yaml gives line and column.
    pub fn parse(&self) -> Result<RawConfig, ConfigError> {
        serde_yaml::from_str(self.text).map_err(|e| {
            let location = e.location();
            ConfigError {
                file: self.file.to_string(),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message: e.to_string(),
            }
        })
    }
}

/// Reads a config file, following symlinks (Kubernetes `..data` swaps).
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: None,
        column: None,
        message: format!("cannot read the config: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_an_error_with_location() {
        let text = "listen: \"127.0.0.1:0\"\nupstreams: {}\nroutes: []\nbogus: 1\n";
        let err = Source { file: "r.yaml", text }.parse().unwrap_err();
        assert_eq!(err.line, Some(4));
        assert!(err.message.contains("bogus"), "{err}");
        assert!(err.to_string().starts_with("r.yaml:4:"), "{err}");
    }

    #[test]
    fn bad_duration_is_an_error_with_location() {
        let text = "listen: x\nupstreams:\n  a:\n    targets: [\"http://h:1\"]\n    timeout: 5 parsecs\nroutes: []\n";
        let err = Source { file: "r.yaml", text }.parse().unwrap_err();
        assert_eq!(err.line, Some(5), "{err}");
    }

    #[test]
    fn access_log_is_off_or_settings_and_a_bad_key_in_it_has_a_location() {
        let top = "listen: x\nupstreams: {}\nroutes: []\n";
        let parse = |tail: &str| Source { file: "r.yaml", text: &format!("{top}{tail}") }.parse();
        assert_eq!(parse("access_log: off\n").unwrap().access_log, Some(RawAccessLog::Off(AccessLogOff)));
        assert_eq!(parse("").unwrap().access_log, None);
        let on = parse("access_log: {path: /var/log/a.log, sample: 0.5, buffer: 8KiB, flush: 250ms}\n").unwrap();
        let expected = RawAccessLogSettings {
            path: "/var/log/a.log".into(),
            sample: 0.5,
            buffer: ByteSize(8192),
            flush: Duration::from_millis(250),
        };
        assert_eq!(on.access_log, Some(RawAccessLog::On(expected)));
        let err = parse("access_log:\n  path: \"-\"\n  sampel: 0.1\n").unwrap_err();
        assert_eq!(err.line, Some(6), "{err}");
        assert!(err.message.contains("sampel"), "{err}");
        let err = parse("access_log: loud\n").unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.message.contains("`off` or a map"), "{err}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("64KiB"), Ok(65536));
        assert_eq!(parse_byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_byte_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_byte_size("512"), Ok(512));
        assert!(parse_byte_size("lots").is_err());
        assert!(parse_byte_size("5 parsecs").is_err());
    }

    #[test]
    fn locate_follows_anchors_in_order() {
        let text = "routes:\n  - name: a\n    upstream: x\n  - name: b\n    upstream: x\n";
        let err = Source { file: "f", text }.error_at(&["name: b", "upstream", "x"], "m");
        assert_eq!((err.line, err.column), (Some(5), Some(15)));
    }
}

/// A route's autopilot: where its traffic goes, in which steps, and the
/// evidence each step needs before the next (see [`crate::rollout`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// The upstream traffic moves to; the route's `upstream` is where it
    /// starts and where a rollback returns it.
    pub to: String,
    /// `shadow` (compare only), then percents of traffic (of sticky keys) on `to`.
    pub steps: Vec<RawStep>,
    /// The least time spent on each step.
    #[serde(default = "default_hold", with = "humantime_serde")]
    pub hold: Duration,
    #[serde(default)]
    pub gates: RawGates,
    /// What a failed gate does: `rollback` (default) or `pause`.
    #[serde(default)]
    pub on_fail: OnFail,
    /// A Prometheus server (`http://…`) to read the 5xx and latency gates
    /// from, summed over the fleet; without it, this instance's counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<String>,
}

fn default_hold() -> Duration {
    Duration::from_secs(600)
}

/// One step of a rollout as written: `shadow` or a percent.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawStep {
    Percent(f64),
    Named(String),
}

/// The bounds a step's evidence must meet.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGates {
    /// Compared shadow requests needed within the step before it may pass.
    pub min_samples: u64,
    /// Fleet match rate in percent, judged as `strangler report` judges.
    pub min_match: f64,
    /// Requests `to` must have answered within the step before its 5xx rate
    /// and p99 are judged: one error in three requests is not a verdict.
    pub min_requests: u64,
    /// `to`'s 5xx rate may be at most this many times `upstream`'s.
    pub max_5xx_ratio: f64,
    /// Below this 5xx rate (percent) `to` passes whatever the ratio.
    pub min_5xx_floor: f64,
    /// `to`'s p99 latency may be at most this many times `upstream`'s.
    pub max_p99_ratio: f64,
}

impl Default for RawGates {
    fn default() -> Self {
        RawGates {
            min_samples: 1000,
            min_match: 99.9,
            min_requests: 100,
            max_5xx_ratio: 1.5,
            min_5xx_floor: 0.1,
            max_p99_ratio: 1.3,
        }
    }
}

/// What a failed gate does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFail {
    /// Back to `upstream` at 100%, shadow on, status `rolled_back`.
    #[default]
    Rollback,
    /// Stay on the step, status `paused`, until a person decides.
    Pause,
}
