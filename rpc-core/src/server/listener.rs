//! Where a server accepts its connections: the [`Listener`] trait, one accept loop for every
//! transport ([`BoundServer::run_until`](crate::BoundServer::run_until)): the same
//! handshake, limits, timeouts and shutdown whether clients come over a pipe or TCP.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};
use transport_pipe::{PipeListener, PipeStream};

use crate::access::PeerCredentials;

/// An error of one accept, for the log (the accept loop backs off and goes on).
pub type AcceptError = Box<dyn std::error::Error + Send + Sync>;

/// A bound endpoint a server accepts connections on: a pipe name ([`PipeListener`], from
/// [`Server::bind`](crate::Server::bind)) or a TCP address
/// ([`TcpListener`](crate::tcp::TcpListener), from
/// [`Server::bind_tcp`](crate::Server::bind_tcp)). Sealed: the accept loop relies on what
/// each reports about its peers.
pub trait Listener: sealed::Sealed + Send + Sync + 'static {
    /// An accepted connection.
    type Io: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// Waits for the next connection. An error concerns that connection or a passing
    /// shortage (out of descriptors): the accept loop logs it, backs off and goes on.
    fn accept(&self) -> impl Future<Output = Result<Self::Io, AcceptError>> + Send;

    /// Who is at the other end, as the OS reports it: `Ok(None)` where the transport has no
    /// such report (TCP), `Err(why)` where it has one but could not read it (the client is
    /// then refused: fail closed).
    fn peer(io: &Self::Io) -> Result<Option<PeerCredentials>, String>;

    /// Whether the OS tells who the client is only once the server has read from the
    /// connection. The accept loop then leaves the access policy to the handshake, which
    /// reads [`peer`](Self::peer) and applies the policy as soon as the client's hello is in,
    /// before anything else the client sent is decoded. True for Windows named pipes, where
    /// a server reads its client's user by impersonating it
    /// ([`PipeStream::peer_credentials`]).
    const USER_AFTER_FIRST_READ: bool = false;

    /// What it listens on, for logs: `pipe `name`` or `tcp 127.0.0.1:7000`.
    fn describe(&self) -> String;
}

pub(crate) mod sealed {
    /// Keeps [`Listener`](super::Listener) to the listeners of this crate.
    pub trait Sealed {}
}

impl sealed::Sealed for PipeListener {}

impl Listener for PipeListener {
    type Io = PipeStream;

    async fn accept(&self) -> Result<PipeStream, AcceptError> {
        PipeListener::accept(self).await.map_err(Into::into)
    }

    fn peer(io: &PipeStream) -> Result<Option<PeerCredentials>, String> {
        io.peer_credentials().map(Some).map_err(|e| e.to_string())
    }

    const USER_AFTER_FIRST_READ: bool = cfg!(windows);

    fn describe(&self) -> String {
        format!("pipe `{}`", self.name().as_str())
    }
}
