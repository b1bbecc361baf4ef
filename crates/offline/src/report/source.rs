//! Where records come from: `strangler report FILE... --from PATH_OR_URL...`.
//! A [`Source`] is read twice — its noise evidence, then its records — by
//! [`super::collect::gather`]. JSON-lines files (plain or gzip, `-` for
//! stdin) are [`JsonlSource`]s; a `postgres://` store is a source too.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use strangler_evidence::noise::FleetNoise;

use super::collect::Collector;
use super::input;
use super::query::Query;

/// A source of diff records.
pub trait Source: Send + Sync {
    /// How the report names it (never with a password).
    fn name(&self) -> &str;

    /// Bytes to read per pass, for the progress bar, when known.
    fn size(&self) -> Option<u64> {
        None
    }

    /// Pass 1: the noise evidence of every record of the query's routes
    /// (`Query::keeps_route`), whatever its time or instance: a field seen
    /// to vary in the primary's answers is noise for the whole data set.
    fn read_noise(&self, query: &Query, progress: &Progress) -> anyhow::Result<FleetNoise>;

    /// Pass 2: every record, to `collector.add` (which applies the query;
    /// a source may also narrow its reading to `collector.query()`).
    fn read_records(&self, collector: &mut Collector<'_>, progress: &Progress) -> anyhow::Result<()>;
}

/// Opens every source: the positional files, then the `--from` values.
pub fn open_all(files: &[PathBuf], from: &[String]) -> anyhow::Result<Vec<Box<dyn Source>>> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    for f in files {
        sources.push(Box::new(JsonlSource::open(f)?));
    }
    for spec in from {
        sources.push(open(spec)?);
    }
    if sources.is_empty() {
        anyhow::bail!("no records to read: give diff logs (FILE...) or --from PATH_OR_URL");
    }
    Ok(sources)
}

/// One `--from` value: `postgres://…` (or `postgresql://…`) is a store;
/// anything else without a `scheme://` is a file. The store's reader is a
/// [`Source`] like the files: its `read_noise` gathers the noise evidence of
/// the query's routes, its `read_records` hands every row to
/// `Collector::add` (with the query pushed down into SQL), and this is where
/// it is opened.
pub fn open(spec: &str) -> anyhow::Result<Box<dyn Source>> {
    match spec.split_once("://") {
        Some(("postgres" | "postgresql", _)) => Ok(Box::new(super::store::StoreSource::open(spec)?)),
        Some((scheme, _)) if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            anyhow::bail!(
                "--from {}: unknown kind of source {scheme:?} (a file path or postgres://…)",
                redact_url(spec)
            )
        }
        _ => Ok(Box::new(JsonlSource::open(Path::new(spec))?)),
    }
}

/// A URL as it may be shown: the password (`user:secret@`, `password=`)
/// replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                out = format!("{scheme}://{}:***{}", &rest[..colon], &rest[at..]);
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out = format!("{head}{}", params.join("&"));
    }
    out
}

/// A diff log: JSON lines, plain or gzip; `-` is stdin, spooled to a
/// temporary file so that it can be read twice.
pub struct JsonlSource {
    name: String,
    path: PathBuf,
    _spool: Option<tempfile::NamedTempFile>,
}

impl JsonlSource {
    pub fn open(path: &Path) -> anyhow::Result<JsonlSource> {
        let name = path.display().to_string();
        if path == Path::new("-") {
            let mut spool = tempfile::NamedTempFile::new().map_err(|e| anyhow::anyhow!("stdin: spooling: {e}"))?;
            io::copy(&mut io::stdin().lock(), &mut spool).map_err(|e| anyhow::anyhow!("stdin: {e}"))?;
            spool.flush()?;
            let path = spool.path().to_path_buf();
            return Ok(JsonlSource { name, path, _spool: Some(spool) });
        }
        std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        Ok(JsonlSource { name, path: path.to_path_buf(), _spool: None })
    }

    fn reader(&self, progress: &Progress) -> anyhow::Result<Box<dyn io::BufRead + Send>> {
        input::open(&self.path, progress.bar.clone()).map_err(|e| anyhow::anyhow!("{}: {e}", self.name))
    }
}

impl Source for JsonlSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> Option<u64> {
        std::fs::metadata(&self.path).ok().map(|m| m.len())
    }

    fn read_noise(&self, query: &Query, progress: &Progress) -> anyhow::Result<FleetNoise> {
        let mut noise = FleetNoise::default();
        input::read_noise(&mut *self.reader(progress)?, query, &mut noise)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.name))?;
        Ok(noise)
    }

    fn read_records(&self, collector: &mut Collector<'_>, progress: &Progress) -> anyhow::Result<()> {
        input::read_log(&self.name, &mut *self.reader(progress)?, collector, &mut |m| progress.report(m))
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.name))
    }
}

/// The progress bar on stderr (only when it is a terminal) and the channel
/// for messages about what was read (corrupt lines), which must not tear it.
#[derive(Default)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for reading `sources` twice, when stderr is a terminal and their size is known.
    pub fn for_sources(sources: &[Box<dyn Source>]) -> Progress {
        let total: u64 = sources.iter().filter_map(|s| s.size()).sum::<u64>() * 2;
        let bar = (io::stderr().is_terminal() && total > 0).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} reading {msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        Progress { bar }
    }

    /// Names the pass under way.
    pub fn pass(&self, what: &'static str) {
        if let Some(bar) = &self.bar {
            bar.set_message(what);
        }
    }

    /// Prints a message on stderr.
    pub fn report(&self, message: String) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{message}")),
            None => {
                let _ = writeln!(io::stderr().lock(), "{message}");
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/shadow"), "postgres://app:***@db:5432/shadow");
        assert_eq!(
            redact_url("postgres://app@db/shadow?password=x&sslmode=require"),
            "postgres://app@db/shadow?password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://db/shadow"), "postgres://db/shadow");
    }

    #[test]
    fn a_source_that_cannot_be_read_is_a_clear_error() {
        let err = open("postgres://app:s3cret@db:5432/shadow?sslmode=maybe").err().unwrap().to_string();
        assert!(err.contains("sslmode \"maybe\""), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = open("s3://bucket/diffs.jsonl").err().unwrap().to_string();
        assert!(err.contains("unknown kind of source \"s3\""), "{err}");
        let err = open_all(&[], &[]).err().unwrap().to_string();
        assert!(err.contains("no records to read"), "{err}");
    }
}
