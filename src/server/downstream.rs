//! What our HTTP/1.1 loop ([`super::h1`]) needs of a client's connection,
//! for both kinds it serves: plain TCP, and TLS over TCP (`tokio-rustls`).
//!
//! The loop itself is written once, over [`ClientIo`]. The two kinds differ
//! in how they wait for a request and read it without waiting: a plain
//! socket waits on its readiness alone and is read with one system call; a
//! TLS connection may hold decrypted bytes that the socket no longer shows,
//! so it is read through rustls, which also answers readiness that carried
//! no request (a TLS record of its own, or nothing at all).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A TLS connection from a client, after its handshake.
pub(crate) type TlsClient = tokio_rustls::server::TlsStream<TcpStream>;

/// How much a TLS connection's first read after an idle wait asks for (on
/// the stack: it is copied out only when something came).
const ARRIVAL_ROOM: usize = 1024;

/// A client's connection as our HTTP/1.1 loop reads and writes it.
pub(crate) trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket underneath, for what only the socket can tell: whether
    /// the client has closed its side, or sent anything at all.
    fn tcp(&self) -> &TcpStream;

    /// Polls, while the connection idles, until the client sends more:
    /// `Ready(Ok(bytes))` with the first bytes when reading them was how to
    /// find out (TLS), else empty (plain: the socket is readable, the loop
    /// reads it next). An error when the connection has ended or failed.
    fn poll_arrival(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<BytesMut>>;

    /// Reads what is already here into `buf`'s spare room, without waiting:
    /// `Pending` when nothing is (the caller then waits, under the header
    /// timeout). `Ok(0)`: the client closed its side.
    fn read_at_once(&mut self, buf: &mut BytesMut) -> Poll<io::Result<usize>>;

    /// Writes all of `bytes`, so that they are on their way to the client
    /// when it returns (over TLS, encrypted and flushed).
    fn send_all<'a>(&'a mut self, bytes: &'a [u8]) -> impl Future<Output = io::Result<()>> + Send + 'a;
}

impl ClientIo for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }

    fn poll_arrival(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<BytesMut>> {
        self.poll_read_ready(cx).map_ok(|()| BytesMut::new())
    }

    /// What polling a read future once with no task to wake would do,
    /// without the future and the task's budget: a read that fills less than
    /// `buf`'s room clears the socket's readiness in the same step, as
    /// tokio's own reads do, so that the next wait sleeps until more arrives
    /// instead of making a read that finds nothing. (The readiness is
    /// cleared only if the reactor has seen no newer event since the read
    /// began: no wake-up is lost.)
    fn read_at_once(&mut self, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        // The length of a short read, which the closure reports as `WouldBlock`.
        let mut short = None;
        let stream = &*self;
        let tried = stream.try_io(tokio::io::Interest::READABLE, || {
            let room = buf.spare_capacity_mut();
            let capacity = room.len();
            let n = socket2::SockRef::from(stream).recv(room)?;
            // SAFETY: `recv` initialized the first `n` bytes of the spare room.
            unsafe { buf.set_len(buf.len() + n) };
            if n > 0 && n < capacity {
                // The socket is empty now: `WouldBlock` clears its readiness.
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match tried {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => short.map_or(Poll::Pending, |n| Poll::Ready(Ok(n))),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn send_all<'a>(&'a mut self, bytes: &'a [u8]) -> impl Future<Output = io::Result<()>> + Send + 'a {
        crate::wire::write_all(self, bytes)
    }
}

impl ClientIo for TlsClient {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    /// Reads through rustls: what it already decrypted comes first, then
    /// records from the socket. A wake-up that brought no request (a record
    /// rustls keeps to itself) reads nothing and waits on; tokio-rustls' read
    /// of the socket, short or refused, has cleared its readiness.
    fn poll_arrival(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<BytesMut>> {
        // On the stack, not in the idle connection's task.
        let mut room = [MaybeUninit::<u8>::uninit(); ARRIVAL_ROOM];
        let mut read = ReadBuf::uninit(&mut room);
        match Pin::new(self).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
            Poll::Ready(Ok(())) => Poll::Ready(Ok(BytesMut::from(read.filled()))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// One poll of rustls' read with no task to wake: the caller waits with
    /// its own task when this finds nothing.
    fn read_at_once(&mut self, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        let mut read = ReadBuf::uninit(buf.spare_capacity_mut());
        let polled = Pin::new(self).poll_read(&mut Context::from_waker(Waker::noop()), &mut read);
        let n = read.filled().len();
        polled.map_ok(|()| {
            // SAFETY: the read initialized the first `n` bytes of the spare room.
            unsafe { buf.set_len(buf.len() + n) };
            n
        })
    }

    async fn send_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }
}

/// Whether the client has sent bytes not yet read, asked of the socket
/// itself: the reactor may not have seen them yet (draining can start
/// before it has polled the socket again). Over TLS, a request rustls had
/// already decrypted would have ended the wait before this is asked.
pub(crate) fn has_bytes_waiting(stream: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::uninit()];
    // The socket is non-blocking: an empty one answers `WouldBlock`.
    matches!(socket2::SockRef::from(stream).peek(&mut byte), Ok(1..))
}
