//! Reading diff logs: plain or gzip JSON lines, line by line with constant
//! memory, corrupt lines reported and skipped. Read twice: [`read_noise`]
//! (the noise evidence only, fast) and [`read_log`] (every record).

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use indicatif::ProgressBar;
use memchr::memmem;
use serde::Deserialize;
use strangler_evidence::noise::FleetNoise;
use strangler_evidence::record::DiffRecord;

use super::collect::Collector;
use super::query::Query;

/// Corrupt lines reported one by one on stderr, per file; the rest are only counted.
pub const MAX_REPORTED_CORRUPT: u64 = 50;

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

/// The part of a record the noise pass needs.
#[derive(Deserialize)]
struct NoiseFacts<'a> {
    #[serde(borrow)]
    route: Cow<'a, str>,
    #[serde(borrow)]
    endpoint: Cow<'a, str>,
    #[serde(default, borrow)]
    noise: Vec<Cow<'a, str>>,
}

/// Pass 1: adds the noise evidence of every record of the query's routes to
/// `noise`. Lines that carry none (`"noise":[]` or no `"noise"` at all: most
/// of them) are skipped without being parsed; corrupt lines are left to [`read_log`].
pub fn read_noise(reader: &mut dyn BufRead, query: &Query, noise: &mut FleetNoise) -> io::Result<()> {
    let key = memmem::Finder::new(b"\"noise\"");
    let empty = b"\"noise\":[]";
    let mut buf = Vec::with_capacity(4096);
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        let line = buf.trim_ascii();
        let mut found = key.find_iter(line);
        // Inside a JSON string a quote is escaped, so `"noise"` is a key or
        // the whole string "noise"; one occurrence followed by `:[]` is the
        // record's own, empty list.
        let Some(first) = found.next() else { continue };
        if found.next().is_none() && line[first..].starts_with(empty) {
            continue;
        }
        if let Ok(facts) = serde_json::from_slice::<NoiseFacts>(line) {
            if !facts.noise.is_empty() && query.keeps_route(&facts.route) {
                noise.add(&facts.route, &facts.endpoint, facts.noise.iter().map(|n| n.as_ref()));
            }
        }
    }
}

/// Pass 2: every record of one log to `collector`, reporting corrupt lines
/// to `errors` as `FILE:LINE: invalid record: ...`.
pub fn read_log(
    name: &str,
    reader: &mut dyn BufRead,
    collector: &mut Collector<'_>,
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
        match serde_json::from_slice::<DiffRecord>(line) {
            Ok(record) => collector.add(record),
            Err(e) => {
                corrupt += 1;
                collector.corrupt();
                if corrupt <= MAX_REPORTED_CORRUPT {
                    errors(format!("{name}:{line_no}: invalid record: {e}"));
                }
            }
        }
    }
    if corrupt > MAX_REPORTED_CORRUPT {
        errors(format!("{name}: {} more invalid records not shown", corrupt - MAX_REPORTED_CORRUPT));
    }
    Ok(())
}
