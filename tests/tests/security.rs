//! Who may connect and who may serve, across real processes and real users: handlers see
//! their caller's credentials; a client of another user is refused by the server's access
//! rule even when the socket itself is open to everyone; an allow list admits the user it
//! lists; a client refuses (and sends nothing to) a server of another user; a user's
//! connections beyond the per-user limit are refused naming the limit; the access rule is
//! given the client's user as the OS reports it (on Windows, once the hello is in).
//!
//! The tests that need a second user run a process as uid 65534 with `setpriv` (they need
//! root, as CI has); elsewhere they print why they are skipped. They are Unix only: wine runs
//! every process as one user, so under wine only the same-user tests run.

use std::time::Duration;

use pipe_rpc_tests::{ProbeClient, ServerProcess, client_config, connect, unique_name, watchdog};
use rpc_core::{PeerCredentials, RpcError, TransportError};

const SERVER: &str = env!("CARGO_BIN_EXE_test-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_sees_the_callers_pid_and_user_and_the_client_sees_the_servers() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(SERVER, &name, &[]).await;
        let c = connect(&name).await;
        let me = PeerCredentials::current_process();
        let (pid, uid, gid, sid) = c.whoami().await.unwrap();
        assert_eq!(pid, me.pid.unwrap());
        assert_eq!(Some(uid).filter(|&u| u != u32::MAX), me.uid, "uid");
        assert_eq!(Some(gid).filter(|&g| g != u32::MAX), me.gid, "gid");
        assert_eq!(sid, me.sid.map(|s| s.to_string()).unwrap_or_default(), "sid");
        if cfg!(windows) {
            assert!(sid.starts_with("S-1-"), "no user SID on Windows: {sid:?}");
        } else {
            assert!(me.uid.is_some(), "no uid on Unix");
        }
        // And the client knows who serves it.
        let server = c.channel().peer().server.expect("a pipe reports its server");
        assert_eq!(server.pid, Some(_server.pid()));
        assert_eq!((server.uid, server.sid), (me.uid, me.sid));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_connections_beyond_the_per_user_limit_are_refused_naming_the_limit() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(SERVER, &name, &["--max-per-user", "2"]).await;
        let first = connect(&name).await;
        let second = connect(&name).await;
        first.unit().await.unwrap();
        second.unit().await.unwrap();
        let third =
            ProbeClient::connect_with(name.clone(), client_config().connect_timeout(Duration::from_millis(200))).await;
        match third {
            Err(RpcError::Transport(TransportError::Busy { detail })) => {
                assert!(detail.contains("2 connections per user"), "{detail}");
            }
            other => panic!("a third connection of one user: {other:?}"),
        }
        // A connection that ends frees its place (the server notices the close at once);
        // a client refused meanwhile keeps trying within its connect timeout.
        drop(first);
        let c = connect(&name).await;
        c.unit().await.unwrap();
    })
    .await;
}

/// What the access rule is given is the client's user as the OS reports it: on Unix the
/// socket's peer credentials at accept; on Windows the user of the token the client connected
/// with, read by impersonating it once its hello is in. A rule refusing exactly this client
/// refuses it with its reason; the same rule negated admits it, and the handler sees the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_rule_is_given_the_clients_user_as_the_os_reports_it() {
    use pipe_rpc_tests::{ProbeImpl, ProbeServer};
    use rpc_core::{AccessPolicy, Server, ServerConfig};
    watchdog(async {
        let me = PeerCredentials::current_process();
        assert!(me.uid.is_some() || me.sid.is_some(), "this process's user cannot be read: {me}");
        let is_me = move |c: &PeerCredentials| (c.pid, c.uid, c.gid, c.sid) == (me.pid, me.uid, me.gid, me.sid);
        let serve = |name: rpc_core::PipeName, rule: AccessPolicy| {
            let server = Server::new(ProbeServer::new(ProbeImpl::default()))
                .config(ServerConfig::default().access(rule))
                .bind(name.clone())
                .unwrap();
            let handle = server.shutdown_handle();
            tokio::spawn(server.run());
            (name, handle)
        };

        let (name, refusing) = serve(
            unique_name!(),
            AccessPolicy::custom(move |c| if is_me(c) { Err(format!("no entry for {c}")) } else { Ok(()) }),
        );
        match ProbeClient::connect_with(name, client_config()).await {
            Err(RpcError::Transport(TransportError::PermissionDenied { detail })) => {
                assert!(detail.contains(&format!("no entry for {me}")), "{detail}");
            }
            other => panic!("a rule refusing this client admitted it, or failed otherwise: {other:?}"),
        }

        let (name, admitting) = serve(
            unique_name!(),
            AccessPolicy::custom(move |c| if is_me(c) { Ok(()) } else { Err(format!("only {me}, not {c}")) }),
        );
        let c = ProbeClient::connect_with(name, client_config()).await.unwrap();
        let (pid, _uid, _gid, sid) = c.whoami().await.unwrap();
        assert_eq!(pid, me.pid.unwrap());
        assert_eq!(sid, me.sid.map(|s| s.to_string()).unwrap_or_default());
        refusing.shutdown();
        admitting.shutdown();
    })
    .await;
}

/// The tests with a second user (uid 65534, through `setpriv`).
#[cfg(unix)]
mod other_users {
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;
    use std::process::Stdio;

    use pipe_rpc_tests::{ProbeClient, ServerProcess, client_config, watchdog};
    use rpc_core::{PeerCredentials, PipeName, RpcError, ServerIdentity, TransportError};
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::Command;

    use super::SERVER;

    const CLIENT: &str = env!("CARGO_BIN_EXE_test-client");
    const NOBODY: u32 = 65534;
    const AS_NOBODY: [&str; 4] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

    /// Whether this process can run another as uid 65534; if not, says why the test is skipped.
    fn can_switch_users(test: &str) -> bool {
        let me = PeerCredentials::current_process();
        let setpriv = std::process::Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success());
        if me.uid == Some(0) && setpriv {
            return true;
        }
        eprintln!("{test}: skipped: needs root and setpriv (util-linux) to run a process as uid {NOBODY}");
        false
    }

    /// A directory every user can reach, for sockets another user must be able to open;
    /// removed when dropped.
    struct SharedDir(PathBuf);

    impl SharedDir {
        fn new(tag: &str) -> SharedDir {
            let dir = std::env::temp_dir().join(format!("pipe-rpc-shared-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            SharedDir(dir)
        }

        fn socket(&self, file: &str) -> PipeName {
            PipeName::path(self.0.join(file))
        }
    }

    impl Drop for SharedDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs `test-client` as uid 65534 against `name`; its one line of output.
    async fn client_as_nobody(name: &PipeName, args: &[&str]) -> String {
        let out = Command::new(AS_NOBODY[0])
            .args(&AS_NOBODY[1..])
            .arg(CLIENT)
            .arg(name.as_str())
            .args(args)
            .output()
            .await
            .expect("run test-client through setpriv");
        assert!(out.status.success(), "test-client failed: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn mode_of(name: &PipeName) -> u32 {
        std::fs::metadata(name.as_str()).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_users_client_is_refused_by_the_same_user_rule_even_through_an_open_socket() {
        if !can_switch_users("another_users_client_is_refused") {
            return;
        }
        watchdog(async {
            let dir = SharedDir::new("refused");
            let name = dir.socket("s.sock");
            let _server = ServerProcess::spawn(SERVER, &name, &["--socket-mode", "666"]).await;
            // The negative control: the OS lets anyone open this socket, so only the server's
            // peer check stands between uid 65534 and the service.
            assert_eq!(mode_of(&name), 0o666);
            let line = client_as_nobody(&name, &["--expect", "anyone"]).await;
            assert!(line.starts_with("err PermissionDenied:"), "{line}");
            assert!(line.contains("same user only") && line.contains("uid 65534"), "{line}");
            // The server goes on serving its own user.
            let c = ProbeClient::connect_with(name.clone(), client_config()).await.unwrap();
            assert_eq!(c.echo_string("still serving".into()).await.unwrap(), "still serving");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_allow_list_admits_the_user_it_lists_and_its_handler_sees_that_user() {
        if !can_switch_users("an_allow_list_admits") {
            return;
        }
        watchdog(async {
            let dir = SharedDir::new("allowed");
            let name = dir.socket("s.sock");
            let _server = ServerProcess::spawn(SERVER, &name, &["--socket-mode", "666", "--allow-uid", "65534"]).await;
            let line = client_as_nobody(&name, &["--expect", "anyone"]).await;
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.first(), Some(&"ok"), "{line}");
            assert_eq!(&fields[2..], ["65534", "65534"], "{line}");
        })
        .await;
    }

    /// A fake server as uid 65534 (`test-client --impostor`): it reports how many bytes its
    /// one client sent before leaving (or 2 s of silence).
    async fn impostor(path: &PipeName) -> tokio::process::Child {
        Command::new(AS_NOBODY[0])
            .args(&AS_NOBODY[1..])
            .args([CLIENT, "--impostor", path.as_str()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run the impostor through setpriv")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_refuses_a_server_of_another_user_and_sends_it_nothing() {
        if !can_switch_users("a_client_refuses_a_server_of_another_user") {
            return;
        }
        watchdog(async {
            let dir = SharedDir::new("impostor");
            let name = dir.socket("fake.sock");
            let mut fake = impostor(&name).await;
            let mut out = BufReader::new(fake.stdout.take().unwrap()).lines();
            assert_eq!(out.next_line().await.unwrap().as_deref(), Some("ready"));
            let got = ProbeClient::connect_with(name.clone(), client_config()).await;
            match got {
                Err(RpcError::Transport(TransportError::ServerIdentity { expected, actual })) => {
                    assert!(expected.contains("uid 0"), "{expected}");
                    assert!(actual.contains("uid 65534"), "{actual}");
                }
                Ok(_) => panic!("connected to another user's server"),
                Err(e) => panic!("expected a ServerIdentity error, got {e:?}"),
            }
            // Not one byte reached the impostor.
            assert_eq!(out.next_line().await.unwrap().as_deref(), Some("0"));

            // The positive control: a real server of that user, accepted when asked for.
            let name = dir.socket("real.sock");
            let server =
                ServerProcess::spawn_via(&AS_NOBODY, SERVER, &name, &["--socket-mode", "666", "--access", "anyone"])
                    .await;
            let refused = ProbeClient::connect_with(name.clone(), client_config()).await;
            assert!(
                matches!(refused, Err(RpcError::Transport(TransportError::ServerIdentity { .. }))),
                "the default accepted another user's server: {refused:?}"
            );
            let config = client_config().expect_server(ServerIdentity::user(NOBODY));
            let c = ProbeClient::connect_with(name.clone(), config).await.unwrap();
            assert_eq!(c.channel().peer().server.and_then(|s| s.uid), Some(NOBODY));
            assert_eq!(c.channel().peer().server.and_then(|s| s.pid), Some(server.pid()));
            assert_eq!(c.echo_string("as nobody".into()).await.unwrap(), "as nobody");
        })
        .await;
    }
}
