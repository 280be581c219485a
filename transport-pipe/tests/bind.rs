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
        // The operating system names the live server: here, this process (on Unix from the
        // socket's peer credentials, on Windows from the pipe's server process id).
        #[cfg(unix)]
        assert!(msg.contains(&format!("(pid {}, uid", std::process::id())), "{msg}");
        #[cfg(windows)]
        assert!(msg.contains(&format!("(pid {}, user S-1-", std::process::id())), "{msg}");
        assert!(msg.contains(&name.resolve().unwrap().display().to_string()), "{msg}");
        // The first listener was not displaced. (The failed bind's probe connection is
        // queued first; serve it away.)
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

    /// A scratch directory shared like `/tmp` (mode 1777) holding a stale socket file at
    /// `file`, owned by `uid`:`gid`: a std listener bound there and dropped (std does not unlink
    /// its socket, as a crashed server would not). `None` if this process may not give a file
    /// away (only root may).
    fn stale_socket_owned_by(file: &str, uid: u32, gid: u32) -> Option<(support::ScratchDir, std::path::PathBuf)> {
        use std::os::unix::fs::PermissionsExt;
        let dir = support::scratch_dir();
        let path = dir.join(file);
        std::fs::set_permissions(path.parent().unwrap(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        match std::os::unix::fs::chown(&path, Some(uid), Some(gid)) {
            Ok(()) => Some((dir, path)),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => None,
            Err(e) => panic!("chown {}: {e}", path.display()),
        }
    }

    fn own_ids() -> (u32, u32) {
        let me = transport_pipe::PeerCredentials::current_process();
        (me.uid.unwrap(), me.gid.unwrap())
    }

    /// Another user's stale socket in a shared directory is refused, not unlinked and taken
    /// over, whoever binds (root included: these tests run as root to give the file away).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_users_stale_socket_is_refused_with_its_owner_and_path_and_left_in_place() {
        watchdog(async {
            const NOBODY: u32 = 65534;
            let Some((_dir, path)) = stale_socket_owned_by("foreign.sock", NOBODY, NOBODY) else {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIPPED: only root can chown a socket file to uid {NOBODY}");
                return;
            };
            assert_ne!(own_ids().0, NOBODY, "the test must not run as uid {NOBODY}");
            let err = PipeListener::bind(path.as_path()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ForeignSocket, "{err}");
            assert_eq!(err.owner_uid(), Some(NOBODY), "{err}");
            assert_eq!(err.path(), Some(path.as_path()), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("uid {NOBODY}")) && msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("remove the file by hand"), "{msg}");
            // Still there, still that user's socket.
            let md = std::fs::symlink_metadata(&path).expect("the stale socket is still there");
            assert!(std::os::unix::fs::FileTypeExt::is_socket(&md.file_type()));
            assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY));
            // The lock file this bind created is gone (it would keep that user out of the
            // name: they cannot open our 0600 file); a lock file of theirs stays.
            let lock = std::path::PathBuf::from(format!("{}.lock", path.display()));
            assert!(!lock.exists(), "our lock file was left beside their socket");
            std::fs::write(&lock, b"").unwrap();
            std::os::unix::fs::chown(&lock, Some(NOBODY), Some(NOBODY)).unwrap();
            let err = PipeListener::bind(path.as_path()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ForeignSocket, "{err}");
            assert_eq!(std::fs::symlink_metadata(&lock).expect("their lock file stays").uid(), NOBODY);
            assert!(path.exists());
        })
        .await;
    }

    /// The control: the same stale socket owned by this process's user is reclaimed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn our_own_stale_socket_in_a_shared_directory_is_reclaimed() {
        watchdog(async {
            let (uid, gid) = own_ids();
            let (_dir, path) = stale_socket_owned_by("own.sock", uid, gid).expect("chown to ourselves");
            let l = PipeListener::bind(path.as_path()).unwrap();
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

    /// What a killed server leaves at `name`: its socket file, refusing connections (a std
    /// listener bound there and dropped: std does not unlink), and its lock file, free (the
    /// kernel released the lock with the process).
    fn leave_as_killed(name: &PipeName) -> (std::path::PathBuf, std::path::PathBuf) {
        let path = name.resolve().unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let lock = std::path::PathBuf::from(format!("{}.lock", path.display()));
        std::fs::write(&lock, b"").unwrap();
        (path, lock)
    }

    /// Whether someone holds the `flock` of `lock`.
    fn lock_is_held(lock: &std::path::Path) -> bool {
        use std::os::unix::io::AsRawFd;
        let file = std::fs::File::open(lock).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: the descriptor is open for the call; flock reads no memory of ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        rc != 0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listener_holds_its_name_lock_for_its_whole_life() {
        watchdog(async {
            let name = unique_name();
            let listener = PipeListener::bind(&name).unwrap();
            let lock = std::path::PathBuf::from(format!("{}.lock", name.resolve().unwrap().display()));
            assert!(lock_is_held(&lock), "a live listener's lock is free: a sweep could not tell it from a dead one");
            assert_serves(&listener).await;
            assert!(lock_is_held(&lock));
            drop(listener);
            assert!(!lock.exists(), "the lock file outlived its listener");
        })
        .await;
    }

    /// A server killed on a name never bound again (a test's unique name) used to leave its
    /// socket and lock files in the per-user directory for good: any later `bind` of a plain
    /// name sweeps them, and leaves everything that is not provably stale alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn binding_any_plain_name_sweeps_what_killed_servers_left_and_nothing_else() {
        watchdog(async {
            // Creates the per-user directory.
            drop(PipeListener::bind(unique_name()).unwrap());
            let killed = unique_name();
            let (killed_sock, killed_lock) = leave_as_killed(&killed);
            // A lock file alone (a server killed between taking its lock and binding).
            let (orphan_sock, orphan_lock) = leave_as_killed(&unique_name());
            std::fs::remove_file(&orphan_sock).unwrap();
            // A live listener's files.
            let live = PipeListener::bind(unique_name()).unwrap();
            let live_sock = live.name().resolve().unwrap();
            // A live socket whose lock is free (a server that does not take the lock).
            let foreign_live = unique_name();
            let foreign_sock = foreign_live.resolve().unwrap();
            let _foreign = std::os::unix::net::UnixListener::bind(&foreign_sock).unwrap();
            let foreign_lock = std::path::PathBuf::from(format!("{}.lock", foreign_sock.display()));
            std::fs::write(&foreign_lock, b"").unwrap();
            // A file that is not a socket, with a free lock file.
            let data = unique_name().resolve().unwrap();
            std::fs::write(&data, b"precious").unwrap();
            let data_lock = std::path::PathBuf::from(format!("{}.lock", data.display()));
            std::fs::write(&data_lock, b"").unwrap();

            let other = PipeListener::bind(unique_name()).unwrap();

            assert!(!killed_sock.exists() && !killed_lock.exists(), "a killed server's files were not swept");
            assert!(!orphan_lock.exists(), "an orphan lock file was not swept");
            assert!(live_sock.exists(), "a live listener's socket was swept");
            assert!(foreign_sock.exists() && foreign_lock.exists(), "a live socket was swept");
            assert_eq!(std::fs::read(&data).unwrap(), b"precious");
            assert!(data_lock.exists());
            assert_serves(&live).await;
            assert_serves(&other).await;
            // The killed server's name binds as any free name does.
            assert_serves(&PipeListener::bind(&killed).unwrap()).await;
            for f in [&foreign_sock, &foreign_lock, &data, &data_lock] {
                std::fs::remove_file(f).unwrap();
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remove_stale_removes_a_gone_servers_files_and_refuses_a_live_ones() {
        watchdog(async {
            drop(PipeListener::bind(unique_name()).unwrap());
            let killed = unique_name();
            let (sock, lock) = leave_as_killed(&killed);
            assert!(PipeListener::remove_stale(&killed).unwrap());
            assert!(!sock.exists() && !lock.exists());
            assert!(!PipeListener::remove_stale(&killed).unwrap(), "nothing was left to remove");

            let listener = PipeListener::bind(unique_name()).unwrap();
            let started = std::time::Instant::now();
            let err = PipeListener::remove_stale(listener.name()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NameInUse, "{err}");
            assert!(err.to_string().contains(&format!("(pid {}, uid", std::process::id())), "{err}");
            assert!(started.elapsed() < std::time::Duration::from_millis(500), "not at once: {:?}", started.elapsed());
            assert!(listener.name().resolve().unwrap().exists());
            // The probe's connection is queued first; serve it away.
            drop(listener.accept().await.unwrap());
            assert_serves(&listener).await;
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
