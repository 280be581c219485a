//! The same stubs over TCP (`Server::bind_tcp`, `FooClient::connect_tcp`): the real
//! `test-server` binary serving on a loopback port, the same calls, streams, callbacks,
//! one-way calls, limits and handshake rules as over a pipe; loopback only unless asked, and
//! no rule about users where TCP reports none.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pipe_rpc_tests::{ProbeClient, ServerProcess, Ticks, TicksServer, sample_record, watchdog};
use rpc_core::{AccessPolicy, ClientConfig, RpcError, RpcStream, ServeError, Server, ServerConfig, TransportError};
use tokio::io::AsyncReadExt;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

struct Tens;

impl Ticks for Tens {
    async fn tick(&self, n: u64) -> u64 {
        n * 10
    }
}

fn tcp_config() -> ClientConfig {
    ClientConfig::for_tcp().connect_timeout(Duration::from_secs(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_streams_callbacks_and_one_way_calls_work_over_tcp() {
    watchdog(async {
        let (server, addr) = ServerProcess::spawn_tcp(EXE, "127.0.0.1:0", &["--access", "anyone"]).await;
        assert!(addr.ip().is_loopback());
        let c = ProbeClient::connect_tcp(addr).await.unwrap();
        assert_eq!(c.pid().await.unwrap(), server.pid());
        assert_eq!(c.echo_string("over tcp".into()).await.unwrap(), "over tcp");
        let record = sample_record(7);
        assert_eq!(c.echo_struct(record.clone()).await.unwrap(), record);
        let items: Vec<u64> = c.count(5, 4, 0).await.unwrap().map(Result::unwrap).collect().await;
        assert_eq!(items, [5, 6, 7, 8]);
        assert_eq!(c.sum(RpcStream::iter(1..=1000u64)).await.unwrap(), 500_500);
        let doubled: Vec<u64> = c.double(RpcStream::iter([4u64, 5])).await.unwrap().map(Result::unwrap).collect().await;
        assert_eq!(doubled, [8, 10]);
        assert_eq!(c.run_ticks(3, TicksServer::new(Tens)).await.unwrap(), [0, 10, 20]);
        for seq in 0..5 {
            c.note(9, seq, 0).await.unwrap();
        }
        c.channel().flush().await.unwrap();
        let stats =
            pipe_rpc_tests::wait_stats(&c, 9, pipe_rpc_tests::TagStats { finished: 5, ..Default::default() }).await;
        assert_eq!(stats.finished, 5);
        assert_eq!(c.notes(9).await.unwrap(), [0, 1, 2, 3, 4]);
        // Many calls at once share the connection.
        let calls = (0..200u64).map(|i| {
            let c = c.clone();
            async move { c.sleep_ms(i, 1).await }
        });
        let tags = futures::future::join_all(calls).await;
        assert!(tags.iter().enumerate().all(|(i, r)| *r == Ok(i as u64)), "{tags:?}");
        // TCP reports no user: neither side knows who the other is.
        assert!(c.channel().peer().server.is_none());
        let (pid, uid, _, sid) = c.whoami().await.unwrap();
        assert_eq!((pid, uid, sid.as_str()), (u32::MAX, u32::MAX, ""));
    })
    .await;
}

/// Runs `test-server --tcp ADDR args` and returns its exit code and stderr (it must not
/// start).
async fn refused(addr: &str, args: &[&str]) -> (Option<i32>, String) {
    let out =
        tokio::process::Command::new(EXE).args(["--tcp", addr]).args(args).stdin(Stdio::null()).output().await.unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_server_refuses_an_access_rule_about_users() {
    watchdog(async {
        // The default rule (same user) in another process...
        let (code, stderr) = refused("127.0.0.1:0", &[]).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("same user only") && stderr.contains("AccessPolicy::anyone()"), "{stderr}");
        // ... and an allow list here.
        let config = ServerConfig::default().access(AccessPolicy::allow([0], []));
        let err = Server::new(pipe_rpc_tests::ProbeServer::new(pipe_rpc_tests::ProbeImpl::default()))
            .config(config)
            .bind_tcp("127.0.0.1:0")
            .unwrap_err();
        assert!(matches!(err, ServeError::NotAllowed(_)), "{err:?}");
        // A custom check is the user's own decision, and is allowed.
        let config = ServerConfig::default().access(AccessPolicy::custom(|_| Ok(())));
        Server::new(pipe_rpc_tests::ProbeServer::new(pipe_rpc_tests::ProbeImpl::default()))
            .config(config)
            .bind_tcp("127.0.0.1:0")
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_address_is_refused_unless_remote_clients_are_allowed() {
    watchdog(async {
        let (code, stderr) = refused("0.0.0.0:0", &["--access", "anyone"]).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("not a loopback address") && stderr.contains("allow_remote"), "{stderr}");
        // Allowed, it binds every interface.
        let config = ServerConfig::default().access(AccessPolicy::anyone()).allow_remote(true);
        let bound = Server::new(pipe_rpc_tests::ProbeServer::new(pipe_rpc_tests::ProbeImpl::default()))
            .config(config)
            .bind_tcp("0.0.0.0:0")
            .unwrap();
        assert!(bound.local_addr().ip().is_unspecified() && bound.local_addr().port() != 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_applies_over_tcp_and_a_refused_client_retries() {
    watchdog(async {
        let (_server, addr) =
            ServerProcess::spawn_tcp(EXE, "127.0.0.1:0", &["--access", "anyone", "--max-connections", "1"]).await;
        let a = ProbeClient::connect_tcp_with(addr, tcp_config()).await.unwrap();
        a.unit().await.unwrap();
        let t0 = Instant::now();
        let err = ProbeClient::connect_tcp_with(addr, tcp_config().connect_timeout(Duration::from_millis(300)))
            .await
            .unwrap_err();
        match &err {
            RpcError::Transport(TransportError::Busy { detail }) => {
                assert!(detail.contains("limit of 1 connections"), "{detail}");
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(t0.elapsed() >= Duration::from_millis(300));
        // A client with time to spare gets in once the first leaves.
        let mut b = tokio::spawn(ProbeClient::connect_tcp_with(addr, tcp_config()));
        assert!(tokio::time::timeout(Duration::from_millis(300), &mut b).await.is_err(), "b did not keep trying");
        drop(a);
        let b = b.await.unwrap().expect("the retrying client gets the freed slot");
        assert_eq!(b.echo_string("b".into()).await.unwrap(), "b");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_on_a_port_is_not_running_at_once_unless_waiting_for_the_server() {
    watchdog(async {
        // A port nobody listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let t0 = Instant::now();
        let err = ProbeClient::connect_tcp_with(addr.as_str(), tcp_config()).await.unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
        match &err {
            RpcError::Transport(TransportError::NotRunning { detail }) => {
                assert!(detail.contains(&addr) && detail.contains("wait_for_server"), "{detail}");
            }
            other => panic!("expected NotRunning, got {other:?}"),
        }
        // Waiting for it: the client connects once a server comes up on that port.
        let mut waiting = Box::pin(ProbeClient::connect_tcp_with(addr.clone(), tcp_config().wait_for_server(true)));
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        let waiting = tokio::spawn(waiting);
        let (server, _) = ServerProcess::spawn_tcp(EXE, &addr, &["--access", "anyone"]).await;
        let c = waiting.await.unwrap().expect("the waiting client reaches the server");
        assert_eq!(c.pid().await.unwrap(), server.pid());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_refuses_an_expectation_about_the_servers_user() {
    watchdog(async {
        let (_server, addr) = ServerProcess::spawn_tcp(EXE, "127.0.0.1:0", &["--access", "anyone"]).await;
        let err = ProbeClient::connect_tcp_with(addr, ClientConfig::default()).await.unwrap_err();
        match &err {
            RpcError::Transport(TransportError::ServerIdentity { actual, .. }) => {
                assert!(actual.contains("ServerIdentity::Anyone"), "{actual}");
            }
            other => panic!("expected ServerIdentity, got {other:?}"),
        }
    })
    .await;
}

/// The accept loop's handshake rules hold over TCP: a client that never speaks is answered
/// with a protocol-error `Welcome` at the handshake timeout, and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tcp_client_is_told_and_closed_at_the_handshake_timeout() {
    watchdog(async {
        let (_server, addr) =
            ServerProcess::spawn_tcp(EXE, "127.0.0.1:0", &["--access", "anyone", "--handshake-timeout-ms", "300"])
                .await;
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(15), raw.read_to_end(&mut answer)).await.unwrap().unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(250), "closed after {:?}", t0.elapsed());
        // A length prefix, then a `Welcome` (magic `PRPC`) saying why.
        assert!(answer.len() > 8 && &answer[4..8] == b"PRPC", "{answer:?}");
        assert!(String::from_utf8_lossy(&answer).contains("no handshake within"), "{answer:?}");
    })
    .await;
}
