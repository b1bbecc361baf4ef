//! The proxy listener: accepts connections, serves HTTP/1.1 and HTTP/2
//! (prior knowledge) on each, and drains them on shutdown.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::{self, Conn};
use crate::Shared;

/// Listener settings that are fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A client must send a complete request head within this time.
    pub header_read_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Largest request head accepted; larger ones get 431.
    pub max_header_bytes: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
        }
    }
}

/// Serves the proxy and admin listeners until `shutdown` resolves, then turns
/// readiness false, stops accepting, and waits for in-flight requests (up to
/// the drain timeout).
pub async fn run(
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    shared: Arc<Shared>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(crate::admin::serve(admin_listener, shared.clone(), async {
        let _ = admin_stopped.await;
    }));
    crate::health::spawn_for(&shared.table.load());
    if shared.table.load().router.entries().iter().any(|(_, r)| r.shadow.is_some())
        || shared.table.load().raw.shadow.is_some()
    {
        shared.shadow.start_log();
    }
    let builder = connection_builder(&options);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = proxy_listener.accept() => match accepted {
                Ok((stream, _)) => serve_connection(&builder, &graceful, &shared, stream),
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    shared.draining.store(true, Ordering::SeqCst);
    drop(proxy_listener);
    tracing::info!(connections = graceful.count(), "draining");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("drained"),
        _ = tokio::time::sleep(options.drain_timeout) => tracing::warn!("drain timeout reached; closing the remaining connections"),
    }
    let _ = admin_stop.send(());
    let _ = admin.await;
}

fn connection_builder(options: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(options.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);
    builder
}

fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    shared: &Arc<Shared>,
    stream: TcpStream,
) {
    let Ok(remote) = stream.peer_addr() else { return };
    let _ = stream.set_nodelay(true);
    let conn = Arc::new(Conn::new(remote, "http"));
    let shared = shared.clone();
    let service = service_fn(move |req| proxy::handle(shared.clone(), conn.clone(), req));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, %remote, "connection ended with an error");
        }
    });
}
