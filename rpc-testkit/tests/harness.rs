//! The harness itself: servers in child processes of this test binary (started, used, torn
//! down however the test ends, files included), its errors, and the in-memory pair.

use std::future::Future;
use std::time::Duration;

use rpc_core::{ClientConfig, RpcError, Server, ServerConfig, TransportError};
use rpc_testkit::{
    ChildServer, ServerCommand, SpawnError, TEST_WATCHDOG, TestServer, blocking_watchdog, serve_in_child, watchdog,
};

/// The service the child servers serve.
#[rpc_core::service]
pub trait Echo {
    /// Returns its argument.
    async fn echo(&self, s: String) -> String;
    /// The serving process's id.
    async fn pid(&self) -> u32;
    /// The arguments the child server was given.
    async fn args(&self) -> Vec<String>;
    /// Sleeps `ms` milliseconds.
    async fn sleep(&self, ms: u64) -> u64;
}

#[derive(Clone, Default)]
struct Me {
    args: Vec<String>,
}

impl Echo for Me {
    async fn echo(&self, s: String) -> String {
        s
    }
    async fn pid(&self) -> u32 {
        std::process::id()
    }
    async fn args(&self) -> Vec<String> {
        self.args.clone()
    }
    async fn sleep(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
}

/// Entry: serves `Echo`.
#[test]
fn echo_server() {
    serve_in_child("echo_server", |child| {
        Server::new(EchoServer::new(Me { args: child.args().to_vec() })).bind(child.name().clone())
    });
}

/// Entry: never says it is ready.
#[test]
fn silent_server() {
    if ChildServer::current("silent_server").is_some() {
        std::thread::sleep(Duration::from_secs(600));
    }
}

/// Entry: a server as a user's own program might be, for the named-program mode: it takes
/// its pipe name from `ECHO_PIPE`, prints no ready line, and serves until its stdin ends.
#[test]
fn echo_program() {
    let Some(name) = std::env::var_os("ECHO_PIPE") else { return };
    let name = rpc_core::PipeName::new(name.to_string_lossy().into_owned());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let bound = Server::new(EchoServer::new(Me::default())).bind(name).unwrap();
        let (ended, stdin_ended) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            let _ = ended.send(());
        });
        bound
            .run_until(async {
                let _ = stdin_ended.await;
            })
            .await
            .unwrap();
    });
    std::process::exit(0);
}

/// The files a server of `server`'s name has on disk (none on Windows: a named pipe).
fn files_of(server: &TestServer) -> Vec<std::path::PathBuf> {
    if cfg!(windows) {
        return Vec::new();
    }
    let path = server.name().resolve().expect("resolves");
    let mut lock = path.clone().into_os_string();
    lock.push(".lock");
    vec![path, lock.into()]
}

/// Whether process `pid` is gone (and reaped). Linux reads `/proc`; elsewhere `true`, and
/// the tests rely on the name no longer running instead.
fn process_is_gone(pid: u32) -> bool {
    !cfg!(target_os = "linux") || !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The message of a panic caught by `join` or a `JoinError`.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

async fn not_running(name: rpc_core::PipeName) {
    let err = EchoClient::connect_with(name.clone(), ClientConfig::default()).await.unwrap_err();
    assert!(matches!(err, RpcError::Transport(TransportError::NotRunning { .. })), "{name}: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_a_child_process_of_this_binary_answers_with_its_arguments() {
    watchdog(TEST_WATCHDOG, async {
        let server = ServerCommand::this_binary("echo_server").args(["one", "two words"]).spawn().await.unwrap();
        let client = EchoClient::connect(server.name().clone()).await.unwrap();
        assert_eq!(client.echo("hi".into()).await.unwrap(), "hi");
        let pid = client.pid().await.unwrap();
        assert_eq!(pid, server.pid());
        assert_ne!(pid, std::process::id());
        assert_eq!(client.args().await.unwrap(), ["one", "two words"]);
        assert!(server.name().as_str().contains(&format!("tk-{}-", std::process::id())), "{}", server.name());
        assert!(server.name().as_str().ends_with("answers_with_its_arguments"), "{}", server.name());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_prints_no_ready_line_is_ready_once_its_pipe_accepts() {
    watchdog(TEST_WATCHDOG, async {
        let name = rpc_testkit::unique_name();
        // This binary, run as a plain program: libtest arguments that select `echo_program`.
        let server = ServerCommand::program(std::env::current_exe().unwrap())
            .no_name_arg()
            .name(name.clone())
            .env("ECHO_PIPE", name.as_str())
            .args(["echo_program", "--exact", "--test-threads=1"])
            .ready_when_accepting()
            .spawn()
            .await
            .unwrap();
        assert_eq!(server.name(), &name);
        // Connects once, without waiting for a server: it is there.
        let client = EchoClient::connect(name.clone()).await.unwrap();
        assert_eq!(client.pid().await.unwrap(), server.pid());
        assert_ne!(server.pid(), std::process::id());
        let files = files_of(&server);
        drop(client);
        drop(server);
        for f in &files {
            assert!(!f.exists(), "{} was left behind", f.display());
        }
        not_running(name).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_server_kills_it_and_removes_its_socket_and_lock_files() {
    watchdog(TEST_WATCHDOG, async {
        let server = ServerCommand::this_binary("echo_server").spawn().await.unwrap();
        let files = files_of(&server);
        for f in &files {
            assert!(f.exists(), "{} should exist while the server runs", f.display());
        }
        let name = server.name().clone();
        // What a test that ends (or fails) does.
        drop(server);
        for f in &files {
            assert!(!f.exists(), "{} was left behind", f.display());
        }
        not_running(name).await;
    })
    .await;
}

#[test]
fn a_test_that_panics_still_tears_its_server_down() {
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = std::thread::spawn(move || {
        let server = ServerCommand::this_binary("echo_server").spawn_blocking().unwrap();
        tx.send((server.name().clone(), files_of(&server), server.pid())).unwrap();
        let client = EchoBlockingClient::connect(server.name().clone()).unwrap();
        assert_eq!(client.echo("before".into()).unwrap(), "before");
        panic!("the test fails here, with its server running");
    })
    .join();
    assert!(failed.is_err(), "the test thread was to panic");
    let (name, files, pid) = rx.recv().unwrap();
    for f in &files {
        assert!(!f.exists(), "{} was left behind by a panicking test", f.display());
    }
    assert!(process_is_gone(pid), "server process {pid} outlived the panicking test");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(not_running(name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_server_whose_parent_goes_away_shuts_down_gracefully_by_itself() {
    watchdog(TEST_WATCHDOG, async {
        let mut server = ServerCommand::this_binary("echo_server").spawn().await.unwrap();
        let files = files_of(&server);
        // As when the test process dies: the child's stdin ends.
        server.close_stdin();
        let exit = server.wait_exit().await;
        assert!(exit.status.success(), "{exit}");
        assert!(exit.stdout.iter().any(|l| l == rpc_testkit::SHUTTING_DOWN), "{exit}");
        for f in &files {
            assert!(!f.exists(), "{} was left behind", f.display());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_finishes_the_calls_in_flight() {
    watchdog(TEST_WATCHDOG, async {
        let mut server = ServerCommand::this_binary("echo_server").spawn().await.unwrap();
        let client = EchoClient::connect(server.name().clone()).await.unwrap();
        // Polled once, the slow call is queued, so it goes out before the echo below (from a
        // task of its own it could go out after the echo, and even after the shutdown).
        let mut slow = std::pin::pin!(client.sleep(300));
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(slow.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "a 300 ms call answered at once");
        // A cheap call after it on the same connection is answered after the server read
        // both: the slow call is running.
        assert_eq!(client.echo("x".into()).await.unwrap(), "x");
        server.begin_shutdown().await;
        assert_eq!(slow.await.unwrap(), 300);
        let exit = server.wait_exit().await;
        assert!(exit.status.success(), "{exit}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_kills_a_server_that_outlives_it() {
    watchdog(TEST_WATCHDOG, async {
        let mut server =
            ServerCommand::this_binary("echo_server").watchdog(Some(Duration::from_millis(500))).spawn().await.unwrap();
        let files = files_of(&server);
        let started = std::time::Instant::now();
        let exit = server.wait_exit().await;
        assert!(!exit.status.success(), "{exit}");
        assert_eq!(exit.killed_by_watchdog, Some(Duration::from_millis(500)), "{exit}");
        assert!(exit.to_string().starts_with("killed by its watchdog after 500ms"), "{exit}");
        assert!(started.elapsed() < Duration::from_secs(10), "the watchdog fired late: {:?}", started.elapsed());
        for f in &files {
            assert!(!f.exists(), "{} was left behind", f.display());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_is_not_there_is_reported_with_the_childs_output() {
    watchdog(TEST_WATCHDOG, async {
        let err = ServerCommand::this_binary("no_such_entry").spawn().await.unwrap_err();
        let SpawnError::Exited(exit) = &err else { panic!("{err}") };
        assert!(exit.status.success(), "libtest ran no test and exited 0: {exit}");
        assert!(err.to_string().contains("no_such_entry"), "{err}");
        assert!(err.to_string().contains("serve_in_child"), "the hint: {err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_not_ready_in_time_is_killed_and_reported() {
    watchdog(TEST_WATCHDOG, async {
        let started = std::time::Instant::now();
        let err = ServerCommand::this_binary("silent_server")
            .ready_timeout(Duration::from_millis(300))
            .spawn()
            .await
            .unwrap_err();
        let SpawnError::NotReady { waited, exit } = &err else { panic!("{err}") };
        assert_eq!(*waited, Duration::from_millis(300));
        assert!(!exit.status.success(), "it was killed: {exit}");
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    })
    .await;
}

#[test]
fn a_blocking_test_uses_a_child_server_through_the_blocking_client() {
    blocking_watchdog(TEST_WATCHDOG, || {
        let server = ServerCommand::this_binary("echo_server").spawn_blocking().unwrap();
        let client = EchoBlockingClient::connect(server.name().clone()).unwrap();
        assert_eq!(client.echo("sync".into()).unwrap(), "sync");
        assert_eq!(client.pid().unwrap(), server.pid());
    });
}

#[tokio::test(flavor = "current_thread")]
async fn an_in_memory_pair_has_the_semantics_of_a_pipe() {
    watchdog(TEST_WATCHDOG, async {
        let (client, server) = rpc_testkit::pair::<EchoClient, _>(EchoServer::new(Me::default())).await;
        assert_eq!(client.echo("hi".into()).await.unwrap(), "hi");
        // Deadlines and cancellation as over a pipe.
        let err = client.with_timeout(Duration::from_millis(20)).sleep(10_000).await.unwrap_err();
        assert!(matches!(err, RpcError::DeadlineExceeded { .. }), "{err:?}");
        // The deadline cancelled the call on the server: the connection still answers.
        assert_eq!(client.echo("after".into()).await.unwrap(), "after");
        // The client goes: the connection ends cleanly.
        drop(client);
        server.finished().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_in_memory_pair_takes_the_settings_of_both_ends() {
    watchdog(TEST_WATCHDOG, async {
        let server = Server::new(EchoServer::new(Me::default())).config(ServerConfig::default().max_message(2048));
        let (client, _server): (EchoClient, _) = rpc_testkit::pair_with(server, ClientConfig::default()).await.unwrap();
        let err = client.echo("x".repeat(4096)).await.unwrap_err();
        assert!(matches!(err, RpcError::Transport(TransportError::MessageTooLarge { limit: 2048, .. })), "{err:?}");
        assert_eq!(client.echo("small".into()).await.unwrap(), "small");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_servers_cleanup_never_removes_a_successors_files() {
    watchdog(TEST_WATCHDOG, async {
        let server = ServerCommand::this_binary("echo_server").spawn().await.unwrap();
        let name = server.name().clone();
        let files = files_of(&server);
        let crashed = server.crash().await;
        assert!(!crashed.status.success(), "{}", crashed.exit);
        // (Its files may be there or already swept by another test's bind: not asserted.)
        not_running(name.clone()).await;
        // A replacement takes the name (and its stale socket) over; dropping what the
        // crashed one left must not touch the replacement's files.
        let replacement = ServerCommand::this_binary("echo_server").name(name.clone()).spawn().await.unwrap();
        drop(crashed);
        let client = EchoClient::connect(name.clone()).await.unwrap();
        assert_eq!(client.pid().await.unwrap(), replacement.pid());
        drop(client);
        drop(replacement);
        for f in &files {
            assert!(!f.exists(), "{} was left behind", f.display());
        }

        // With no replacement, dropping it removes what the crash left.
        let server = ServerCommand::this_binary("echo_server").spawn().await.unwrap();
        let files = files_of(&server);
        drop(server.crash().await);
        for f in &files {
            assert!(!f.exists(), "{} was left behind", f.display());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_hung_on_its_server_fails_with_the_watchdogs_message_and_tears_the_server_down() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let hung = tokio::spawn(watchdog(Duration::from_millis(800), async move {
        let server = ServerCommand::this_binary("echo_server").spawn().await.unwrap();
        let client = EchoClient::connect(server.name().clone()).await.unwrap();
        tx.send((server.name().clone(), files_of(&server), server.pid())).unwrap();
        // Hangs (a call the server takes ten minutes over) with its server running.
        client.with_timeout(Duration::from_secs(600)).sleep(600_000).await.unwrap();
    }));
    let started = std::time::Instant::now();
    let err = hung.await.expect_err("the watchdog was to fail the test");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    let message = panic_message(&*err.into_panic());
    assert!(message.contains("test hung: watchdog fired after 800ms"), "{message:?}");
    let (name, files, pid) = rx.await.unwrap();
    for f in &files {
        assert!(!f.exists(), "{} was left behind by a hung test", f.display());
    }
    assert!(process_is_gone(pid), "server process {pid} outlived the hung test");
    not_running(name).await;
}

#[test]
fn a_server_killed_by_its_watchdog_fails_the_test_that_did_not_look_saying_so() {
    let failed = std::thread::spawn(|| {
        let server = ServerCommand::this_binary("echo_server")
            .watchdog(Some(Duration::from_millis(700)))
            .spawn_blocking()
            .unwrap();
        let client = EchoBlockingClient::connect(server.name().clone()).unwrap();
        // The watchdog kills the server in the middle of this call; the test ignores the
        // error it gets, as a careless test might.
        let _ = client.with_timeout(Duration::from_secs(60)).sleep(60_000);
        drop(server);
    })
    .join();
    let message = panic_message(&*failed.expect_err("dropping the server was to fail the test"));
    assert!(message.contains("was killed by its watchdog after 700ms"), "{message:?}");
}

/// Tests run in parallel (threads of one process; and processes, which the pid in a name
/// covers): every server gets a name of its own, and each name reaches its own process.
#[test]
fn servers_started_in_parallel_get_names_and_processes_of_their_own() {
    const SERVERS: usize = 6;
    let start = std::sync::Arc::new(std::sync::Barrier::new(SERVERS));
    let threads: Vec<_> = (0..SERVERS)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                blocking_watchdog(TEST_WATCHDOG, move || {
                    start.wait();
                    let server = ServerCommand::this_binary("echo_server").spawn_blocking().unwrap();
                    let client = EchoBlockingClient::connect(server.name().clone()).unwrap();
                    assert_eq!(client.pid().unwrap(), server.pid());
                    (server.name().as_str().to_owned(), server.pid(), server)
                })
            })
        })
        .collect();
    let servers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let names: std::collections::HashSet<_> = servers.iter().map(|(name, _, _)| name.clone()).collect();
    let pids: std::collections::HashSet<_> = servers.iter().map(|(_, pid, _)| *pid).collect();
    assert_eq!((names.len(), pids.len()), (SERVERS, SERVERS), "{names:?} {pids:?}");
}

/// What a server killed with `SIGKILL` leaves (nothing of it runs to clean up), and who
/// cleans it: the next `bind` of any plain name by a server of this user, which sees the
/// name's lock free (the kernel released it with the process) and its socket refusing.
/// Real processes throughout: the killed server and the one that sweeps are children of this
/// binary. They share a per-user directory of this test's own (their `XDG_RUNTIME_DIR`), so
/// no other test's bind sweeps the files before the test has seen them.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_servers_files_stay_until_the_next_servers_bind_sweeps_them() {
    use std::os::unix::process::ExitStatusExt;

    watchdog(TEST_WATCHDOG, async {
        let runtime = std::env::temp_dir().join(format!("tk-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&runtime).unwrap();
        let dir = runtime.join("pipe-rpc");
        let files_of = |name: &rpc_core::PipeName| {
            let sock = dir.join(format!("{}.sock", name.as_str()));
            let lock = dir.join(format!("{}.sock.lock", name.as_str()));
            [sock, lock]
        };
        let in_runtime = |command: ServerCommand| command.env("XDG_RUNTIME_DIR", &runtime);

        let killed = in_runtime(ServerCommand::this_binary("echo_server")).spawn().await.unwrap();
        let killed_files = files_of(killed.name());
        for f in &killed_files {
            assert!(f.exists(), "{} should exist while the server runs", f.display());
        }
        let crashed = killed.crash().await;
        // `Child::kill` sends SIGKILL (9) on Unix.
        assert_eq!(crashed.status.signal(), Some(9), "{}", crashed.exit);
        for f in &killed_files {
            assert!(f.exists(), "{} vanished: SIGKILL leaves it, and nothing swept yet", f.display());
        }

        // Another server starts, on a name of its own: its bind sweeps the dead one's files.
        let next = in_runtime(ServerCommand::this_binary("echo_server")).spawn().await.unwrap();
        for f in &killed_files {
            assert!(!f.exists(), "{} outlived the next server's bind", f.display());
        }
        let next_files = files_of(next.name());
        for f in &next_files {
            assert!(f.exists(), "the sweep took {}, a live server's", f.display());
        }
        let client = EchoClient::connect(rpc_core::PipeName::path(next_files[0].clone())).await.unwrap();
        assert_eq!(client.pid().await.unwrap(), next.pid());
        drop(client);
        // Shut down gracefully, it removes its own files: the directory is left empty.
        assert!(next.shutdown().await.status.success());
        drop(crashed);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        std::fs::remove_dir_all(&runtime).unwrap();
    })
    .await;
}
