//! `file-server` (seed 004) as real processes: the client shows who serves the pipe, reads
//! a file its user may read, gets a typed denial for one it may not, and cannot leave the
//! served directory. One server serves every client of a test.
//!
//! Unix: the denial is tested as another user, uid 65534 through `setpriv` (needs root, as
//! CI has). Windows: by files whose DACL denies the test's own user (set with
//! `SetFileSecurityW`); a second user cannot be tested under wine, which runs every process
//! as one user.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const FILE_SERVER: &str = env!("CARGO_BIN_EXE_file-server");
#[cfg(unix)]
const AS_NOBODY: [&str; 4] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
const WATCHDOG: Duration = Duration::from_secs(60);

/// A directory every user can reach (the socket and the served files); removed on drop.
struct Shared(PathBuf);

impl Shared {
    fn new() -> Shared {
        let dir = std::env::temp_dir().join(format!("file-server-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("files")).unwrap();
        Shared(dir)
    }

    /// Writes `files/NAME`.
    fn put(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join("files").join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

#[cfg(unix)]
fn shared_for_unix() -> Shared {
    use std::os::unix::fs::PermissionsExt;
    let shared = Shared::new();
    let mode = |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    mode(&shared.0.join("files"), 0o755);
    mode(&shared.0, 0o777);
    mode(&shared.put("public.txt", "hello, everyone"), 0o644);
    mode(&shared.put("secret.txt", "for the owner only"), 0o600);
    shared
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Give denied files back to their owner first, so they can be removed.
        #[cfg(windows)]
        for entry in std::fs::read_dir(self.0.join("files")).into_iter().flatten().flatten() {
            let _ = pipe_rpc_examples::win_access::set_dacl(&entry.path(), "D:(A;;FA;;;WD)");
        }
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

fn start_server(name: &str, dir: &Path) -> ServerProc {
    let mut child = Command::new(FILE_SERVER)
        .args(["--serve", name, dir.to_str().unwrap(), "--anyone"])
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

fn read(prefix: &[&str], name: &str, file: &str, extra: &[&str]) -> Output {
    let (exe, pre) = match prefix.split_first() {
        Some((first, rest)) => (*first, [rest, &[FILE_SERVER]].concat()),
        None => (FILE_SERVER, Vec::new()),
    };
    Command::new(exe).args(pre).args(["--read", name, file]).args(extra).output().expect("run file-server --read")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(unix)]
fn can_switch_users() -> bool {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
    let setpriv = Command::new("setpriv").arg("--version").output().is_ok_and(|o| o.status.success());
    root && setpriv
}

#[cfg(unix)]
#[test]
fn the_file_server_reads_as_the_calling_user_and_shows_its_identity() {
    let shared = shared_for_unix();
    let socket = shared.0.join("fs.sock");
    let socket = socket.to_str().unwrap();
    let _server = start_server(socket, &shared.0.join("files"));
    let me = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();

    // Its own user reads both files, and sees who serves it (the OS's word, not the server's).
    let own = stdout(&read(&[], socket, "public.txt", &[]));
    assert!(own.contains(&format!("uid {}", me.trim())), "{own}");
    assert!(own.contains("hello, everyone"), "{own}");
    assert!(stdout(&read(&[], socket, "secret.txt", &[])).contains("for the owner only"));
    // Nobody leaves the served directory.
    for bad in ["../fs.sock", "/etc/passwd", "files/../../x"] {
        let out = stdout(&read(&[], socket, bad, &[]));
        assert!(out.contains("invalid path"), "{bad}: {out}");
    }

    if !can_switch_users() {
        eprintln!("the cross-user part is skipped: it needs root and setpriv to run as uid 65534");
        return;
    }
    // Another user: refuses a server it does not expect, then reads what it may and is
    // denied (typed, naming the rule) what it may not.
    let refused = read(&AS_NOBODY, socket, "public.txt", &[]);
    assert!(!refused.status.success(), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("server identity") && err.contains("uid 65534") && err.contains("uid 0"), "{err}");
    let public = stdout(&read(&AS_NOBODY, socket, "public.txt", &["--server-uid", "0"]));
    assert!(public.contains("server: pid") && public.contains("uid 0"), "{public}");
    assert!(public.contains("hello, everyone"), "{public}");
    let secret = stdout(&read(&AS_NOBODY, socket, "secret.txt", &["--server-uid", "0"]));
    assert!(secret.contains("denied: uid 65534 may not read secret.txt"), "{secret}");
    assert!(secret.contains("mode 0600") && !secret.contains("for the owner only"), "{secret}");
}

/// Windows: each read is decided by `AccessCheck` of the file's DACL against the caller's
/// token. Files whose DACL denies the test's own user (an empty protected DACL; an explicit
/// deny ahead of an allow for Everyone) are refused with the typed denial, naming the user,
/// the owner and the DACL; a DACL that allows that user, alone, is served.
///
/// Under wine this is the whole check as far as wine can show it: wine keeps a file's DACL as
/// Unix mode bits (it reads back a DACL derived from them, dropping entries for other SIDs)
/// and does not enforce it on open for root, so the refusal seen here is `AccessCheck`'s own,
/// against the DACL wine reports. The caller is always the server's own user there.
#[cfg(windows)]
#[test]
fn the_file_server_checks_each_read_against_the_files_dacl_for_the_calling_user() {
    use pipe_rpc_examples::win_access::set_dacl;

    let me = rpc_core::PeerCredentials::current_process().sid.expect("this process's user SID");
    let shared = Shared::new();
    shared.put("public.txt", "hello, everyone");
    set_dacl(&shared.put("mine.txt", "for me alone"), &format!("D:P(A;;FR;;;{me})")).unwrap();
    set_dacl(&shared.put("secret.txt", "for nobody"), "D:P").unwrap();
    set_dacl(&shared.put("denied.txt", "for everyone but me"), &format!("D:P(D;;FR;;;{me})(A;;FA;;;WD)")).unwrap();
    let name = format!("file-server-test-{}", std::process::id());
    let _server = start_server(&name, &shared.0.join("files"));

    // Served, with who serves it from the OS.
    let public = stdout(&read(&[], &name, "public.txt", &[]));
    assert!(public.contains("server: pid ") && public.contains(&format!("user {me}")), "{public}");
    assert!(public.contains("hello, everyone"), "{public}");
    assert!(stdout(&read(&[], &name, "mine.txt", &[])).contains("for me alone"));

    // Refused by the DACL, typed, naming the user, the owner and the DACL.
    for (file, text) in [("secret.txt", "for nobody"), ("denied.txt", "for everyone but me")] {
        let out = stdout(&read(&[], &name, file, &[]));
        assert!(out.contains(&format!("denied: user {me} may not read {file} (owner {me}, DACL D:")), "{file}: {out}");
        assert!(!out.contains(text), "{file}: {out}");
    }

    // Nobody leaves the served directory.
    for bad in [r"..\x", r"C:\windows\win.ini", r"files\..\..\x", r"\\.\pipe\x"] {
        let out = stdout(&read(&[], &name, bad, &[]));
        assert!(out.contains("invalid path"), "{bad}: {out}");
    }
    assert!(stdout(&read(&[], &name, "missing.txt", &[])).contains("not found: missing.txt"));
}
