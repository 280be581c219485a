//! `file-server` (seed 004) as real processes: the client shows who serves the pipe, reads
//! a file its user may read, gets a typed denial for one it may not (when run as another
//! user, uid 65534 through `setpriv`: needs root, as CI has), and cannot leave the served
//! directory. One server serves every client of the test.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const FILE_SERVER: &str = env!("CARGO_BIN_EXE_file-server");
const AS_NOBODY: [&str; 4] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
const WATCHDOG: Duration = Duration::from_secs(60);

/// A directory every user can reach (the socket and the served files); removed on drop.
struct Shared(PathBuf);

impl Shared {
    fn new() -> Shared {
        let dir = std::env::temp_dir().join(format!("file-server-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("files")).unwrap();
        for d in [&dir, &dir.join("files")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let put = |name: &str, text: &str, mode: u32| {
            let p = dir.join("files").join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        put("public.txt", "hello, everyone", 0o644);
        put("secret.txt", "for the owner only", 0o600);
        Shared(dir)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server, killed on drop.
struct ServerProc(Child);

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(socket: &Path, dir: &Path) -> ServerProc {
    let mut child = Command::new(FILE_SERVER)
        .args(["--serve", socket.to_str().unwrap(), dir.to_str().unwrap(), "--anyone"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start file-server --serve");
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
    let line = rx.recv_timeout(WATCHDOG).expect("the server prints that it listens");
    assert!(line.starts_with("listening on"), "{line}");
    ServerProc(child)
}

fn read(prefix: &[&str], socket: &Path, file: &str, extra: &[&str]) -> Output {
    let (exe, pre) = match prefix.split_first() {
        Some((first, rest)) => (*first, [rest, &[FILE_SERVER]].concat()),
        None => (FILE_SERVER, Vec::new()),
    };
    Command::new(exe)
        .args(pre)
        .args(["--read", socket.to_str().unwrap(), file])
        .args(extra)
        .output()
        .expect("run file-server --read")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn can_switch_users() -> bool {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success());
    root && setpriv
}

#[test]
fn the_file_server_reads_as_the_calling_user_and_shows_its_identity() {
    let shared = Shared::new();
    let socket = shared.0.join("fs.sock");
    let _server = start_server(&socket, &shared.0.join("files"));
    let me = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();

    // Its own user reads both files, and sees who serves it (the OS's word, not the server's).
    let own = stdout(&read(&[], &socket, "public.txt", &[]));
    assert!(own.contains(&format!("uid {}", me.trim())), "{own}");
    assert!(own.contains("hello, everyone"), "{own}");
    assert!(stdout(&read(&[], &socket, "secret.txt", &[])).contains("for the owner only"));
    // Nobody leaves the served directory.
    for bad in ["../fs.sock", "/etc/passwd", "files/../../x"] {
        let out = stdout(&read(&[], &socket, bad, &[]));
        assert!(out.contains("invalid path"), "{bad}: {out}");
    }

    if !can_switch_users() {
        eprintln!("the cross-user part is skipped: it needs root and setpriv to run as uid 65534");
        return;
    }
    // Another user: refuses a server it does not expect, then reads what it may and is
    // denied (typed, naming the rule) what it may not.
    let refused = read(&AS_NOBODY, &socket, "public.txt", &[]);
    assert!(!refused.status.success(), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("server identity") && err.contains("uid 65534") && err.contains("uid 0"), "{err}");
    let public = stdout(&read(&AS_NOBODY, &socket, "public.txt", &["--server-uid", "0"]));
    assert!(public.contains("server: pid") && public.contains("uid 0"), "{public}");
    assert!(public.contains("hello, everyone"), "{public}");
    let secret = stdout(&read(&AS_NOBODY, &socket, "secret.txt", &["--server-uid", "0"]));
    assert!(secret.contains("denied: uid 65534 may not read secret.txt"), "{secret}");
    assert!(secret.contains("mode 0600") && !secret.contains("for the owner only"), "{secret}");
}
