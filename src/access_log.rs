//! The access log: one JSON object per line for each request, as cheap as
//! nginx's `access_log … buffer= flush=`.
//!
//! - **Formatting** writes straight into a buffer of the worker thread that
//!   served the request ([`Sink::append`]): no lock, no `tracing`, no
//!   allocation per line; integers through `itoa`, the timestamp (RFC 3339,
//!   UTC, whole seconds) formatted once a second per thread, as nginx caches
//!   its time.
//! - **Batches**: a thread's buffer goes to the sink's writer thread when it
//!   holds `buffer` bytes (64 KiB by default), when its oldest line is
//!   `flush` old (1 s) as the next line is added, and on each worker's
//!   `flush` timer ([`flush_periodically`]), so that an idle worker's last
//!   lines wait no longer than that either.
//! - **Never blocking a request on the disk**: the hand-off to the writer is
//!   a `try_send` into a bounded queue (about 4 MiB of batches); the writer
//!   thread does the `write(2)`. When it falls that far behind, whole
//!   batches are dropped and their lines counted in
//!   `strangler_access_log_dropped_total{reason="queue_full"}`; lines a write
//!   fails on are counted with `reason="write_failed"`.
//! - **What a crash loses**: the lines still in the workers' buffers and the
//!   queue, at most one `flush` interval's worth (and at most one `buffer`
//!   per worker, plus the queue). A drain flushes everything
//!   ([`flush_this_thread`] as each worker stops, then [`Sink::flushed`]).
//!
//! The fields of a line are the proxy's business (`proxy/finish.rs`); this
//! module knows only how to write them ([`Line`]).

use std::cell::RefCell;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use prometheus::{IntCounter, IntCounterVec};

use crate::config::{RawAccessLog, RawAccessLogSettings};

/// The largest `buffer` accepted.
const MAX_BUFFER: u64 = 16 << 20;
/// The smallest `buffer` accepted (below it, writes would outnumber requests).
const MIN_BUFFER: u64 = 1 << 10;
/// About how many bytes of batches may wait for the writer before new
/// batches are dropped.
const QUEUE_BYTES: usize = 4 << 20;
/// Room past `buffer` in a new buffer, so that the line that fills it does
/// not make it grow.
const SLACK: usize = 4 << 10;

/// A checked `access_log:` section, nothing opened yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub destination: Destination,
    /// Bytes a worker buffers before handing them to the writer.
    pub buffer: usize,
    /// The longest a line waits in a buffer.
    pub flush: Duration,
    /// Fraction of requests logged.
    pub sample: f64,
}

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The process's stderr (`path: "-"`), apart from diff records that may go to stdout.
    Stderr,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Stderr => f.write_str("stderr"),
            Destination::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A setting of `access_log:` that is refused, and why.
#[derive(Debug)]
pub struct Invalid {
    /// The key at fault, to point at it in the file.
    pub key: &'static str,
    pub message: String,
}

/// Checks an `access_log:` section (absent: the defaults, JSON on stderr for
/// every request). `None`: `off`. Pure, like the rest of validation.
pub fn plan(raw: Option<&RawAccessLog>) -> Result<Option<Settings>, Invalid> {
    let defaults = RawAccessLogSettings::default();
    let raw = match raw {
        Some(RawAccessLog::Off(_)) => return Ok(None),
        Some(RawAccessLog::On(settings)) => settings,
        None => &defaults,
    };
    let invalid = |key, message: String| Invalid { key, message: format!("access_log: {message}") };
    if !(0.0..=1.0).contains(&raw.sample) {
        return Err(invalid("sample", format!("sample must be between 0.0 and 1.0, not {}", raw.sample)));
    }
    if !(MIN_BUFFER..=MAX_BUFFER).contains(&raw.buffer.0) {
        return Err(invalid("buffer", format!("buffer must be between 1KiB and 16MiB, not {} bytes", raw.buffer.0)));
    }
    if raw.flush.is_zero() || raw.flush > Duration::from_secs(3600) {
        return Err(invalid("flush", format!("flush must be above 0 and at most 1h, not {:?}", raw.flush)));
    }
    let destination = match raw.path.as_str() {
        "-" => Destination::Stderr,
        "" => return Err(invalid("path", "path must name a file, or be \"-\" for stderr".into())),
        path if path.ends_with('/') => return Err(invalid("path", format!("path {path:?} names a directory"))),
        path => Destination::File(path.into()),
    };
    Ok(Some(Settings { destination, buffer: raw.buffer.0 as usize, flush: raw.flush, sample: raw.sample }))
}

/// A config version's access log: which requests it samples, and the sink
/// their lines go to (shared with the previous version when the
/// destination, buffer and flush interval are the same).
pub struct AccessLog {
    sampling: Sampling,
    sink: Arc<Sink>,
}

/// Which share of requests is logged.
#[derive(Clone, Copy)]
enum Sampling {
    All,
    None,
    /// A random `u64` below this.
    Below(u64),
}

impl AccessLog {
    /// The access log for `settings`: the previous version's sink if it
    /// writes to the same place the same way, else a new one (a file is
    /// opened: the only way this fails). `dropped` counts lost lines by reason.
    pub fn instantiate(
        settings: &Settings,
        previous: Option<&AccessLog>,
        dropped: &IntCounterVec,
    ) -> std::io::Result<AccessLog> {
        let sink = match previous.filter(|p| p.sink.writes_like(settings)) {
            Some(previous) => previous.sink.clone(),
            None => Sink::open(settings, dropped)?,
        };
        let sampling = match settings.sample {
            s if s >= 1.0 => Sampling::All,
            s if s <= 0.0 => Sampling::None,
            // Exact enough: 2^-64 off at most.
            s => Sampling::Below((s * u64::MAX as f64) as u64),
        };
        Ok(AccessLog { sampling, sink })
    }

    /// Whether this request is logged (a fresh draw for each).
    pub fn sampled(&self) -> bool {
        match self.sampling {
            Sampling::All => true,
            Sampling::None => false,
            Sampling::Below(threshold) => fastrand::u64(..) < threshold,
        }
    }

    /// Where this version's lines go.
    pub fn sink(&self) -> &Arc<Sink> {
        &self.sink
    }

    /// The longest a line waits in a worker's buffer.
    pub fn flush_interval(&self) -> Duration {
        self.sink.flush
    }
}

/// One destination and its writer thread. Workers hand it whole batches;
/// the thread ends once the sink is dropped and the queue is written.
pub struct Sink {
    destination: Destination,
    buffer: usize,
    flush: Duration,
    batches: SyncSender<Batch>,
    /// Batches handed to the writer, and those it has written (or failed
    /// to): equal when nothing is waiting.
    queued: AtomicU64,
    written: Arc<AtomicU64>,
    queue_full: IntCounter,
}

/// Lines handed from a worker to the writer in one piece.
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

impl Sink {
    fn open(settings: &Settings, dropped: &IntCounterVec) -> std::io::Result<Arc<Sink>> {
        let output = match &settings.destination {
            Destination::Stderr => Output::Stderr,
            Destination::File(path) => Output::File(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (batches, to_write) = sync_channel((QUEUE_BYTES / settings.buffer).max(2));
        let written = Arc::new(AtomicU64::new(0));
        let write_failed = dropped.with_label_values(&["write_failed"]);
        let writer = Writer { output, written: written.clone(), write_failed, failing: false };
        std::thread::Builder::new().name("strangler-access-log".into()).spawn(move || writer.run(to_write))?;
        Ok(Arc::new(Sink {
            destination: settings.destination.clone(),
            buffer: settings.buffer,
            flush: settings.flush,
            batches,
            queued: AtomicU64::new(0),
            written,
            queue_full: dropped.with_label_values(&["queue_full"]),
        }))
    }

    fn writes_like(&self, settings: &Settings) -> bool {
        self.destination == settings.destination && self.buffer == settings.buffer && self.flush == settings.flush
    }

    /// Adds one line, written by `fields`, to this thread's buffer (after
    /// `ts`). No lock and, once the buffer exists, no allocation; a full or
    /// old buffer goes to the writer.
    pub fn append(self: &Arc<Self>, fields: impl FnOnce(&mut Line<'_>)) {
        // During thread teardown the buffer may be gone: the line is lost, never a panic.
        let _ = PENDING.try_with(|pending| {
            if let Ok(mut pending) = pending.try_borrow_mut() {
                pending.append(self, fields);
            }
        });
    }

    fn hand_off(&self, batch: Batch) {
        match self.batches.try_send(batch) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Release);
            }
            Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) => self.queue_full.inc_by(batch.lines),
        }
    }

    /// Waits (up to `within`) until every batch handed over so far is
    /// written; `false` if the writer is still behind then.
    pub async fn flushed(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let target = self.queued.load(Ordering::Acquire);
        while self.written.load(Ordering::Acquire) < target {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// [`Sink::flushed`] for a thread with no runtime (the end of `main`).
    pub fn flushed_blocking(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let target = self.queued.load(Ordering::Acquire);
        while self.written.load(Ordering::Acquire) < target {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

/// Set by a process that embeds the proxy and keeps its stderr for itself
/// (the test suite): lines bound for stderr are then discarded.
static STDERR_SILENCED: AtomicBool = AtomicBool::new(false);

/// Discards, from now on, the lines of every sink that writes to stderr in
/// this process. For embedders whose stderr is not a log (the test suite runs
/// many proxies in one process); a file destination is unaffected.
pub fn silence_stderr() {
    STDERR_SILENCED.store(true, Ordering::Relaxed);
}

/// The writer thread's side of a sink.
struct Writer {
    output: Output,
    written: Arc<AtomicU64>,
    write_failed: IntCounter,
    /// The last write failed (logged once until one succeeds).
    failing: bool,
}

enum Output {
    Stderr,
    File(std::fs::File),
}

impl Writer {
    fn run(mut self, batches: Receiver<Batch>) {
        for batch in batches {
            match self.output.write(&batch.bytes) {
                Ok(()) if self.failing => {
                    self.failing = false;
                    tracing::info!("access log: writing again");
                }
                Ok(()) => {}
                Err(e) => {
                    self.write_failed.inc_by(batch.lines);
                    if !self.failing {
                        self.failing = true;
                        tracing::warn!(error = %e, "access log: a write failed; its lines are counted as dropped");
                    }
                }
            }
            self.written.fetch_add(1, Ordering::Release);
        }
    }
}

impl Output {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stderr if STDERR_SILENCED.load(Ordering::Relaxed) => Ok(()),
            // Locked for the whole batch: a diagnostic line written meanwhile
            // lands between two batches, never inside a line.
            Output::Stderr => std::io::stderr().lock().write_all(bytes),
            Output::File(file) => file.write_all(bytes),
        }
    }
}

thread_local! {
    /// This thread's lines not yet handed to their sink.
    static PENDING: RefCell<Pending> = const { RefCell::new(Pending::new()) };
}

/// A thread's buffer, for one sink at a time (a line for another sink, after
/// a reload that changed the destination, hands the buffer over first).
struct Pending {
    sink: Option<Arc<Sink>>,
    bytes: Vec<u8>,
    lines: u64,
    /// When the oldest line in `bytes` was written.
    since: Duration,
    clock: Clock,
}

impl Pending {
    const fn new() -> Self {
        Pending { sink: None, bytes: Vec::new(), lines: 0, since: Duration::ZERO, clock: Clock::new() }
    }

    fn append(&mut self, sink: &Arc<Sink>, fields: impl FnOnce(&mut Line<'_>)) {
        if !self.sink.as_ref().is_some_and(|s| Arc::ptr_eq(s, sink)) {
            self.hand_off();
            self.sink = Some(sink.clone());
        }
        // The coarse clock: `ts` is in seconds, and a line is stamped at most
        // a few ms late (see `crate::clock`).
        let now = Duration::from_millis(crate::clock::unix_ms());
        if self.lines == 0 {
            self.since = now;
            self.bytes.reserve(sink.buffer + SLACK);
        }
        write_line(&mut self.bytes, self.clock.rfc3339(now.as_secs()), fields);
        self.lines += 1;
        if self.bytes.len() >= sink.buffer || now.saturating_sub(self.since) >= sink.flush {
            self.hand_off();
        }
    }

    /// Gives the buffer to its sink's writer (nothing when it is empty).
    fn hand_off(&mut self) {
        let Some(sink) = self.sink.take() else { return };
        if self.lines > 0 {
            let batch = Batch { bytes: std::mem::take(&mut self.bytes), lines: std::mem::take(&mut self.lines) };
            sink.hand_off(batch);
        }
    }
}

impl Drop for Pending {
    /// A thread that ends (a worker, a runtime's thread) hands its lines over.
    fn drop(&mut self) {
        self.hand_off();
    }
}

/// Hands this thread's buffered lines to their writer now: at a worker's
/// flush tick and as it stops.
pub fn flush_this_thread() {
    let _ = PENDING.try_with(|pending| {
        if let Ok(mut pending) = pending.try_borrow_mut() {
            pending.hand_off();
        }
    });
}

/// Runs on a worker's own thread until aborted: every `interval()` (read
/// again each time, a reload may change it), hands this thread's lines to
/// the writer, so that none waits longer than that on an idle worker.
pub async fn flush_periodically(interval: impl Fn() -> Duration) {
    loop {
        tokio::time::sleep(interval()).await;
        flush_this_thread();
    }
}

/// The current second as RFC 3339 (`2026-11-26T10:00:00Z`), formatted once
/// a second.
struct Clock {
    second: u64,
    text: [u8; 20],
}

impl Clock {
    const fn new() -> Self {
        Clock { second: u64::MAX, text: [b'0'; 20] }
    }

    fn rfc3339(&mut self, second: u64) -> &[u8] {
        if second != self.second {
            let at = UNIX_EPOCH + Duration::from_secs(second);
            let mut text = &mut self.text[..];
            // 20 bytes until the year 9999.
            let _ = write!(text, "{}", humantime::format_rfc3339_seconds(at));
            self.second = second;
        }
        &self.text
    }
}

/// Writes one line, `{"ts":"…",<fields>}` and a newline, into `out`.
pub fn write_line(out: &mut Vec<u8>, ts: &[u8], fields: impl FnOnce(&mut Line<'_>)) {
    out.extend_from_slice(b"{\"ts\":\"");
    out.extend_from_slice(ts);
    out.push(b'"');
    fields(&mut Line { out });
    out.extend_from_slice(b"}\n");
}

/// A field's name as written before its value (`,"name":`), made once at
/// compile time by [`key!`](crate::access_log::key).
#[derive(Clone, Copy)]
pub struct Key(pub &'static str);

/// The [`Key`] of a field: `key!("route")` is `,"route":`.
#[macro_export]
macro_rules! access_log_key {
    ($name:literal) => {
        $crate::access_log::Key(concat!(",\"", $name, "\":"))
    };
}
pub use access_log_key as key;

/// The fields of one JSON line after `ts`, in the order they are added.
/// Keys are the caller's constants and are written as they are; values are
/// escaped.
pub struct Line<'a> {
    out: &'a mut Vec<u8>,
}

impl Line<'_> {
    fn key(&mut self, key: Key) {
        self.out.extend_from_slice(key.0.as_bytes());
    }

    /// A string, escaped; bytes that are not UTF-8 become U+FFFD.
    pub fn string(&mut self, key: Key, value: &[u8]) {
        self.key(key);
        self.out.push(b'"');
        escape(self.out, value);
        self.out.push(b'"');
    }

    /// A string that needs no escaping (hex, an HTTP method): written as it is.
    pub fn plain(&mut self, key: Key, value: &str) {
        debug_assert_eq!(plain_prefix(value.as_bytes()), value.len(), "{value:?} needs escaping");
        self.key(key);
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
    }

    /// A string, or `null`.
    pub fn string_or_null(&mut self, key: Key, value: Option<&[u8]>) {
        match value {
            Some(value) => self.string(key, value),
            None => {
                self.key(key);
                self.out.extend_from_slice(b"null");
            }
        }
    }

    pub fn number(&mut self, key: Key, value: u64) {
        self.key(key);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// An address as a string: `"192.0.2.1"`, `"2001:db8::1"`.
    pub fn ip(&mut self, key: Key, ip: IpAddr) {
        self.key(key);
        self.out.push(b'"');
        match ip {
            IpAddr::V4(v4) => {
                let mut digits = itoa::Buffer::new();
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.out.push(b'.');
                    }
                    self.out.extend_from_slice(digits.format(octet).as_bytes());
                }
            }
            IpAddr::V6(v6) => {
                let _ = write!(self.out, "{v6}");
            }
        }
        self.out.push(b'"');
    }
}

/// Appends `value` escaped for a JSON string: `"` and `\`, control
/// characters (C0, DEL and C1, so that no line can move a terminal's
/// cursor), and bytes that are not UTF-8 (as `\ufffd`).
pub fn escape(out: &mut Vec<u8>, value: &[u8]) {
    // Almost every value is printable ASCII without quotes or backslashes:
    // copied as it is, checked 8 bytes at a time.
    let plain = plain_prefix(value);
    out.extend_from_slice(&value[..plain]);
    if plain < value.len() {
        escape_rest(out, &value[plain..]);
    }
}

/// How many bytes at the start of `value` need no escaping: printable ASCII
/// other than `"` and `\`.
fn plain_prefix(value: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Whether any byte of `w` is zero (exact for the word as a whole).
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH != 0;
    let mut words = value.chunks_exact(8);
    let mut plain = 0;
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        // A byte below 0x20 or at/above 0x7F, or a `"` or `\`.
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0;
        let high = (w | w.wrapping_add(ONES)) & HIGH != 0;
        if control || high || has_zero(w ^ (ONES * u64::from(b'"'))) || has_zero(w ^ (ONES * u64::from(b'\\'))) {
            break;
        }
        plain += 8;
    }
    plain + value[plain..].iter().take_while(|&&b| (0x20..0x7F).contains(&b) && b != b'"' && b != b'\\').count()
}

/// [`escape`] from the first byte that may need it.
fn escape_rest(out: &mut Vec<u8>, value: &[u8]) {
    for chunk in value.utf8_chunks() {
        escape_utf8(out, chunk.valid().as_bytes());
        if !chunk.invalid().is_empty() {
            out.extend_from_slice(b"\\ufffd");
        }
    }
}

fn escape_utf8(out: &mut Vec<u8>, text: &[u8]) {
    let mut plain = 0;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        // C1 controls (U+0080..U+009F) are 0xC2 0x80..0x9F in UTF-8.
        let c1 = b == 0xC2 && text.get(i + 1).is_some_and(|n| (0x80..=0x9F).contains(n));
        if !(b < 0x20 || b == b'"' || b == b'\\' || b == 0x7F || c1) {
            i += 1;
            continue;
        }
        out.extend_from_slice(&text[plain..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                let code = if c1 { text[i + 1] } else { b };
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(code >> 4)]);
                out.push(HEX[usize::from(code & 0xF)]);
            }
        }
        i += if c1 { 2 } else { 1 };
        plain = i;
    }
    out.extend_from_slice(&text[plain..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn escaped(value: &[u8]) -> String {
        let mut out = Vec::new();
        escape(&mut out, value);
        String::from_utf8(out).expect("escaped text is UTF-8")
    }

    /// What a JSON parser reads back from an escaped value.
    fn read_back(value: &[u8]) -> String {
        serde_json::from_str::<String>(&format!("\"{}\"", escaped(value))).expect("valid JSON")
    }

    #[test]
    fn quotes_backslashes_and_control_bytes_are_escaped_and_read_back_unchanged() {
        let hostile = b"a\"b\\c\nd\re\tf\x00g\x1b[31mh\x7fi";
        assert_eq!(escaped(hostile), r#"a\"b\\c\nd\re\tf\u0000g\u001b[31mh\u007fi"#);
        assert_eq!(read_back(hostile).as_bytes(), hostile);
    }

    #[test]
    fn bytes_that_are_not_utf8_become_the_replacement_character_and_utf8_passes() {
        assert_eq!(read_back(b"caf\xc3\xa9 \xff\xfe end"), "café \u{fffd}\u{fffd} end", "as from_utf8_lossy");
        assert_eq!(read_back(b"\xe2\x82"), "\u{fffd}", "a truncated sequence");
        assert_eq!(escaped("日本".as_bytes()), "日本");
    }

    #[test]
    fn every_byte_is_escaped_the_same_at_any_place_in_a_long_value() {
        // The 8-byte fast path and the byte-by-byte one agree, wherever the byte falls.
        for byte in 0..=255u8 {
            for at in 0..20 {
                let mut value = b"0123456789abcdefghij".to_vec();
                value[at] = byte;
                let mut expected = Vec::new();
                escape_rest(&mut expected, &value);
                assert_eq!(escaped(&value).as_bytes(), expected, "byte {byte:#x} at {at}");
            }
        }
        assert_eq!(plain_prefix(b"0123456789abcdef\"quoted"), 16);
        assert_eq!(plain_prefix(b"abcdefg~"), 8, "0x7E is printable");
        assert_eq!(plain_prefix(b"abcdefg\x7f"), 7);
    }

    #[test]
    fn c1_control_characters_are_escaped() {
        let csi = "x\u{9b}31m".as_bytes();
        assert_eq!(escaped(csi), r"x\u009b31m");
        assert_eq!(read_back(csi), "x\u{9b}31m");
        assert_eq!(escaped("\u{a0}".as_bytes()), "\u{a0}", "U+00A0 is no control");
    }

    #[test]
    fn a_line_is_one_json_object_with_its_fields_in_order() {
        let mut out = Vec::new();
        write_line(&mut out, b"2026-11-26T10:00:00Z", |line| {
            line.ip(key!("v4"), "192.0.2.10".parse().unwrap());
            line.ip(key!("v6"), "2001:db8::1".parse().unwrap());
            line.string(key!("s"), b"a\"b");
            line.plain(key!("p"), "GET");
            line.string_or_null(key!("missing"), None);
            line.number(key!("n"), u64::MAX);
        });
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1, "{text:?}");
        assert_eq!(
            text,
            "{\"ts\":\"2026-11-26T10:00:00Z\",\"v4\":\"192.0.2.10\",\"v6\":\"2001:db8::1\",\"s\":\"a\\\"b\",\"p\":\"GET\",\"missing\":null,\"n\":18446744073709551615}\n"
        );
        serde_json::from_str::<serde_json::Value>(&text).expect("valid JSON");
    }

    #[test]
    fn the_clock_writes_rfc3339_utc_seconds() {
        let mut clock = Clock::new();
        assert_eq!(clock.rfc3339(0), b"1970-01-01T00:00:00Z");
        assert_eq!(clock.rfc3339(1_795_000_000), b"2026-11-18T11:06:40Z");
    }

    fn settings(text: &str) -> Result<Option<Settings>, Invalid> {
        let raw: RawAccessLog = serde_yaml::from_str(text).unwrap();
        plan(Some(&raw))
    }

    #[test]
    fn the_defaults_are_stderr_every_request_64kib_and_1s() {
        let defaults = plan(None).unwrap().unwrap();
        let expected =
            Settings { destination: Destination::Stderr, buffer: 65536, flush: Duration::from_secs(1), sample: 1.0 };
        assert_eq!(defaults, expected);
        assert_eq!(settings("off").unwrap(), None);
        let file = settings("{path: /var/log/strangler/access.log, sample: 0.1}").unwrap().unwrap();
        assert_eq!(file.destination, Destination::File("/var/log/strangler/access.log".into()));
        assert_eq!(file.sample, 0.1);
    }

    #[test]
    fn out_of_range_settings_are_refused_naming_their_key() {
        for (text, key, says) in [
            ("{sample: 1.5}", "sample", "between 0.0 and 1.0"),
            ("{sample: -0.1}", "sample", "between 0.0 and 1.0"),
            ("{sample: .nan}", "sample", "between 0.0 and 1.0"),
            ("{buffer: 10}", "buffer", "between 1KiB and 16MiB"),
            ("{buffer: 1GiB}", "buffer", "between 1KiB and 16MiB"),
            ("{flush: 0s}", "flush", "above 0"),
            ("{flush: 2h}", "flush", "at most 1h"),
            ("{path: \"\"}", "path", "must name a file"),
            ("{path: /var/log/}", "path", "names a directory"),
        ] {
            let refused = settings(text).expect_err(text);
            assert_eq!(refused.key, key, "{text}");
            assert!(
                refused.message.starts_with("access_log: ") && refused.message.contains(says),
                "{text}: {refused:?}"
            );
        }
    }

    fn dropped() -> IntCounterVec {
        IntCounterVec::new(prometheus::Opts::new("d", "d"), &["reason"]).unwrap()
    }

    fn file_settings(path: &std::path::Path, buffer: usize, flush: Duration) -> Settings {
        Settings { destination: Destination::File(path.into()), buffer, flush, sample: 1.0 }
    }

    #[test]
    fn sampling_keeps_about_the_share_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = file_settings(&dir.path().join("a.log"), 4096, Duration::from_secs(1));
        let share = |s: &Settings| {
            let log = AccessLog::instantiate(s, None, &dropped()).unwrap();
            (0..10_000).filter(|_| log.sampled()).count()
        };
        assert_eq!(share(&s), 10_000);
        s.sample = 0.0;
        assert_eq!(share(&s), 0);
        s.sample = 0.1;
        assert!((800..1200).contains(&share(&s)), "{}", share(&s));
    }

    #[test]
    fn lines_reach_the_file_when_the_buffer_fills_and_when_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log =
            AccessLog::instantiate(&file_settings(&path, 1024, Duration::from_secs(3600)), None, &dropped()).unwrap();
        let read = || std::fs::read_to_string(&path).unwrap();
        let sink = log.sink().clone();
        let one = |n: u64| sink.append(|line| line.number(key!("n"), n));
        one(0);
        assert!(sink.flushed_blocking(Duration::from_secs(5)));
        assert_eq!(read(), "", "one short line waits in the buffer");
        // ~30 bytes a line: the 1 KiB buffer fills within 40 lines.
        for n in 1..40 {
            one(n);
        }
        assert!(sink.flushed_blocking(Duration::from_secs(5)));
        let written = read().lines().count();
        assert!(written > 0, "a full buffer is written");
        flush_this_thread();
        assert!(sink.flushed_blocking(Duration::from_secs(5)));
        let lines: Vec<u64> = read()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap())
            .collect();
        assert_eq!(lines, (0..40).collect::<Vec<_>>(), "every line, once, in order");
    }

    #[test]
    fn a_line_older_than_the_flush_interval_goes_out_with_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::instantiate(&file_settings(&path, 64 << 10, Duration::from_millis(50)), None, &dropped())
            .unwrap();
        log.sink().append(|line| line.number(key!("n"), 1));
        std::thread::sleep(Duration::from_millis(60));
        log.sink().append(|line| line.number(key!("n"), 2));
        assert!(log.sink().flushed_blocking(Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }

    #[test]
    fn a_reload_with_the_same_destination_keeps_the_sink_and_another_gets_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let a = file_settings(&dir.path().join("a.log"), 4096, Duration::from_secs(1));
        let first = AccessLog::instantiate(&a, None, &dropped()).unwrap();
        let resampled =
            AccessLog::instantiate(&Settings { sample: 0.5, ..a.clone() }, Some(&first), &dropped()).unwrap();
        assert!(Arc::ptr_eq(first.sink(), resampled.sink()));
        let b = file_settings(&dir.path().join("b.log"), 4096, Duration::from_secs(1));
        let moved = AccessLog::instantiate(&b, Some(&first), &dropped()).unwrap();
        assert!(!Arc::ptr_eq(first.sink(), moved.sink()));
        // A line buffered for a.log goes there when the next one is for b.log.
        first.sink().append(|line| line.number(key!("n"), 1));
        moved.sink().append(|line| line.number(key!("n"), 2));
        flush_this_thread();
        assert!(first.sink().flushed_blocking(Duration::from_secs(5)));
        assert!(moved.sink().flushed_blocking(Duration::from_secs(5)));
        assert!(std::fs::read_to_string(dir.path().join("a.log")).unwrap().contains("\"n\":1"));
        assert!(std::fs::read_to_string(dir.path().join("b.log")).unwrap().contains("\"n\":2"));
    }

    #[test]
    fn a_directory_that_does_not_exist_fails_to_open() {
        let s = file_settings(std::path::Path::new("/nonexistent-dir/a.log"), 4096, Duration::from_secs(1));
        assert!(AccessLog::instantiate(&s, None, &dropped()).is_err());
    }

    #[test]
    fn batches_the_writer_cannot_take_are_dropped_and_counted() {
        // A writer stuck on a full pipe: its queue fills, then lines are dropped.
        let (reader, writer) = std::io::pipe().unwrap();
        let dropped = dropped();
        let (batches, to_write) = sync_channel(2);
        let written = Arc::new(AtomicU64::new(0));
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
        let stuck = Writer {
            output: Output::File(file),
            written: written.clone(),
            write_failed: dropped.with_label_values(&["write_failed"]),
            failing: false,
        };
        std::thread::spawn(move || stuck.run(to_write));
        let sink = Arc::new(Sink {
            destination: Destination::Stderr,
            buffer: 1 << 20,
            flush: Duration::from_secs(1),
            batches,
            queued: AtomicU64::new(0),
            written,
            queue_full: dropped.with_label_values(&["queue_full"]),
        });
        // 1 MiB batches into a 64 KiB pipe nobody reads: one is being
        // written, two wait, the rest are dropped.
        for _ in 0..10 {
            sink.hand_off(Batch { bytes: vec![b'x'; 1 << 20], lines: 100 });
        }
        let lost = dropped.with_label_values(&["queue_full"]).get();
        assert!((700..=800).contains(&lost), "{lost} lines dropped");
        assert!(!sink.flushed_blocking(Duration::from_millis(50)), "the writer is behind");
        drop(reader);
    }

    #[test]
    fn settings_take_byte_sizes() {
        let raw = RawAccessLog::On(RawAccessLogSettings { buffer: ByteSize(8192), ..Default::default() });
        assert_eq!(plan(Some(&raw)).unwrap().unwrap().buffer, 8192);
    }
}
