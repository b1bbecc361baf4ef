//! Spreading connections over the workers by how many each already serves.
//!
//! Each worker accepts from its own `SO_REUSEPORT` socket, and the kernel
//! picks the socket by a hash of the connection's addresses. With a few
//! dozen long-lived keep-alive connections that hash is uneven: 32
//! connections split 19/13 as often as 16/16, and the busier worker's queue
//! sets the tail latency (measured here: one worker doing 62% of the work in
//! one run of five). So a worker that accepts a connection while another
//! worker serves fewer hands it over, as Envoy's `exact_balance` does.
//!
//! Off by default (`--connection-balance exact` turns it on), as in Envoy:
//! a hand-off moves the socket between two reactors and wakes the other
//! thread, and with one request per connection that cost 16% of the
//! throughput here, while on 2 cores the even split did not change p99.
//! It pays where a few long-lived connections meet many cores. Either way,
//! `strangler_worker_connections` ([`ConnectionsMetric`]) shows how the
//! connections are spread. Worker 0's count includes the connections of the
//! plain listener beside a TLS one, which are never handed over.
//!
//! A worker's count is the number of its connections' [`Drain`]s: each
//! connection holds one for exactly its life, and it is made before the
//! hand-off, so a burst of accepts sees the connections still on their way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts, Registry};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::drain::{Drain, Signal};

/// A connection on its way to another worker, with its place in that
/// worker's drain.
pub(crate) type Handoff = (std::net::TcpStream, Drain);

/// One worker as the others see it.
pub(crate) struct Lane {
    /// Asks this worker's connections to finish and close; its count of
    /// live [`Drain`]s is the worker's live connections.
    pub drain: Arc<Signal>,
    /// Where other workers hand connections to this one (`None`: no balancing).
    inbox: Option<mpsc::UnboundedSender<Handoff>>,
    /// Set when the worker starts serving: a worker whose thread never
    /// started takes no hand-offs and is not in the metric.
    started: AtomicBool,
}

impl Lane {
    /// Called by the worker as it starts serving.
    pub fn start(&self) {
        self.started.store(true, Ordering::Release);
    }

    fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Started, balancing, and its inbox not yet closed.
    fn takes_handoffs(&self) -> bool {
        self.started() && self.inbox.as_ref().is_some_and(|inbox| !inbox.is_closed())
    }
}

/// The lanes of `workers` workers, and the inboxes each worker reads
/// (`None` when connections are not balanced).
pub(crate) fn lanes(workers: usize, balance: bool) -> (Vec<Lane>, Vec<Option<mpsc::UnboundedReceiver<Handoff>>>) {
    (0..workers)
        .map(|_| {
            let drain = Arc::new(Signal::default());
            let (inbox, receiver) = if balance {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            (Lane { drain, inbox, started: AtomicBool::new(false) }, receiver)
        })
        .unzip()
}

/// Where a connection accepted by worker `me` is served.
pub(crate) enum Placement {
    /// Here, with its place in this worker's drain.
    Here(TcpStream, Drain),
    /// Handed to another worker; or closed, when the socket could not be
    /// moved between reactors (logged).
    Elsewhere,
}

/// Places a connection that worker `me` accepted: on the worker with the
/// fewest live connections, unless this one has about as few.
pub(crate) fn place(lanes: &[Lane], me: usize, stream: TcpStream) -> Placement {
    if lanes[me].inbox.is_none() {
        // Not balancing: no counting either.
        return Placement::Here(stream, lanes[me].drain.subscribe());
    }
    let target = least_loaded(lanes, me);
    let inbox = match &lanes[target].inbox {
        Some(inbox) if target != me => inbox,
        _ => return Placement::Here(stream, lanes[me].drain.subscribe()),
    };
    let drain = lanes[target].drain.subscribe();
    // Out of this worker's reactor, into the other's when it arrives.
    let std = match stream.into_std() {
        Ok(std) => std,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand a connection over; closing it");
            return Placement::Elsewhere;
        }
    };
    match inbox.send((std, drain)) {
        Ok(()) => Placement::Elsewhere,
        // That worker has stopped: serve it here.
        Err(mpsc::error::SendError((std, _))) => match TcpStream::from_std(std) {
            Ok(stream) => Placement::Here(stream, lanes[me].drain.subscribe()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a connection back; closing it");
                Placement::Elsewhere
            }
        },
    }
}

/// The lane with the fewest live connections among the workers still
/// taking hand-offs, if it has at least two fewer than `me` (a difference of
/// one is not worth a hand-off); else `me`.
fn least_loaded(lanes: &[Lane], me: usize) -> usize {
    let mine = lanes[me].drain.live();
    let (fewest, lane) = lanes
        .iter()
        .enumerate()
        .filter(|(i, lane)| *i == me || lane.takes_handoffs())
        .map(|(i, lane)| (lane.drain.live(), i))
        .min()
        .unwrap_or((mine, me));
    if fewest + 1 < mine {
        lane
    } else {
        me
    }
}

/// The next connection handed to this worker; never resolves without an inbox.
pub(crate) async fn handed_over(inbox: Option<&mut mpsc::UnboundedReceiver<Handoff>>) -> Handoff {
    match inbox {
        Some(inbox) => match inbox.recv().await {
            Some(handoff) => handoff,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// `strangler_worker_connections{worker}`: each started worker's open
/// connections, read when the metrics are scraped (one atomic load per
/// worker), so that ops can see whether the workers share the load.
struct ConnectionsCollector {
    /// Weak: the registry outlives a server run.
    lanes: Weak<Vec<Lane>>,
    gauges: IntGaugeVec,
}

impl ConnectionsCollector {
    fn new(lanes: Weak<Vec<Lane>>) -> Self {
        let opts = Opts::new("strangler_worker_connections", "Open client connections by worker thread.");
        ConnectionsCollector { lanes, gauges: IntGaugeVec::new(opts, &["worker"]).expect("a valid metric") }
    }
}

impl Collector for ConnectionsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(lanes) = self.lanes.upgrade() else { return Vec::new() };
        for (i, lane) in lanes.iter().enumerate().filter(|(_, lane)| lane.started()) {
            self.gauges.with_label_values(&[&i.to_string()]).set(lane.drain.live() as i64);
        }
        self.gauges.collect()
    }
}

/// `strangler_worker_connections`, registered for as long as this lives.
pub(crate) struct ConnectionsMetric {
    registry: Registry,
}

impl ConnectionsMetric {
    pub fn register(registry: &Registry, lanes: &Arc<Vec<Lane>>) -> Option<Self> {
        match registry.register(Box::new(ConnectionsCollector::new(Arc::downgrade(lanes)))) {
            Ok(()) => Some(ConnectionsMetric { registry: registry.clone() }),
            Err(e) => {
                tracing::warn!(error = %e, "strangler_worker_connections is not exported");
                None
            }
        }
    }
}

impl Drop for ConnectionsMetric {
    fn drop(&mut self) {
        // Unregistered by its description, which any instance shares.
        let _ = self.registry.unregister(Box::new(ConnectionsCollector::new(Weak::new())));
    }
}
