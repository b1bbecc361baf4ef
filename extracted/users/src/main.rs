use clap::{Parser, Subcommand, ValueEnum};
use extracted_common::server::init_logging;
use extracted_common::sync::SyncConfig;
use std::path::PathBuf;
use std::time::Duration;
use users::{app, backfill, open_db, spawn_sync, AppState, DEV_JWT_SECRET};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// users — the users API extracted from the legacy monolith.
#[derive(Parser, Debug)]
#[command(name = "users", version)]
struct Cli {
    /// SQLite database of this service (created if missing).
    #[arg(long, env = "USERS_DB", default_value = "users.db", global = true)]
    db: PathBuf,
    /// Log format on stderr.
    #[arg(long, env = "USERS_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Debug, Clone)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "USERS_LISTEN", default_value = "127.0.0.1:7001")]
    listen: String,
    /// Base URL of the legacy monolith (for the change feed).
    #[arg(long, env = "MONOLITH_URL", default_value = "http://127.0.0.1:5000")]
    monolith_url: String,
    /// Value for the X-Internal-Token header of /internal/events.
    #[arg(long, env = "TASKAPP_INTERNAL_TOKEN", hide_env_values = true)]
    internal_token: Option<String>,
    /// HS256 secret of the monolith's tokens.
    #[arg(long, env = "TASKAPP_JWT_SECRET", default_value = DEV_JWT_SECRET, hide_default_value = true, hide_env_values = true)]
    jwt_secret: String,
    /// Follow the monolith's change feed (true/false).
    #[arg(long, env = "USERS_SYNC", default_value_t = true, action = clap::ArgAction::Set)]
    sync: bool,
    /// Poll interval of the change feed (e.g. 500ms, 2s).
    #[arg(long, env = "USERS_SYNC_INTERVAL", default_value = users::DEFAULT_SYNC_INTERVAL, value_parser = humantime::parse_duration)]
    sync_interval: Duration,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the API (default).
    Serve(ServeArgs),
    /// Copy users from the monolith's SQLite file and set the sync starting point.
    Backfill {
        /// Path of the monolith's SQLite database.
        #[arg(long = "from")]
        from: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(matches!(cli.log_format, LogFormat::Json));
    match cli.cmd {
        Some(Cmd::Backfill { from }) => {
            let mut conn = open_db(&cli.db)?;
            let (n, cursor) = backfill(&mut conn, &from)?;
            tracing::info!(users = n, last_event_id = cursor, db = %cli.db.display(), "backfill done");
            Ok(())
        }
        Some(Cmd::Serve(args)) => serve(cli.db, args).await,
        None => serve(cli.db, cli.serve).await,
    }
}

async fn serve(db_path: PathBuf, args: ServeArgs) -> anyhow::Result<()> {
    if args.jwt_secret == DEV_JWT_SECRET {
        tracing::warn!("TASKAPP_JWT_SECRET is not set: using the insecure development secret");
    }
    let conn = open_db(&db_path)?;
    let state = AppState::new(conn, args.jwt_secret.clone());
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let sync = args.sync.then(|| {
        spawn_sync(&state, SyncConfig::new(args.monolith_url.clone(), args.internal_token.clone(), args.sync_interval))
    });
    tracing::info!(db = %db_path.display(), "opened the database");
    extracted_common::server::serve_until_signal("users", listener, app(state), sync).await?;
    Ok(())
}
