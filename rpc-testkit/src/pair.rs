//! A client and a server in this process, over an in-memory pipe: for unit tests of a
//! service, with the handshake, engine, deadlines, cancellation, limits and errors of a real
//! connection (only the OS pipe and its credentials are missing).

use rpc_core::{Channel, Client, ClientConfig, RpcError, Server, Service, TransportError};
use tokio::task::JoinHandle;

/// Bytes the in-memory pipe buffers each way (`tokio::io::duplex`): about a Unix socket's.
const PIPE_BUFFER: usize = 256 * 1024;

/// The server end of a [`pair`]: one connection served on a task of the caller's runtime.
/// Dropping it ends the connection (the client's calls then fail with `Disconnected`).
#[derive(Debug)]
pub struct PairServer {
    task: JoinHandle<Result<(), TransportError>>,
}

impl PairServer {
    /// Waits until the connection is over (every handle of the client dropped, or the
    /// client closed), and says how it ended.
    ///
    /// # Errors
    ///
    /// What the server's end of the connection failed with (a protocol violation, say).
    pub async fn finished(mut self) -> Result<(), TransportError> {
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
        match task.await {
            Ok(ended) => ended,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(TransportError::Disconnected { detail: format!("the server's task was cancelled: {e}") }),
        }
    }
}

impl Drop for PairServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client of `service` and the server serving it, connected in memory. Must be called
/// inside a tokio runtime (the server runs on a task of it).
///
/// ```
/// # #[rpc_core::service] pub trait Echo { async fn echo(&self, s: String) -> String; }
/// # struct Me; impl Echo for Me { async fn echo(&self, s: String) -> String { s } }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (client, server) = rpc_testkit::pair::<EchoClient, _>(EchoServer::new(Me)).await;
/// assert_eq!(client.echo("hi".into()).await.unwrap(), "hi");
/// drop(client);
/// // The client went away: the connection ended cleanly.
/// server.finished().await.unwrap();
/// # }
/// ```
///
/// # Panics
///
/// If the handshake fails (it cannot, between a client and a server of the same trait,
/// unless `service` is not that trait's server).
pub async fn pair<C, S>(service: S) -> (C, PairServer)
where
    C: Client,
    S: Service<Request = C::Request, Response = C::Response>,
{
    match pair_with(Server::new(service), ClientConfig::default()).await {
        Ok(pair) => pair,
        Err(e) => panic!("rpc-testkit: the in-memory handshake failed: {e}"),
    }
}

/// [`pair`], with a server and client settings of the caller's choice.
///
/// # Errors
///
/// The handshake's, if it fails (settings the two ends cannot agree on).
pub async fn pair_with<C, S>(server: Server<S>, config: ClientConfig) -> Result<(C, PairServer), RpcError>
where
    C: Client,
    S: Service<Request = C::Request, Response = C::Response>,
{
    let (client_end, server_end) = tokio::io::duplex(PIPE_BUFFER);
    let task = tokio::spawn(async move { server.serve_connection(server_end).await });
    let server = PairServer { task };
    let channel = Channel::from_io(client_end, C::ID, config).await?;
    Ok((C::from_channel(channel), server))
}
