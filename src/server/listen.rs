//! The listening sockets: the proxy's own, and one per extra worker.
//!
//! With several workers the proxy listener is a `SO_REUSEPORT` socket, and
//! each extra worker opens its own on the same address, so that each has
//! its own accept queue (the kernel spreads connections by a hash of their
//! addresses; see `balance` for when that is uneven).

use tokio::net::TcpListener;

/// Binds the proxy listener; with several workers, as a `SO_REUSEPORT`
/// socket so that each worker gets its own accept queue.
pub fn bind(addr: std::net::SocketAddr, workers: usize) -> std::io::Result<TcpListener> {
    let socket = if workers > 1 {
        reuse_port_socket(addr)?
    } else {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        socket
    };
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// A listening socket for another worker: its own `SO_REUSEPORT` socket on
/// the same address (the kernel spreads connections evenly) when the main
/// listener allows it, else a duplicate of the main one (shared queue).
pub(super) fn worker_socket(listener: &TcpListener) -> std::io::Result<std::net::TcpListener> {
    let main = socket2::SockRef::from(listener);
    let socket =
        if main.reuse_port().unwrap_or(false) { reuse_port_socket(listener.local_addr()?)? } else { main.try_clone()? };
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A listening socket on `addr` that other sockets may share (`SO_REUSEPORT`).
fn reuse_port_socket(addr: std::net::SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}
