//! The proxy listener: accepts connections, serves HTTP/1.1 and HTTP/2
//! (prior knowledge) on each, and drains them on shutdown. HTTP/1.1
//! requests without a body, plain or over TLS, are served by our own loop
//! ([`h1`]); hyper serves the rest (bodies, upgrades, HTTP/2).
//!
//! One job per file:
//! - `listen`: the listening sockets ([`bind`]; `SO_REUSEPORT` per worker).
//! - `worker`: the per-core accept loops, and draining their connections.
//! - `balance`: optionally hands new connections between workers.
//! - `connection`: one connection's life: protocol sniffing, TLS, our loop
//!   or hyper, the hand-off from one to the other, the HTTPS redirect.
//! - [`h1`]: our own HTTP/1.1 loop (the bytes are parsed by [`crate::wire`]).
//! - `downstream`: what the loop needs of a client's connection, plain TCP
//!   or TLS (how it waits for a request and reads one without waiting).
//! - `deadline`: a connection's timeout policy (header read, keep-alive,
//!   drain, TLS handshake), in one type that both our loop and hyper take
//!   their timeouts from.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::Shared;
use connection::Kind;
use worker::Worker;

mod balance;
mod connection;
mod deadline;
mod downstream;
mod drain;
pub mod h1;
mod listen;
mod worker;

pub use listen::bind;

/// Listener settings that are fixed for the life of the process.
pub struct ServeOptions {
    /// A client must send a complete request head within this time: a
    /// connection's first from its start, later ones from their first byte
    /// (our loop and hyper alike; hyper's own timer, which also counts the
    /// idle time before a head, is set to the longer `keepalive_timeout`).
    pub header_read_timeout: Duration,
    /// A connection idle between requests for this long is closed (nginx's
    /// `keepalive_timeout`, 75 s by default; keep it above the idle timeout
    /// of a load balancer in front, or it may send a request on a connection
    /// just as it is closed). HTTP/2: no new stream for this long.
    pub keepalive_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: Duration,
    /// Largest request head accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// TLS on the main listener.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// An extra plain-HTTP listener (with TLS on the main one).
    pub plain: Option<PlainListener>,
    /// Accept loops, each on its own thread and single-threaded runtime.
    pub workers: usize,
    /// Serve bodiless HTTP/1.1 requests (plain or TLS) with our own loop
    /// ([`h1`]; hyper takes a connection at its first other request).
    /// Off: hyper serves every request.
    pub inline_http1: bool,
    /// With several workers, hand a new connection to the worker with the
    /// fewest open connections (`balance`). Off (the default): the kernel's
    /// `SO_REUSEPORT` hash alone decides.
    pub balance_connections: bool,
}

/// A plain-HTTP listener beside the TLS one.
pub struct PlainListener {
    pub listener: TcpListener,
    /// Answer every request with a redirect to HTTPS on this port instead of proxying.
    pub redirect_to_port: Option<u16>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            tls: None,
            plain: None,
            workers: 1,
            inline_http1: true,
            balance_connections: false,
        }
    }
}

/// Serves the proxy and admin listeners until `shutdown` resolves, then turns
/// readiness false, stops accepting, waits for in-flight requests (up to
/// the drain timeout), and writes out the access log's buffered lines.
///
/// With `workers > 1`, each extra worker is a thread with its own
/// single-threaded runtime and its own accept loop on the same port (a
/// `SO_REUSEPORT` socket when the main one is, else a shared duplicate), so a
/// connection, its requests and its upstream connections stay on one core.
/// Admin, health checks and config reloads run on the calling runtime.
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
    let table = shared.table.load_full();
    crate::health::spawn_for(&table);
    if table.wants_shadow_log() {
        shared.shadow.start_background();
    }
    drop(table);
    let workers = options.workers.max(1);
    let (lanes, mut inboxes) = balance::lanes(workers, options.balance_connections && workers > 1);
    let worker = Arc::new(Worker::new(&options, shared.clone(), lanes));
    // For this run only: a registry outlives the server in tests.
    let _connections = balance::ConnectionsMetric::register(&shared.metrics.registry, &worker.lanes);
    let main_kind = Kind::Proxy { tls: options.tls.clone().map(tokio_rustls::TlsAcceptor::from) };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let extra = worker::spawn_workers(&worker, &proxy_listener, &main_kind, &mut inboxes, stopped);
    let plain = options.plain.map(|p| {
        let kind = match p.redirect_to_port {
            Some(port) => Kind::Redirect { port },
            None => Kind::Proxy { tls: None },
        };
        (p.listener, kind)
    });
    // Inboxes of workers that did not start are dropped here, so that no
    // connection is handed to them.
    let own_inbox = inboxes[0].take();
    drop(inboxes);
    worker
        .serve(0, own_inbox, (proxy_listener, main_kind), plain, async {
            shutdown.await;
            shared.draining.store(true, Ordering::SeqCst);
            let _ = stop.send(true);
        })
        .await;
    for done in extra {
        let _ = done.await;
    }
    let _ = admin_stop.send(());
    let _ = admin.await;
    flush_access_log(&shared).await;
}

/// Once every worker has drained and handed its access-log lines over:
/// waits (a while) until they are written.
async fn flush_access_log(shared: &Shared) {
    crate::access_log::flush_this_thread();
    if let Some(log) = &shared.table.load().access_log {
        if !log.sink().flushed(ACCESS_LOG_FLUSH_WAIT).await {
            tracing::warn!("access log: the last lines were not written in time");
        }
    }
}

/// How long a stopping server waits for its last access-log lines to be written.
pub const ACCESS_LOG_FLUSH_WAIT: Duration = Duration::from_secs(5);
