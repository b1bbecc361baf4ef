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
//! `strangler_worker_connections` ([`ConnectionsCollector`]) shows how the
//! connections are spread.
//!
//! A worker's count is the number of its connections' drain receivers
//! ([`Drain`]): each connection holds one for exactly its life, and the
//! receiver is made before the hand-off, so a burst of accepts sees the
//! connections still on their way.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::Drain;

/// A connection on its way to another worker, with its place in that
/// worker's drain.
pub(crate) type Handoff = (std::net::TcpStream, Drain);

/// One worker as the others see it.
pub(crate) struct Lane {
    /// `true` asks this worker's connections to finish and close; its
    /// receiver count is the worker's live connections.
    pub drain: watch::Sender<bool>,
    /// Where other workers hand connections to this one (`None`: no balancing).
    inbox: Option<mpsc::UnboundedSender<Handoff>>,
}

/// The lanes of `workers` workers, and the inboxes each worker reads
/// (`None` when connections are not balanced).
pub(crate) fn lanes(workers: usize, balance: bool) -> (Vec<Lane>, Vec<Option<mpsc::UnboundedReceiver<Handoff>>>) {
    (0..workers)
        .map(|_| {
            let (drain, _) = watch::channel(false);
            let (inbox, receiver) = if balance {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            (Lane { drain, inbox }, receiver)
        })
        .unzip()
}

/// Where a connection accepted by worker `me` is served.
pub(crate) enum Placement {
    /// Here, with its place in this worker's drain.
    Here(TcpStream, Drain),
    /// Handed to another worker.
    Elsewhere,
}

/// Places a connection that worker `me` accepted: on the worker with the
/// fewest live connections, unless this one has about as few.
pub(crate) fn place(lanes: &[Lane], me: usize, stream: TcpStream) -> Placement {
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
            Err(_) => Placement::Elsewhere,
        },
    }
}

/// The lane with the fewest live connections among the workers still
/// taking hand-offs, if it has at least two fewer than `me` (a difference of
/// one is not worth a hand-off); else `me`.
fn least_loaded(lanes: &[Lane], me: usize) -> usize {
    let mine = lanes[me].drain.receiver_count();
    let open = |lane: &Lane| lane.inbox.as_ref().is_some_and(|inbox| !inbox.is_closed());
    let (fewest, lane) = lanes
        .iter()
        .enumerate()
        .filter(|(i, lane)| *i == me || open(lane))
        .map(|(i, lane)| (lane.drain.receiver_count(), i))
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

/// `strangler_worker_connections{worker}`: each worker's open connections,
/// read when the metrics are scraped (one atomic load per worker), so that
/// ops can see whether the workers share the load.
pub(crate) struct ConnectionsCollector<W> {
    worker: std::sync::Weak<W>,
    lanes: fn(&W) -> &[Lane],
    gauges: IntGaugeVec,
}

impl<W: Send + Sync> ConnectionsCollector<W> {
    /// Weak, so that the registry (which outlives a server run) does not
    /// keep the workers alive.
    pub fn new(worker: &std::sync::Arc<W>, lanes: fn(&W) -> &[Lane]) -> Self {
        let opts = Opts::new("strangler_worker_connections", "Open client connections by worker thread.");
        let gauges = IntGaugeVec::new(opts, &["worker"]).expect("a valid metric");
        ConnectionsCollector { worker: std::sync::Arc::downgrade(worker), lanes, gauges }
    }
}

impl<W: Send + Sync> Collector for ConnectionsCollector<W> {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(worker) = self.worker.upgrade() else { return Vec::new() };
        for (i, lane) in (self.lanes)(&worker).iter().enumerate() {
            self.gauges.with_label_values(&[&i.to_string()]).set(lane.drain.receiver_count() as i64);
        }
        self.gauges.collect()
    }
}
