//! The `strangler` command line: `serve`, `check`, `explain`, and the offline
//! `report` and `replay` (from the `strangler-offline` crate).

/// jemalloc: an idle connection's buffers cost only the pages written to
/// (glibc's chunk headers touch both ends of each buffer).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use strangler::server::{self, ServeOptions};
use strangler::{reload, Shared};

#[derive(Parser)]
#[command(
    name = "strangler",
    version,
    about = "A hot-reloading prefix-routing reverse proxy for strangler-fig migrations"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins when set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default command).
    Serve(ServeArgs),
    /// Validate a config and exit non-zero with the precise error (like `nginx -t`);
    /// warn of routes that can never match. With `--preview`, also show what
    /// it would move of a running proxy's recent traffic.
    Check {
        /// The config file.
        #[arg(default_value = "routes.yaml")]
        config: PathBuf,
        /// A running proxy's admin API (`http://HOST:PORT`): route its recent
        /// traffic through this file and print what would move. Nothing is
        /// applied. Sends `$STRANGLER_ADMIN_TOKEN` as a bearer token when set
        /// (a proxy not on loopback asks for it).
        #[arg(long, value_name = "URL")]
        preview: Option<String>,
        /// How `--preview` prints: a table for people, or the admin API's JSON.
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Show which route and upstream a request would take, and why.
    Explain {
        #[arg(long, env = "STRANGLER_CONFIG", default_value = "routes.yaml")]
        config: PathBuf,
        /// The request's Host.
        #[arg(long)]
        host: Option<String>,
        /// A sticky key (user id), put where the route's `sticky` reads it:
        /// shows which member of a split it lands on.
        #[arg(long)]
        user: Option<String>,
        /// More request headers, `Name: Value` (repeatable).
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        method: String,
        /// Path, with an optional query.
        path: String,
    },
    /// Summarize shadow-diff logs into a cutover report (HTML, Markdown or JSON).
    Report(strangler_offline::report::cli::ReportArgs),
    /// Re-send logged mismatches to a new build and show which are fixed.
    Replay(strangler_offline::replay::ReplayArgs),
    /// Watch and steer routes' autopilot rollouts, in the state the config names.
    Rollout(RolloutArgs),
}

#[derive(clap::Args)]
struct RolloutArgs {
    action: RolloutAction,
    /// The route (every action but `status` needs one).
    route: Option<String>,
    /// The config file, which names the rollouts and their state.
    #[arg(long, env = "STRANGLER_CONFIG", default_value = "routes.yaml")]
    config: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    format: OutputFormat,
    /// Who asks, recorded in the history (default: $USER).
    #[arg(long)]
    actor: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RolloutAction {
    Status,
    History,
    Pause,
    Resume,
    Promote,
    Abort,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

/// How requests are spread over worker threads.
#[derive(Clone, Copy, ValueEnum)]
enum Scheduler {
    /// Each thread runs its own single-threaded runtime with its own accept
    /// queue (`SO_REUSEPORT`): a connection, its requests and its upstream
    /// connections stay on one core, as in nginx's workers.
    PerCore,
    /// One tokio runtime whose threads steal tasks from each other: evens
    /// out uneven connections, at the cost of cross-thread bookkeeping.
    WorkStealing,
}

/// How new connections are spread over per-core workers.
#[derive(Clone, Copy, ValueEnum)]
enum ConnectionBalance {
    /// Where the kernel's `SO_REUSEPORT` hash puts them.
    Kernel,
    /// To the worker with the fewest open connections (Envoy's `exact_balance`).
    Exact,
}

/// Who serves HTTP/1.1 connections (plain or TLS).
#[derive(Clone, Copy, ValueEnum)]
enum Http1Engine {
    Own,
    Hyper,
}

/// `strangler` with no subcommand: `serve` with its defaults (and env).
#[derive(Parser)]
struct DefaultServe {
    #[command(flatten)]
    args: ServeArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The config file.
    #[arg(long, env = "STRANGLER_CONFIG", default_value = "routes.yaml")]
    config: PathBuf,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// How the worker threads share the work.
    #[arg(long, value_enum, default_value = "per-core")]
    scheduler: Scheduler,
    /// Who serves HTTP/1.1: `own` (our loop for bodiless requests,
    /// hyper for the rest) or `hyper` (hyper for everything; for comparison).
    #[arg(long, value_enum, default_value = "own")]
    http1: Http1Engine,
    /// How new connections are spread over per-core workers: `kernel` leaves
    /// it to the `SO_REUSEPORT` hash; `exact` hands each to the worker with
    /// the fewest open connections (for a few long-lived connections; it costs
    /// CPU when connections are short). Per-core with 2+ threads only.
    #[arg(long, value_enum, default_value = "kernel")]
    connection_balance: ConnectionBalance,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// A client must send its request head within this time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// A connection idle between requests (HTTP/2: no new stream) is closed
    /// after this time (keep it above the idle timeout of any load balancer
    /// in front).
    #[arg(long, default_value = "75s", value_parser = humantime::parse_duration)]
    keepalive_timeout: Duration,
    /// How often the config's content hash is compared, as a safety net for missed file events.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// Keep one request in this many for previews (`strangler check
    /// --preview`); the last 10,000 kept are routed again. 1 keeps every
    /// request (a quiet instance); a busy one may keep fewer to look further back.
    #[arg(long, env = "STRANGLER_PREVIEW_SAMPLE_EVERY", default_value_t = strangler::preview::sample::SAMPLE_EVERY,
          value_parser = clap::value_parser!(u64).range(1..))]
    preview_sample_every: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    let command = cli.command.unwrap_or_else(|| Command::Serve(DefaultServe::parse_from(["strangler"]).args));
    match command {
        Command::Serve(args) => serve(args),
        Command::Check { config, preview, format } => std::process::exit(check(&config, preview.as_deref(), format)),
        Command::Explain { config, host, user, headers, method, path } => {
            let shared = Shared::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let table = shared.table.load();
            let question = strangler::explain::Question {
                method: &method,
                target: &path,
                host: host.as_deref(),
                headers: &headers,
                user: user.as_deref(),
            };
            // Offline: no target was ever checked, so health is reported unknown.
            let explanation = strangler::explain::explain(&table, &question, strangler::explain::Health::Unchecked);
            println!("{}", serde_json::to_string_pretty(&explanation)?);
            if explanation.route.is_none() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Report(args) => std::process::exit(strangler_offline::report::cli::run(args)?),
        Command::Replay(args) => std::process::exit(strangler_offline::replay::run(args)?),
        Command::Rollout(args) => std::process::exit(rollout(args)?),
    }
}

/// `strangler rollout ACTION [ROUTE]`: 0 done, 1 refused or not found, 2 the
/// state cannot be used. A PostgreSQL state is reached on a runtime of its own.
fn rollout(args: RolloutArgs) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(rollout_on(args))
}

async fn rollout_on(args: RolloutArgs) -> anyhow::Result<i32> {
    use strangler::autopilot as pilot;
    use strangler::rollout::machine::Command as Cmd;
    let shared = Shared::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let table = shared.table.load_full();
    let store = pilot::state_of(&table, &shared.rollout_state);
    let plans = pilot::plans(&table);
    let plan = args.route.as_deref().map(|route| plans.iter().find(|(name, _)| **name == *route));
    let command = match args.action {
        RolloutAction::Status | RolloutAction::History => None,
        RolloutAction::Pause => Some(Cmd::Pause),
        RolloutAction::Resume => Some(Cmd::Resume),
        RolloutAction::Promote => Some(Cmd::Promote),
        RolloutAction::Abort => Some(Cmd::Abort),
    };
    let (route, plan) = match (args.action, args.route.as_deref(), plan.flatten()) {
        (RolloutAction::Status, None, _) => (None, None),
        (_, Some(route), Some((_, plan))) => (Some(route), Some(plan.clone())),
        (_, Some(route), None) => {
            eprintln!("{}: route {route:?} has no rollout", args.config.display());
            return Ok(1);
        }
        (_, None, _) => anyhow::bail!("this action needs a ROUTE"),
    };
    let now = pilot::now_ms();
    if let (Some(cmd), Some(route), Some(plan)) = (command, route, plan) {
        let actor = args.actor.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into());
        let lead = pilot::lead_of(&table);
        return Ok(match pilot::command(&store, route, plan, cmd, &actor, (now, lead)).await {
            Ok(progress) => {
                println!("{route}: {} ({} by {actor})", progress.status.as_str(), cmd.as_str());
                0
            }
            Err(pilot::CommandError::Refused(why)) => {
                eprintln!("{route}: {why}");
                1
            }
            Err(pilot::CommandError::State(why)) => {
                eprintln!("{why}");
                2
            }
        });
    }
    if args.action == RolloutAction::History {
        let route = route.unwrap_or_default();
        let state = match store.history(route).await {
            Ok(state) => state,
            Err(e) => {
                eprintln!("{e}");
                return Ok(2);
            }
        };
        match args.format {
            OutputFormat::Json => {
                let entries: Vec<_> = state.history.iter().filter(|t| t.route == route).collect();
                println!("{}", serde_json::to_string_pretty(&entries)?);
            }
            OutputFormat::Text => print!("{}", pilot::history_text(&state, route)),
        }
        return Ok(0);
    }
    let mut statuses = match pilot::status_from(&store, &plans, now).await {
        Ok(statuses) => statuses,
        Err(e) => {
            eprintln!("{e}");
            return Ok(2);
        }
    };
    statuses.retain(|s| route.is_none_or(|r| s.route == r));
    match args.format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&statuses)?),
        OutputFormat::Text => print!("{}", pilot::status_text(&statuses)),
    }
    Ok(0)
}

/// `strangler check FILE [--preview URL]`: 0 valid (warnings allowed), 1
/// invalid (or no route can match), 2 the running proxy could not be asked.
fn check(config: &std::path::Path, preview: Option<&str>, format: OutputFormat) -> i32 {
    let shared = match Shared::load(config) {
        Ok(shared) => shared,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let table = shared.table.load();
    if let Some(tls) = &table.raw.tls {
        if let Err(e) = strangler::tls::CertResolver::load(tls, &shared.metrics) {
            eprintln!("{}: tls: {e}", config.display());
            return 1;
        }
    }
    let (lints, fatal) = strangler::preview::lint::check(&table.file, &table.text, &table.router, |r| &r.name);
    let severity = if fatal { "error" } else { "warning" };
    for lint in &lints {
        eprintln!("{}", located(lint, severity));
    }
    if fatal {
        eprintln!("{}: no route can match any request", config.display());
        return 1;
    }
    let ok = format!(
        "{}: ok ({} routes, {} upstreams, hash {})",
        config.display(),
        table.router.entries().len(),
        table.upstreams.len(),
        &table.hash[..12]
    );
    let Some(admin) = preview else {
        println!("{ok}");
        return 0;
    };
    // stdout carries only the preview (JSON for scripts).
    eprintln!("{ok}");
    match ask_preview(admin, config, &table.text) {
        Ok((200, body)) => print_preview(&body, format),
        Ok((status, body)) => {
            let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            match answer["message"].as_str() {
                Some(message) if answer["error"] == "invalid_config" => {
                    eprintln!("{message}");
                    1
                }
                Some(message) => {
                    eprintln!("{admin}/preview answered {status}: {message}");
                    2
                }
                None => {
                    eprintln!("{admin}/preview answered {status}: {}", String::from_utf8_lossy(&body));
                    2
                }
            }
        }
        Err(e) => {
            eprintln!("cannot ask {admin}/preview: {e:#}");
            2
        }
    }
}

/// `file:line:column: severity: message` (or `file: severity: message`).
fn located(lint: &strangler::config::ConfigError, severity: &str) -> String {
    let mut place = lint.file.clone();
    if let Some(line) = lint.line {
        place.push_str(&format!(":{line}"));
        if let Some(column) = lint.column {
            place.push_str(&format!(":{column}"));
        }
    }
    format!("{place}: {severity}: {}", lint.message)
}

fn print_preview(body: &[u8], format: OutputFormat) -> i32 {
    let preview: strangler::preview::Preview = match serde_json::from_slice(body) {
        Ok(preview) => preview,
        Err(e) => {
            eprintln!("the preview answer is not one this version reads ({e}): {}", String::from_utf8_lossy(body));
            return 2;
        }
    };
    match format {
        OutputFormat::Json => match serde_json::to_string_pretty(&preview) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("{e}");
                return 2;
            }
        },
        OutputFormat::Text => print!("{}", strangler::preview::text::render(&preview)),
    }
    0
}

/// `POST ADMIN/preview?file=FILE` with `text`: the status and body.
fn ask_preview(admin: &str, file: &std::path::Path, text: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    use http_body_util::BodyExt as _;
    let base: http::Uri =
        admin.trim_end_matches('/').parse().map_err(|_| anyhow::anyhow!("give the admin API as http://HOST:PORT"))?;
    let authority = match (base.scheme_str(), base.authority()) {
        (Some("http"), Some(authority)) => authority.clone(),
        _ => anyhow::bail!("give the admin API as http://HOST:PORT (plain HTTP, as the admin listener serves)"),
    };
    let query =
        form_urlencoded::Serializer::new(String::new()).append_pair("file", &file.display().to_string()).finish();
    let path = format!("{}/preview?{query}", base.path().trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(authority.as_str()).await.context("connect")?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let mut request = http::Request::post(path)
                .header(http::header::HOST, authority.as_str())
                .header(http::header::CONTENT_TYPE, "application/yaml");
            // A proxy that is not on loopback lets only the admin token in.
            if let Some(token) = std::env::var(strangler::admin::TOKEN_ENV).ok().filter(|t| !t.is_empty()) {
                request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let request = request.body(http_body_util::Full::new(bytes::Bytes::from(text.to_string())))?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body.to_vec()))
        };
        tokio::time::timeout(Duration::from_secs(60), exchange).await.context("no answer within 60 s")?
    })
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    // Per core: this thread's runtime is the first worker and `server::run`
    // starts the others. Work stealing: one runtime, one accept loop.
    let (mut runtime, workers) = match args.scheduler {
        Scheduler::PerCore => (tokio::runtime::Builder::new_current_thread(), threads),
        Scheduler::WorkStealing if threads == 1 => (tokio::runtime::Builder::new_current_thread(), 1),
        Scheduler::WorkStealing => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            // A thread's access-log lines are handed over as it goes idle: no
            // timer of ours runs on a given thread of this runtime.
            builder.worker_threads(threads).on_thread_park(strangler::access_log::flush_this_thread);
            (builder, 1)
        }
    };
    let runtime = runtime.enable_all().build().context("cannot start the runtime")?;
    let shared = runtime.block_on(async move {
        let shared = Shared::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
        shared.preview.set_every(args.preview_sample_every);
        restore_rollouts(&shared, &args.config).await;
        let (listen, admin) = {
            let table = shared.table.load();
            (table.listen, table.admin)
        };
        let proxy_listener = server::bind(listen, workers).with_context(|| format!("cannot listen on {listen}"))?;
        let admin_listener =
            tokio::net::TcpListener::bind(admin).await.with_context(|| format!("cannot listen on {admin} (admin)"))?;
        let https_port = proxy_listener.local_addr()?.port();
        let (tls, plain, _cert_watch) = start_tls(&shared, https_port, args.poll_interval).await?;
        tracing::info!(
            proxy = %proxy_listener.local_addr()?,
            admin = %admin_listener.local_addr()?,
            config = %args.config.display(),
            hash = %shared.table.load().hash,
            tls = tls.is_some(),
            "listening"
        );
        let watcher = reload::spawn(args.config.clone(), shared.clone(), args.poll_interval);
        spawn_sighup(watcher.trigger.clone());
        let _pilot = strangler::autopilot::spawn(shared.clone(), watcher.rollout.clone());
        let options = ServeOptions {
            header_read_timeout: args.header_read_timeout,
            keepalive_timeout: args.keepalive_timeout,
            drain_timeout: args.drain_timeout,
            tls,
            plain,
            workers,
            inline_http1: matches!(args.http1, Http1Engine::Own),
            balance_connections: matches!(args.connection_balance, ConnectionBalance::Exact),
            ..ServeOptions::default()
        };
        server::run(proxy_listener, admin_listener, shared.clone(), options, shutdown_signal()).await;
        shared.shadow.shut_down(SHADOW_SHUTDOWN).await;
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(shared)
    })?;
    // Requests the drain timeout cut off are dropped with the runtime, and
    // logged then (as 499s): their lines too are written before exiting.
    drop(runtime);
    strangler::access_log::flush_this_thread();
    if let Some(log) = &shared.table.load().access_log {
        log.sink().flushed_blocking(server::ACCESS_LOG_FLUSH_WAIT);
    }
    Ok(())
}

/// After the drain: how long the shadow has to compare the copies still in
/// flight and write their records (diff log, store) before the process
/// exits. A copy that takes longer is lost, and the log says so.
const SHADOW_SHUTDOWN: Duration = Duration::from_secs(5);

/// Before listening: the rollouts' stored progress, so a restarted instance
/// serves the fleet's weights from its first request. Without the state,
/// each rollout starts on its first step (the pilot keeps trying).
async fn restore_rollouts(shared: &std::sync::Arc<Shared>, config: &std::path::Path) {
    match strangler::autopilot::restore(shared).await {
        Ok(()) if !shared.rollouts.load().is_empty() => {
            reload::Reloader::new(config.to_path_buf(), shared.clone()).reapply(reload::ROLLOUT_TRIGGER);
        }
        Ok(()) => {}
        Err(e) => tracing::warn!(error = %e, "rollout state unreadable at start; rollouts start on their first step"),
    }
}

/// TLS on the main listener, the certificate watcher, and the optional plain listener.
type TlsParts =
    (Option<std::sync::Arc<rustls::ServerConfig>>, Option<server::PlainListener>, Option<Box<dyn std::any::Any>>);

async fn start_tls(shared: &Shared, https_port: u16, poll_interval: Duration) -> anyhow::Result<TlsParts> {
    let Some(tls) = shared.table.load().raw.tls.clone() else { return Ok((None, None, None)) };
    let resolver =
        strangler::tls::CertResolver::load(&tls, &shared.metrics).map_err(|e| anyhow::anyhow!("tls: {e}"))?;
    let watch = resolver.watch(poll_interval).map(|w| Box::new(w) as Box<dyn std::any::Any>);
    let plain = match &tls.plain_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (plain)"))?;
            tracing::info!(plain = %listener.local_addr()?, redirect_https = tls.redirect_https, "plain HTTP listener");
            Some(server::PlainListener { listener, redirect_to_port: tls.redirect_https.then_some(https_port) })
        }
        None => None,
    };
    Ok((Some(resolver.server_config()), plain, watch))
}

fn spawn_sighup(trigger: std::sync::Arc<tokio::sync::Notify>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            trigger.notify_one();
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
}
