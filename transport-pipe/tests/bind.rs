//! `PipeListener::bind`: names in use, stale files, permissions, invalid names, cleanup.

mod support;

use support::{unique_name, watchdog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport_pipe::{ConnectOptions, ErrorKind, PipeListener, PipeName, connect};

/// Connects and exchanges one byte with whatever accepts on `listener`.
async fn assert_serves(listener: &PipeListener) {
    let name = listener.name().clone();
    let client = tokio::spawn(async move {
        let mut c = connect(&name, &ConnectOptions::default()).await.unwrap();
        c.write_all(b"?").await.unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        b[0]
    });
    let mut s = listener.accept().await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    s.write_all(b"!").await.unwrap();
    assert_eq!(client.await.unwrap(), b'!');
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_listener_makes_the_name_in_use_and_keeps_serving() {
    watchdog(async {
        let name = unique_name();
        let first = PipeListener::bind(&name).unwrap();
        let second = PipeListener::bind(&name);
        if support::under_wine() && second.is_ok() {
            // On Windows, interprocess creates the first instance with
            // FILE_FLAG_FIRST_PIPE_INSTANCE and the second bind fails with
            // ERROR_ACCESS_DENIED; wine 8 ignores that flag.
            // Straight to stderr: the harness captures `eprintln!` of passing tests.
            use std::io::Write;
            let _ =
                writeln!(std::io::stderr(), "SKIPPED under wine: wine does not enforce FILE_FLAG_FIRST_PIPE_INSTANCE");
            return;
        }
        let err = second.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NameInUse, "{err}");
        assert_eq!(err.name(), Some(&name));
        let msg = err.to_string();
        assert!(msg.contains("another server") && msg.contains("is listening on pipe"), "{msg}");
        // On Unix the kernel names the live server: here, this process.
        #[cfg(unix)]
        assert!(msg.contains(&format!("(pid {}, uid", std::process::id())), "{msg}");
        assert!(msg.contains(&name.resolve().unwrap().display().to_string()), "{msg}");
        // The first listener was not displaced. (On Unix the failed bind's probe connection
        // is queued first; serve it away.)
        #[cfg(unix)]
        drop(first.accept().await.unwrap());
        assert_serves(&first).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_is_free_again_after_drop() {
    watchdog(async {
        let name = unique_name();
        let first = PipeListener::bind(&name).unwrap();
        #[cfg(unix)]
        let path = name.resolve().unwrap();
        #[cfg(unix)]
        assert!(path.exists());
        drop(first);
        #[cfg(unix)]
        {
            assert!(!path.exists(), "socket file should be removed on drop");
            let lock = format!("{}.lock", path.display());
            assert!(!std::path::Path::new(&lock).exists(), "lock file should be removed on drop");
        }
        let again = PipeListener::bind(&name).unwrap();
        assert_serves(&again).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_rejected_with_the_limit() {
    watchdog(async {
        let err = PipeListener::bind("no/slash").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidName);
        assert!(err.to_string().contains("'/'"), "{err}");

        let err = PipeListener::bind("x".repeat(transport_pipe::NAME_MAX + 1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidName);
        assert!(err.to_string().contains("limit of 64"), "{err}");

        #[cfg(unix)]
        let (too_long, limit) = (
            PipeName::path(format!("/tmp/{}.sock", "l".repeat(120))),
            format!("limit of {} bytes", if cfg!(any(target_os = "linux", target_os = "android")) { 107 } else { 103 }),
        );
        #[cfg(windows)]
        let (too_long, limit) = (PipeName::new(format!(r"\\.\pipe\{}", "l".repeat(250))), "limit of 256".to_string());
        let err = PipeListener::bind(&too_long).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidName);
        assert!(err.to_string().contains(&limit), "{err}");
        let err = connect(&too_long, &ConnectOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidName);
    })
    .await;
}

#[test]
fn bind_outside_a_runtime_is_an_error_not_a_panic() {
    let err = PipeListener::bind(unique_name()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[cfg(unix)]
mod unix {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn socket_is_0600_and_directory_0700() {
        watchdog(async {
            let name = unique_name();
            let _l = PipeListener::bind(&name).unwrap();
            let path = name.resolve().unwrap();
            let sock_mode = std::fs::symlink_metadata(&path).unwrap().mode() & 0o777;
            assert_eq!(sock_mode, 0o600, "socket mode {sock_mode:o}");
            let dir_mode = std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o7777;
            assert_eq!(dir_mode, 0o700, "directory mode {dir_mode:o}");
        })
        .await;
    }

    /// A socket file left by a crashed server (std's UnixListener does not unlink on drop)
    /// refuses connections; bind removes it and takes the name.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_socket_file_is_reclaimed() {
        watchdog(async {
            let name = unique_name();
            // Creates the private directory, and leaves the name unused.
            drop(PipeListener::bind(&name).unwrap());
            let path = name.resolve().unwrap();
            drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
            assert!(path.exists(), "stale file should exist before bind");
            let l = PipeListener::bind(&name).unwrap();
            assert_serves(&l).await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_that_is_not_a_socket_is_never_removed() {
        watchdog(async {
            let dir = support::scratch_dir();
            let path = dir.join("data.sock");
            std::fs::write(&path, b"precious").unwrap();
            let err = PipeListener::bind(path.as_path()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NameInUse, "{err}");
            assert!(err.to_string().contains("not a socket"), "{err}");
            assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        })
        .await;
    }

    /// Explicit paths get the requested mode too (the umask can only remove bits).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn explicit_path_uses_the_configured_mode() {
        watchdog(async {
            let dir = support::scratch_dir();
            let path = dir.join("grp.sock");
            let opts = transport_pipe::ListenOptions::default().mode(0o640);
            let _l = PipeListener::bind_with(path.as_path(), &opts).unwrap();
            let mode = std::fs::symlink_metadata(&path).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o640, "socket mode {mode:o}");
        })
        .await;
    }

    /// A listener being dropped removes only its own socket file: if another server has since
    /// taken the path, that server's file stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_leaves_a_replacement_socket_alone() {
        watchdog(async {
            let dir = support::scratch_dir();
            let path = dir.join("replaced.sock");
            let old = PipeListener::bind(path.as_path()).unwrap();
            std::fs::remove_file(&path).unwrap();
            let new = PipeListener::bind(path.as_path()).unwrap();
            drop(old);
            assert!(path.exists(), "the new server's socket was removed");
            assert_serves(&new).await;
        })
        .await;
    }

    /// Several threads race to bind one stale name: exactly one wins, and the path is its
    /// socket (no loser unlinked the winner's fresh file).
    #[test]
    fn racing_binds_on_a_stale_name_leave_one_winner() {
        const RACERS: usize = 6;
        let dir = support::scratch_dir();
        let path = dir.join("race.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let start = std::sync::Arc::new(std::sync::Barrier::new(RACERS));
        let done = std::sync::Arc::new(std::sync::Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|_| {
                let (path, start, done) = (path.clone(), start.clone(), done.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    let _guard = rt.enter();
                    start.wait();
                    let result = PipeListener::bind(path.as_path());
                    // Everyone has finished binding before anyone checks or drops.
                    done.wait();
                    match result {
                        Ok(listener) => {
                            // The kernel queues this in the winner's backlog: the file at the
                            // path is the winner's live socket.
                            std::os::unix::net::UnixStream::connect(&path).expect("winner reachable");
                            drop(listener);
                            Ok(())
                        }
                        Err(e) => Err(e.kind()),
                    }
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
        assert!(results.iter().all(|r| matches!(r, Ok(()) | Err(ErrorKind::NameInUse))), "{results:?}");
    }
}
