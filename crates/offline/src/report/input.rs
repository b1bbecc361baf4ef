//! Reading diff logs: plain or gzip JSON lines, one file per replica, line by
//! line with constant memory, corrupt lines reported and skipped.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};
use strangler_evidence::record::DiffRecord;
use strangler_evidence::summary::stats::parse_rfc3339_ms;
use strangler_evidence::summary::Summary;

/// Corrupt lines reported one by one on stderr, per file; the rest are only counted.
pub const MAX_REPORTED_CORRUPT: u64 = 50;

/// Which records count.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only records at or after this time (epoch milliseconds).
    pub since_ms: Option<i64>,
    /// Only this route.
    pub route: Option<String>,
}

impl Filter {
    pub fn keeps(&self, r: &DiffRecord) -> bool {
        if let Some(route) = &self.route {
            if &r.route != route {
                return false;
            }
        }
        if let Some(since) = self.since_ms {
            // A record whose time cannot be read is kept (and counted as such).
            if parse_rfc3339_ms(&r.ts).is_some_and(|t| t < since) {
                return false;
            }
        }
        true
    }
}

/// `--since`: an RFC 3339 time, or a duration (`2h`, `30m`, `1day`) back from now.
pub fn parse_since(text: &str, now: SystemTime) -> Result<i64, String> {
    if let Some(ms) = parse_rfc3339_ms(text.trim()) {
        return Ok(ms);
    }
    match humantime::parse_duration(text.trim()) {
        Ok(d) => {
            let t = now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH);
            let ms = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis();
            Ok(ms as i64)
        }
        Err(e) => Err(format!("{text:?} is neither an RFC 3339 time (2026-11-25T20:00:00Z) nor a duration (2h): {e}")),
    }
}

/// Counts the bytes read from a file for the progress bar.
struct Counting<R> {
    inner: R,
    bar: Option<ProgressBar>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
        Ok(n)
    }
}

/// Opens a log (`-` is stdin); gzip is recognized by its magic bytes.
pub fn open(path: &Path, bar: Option<ProgressBar>) -> io::Result<Box<dyn BufRead + Send>> {
    let raw: Box<dyn Read + Send> =
        if path == Path::new("-") { Box::new(io::stdin()) } else { Box::new(File::open(path)?) };
    let mut reader = BufReader::with_capacity(256 * 1024, Counting { inner: raw, bar });
    let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(BufReader::with_capacity(256 * 1024, flate2::read::MultiGzDecoder::new(reader)))
    } else {
        Box::new(reader)
    })
}

/// Aggregates one log into `summary`, reporting corrupt lines to `errors`
/// as `FILE:LINE: invalid record: ...`.
pub fn read_log(
    name: &str,
    reader: &mut dyn BufRead,
    filter: &Filter,
    summary: &mut Summary,
    errors: &mut dyn FnMut(String),
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    let mut corrupt = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line_no += 1;
        let line = buf.trim_ascii();
        if line.is_empty() {
            continue;
        }
        summary.inputs.lines += 1;
        match serde_json::from_slice::<DiffRecord>(line) {
            Ok(record) => {
                if filter.keeps(&record) {
                    summary.add(&record);
                } else {
                    summary.inputs.filtered_out += 1;
                }
            }
            Err(e) => {
                corrupt += 1;
                summary.inputs.corrupt_lines += 1;
                if corrupt <= MAX_REPORTED_CORRUPT {
                    errors(format!("{name}:{line_no}: invalid record: {e}"));
                }
            }
        }
    }
    if corrupt > MAX_REPORTED_CORRUPT {
        errors(format!("{name}: {} more invalid records not shown", corrupt - MAX_REPORTED_CORRUPT));
    }
    summary.inputs.files.push(name.to_string());
    Ok(())
}

/// Reads every log (in parallel, one thread per file up to the core count)
/// and merges them. A progress bar is drawn on stderr when it is a terminal.
pub fn read_logs(paths: &[PathBuf], filter: &Filter) -> anyhow::Result<Summary> {
    let total: u64 = paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let bar = (io::stderr().is_terminal() && total > 0).then(|| {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} reading logs [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    let report = |bar: &Option<ProgressBar>, msg: String| match bar {
        Some(bar) => bar.suspend(|| eprintln!("{msg}")),
        None => {
            let _ = writeln!(io::stderr().lock(), "{msg}");
        }
    };
    let read_one = |path: &PathBuf| -> anyhow::Result<Summary> {
        let name = path.display().to_string();
        let mut summary = Summary::default();
        let mut reader = open(path, bar.clone()).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        read_log(&name, &mut *reader, filter, &mut summary, &mut |m| report(&bar, m))
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        Ok(summary)
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(paths.len()).max(1);
    let mut results: Vec<Option<anyhow::Result<Summary>>> = (0..paths.len()).map(|_| None).collect();
    if threads == 1 {
        for (i, p) in paths.iter().enumerate() {
            results[i] = Some(read_one(p));
        }
    } else {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let done = std::sync::Mutex::new(&mut results);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= paths.len() {
                        break;
                    }
                    let r = read_one(&paths[i]);
                    done.lock().unwrap()[i] = Some(r);
                });
            }
        });
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let mut summary = Summary::default();
    for r in results {
        summary.merge(r.expect("every file was read")?);
    }
    Ok(summary)
}
