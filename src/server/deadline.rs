//! A downstream connection's timeout policy, in one place: how long a
//! request head may take, how long a connection may idle, how long a TLS
//! handshake and a drain may take. [`Deadlines`] is built once per run from
//! the [`ServeOptions`]; our own HTTP/1.1 loop (`h1`) and the connections
//! hyper serves (`connection`) both take their timeouts from it.
//!
//! hyper has one timer for HTTP/1.1 heads and idling, and none for an idle
//! HTTP/2 connection: [`HeadDeadline`] (every head within the header
//! timeout, from its first byte) and [`idle_for`] (over a [`RequestCount`])
//! give those connections the same policy as ours.

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
    /// read on our loop, from the connection's start for hyper's first head
    /// and from their first byte for its later ones, and for the first bytes
    /// that tell the protocol.
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
    /// [`HeadDeadline`] keeping every head to the header timeout.
    pub fn hyper_header_timer(&self) -> Duration {
        self.header_read.max(self.keepalive)
    }

    /// `inner` under the header timeout from now until its first request,
    /// and (HTTP/1.1) from the first byte of each later head (see
    /// [`HeadDeadline`]); and the count its service is to keep.
    pub fn first_head<S>(&self, inner: S, ends: FirstRequest) -> (HeadDeadline<S>, Arc<RequestCount>) {
        HeadDeadline::counted(inner, ends, self.header_read, true)
    }

    /// `inner`, an HTTP/1.1 connection our loop hands over with a head
    /// already read, under the header timeout from the first byte of each
    /// head (see [`HeadDeadline`]); and the count its service is to keep.
    pub fn later_heads<S>(&self, inner: S) -> (HeadDeadline<S>, Arc<RequestCount>) {
        HeadDeadline::counted(inner, FirstRequest::Head, self.header_read, false)
    }
}

/// What ends a connection's wait for its first request.
pub(crate) enum FirstRequest {
    /// A complete request head: its service is called (HTTP/1.1).
    Head,
    /// The first byte: HTTP/2 has no heads of its own to wait for.
    Byte,
}

/// Requests a hyper-served connection has started (counted by its service
/// as each head completes) and answered (counted as hyper drops each
/// answer's body, once it is sent). A start ends a head's deadline
/// (HTTP/1.1); started and answered alike means the connection waits for
/// its next head; a start count that stops moving is an idle connection
/// (HTTP/2, whose connections hyper never closes for idling).
#[derive(Default)]
pub(crate) struct RequestCount {
    started: AtomicU64,
    answered: AtomicU64,
}

impl RequestCount {
    /// Called by the service as a request's head completes.
    pub fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// Called when a request's answer has gone out (its body is dropped).
    /// Not for a `101`: a tunnel follows, not another head.
    pub fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// No request is being read or answered: the next bytes start a head.
    fn between_requests(&self) -> bool {
        self.answered.load(Ordering::Relaxed) == self.get()
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

/// Fails a connection's reads once a request head it waits for has not
/// arrived whole within the header timeout. hyper has one timer for a head
/// and the idle time before it (set to the longer keep-alive timeout, so it
/// is the idle limit); this keeps each head to the shorter header timeout.
///
/// HTTP/1.1 (with `head_seen`): the first head's deadline may run from the
/// connection's start; every later one starts with the first byte read
/// while no request is open (between an answer and the next head, so an
/// idle connection is not hurried), and ends when the service is called.
/// Not after a `101`: the bytes that follow are a tunnel's. HTTP/2 (without
/// `head_seen`, no heads of its own): only the first byte is awaited.
///
/// One approximation: bytes of a request body still arriving after its
/// answer has gone out count as the next head's (the upload must then end
/// within the header timeout).
pub(crate) struct HeadDeadline<S> {
    inner: S,
    timeout: Duration,
    /// The timer, made at the first head that needs it and reset for later ones.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A head is awaited under `deadline`.
    running: bool,
    /// The start count when the deadline was set: the head is whole once it moves.
    set_at: u64,
    head_seen: Option<Arc<RequestCount>>,
}

impl<S> HeadDeadline<S> {
    /// `inner` under the deadline (running from now if `from_start`), and
    /// the count its service is to keep: HTTP/1.1's heads end when the count
    /// moves; HTTP/2 needs only a first byte.
    fn counted(inner: S, ends: FirstRequest, timeout: Duration, from_start: bool) -> (Self, Arc<RequestCount>) {
        let requests = Arc::new(RequestCount::default());
        let head_seen = matches!(ends, FirstRequest::Head).then(|| requests.clone());
        let deadline = from_start.then(|| Box::pin(tokio::time::sleep(timeout)));
        (HeadDeadline { inner, timeout, deadline, running: from_start, set_at: 0, head_seen }, requests)
    }

    /// Notes what a read brought: a head completed (the count moved), or
    /// the first byte of a head that now has a deadline.
    fn after_read(&mut self, read_bytes: bool) {
        let Some(requests) = &self.head_seen else {
            // HTTP/2: the first byte is all there is to wait for.
            self.running &= !read_bytes;
            return;
        };
        if self.running {
            self.running = requests.get() == self.set_at;
        } else if read_bytes && requests.between_requests() {
            self.set_at = requests.get();
            self.running = true;
            let until = tokio::time::Instant::now() + self.timeout;
            match &mut self.deadline {
                Some(deadline) => deadline.as_mut().reset(until),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(until))),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadDeadline<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read_bytes = matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before;
        self.after_read(read_bytes);
        if self.running && polled.is_pending() && self.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready())
        {
            self.running = false;
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadDeadline<S> {
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
    async fn a_later_head_has_the_header_timeout_from_its_first_byte_and_an_idle_connection_none() {
        let (mut client, server) = tokio::io::duplex(64);
        let policy = deadlines(Duration::from_millis(50), Duration::from_secs(75));
        let (mut guarded, requests) = policy.later_heads(server);
        let mut buf = [0u8; 64];
        // Idle: no deadline.
        assert!(tokio::time::timeout(Duration::from_millis(200), guarded.read(&mut buf)).await.is_err());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(guarded.read(&mut buf).await.unwrap() > 0);
        requests.started();
        // A body is read while its request is open: no deadline.
        assert!(tokio::time::timeout(Duration::from_millis(200), guarded.read(&mut buf)).await.is_err());
        requests.answered();
        // Answered: the next head's first byte starts its deadline.
        client.write_all(b"G").await.unwrap();
        assert!(guarded.read(&mut buf).await.unwrap() > 0);
        let read = tokio::time::timeout(Duration::from_secs(5), guarded.read(&mut buf)).await.expect("cut off");
        assert_eq!(read.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
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
