//! A client process for the cross-process tests that need one (another user's client, run
//! through `setpriv`): connects to a `Probe` server and asks who it is.
//!
//! ```text
//! test-client NAME [--expect same-user|anyone|root|UID]
//! test-client NAME --blocking-notes TAG N
//! test-client --impostor PATH
//! ```
//!
//! Prints one line and exits 0: `ok PID UID GID SID` (the credentials the server's handler
//! saw for this client; the SID is empty off Windows), or `err KIND: MESSAGE` with the typed error's variant. Bad arguments
//! exit 64.
//!
//! `--blocking-notes` makes `N` one-way `note(TAG, seq, 0)` calls (`seq` = 0..N) with the
//! blocking client, outside any async runtime, prints `sent` and exits as soon as the
//! client is dropped: what the server receives shows what a program that exits right
//! after one-way calls gets.
//!
//! `--impostor` plays a fake server instead (Unix): it listens on the socket `PATH` (mode
//! 0666), prints `ready`, accepts one client and prints how many bytes it sent before
//! leaving or falling silent for 2 s.

use std::process::ExitCode;
use std::time::Duration;

use pipe_rpc_tests::{ProbeBlockingClient, ProbeClient};
use rpc_core::{ClientConfig, RpcError, ServerIdentity};

fn kind(e: &RpcError) -> String {
    match e {
        // The variant's name: `PermissionDenied { detail: .. }` -> `PermissionDenied`.
        RpcError::Transport(t) => format!("{t:?}").split([' ', '(', '{']).next().unwrap_or("?").to_owned(),
        other => format!("{other:?}").split([' ', '(', '{']).next().unwrap_or("?").to_owned(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The blocking client refuses to run inside a runtime: this mode starts none.
    if let [name, flag, tag, n] = &args[..]
        && flag == "--blocking-notes"
    {
        return blocking_notes(name, tag, n);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async_main(args.into_iter()))
}

fn blocking_notes(name: &str, tag: &str, n: &str) -> ExitCode {
    let (Ok(tag), Ok(n)) = (tag.parse::<u64>(), n.parse::<u64>()) else {
        eprintln!("usage: test-client NAME --blocking-notes TAG N");
        return ExitCode::from(64);
    };
    let config = ClientConfig::default().connect_timeout(Duration::from_secs(20));
    let client = match ProbeBlockingClient::connect_with(name, config) {
        Ok(c) => c,
        Err(e) => {
            println!("err {}: {e}", kind(&e));
            return ExitCode::FAILURE;
        }
    };
    for seq in 0..n {
        if let Err(e) = client.note(tag, seq, 0) {
            println!("err {}: {e}", kind(&e));
            return ExitCode::FAILURE;
        }
    }
    println!("sent");
    drop(client);
    ExitCode::SUCCESS
}

async fn async_main(mut args: impl Iterator<Item = String>) -> ExitCode {
    let name = args.next();
    if name.as_deref() == Some("--impostor") {
        return impostor(args.next());
    }
    let Some(name) = name else {
        eprintln!("usage: test-client NAME [--expect same-user|anyone|root|UID]");
        return ExitCode::from(64);
    };
    let mut expect = ServerIdentity::SameUser;
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next().as_deref()) {
            ("--expect", Some("same-user")) => expect = ServerIdentity::SameUser,
            ("--expect", Some("anyone")) => expect = ServerIdentity::Anyone,
            ("--expect", Some("root")) => expect = ServerIdentity::Root,
            ("--expect", Some(uid)) if uid.parse::<u32>().is_ok() => {
                expect = ServerIdentity::user(uid.parse().expect("checked"));
            }
            (f, v) => {
                eprintln!("test-client: bad argument {f} {v:?}");
                return ExitCode::from(64);
            }
        }
    }
    let config = ClientConfig::default().connect_timeout(Duration::from_secs(10)).expect_server(expect);
    let result = match ProbeClient::connect_with(name.as_str(), config).await {
        Ok(c) => c.whoami().await,
        Err(e) => Err(e),
    };
    match result {
        Ok((pid, uid, gid, sid)) => println!("ok {pid} {uid} {gid} {sid}"),
        Err(e) => println!("err {}: {e}", kind(&e)),
    }
    ExitCode::SUCCESS
}

#[cfg(unix)]
fn impostor(path: Option<String>) -> ExitCode {
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = path else {
        eprintln!("usage: test-client --impostor PATH");
        return ExitCode::from(64);
    };
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind the impostor's socket");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod the socket");
    println!("ready");
    std::io::stdout().flush().ok();
    let (mut client, _) = listener.accept().expect("accept");
    client.set_read_timeout(Some(Duration::from_secs(2))).expect("set a read timeout");
    let (mut total, mut buf) = (0usize, [0u8; 4096]);
    while let Ok(n) = client.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n;
    }
    println!("{total}");
    ExitCode::SUCCESS
}

#[cfg(not(unix))]
fn impostor(_: Option<String>) -> ExitCode {
    eprintln!("test-client: --impostor is Unix only");
    ExitCode::from(64)
}
