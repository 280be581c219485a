//! The same services over TCP, for when the two processes end up on two machines: a server
//! bound with [`Server::bind_tcp`](crate::Server::bind_tcp), a client from
//! `FooClient::connect_tcp` (or [`Channel::connect_tcp`](crate::Channel::connect_tcp)). The
//! same handshake, frames, limits, deadlines, streams, callbacks and typed errors as over a
//! pipe; `TCP_NODELAY` is set on both ends (calls are small messages that must not wait for
//! Nagle's algorithm).
//!
//! ```no_run
//! # #[rpc_core::service] pub trait Echo { async fn echo(&self, s: String) -> String; }
//! # struct Me; impl Echo for Me { async fn echo(&self, s: String) -> String { s } }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use rpc_core::{AccessPolicy, Server, ServerConfig};
//! // TCP reports no user: the server must be told whom to admit (here: anyone who reaches
//! // the port), and it listens on loopback unless `allow_remote` is set.
//! let config = ServerConfig::default().access(AccessPolicy::anyone());
//! let server = Server::new(EchoServer::new(Me)).config(config).bind_tcp("127.0.0.1:7000")?;
//! tokio::spawn(server.run());
//! let echo = EchoClient::connect_tcp("127.0.0.1:7000").await?;
//! assert_eq!(echo.echo("hi".into()).await?, "hi");
//! # Ok(()) }
//! ```
//!
//! # What differs from a pipe
//!
//! - **No user on either side.** A pipe's peer is identified by the OS; a TCP peer is an
//!   address. So a server refuses to bind TCP with an access rule about users
//!   ([`AccessPolicy::same_user`](crate::AccessPolicy::same_user), the default, or
//!   [`AccessPolicy::allow`](crate::AccessPolicy::allow)): it could admit no one, and it must
//!   not silently admit everyone. Choose [`AccessPolicy::anyone`](crate::AccessPolicy::anyone)
//!   (whoever reaches the port) or [`AccessPolicy::custom`](crate::AccessPolicy::custom),
//!   whose check then gets credentials with nothing known. Likewise a client connecting over
//!   TCP requires [`ClientConfig::expect_server`](crate::ClientConfig::expect_server) to be
//!   [`ServerIdentity::Anyone`](crate::ServerIdentity::Anyone) (`connect_tcp` sets it;
//!   `connect_tcp_with` refuses any other), because any local user can take a loopback port
//!   first. Handlers see no caller ([`Context::peer`](crate::context::Context::peer) is
//!   `None`), and the per-user connection limit does not apply (the total one does).
//! - **Loopback unless asked.** [`Server::bind_tcp`](crate::Server::bind_tcp) refuses an
//!   address that is not loopback (`127.0.0.0/8`, `::1`; `0.0.0.0` included) unless
//!   [`ServerConfig::allow_remote`](crate::ServerConfig::allow_remote) is set.
//! - **No encryption.** Frames travel in clear; on a network you do not trust, tunnel the
//!   port (SSH, WireGuard) until TLS is built in.
//!
//! Connecting behaves as for pipes: a refused connection (nothing listens on the port) fails
//! at once with [`TransportError::NotRunning`] unless
//! [`ClientConfig::wait_for_server`](crate::ClientConfig::wait_for_server) is set, and a
//! server at its connection limit is retried within the connect timeout.

use std::io;
use std::net::SocketAddr;

use tokio::time::{Instant, sleep_until, timeout_at};
use transport_pipe::ConnectOptions;

use crate::access::PeerCredentials;
use crate::error::TransportError;
use crate::server::listener::{AcceptError, Listener, sealed};

/// A TCP address a server listens on, from [`Server::bind_tcp`](crate::Server::bind_tcp).
#[derive(Debug)]
pub struct TcpListener {
    inner: tokio::net::TcpListener,
    local: SocketAddr,
}

impl TcpListener {
    /// Binds the first of `addrs` that can be bound. Must be called within a tokio runtime.
    pub(crate) fn bind(addrs: &[SocketAddr]) -> io::Result<TcpListener> {
        let std = std::net::TcpListener::bind(addrs)?;
        std.set_nonblocking(true)?;
        let inner = tokio::net::TcpListener::from_std(std)?;
        let local = inner.local_addr()?;
        Ok(TcpListener { inner, local })
    }

    /// The address it listens on (with the port the OS chose, if port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl sealed::Sealed for TcpListener {}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&self) -> Result<tokio::net::TcpStream, AcceptError> {
        let (stream, _) = self.inner.accept().await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn peer(_: &tokio::net::TcpStream) -> Result<Option<PeerCredentials>, String> {
        Ok(None)
    }

    fn describe(&self) -> String {
        format!("tcp {}", self.local)
    }
}

/// `addrs`, shown for messages: `127.0.0.1:7000` or `[::1]:7000, 127.0.0.1:7000`.
pub(crate) fn show(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(", ")
}

/// Connects to the first of `addrs` that answers, with `TCP_NODELAY` set, within
/// `opts.timeout` counted from `start`. A refused connection (nothing listens there) fails at
/// once with `NotRunning`, or is retried within the timeout with
/// [`ConnectOptions::wait_for_server`]; anything else (unreachable, no answer in time) fails
/// with `Io`.
pub(crate) async fn connect_since(
    addrs: &[SocketAddr],
    opts: &ConnectOptions,
    start: Instant,
) -> Result<tokio::net::TcpStream, TransportError> {
    let deadline = opts.deadline_from(start);
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        // As for pipes: one attempt may always finish (a loopback connect is immediate).
        let attempt_deadline = deadline.max(Instant::now() + std::time::Duration::from_secs(1));
        let err = match timeout_at(attempt_deadline, tokio::net::TcpStream::connect(addrs)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true).map_err(|e| TransportError::Io {
                    detail: format!("cannot set TCP_NODELAY on the connection to {}: {e}", show(addrs)),
                })?;
                return Ok(stream);
            }
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(TransportError::Io {
                    detail: format!(
                        "connecting to TCP {} did not complete within the connect timeout of {}",
                        show(addrs),
                        crate::error::fmt_duration(opts.timeout)
                    ),
                });
            }
        };
        let waited = crate::error::fmt_duration(start.elapsed());
        if err.kind() != io::ErrorKind::ConnectionRefused {
            return Err(TransportError::Io { detail: format!("cannot connect to TCP {}: {err}", show(addrs)) });
        }
        let now = Instant::now();
        if !opts.wait_for_server {
            return Err(TransportError::NotRunning {
                detail: format!(
                    "no server is listening on TCP {}: {err}; not waiting for a server to start \
                     (wait_for_server is off)",
                    show(addrs)
                ),
            });
        }
        if now >= deadline {
            return Err(TransportError::NotRunning {
                detail: format!(
                    "no server is listening on TCP {}: {err}; gave up after {waited} ({attempts} attempt{}, connect \
                     timeout {})",
                    show(addrs),
                    if attempts == 1 { "" } else { "s" },
                    crate::error::fmt_duration(opts.timeout)
                ),
            });
        }
        sleep_until((now + opts.backoff(attempts)).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_ends_of_a_tcp_connection_disable_nagle() {
        let listener = TcpListener::bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
        let addr = listener.local_addr();
        assert!(addr.ip().is_loopback() && addr.port() != 0);
        let (opts, addrs) = (ConnectOptions::default(), [addr]);
        let (accepted, connected) = tokio::join!(listener.accept(), connect_since(&addrs, &opts, Instant::now()));
        assert!(accepted.unwrap().nodelay().unwrap(), "the server's end");
        assert!(connected.unwrap().nodelay().unwrap(), "the client's end");
        assert_eq!(listener.describe(), format!("tcp {addr}"));
    }
}
