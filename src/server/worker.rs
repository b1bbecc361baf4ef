//! The workers: one accept loop per core, each on its own thread and
//! single-threaded runtime (worker 0 on the caller's), so that a connection,
//! its requests and its upstream connections stay on one core. On shutdown a
//! worker stops accepting and drains its connections.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;

use super::balance;
use super::connection::{Connections, Kind};
use super::listen::worker_socket;
use super::ServeOptions;
use crate::access_log;
use crate::Shared;

/// The accept loops of one run, shared by its worker threads (each serves
/// as the worker of its index).
pub(super) struct Worker {
    /// What every connection shares, behind its own `Arc` so that an idle
    /// connection holds a pointer, not the builders.
    connections: Arc<Connections>,
    shared: Arc<Shared>,
    /// Each worker's drain and inbox, by worker index.
    pub lanes: Arc<Vec<balance::Lane>>,
}

impl Worker {
    pub fn new(options: &ServeOptions, shared: Arc<Shared>, lanes: Vec<balance::Lane>) -> Self {
        Worker { connections: Arc::new(Connections::new(options, shared.clone())), shared, lanes: Arc::new(lanes) }
    }

    /// Accepts until `stop` resolves, then drains this worker's connections.
    /// `me` is this worker's index; `inbox` brings the connections other
    /// workers hand over.
    pub async fn serve(
        &self,
        me: usize,
        mut inbox: Option<UnboundedReceiver<balance::Handoff>>,
        (listener, kind): (TcpListener, Kind),
        plain: Option<(TcpListener, Kind)>,
        stop: impl Future<Output = ()>,
    ) {
        // Each connection holds a `Drain` of this: `start()` asks it to
        // finish its request and close; `drained()` is "all gone".
        let lane = &self.lanes[me];
        let drain = &lane.drain;
        lane.start();
        // Pools are per thread: this worker's own sweeper closes its idle
        // connections past their idle timeout or to targets that left the config.
        let sweeper = tokio::spawn(crate::client::sweep_idle_pools());
        // Access-log lines are buffered per thread: this worker's own timer
        // writes out those of an idle moment.
        let shared = self.shared.clone();
        let flusher = tokio::spawn(access_log::flush_periodically(move || flush_interval(&shared)));
        let plain_kind = plain.as_ref().map_or(Kind::Proxy { tls: None }, |(_, k)| k.clone());
        let plain_listener = plain.map(|(l, _)| l);
        let connections = &self.connections;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => match balance::place(&self.lanes, me, stream) {
                        balance::Placement::Here(stream, drain) => connections.serve(drain, stream, kind.clone()),
                        balance::Placement::Elsewhere => {}
                    },
                    Err(e) => accept_failed(e).await,
                },
                accepted = accept_optional(plain_listener.as_ref()) => match accepted {
                    Ok((stream, _)) => connections.serve(drain.subscribe(), stream, plain_kind.clone()),
                    Err(e) => accept_failed(e).await,
                },
                handoff = balance::handed_over(inbox.as_mut()) => self.take_over(handoff, &kind),
            }
        }
        // Connections handed over from now on are served where they were
        // accepted; those already on their way (sends in progress included:
        // `recv` waits for them) are served here.
        if let Some(inbox) = &mut inbox {
            inbox.close();
            while let Some(handoff) = inbox.recv().await {
                self.take_over(handoff, &kind);
            }
        }
        drop(listener);
        drop(plain_listener);
        tracing::info!(connections = drain.live(), "draining");
        drain.start();
        tokio::select! {
            _ = drain.drained() => tracing::info!("drained"),
            _ = tokio::time::sleep(connections.settings.deadlines.drain) => tracing::warn!("drain timeout reached; closing the remaining connections"),
        }
        sweeper.abort();
        flusher.abort();
        access_log::flush_this_thread();
    }

    /// Serves a connection another worker handed over, in this worker's reactor.
    fn take_over(&self, (stream, drain): balance::Handoff, kind: &Kind) {
        match TcpStream::from_std(stream) {
            Ok(stream) => self.connections.serve(drain, stream, kind.clone()),
            Err(e) => tracing::warn!(error = %e, "cannot take a connection over; closing it"),
        }
    }
}

/// How long an access-log line may wait in a worker's buffer, as the table
/// in force says.
fn flush_interval(shared: &Shared) -> Duration {
    shared.table.load().access_log.as_ref().map_or(Duration::from_secs(1), |log| log.flush_interval())
}

/// Out of file descriptors and the like: back off, keep serving.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn accept_optional(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Starts a worker for each inbox after the first (the calling runtime is
/// worker 0); each signals when it has drained.
pub(super) fn spawn_workers(
    worker: &Arc<Worker>,
    listener: &TcpListener,
    kind: &Kind,
    inboxes: &mut [Option<UnboundedReceiver<balance::Handoff>>],
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::sync::oneshot::Receiver<()>> {
    let mut done = Vec::new();
    for (i, inbox) in inboxes.iter_mut().enumerate().skip(1) {
        let socket = match worker_socket(listener) {
            Ok(socket) => socket,
            Err(e) => {
                tracing::error!(error = %e, "cannot open a listener for another worker; serving with fewer");
                break;
            }
        };
        let (worker, kind, mut stopped, inbox) = (worker.clone(), kind.clone(), stopped.clone(), inbox.take());
        let (finished, finished_rx) = tokio::sync::oneshot::channel();
        let started = std::thread::Builder::new().name(format!("strangler-worker-{i}")).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                Ok(runtime) => runtime.block_on(async move {
                    match TcpListener::from_std(socket) {
                        Ok(listener) => {
                            let stop = async move {
                                let _ = stopped.wait_for(|stop| *stop).await;
                            };
                            worker.serve(i, inbox, (listener, kind), None, stop).await
                        }
                        Err(e) => tracing::error!(error = %e, "worker cannot use its listener"),
                    }
                }),
                Err(e) => tracing::error!(error = %e, "cannot start a worker runtime"),
            }
            // Lines of requests dropped with the runtime (past the drain timeout).
            access_log::flush_this_thread();
            let _ = finished.send(());
        });
        match started {
            Ok(_) => done.push(finished_rx),
            Err(e) => tracing::error!(error = %e, "cannot start a worker thread; serving with fewer"),
        }
    }
    done
}
