//! A downstream connection's timeout policy, in one place: how long a
//! request head may take, how long a connection may idle, how long a TLS
//! handshake and a drain may take. [`Deadlines`] is built once per run from
//! the [`ServeOptions`]; our own HTTP/1.1 loop (`h1`) and the connections
//! hyper serves (`connection`) both take their timeouts from it.
//!
//! hyper has one timer for HTTP/1.1 heads and idling, and none for an idle
//! HTTP/2 connection: [`FirstHeadDeadline`] and [`idle_for`] (over a
//! [`RequestCount`]) give those connections the same policy as ours.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ServeOptions;

/// A TLS handshake must finish within this time.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);
/// How long a refused head's connection is read (and what arrives thrown
/// away) before it closes.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Every timeout of a downstream connection. `Copy`, and read through the
/// worker's shared state: a connection's task does not hold its own copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// A request head must arrive whole within this time: from its first
    /// read on our loop, from the connection's start for hyper's first head,
    /// and for the first bytes that tell the protocol.
    pub header_read: Duration,
    /// A connection idle between requests (HTTP/2: starting no stream) for
    /// this long is closed.
    pub keepalive: Duration,
    /// How long in-flight requests may take to finish once draining starts.
    pub drain: Duration,
    /// A TLS handshake must finish within this time.
    pub tls_handshake: Duration,
    /// After a refused head's answer, how long the connection is read before
    /// it closes, so that the close does not turn into a reset that could
    /// destroy the answer.
    pub refusal_linger: Duration,
}

impl Deadlines {
    /// The policy `options` asks for.
    pub fn new(options: &ServeOptions) -> Self {
        Deadlines {
            header_read: options.header_read_timeout,
            keepalive: options.keepalive_timeout,
            drain: options.drain_timeout,
            tls_handshake: TLS_HANDSHAKE,
            refusal_linger: REFUSAL_LINGER,
        }
    }

    /// hyper's HTTP/1.1 header timer. It runs while a connection idles too,
    /// so it is also the idle limit: the longer of the two, with
    /// [`Deadlines::first_head`] keeping the first head to the header timeout.
    pub fn hyper_header_timer(&self) -> Duration {
        self.header_read.max(self.keepalive)
    }

    /// `inner` under the header timeout until its first request (see
    /// [`FirstHeadDeadline`]), and the count its service is to keep.
    pub fn first_head<S>(&self, inner: S, ends: FirstRequest) -> (FirstHeadDeadline<S>, Arc<RequestCount>) {
        FirstHeadDeadline::counted(inner, ends, self.header_read)
    }
}

/// What ends a connection's wait for its first request.
pub(crate) enum FirstRequest {
    /// A complete request head: its service is called (HTTP/1.1).
    Head,
    /// The first byte: HTTP/2 has no heads of its own to wait for.
    Byte,
}

/// Requests a hyper-served connection has started, counted by its service
/// as each head completes. The first ends the first-head deadline
/// (HTTP/1.1), and a count that stops moving is an idle connection (HTTP/2,
/// whose connections hyper never closes for idling).
#[derive(Default)]
pub(crate) struct RequestCount(AtomicU64);

impl RequestCount {
    /// Called by the service as a request's head completes.
    pub fn started(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Resolves once no request has started for `timeout` (checked every half
/// of it, so after between 1 and 1.5 times it); never without `idle`.
pub(crate) async fn idle_for(idle: Option<(Arc<RequestCount>, Duration)>) {
    let Some((requests, timeout)) = idle else { return std::future::pending().await };
    let half = (timeout / 2).max(Duration::from_millis(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
    // The counts seen one and two ticks ago.
    let mut seen = [requests.get(), requests.get()];
    loop {
        tick.tick().await;
        let now = requests.get();
        if now == seen[0] && now == seen[1] {
            return;
        }
        seen = [now, seen[0]];
    }
}

/// Fails a connection's reads once its deadline passes before its first
/// request head is complete (HTTP/1.1: the service was called, which
/// `head_seen` records) or, without `head_seen` (HTTP/2), before its first
/// byte. hyper's own header timer is set to the keep-alive timeout when that
/// is longer (hyper starts it when a connection turns idle, so it is also the
/// idle limit); this keeps the first head to the shorter header timeout.
pub(crate) struct FirstHeadDeadline<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    head_seen: Option<Arc<RequestCount>>,
}

impl<S> FirstHeadDeadline<S> {
    /// `inner` under the deadline, and the count its service is to keep:
    /// HTTP/1.1's first head ends when the count moves; HTTP/2, which has no
    /// heads of its own to wait for, needs only a first byte.
    fn counted(inner: S, ends: FirstRequest, timeout: Duration) -> (Self, Arc<RequestCount>) {
        let requests = Arc::new(RequestCount::default());
        let head_seen = matches!(ends, FirstRequest::Head).then(|| requests.clone());
        let deadline = Some(Box::pin(tokio::time::sleep(timeout)));
        (FirstHeadDeadline { inner, deadline, head_seen }, requests)
    }

    fn first_head_done(&self, read_bytes: bool) -> bool {
        match &self.head_seen {
            Some(requests) => requests.get() > 0,
            None => read_bytes,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstHeadDeadline<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.deadline.is_some() {
            let read_bytes = matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before;
            if self.first_head_done(read_bytes) {
                self.deadline = None;
            } else if polled.is_pending() && self.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready()) {
                return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstHeadDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn deadlines(header_read: Duration, keepalive: Duration) -> Deadlines {
        let options =
            ServeOptions { header_read_timeout: header_read, keepalive_timeout: keepalive, ..ServeOptions::default() };
        Deadlines::new(&options)
    }

    #[test]
    fn hypers_one_header_timer_is_the_longer_of_the_header_and_keepalive_timeouts() {
        let secs = Duration::from_secs;
        assert_eq!(deadlines(secs(10), secs(75)).hyper_header_timer(), secs(75));
        assert_eq!(deadlines(secs(30), secs(5)).hyper_header_timer(), secs(30));
    }

    #[tokio::test]
    async fn a_first_head_that_does_not_come_in_time_fails_the_read() {
        let (_client, server) = tokio::io::duplex(64);
        let policy = deadlines(Duration::from_millis(50), Duration::from_secs(75));
        let (mut guarded, _requests) = policy.first_head(server, FirstRequest::Head);
        let read = guarded.read(&mut [0u8; 8]).await;
        assert_eq!(read.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_counted_request_ends_the_first_head_deadline() {
        let (mut client, server) = tokio::io::duplex(64);
        let policy = deadlines(Duration::from_millis(50), Duration::from_secs(75));
        let (mut guarded, requests) = policy.first_head(server, FirstRequest::Head);
        requests.started();
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            guarded.read(&mut buf).await.map(|n| buf[..n].to_vec())
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.write_all(b"late").await.unwrap();
        assert_eq!(reading.await.unwrap().unwrap(), b"late");
    }

    #[tokio::test]
    async fn a_connection_is_idle_a_whole_timeout_after_its_last_request() {
        let requests = Arc::new(RequestCount::default());
        let idle = tokio::spawn(idle_for(Some((requests.clone(), Duration::from_millis(100)))));
        tokio::time::sleep(Duration::from_millis(10)).await;
        requests.started();
        let last = tokio::time::Instant::now();
        idle.await.unwrap();
        assert!(last.elapsed() >= Duration::from_millis(100), "idle after {:?}", last.elapsed());
    }
}
