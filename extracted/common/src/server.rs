//! Logging, signals and the HTTP server runner.

use std::future::Future;
use tokio::net::TcpListener;

/// Structured logs to stderr; `json` selects JSON lines. `RUST_LOG` overrides the level.
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Serve `router` on `listener` until `shutdown` resolves (graceful: in-flight requests finish).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// A service's whole life: serve `router` until SIGTERM/SIGINT, then stop
/// its change-feed follower (if any) once in-flight requests are done.
pub async fn serve_until_signal(
    name: &str,
    listener: TcpListener,
    router: axum::Router,
    sync: Option<crate::sync::SyncHandle>,
) -> std::io::Result<()> {
    tracing::info!(sync = sync.is_some(), "{name} service starting");
    serve(listener, router, shutdown_signal()).await?;
    if let Some(sync) = sync {
        sync.stop().await;
    }
    tracing::info!("{name} service stopped");
    Ok(())
}
