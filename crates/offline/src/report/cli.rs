//! `strangler report [FILE...] [--from PATH_OR_URL...]`: the cutover report
//! from the diff logs of every replica, or from the fleet's store.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Args, ValueEnum};
use strangler_evidence::summary::ViewOptions;

use super::query::{self, Query};
use super::source::{self, Progress};
use super::{collect, html, markdown};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Html,
    Md,
    Json,
}

/// The arguments of `strangler report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Diff logs (`.jsonl`, or gzip-compressed), one per replica; `-` reads stdin.
    /// The same record given twice (same `id`) counts once.
    pub files: Vec<PathBuf>,
    /// Another source of records: a diff log, or the fleet's store
    /// (`postgres://USER@HOST:PORT/DB`). Repeatable.
    #[arg(long = "from", value_name = "PATH_OR_URL")]
    pub from: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Html)]
    pub format: Format,
    /// Write the report here instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Only records from this time on: RFC 3339 (`2026-11-25T20:00:00Z`) or a duration back from now (`24h`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only records before this time: RFC 3339 or a duration back from now.
    #[arg(long)]
    pub until: Option<String>,
    /// Only this route (repeatable).
    #[arg(long = "route", value_name = "ROUTE")]
    pub routes: Vec<String>,
    /// Only records written by this replica (its `instance`: the pod name; repeatable).
    #[arg(long = "instance", value_name = "INSTANCE")]
    pub instances: Vec<String>,
    /// A route is ready when its match rate is at least this (percent)...
    #[arg(long, default_value_t = 99.9)]
    pub min_match: f64,
    /// ... over at least this many compared requests.
    #[arg(long, default_value_t = 1000)]
    pub min_samples: u64,
    /// Exit 2 when any route is not ready (to gate a cutover in CI).
    #[arg(long)]
    pub fail_if_not_ready: bool,
}

impl ReportArgs {
    /// The records the report is about.
    pub fn query(&self, now: SystemTime) -> anyhow::Result<Query> {
        let time = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<i64>> {
            text.as_deref().map(|t| query::parse_time(t, now).map_err(|e| anyhow::anyhow!("{flag}: {e}"))).transpose()
        };
        let q = Query {
            routes: self.routes.clone(),
            since_ms: time("--since", &self.since)?,
            until_ms: time("--until", &self.until)?,
            instances: self.instances.clone(),
        };
        if let (Some(since), Some(until)) = (q.since_ms, q.until_ms) {
            if until <= since {
                anyhow::bail!("--until must be later than --since");
            }
        }
        Ok(q)
    }
}

/// Runs the command; returns the process exit code.
pub fn run(args: ReportArgs) -> anyhow::Result<i32> {
    let query = args.query(SystemTime::now())?;
    if !(0.0..=100.0).contains(&args.min_match) {
        anyhow::bail!("--min-match must be a percentage between 0 and 100");
    }
    let sources = source::open_all(&args.files, &args.from)?;
    let progress = Progress::for_sources(&sources);
    let summary = collect::gather(&sources, &query, &progress)?;
    let opts = ViewOptions { min_match: args.min_match, min_samples: args.min_samples, ..ViewOptions::default() };
    let report = summary.view(&opts);
    let text = match args.format {
        Format::Html => html::render(&report),
        Format::Md => markdown::render(&report),
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
    };
    match &args.output {
        Some(path) => std::fs::write(path, text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    if summary.inputs.corrupt_lines > 0 {
        eprintln!("{} corrupt line(s) skipped", summary.inputs.corrupt_lines);
    }
    Ok(if args.fail_if_not_ready && !report.ready { 2 } else { 0 })
}
