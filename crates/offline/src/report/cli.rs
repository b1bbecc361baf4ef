//! `strangler report FILE...`: the cutover report from one or many diff logs.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use strangler_evidence::summary::ViewOptions;

use super::input::{self, Filter};
use super::{html, markdown};

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
    #[arg(required_unless_present = "from")]
    pub files: Vec<PathBuf>,
    /// The fleet's store, `postgres://USER@HOST:PORT/DB` (password from the
    /// URL or `PGPASSWORD`), read as well as the files. Repeatable.
    #[arg(long = "from", value_name = "URL")]
    pub from: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Html)]
    pub format: Format,
    /// Write the report here instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Only records from this time on: RFC 3339 (`2026-11-25T20:00:00Z`) or a duration back from now (`2h`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only this route.
    #[arg(long)]
    pub route: Option<String>,
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

/// Runs the command; returns the process exit code.
pub fn run(args: ReportArgs) -> anyhow::Result<i32> {
    let since_ms = match &args.since {
        Some(text) => {
            Some(input::parse_since(text, std::time::SystemTime::now()).map_err(|e| anyhow::anyhow!("--since: {e}"))?)
        }
        None => None,
    };
    if !(0.0..=100.0).contains(&args.min_match) {
        anyhow::bail!("--min-match must be a percentage between 0 and 100");
    }
    let filter = Filter { since_ms, route: args.route.clone() };
    let mut summary = input::read_logs(&args.files, &filter)?;
    for url in &args.from {
        let query =
            strangler_store::Query { routes: args.route.iter().cloned().collect(), since_ms, ..Default::default() };
        let mut from_store = strangler_evidence::summary::Summary::default();
        let stats =
            strangler_store::read(url, &query, |r| from_store.add(&r)).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
        from_store.inputs.files.push(strangler_store::dsn::mask(url));
        from_store.inputs.lines = stats.rows;
        from_store.inputs.corrupt_lines = stats.corrupt;
        summary.merge(from_store);
    }
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
