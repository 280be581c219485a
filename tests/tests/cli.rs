//! The `pipe-rpc` command-line tool as a real process (`pipe-rpc-under-test`, its `main`)
//! against a real `test-server` process: what `list`, `probe`, `methods` and `call` print,
//! and the documented exit code and message of each mistake (no server, no introspection,
//! an unknown method, arguments that are not JSON or not of the method's types).

use std::process::Stdio;
use std::time::Duration;

use pipe_rpc_tests::{ProbeClient, ServerProcess, unique_name, watchdog};
use rpc_core::PipeName;
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_test-server");
const CLI: &str = env!("CARGO_BIN_EXE_pipe-rpc-under-test");

// The documented exit codes (`pipe_rpc_cli`'s crate docs).
const OK: i32 = 0;
const CALL_FAILED: i32 = pipe_rpc_cli::CALL_FAILED as i32;
const USAGE: i32 = pipe_rpc_cli::USAGE as i32;
const UNREACHABLE: i32 = pipe_rpc_cli::UNREACHABLE as i32;
const NO_INTROSPECTION: i32 = pipe_rpc_cli::NO_INTROSPECTION as i32;

/// How one run of the tool ended.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The stdout lines, each parsed as JSON.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect()
    }
}

/// Runs the tool with `args`, `stdin` as its standard input.
async fn cli_with_input(args: &[&str], stdin: &str) -> Run {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(CLI)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the tool starts");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("stdin written");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("pipe-rpc {args:?} did not finish within 60 s"))
        .expect("the tool's output");
    Run {
        code: out.status.code().expect("an exit code, not a signal"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

async fn cli(args: &[&str]) -> Run {
    cli_with_input(args, "").await
}

/// Asserts the run exited `code`, showing its output if not.
fn expect_code(run: &Run, code: i32) {
    assert_eq!(run.code, code, "exit code; stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
}

async fn server(name: &PipeName, introspection: bool) -> ServerProcess {
    ServerProcess::spawn(SERVER, name, &["--introspection", if introspection { "on" } else { "off" }]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_a_running_server_live_with_its_service_pid_and_methods() {
    // wine answers FindFirstFileW on `\\.\pipe\*` with ERROR_BAD_DEV_TYPE; Windows lists it.
    if pipe_rpc_tests::skip_under_wine(r"wine cannot enumerate the pipe namespace (\\.\pipe\*)") {
        return;
    }
    watchdog(async {
        let name = unique_name!();
        let server = server(&name, true).await;
        let run = cli(&["list", "--json", "--live"]).await;
        expect_code(&run, OK);
        let lines = run.json_lines();
        let ours =
            lines.iter().find(|l| l["name"] == name.as_str()).unwrap_or_else(|| panic!("{name} not listed: {lines:?}"));
        assert_eq!(ours["state"], "live");
        assert_eq!(ours["service"], "Probe");
        assert_eq!(ours["pid"], server.pid());
        assert_eq!(ours["fingerprint"], format!("{:016x}", ProbeClient::ID.fingerprint));
        assert!(lines.iter().all(|l| l["state"] == "live"), "--live lists only servers that answered");
        // The table: a header, then our row with the same facts.
        let run = cli(&["list"]).await;
        expect_code(&run, OK);
        assert!(run.stdout.starts_with("NAME "), "{}", run.stdout);
        let row = run.stdout.lines().find(|l| l.split_whitespace().next() == Some(name.as_str())).expect("our row");
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[1..4], ["live", "Probe", &server.pid().to_string()], "{row}");
    })
    .await;
}

/// A socket file left by a server that died is listed as stale (without `--live`), and
/// listing it does not remove it.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_a_dead_servers_socket_as_stale_and_leaves_it_alone() {
    watchdog(async {
        let name = unique_name!();
        let path = name.resolve().expect("an address");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // A socket nobody listens on: bound, then closed (std leaves the file).
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let run = cli(&["list", "--json"]).await;
        expect_code(&run, OK);
        let lines = run.json_lines();
        let ours = lines.iter().find(|l| l["name"] == name.as_str()).expect("the stale socket is listed");
        assert_eq!(ours["state"], "stale");
        assert!(path.exists(), "list removed the stale socket");
        let run = cli(&["list", "--json", "--live"]).await;
        assert!(run.json_lines().iter().all(|l| l["name"] != name.as_str()), "--live leaves it out");
        std::fs::remove_file(&path).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_shows_the_servers_pid_service_fingerprint_and_user() {
    watchdog(async {
        let name = unique_name!();
        let server = server(&name, false).await;
        let run = cli(&["probe", name.as_str(), "--json"]).await;
        expect_code(&run, OK);
        let [about] = &run.json_lines()[..] else { panic!("one line: {}", run.stdout) };
        assert_eq!(about["service"], "Probe");
        assert_eq!(about["fingerprint"], format!("{:016x}", ProbeClient::ID.fingerprint));
        assert_eq!(about["reported_pid"], server.pid());
        assert_eq!(about["server"]["pid"], server.pid());
        assert_eq!(about["introspection"], false);
        assert_eq!(about["codecs"], serde_json::json!(["bincode", "postcard", "json"]));
        #[cfg(unix)]
        {
            let (_, uid, _, _) = pipe_rpc_tests::connect(&name).await.whoami().await.unwrap();
            assert_eq!(about["server"]["uid"], uid, "the server runs as this test's user");
        }
        let run = cli(&["probe", name.as_str()]).await;
        expect_code(&run, OK);
        assert!(run.stdout.contains(&format!("server pid:    {}\n", server.pid())), "{}", run.stdout);
        assert!(run.stdout.contains("service:       Probe\n"), "{}", run.stdout);
        assert!(run.stdout.contains("introspection: off\n"), "{}", run.stdout);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_lists_each_method_with_its_signature() {
    watchdog(async {
        let name = unique_name!();
        let _server = server(&name, true).await;
        let run = cli(&["methods", name.as_str(), "--json"]).await;
        expect_code(&run, OK);
        let lines = run.json_lines();
        let many = lines.iter().find(|m| m["name"] == "many_args").expect("many_args");
        assert_eq!(
            many["signature"],
            "many_args(a: u8, b: String, c: Vec<u16>, d: Option<bool>) -> (u8, String, Vec<u16>, Option<bool>)"
        );
        assert_eq!(lines.iter().find(|m| m["name"] == "count").unwrap()["kind"], "download");
        let run = cli(&["methods", name.as_str()]).await;
        expect_code(&run, OK);
        assert!(
            run.stdout.lines().any(|l| l.starts_with("echo_string ") && l.contains("echo_string(s: String) -> String"))
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_prints_the_result_for_positional_and_named_arguments() {
    watchdog(async {
        let name = unique_name!();
        let _server = server(&name, true).await;
        let n = name.as_str();
        let run = cli(&["call", n, "echo_string", "\"hello\"", "--json"]).await;
        expect_code(&run, OK);
        assert_eq!(run.stdout, "\"hello\"\n");
        let run = cli(&["--json", "call", n, "many_args", "7", "\"x\"", "[1,2]", "null"]).await;
        expect_code(&run, OK);
        assert_eq!(run.json_lines(), [serde_json::json!([7, "x", [1, 2], null])]);
        let run = cli(&["--json", "call", n, "many_args", r#"{"d":true,"c":[],"b":"y","a":9}"#]).await;
        expect_code(&run, OK);
        assert_eq!(run.json_lines(), [serde_json::json!([9, "y", [], true])]);
        // A fallible method's `Ok` is its value; the table form is pretty JSON.
        let run = cli(&["call", n, "divide", "7", "2"]).await;
        expect_code(&run, OK);
        assert_eq!(run.stdout, "3\n");
        // Zero arguments, and the server's own pid through a call.
        let run = cli(&["call", n, "pid"]).await;
        expect_code(&run, OK);
        assert_eq!(run.stdout.trim(), _server.pid().to_string());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_of_a_stream_prints_each_item_on_its_own_line_and_an_upload_reads_stdin() {
    watchdog(async {
        let name = unique_name!();
        let _server = server(&name, true).await;
        let run = cli(&["call", name.as_str(), "count", "5", "3", "0"]).await;
        expect_code(&run, OK);
        assert_eq!(run.stdout, "5\n6\n7\n");
        let run = cli_with_input(&["--json", "call", name.as_str(), "sum"], "1\n\n2\n39\n").await;
        expect_code(&run, OK);
        assert_eq!(run.stdout, "42\n");
        let run = cli_with_input(&["call", name.as_str(), "sum"], "1\nnope\n").await;
        expect_code(&run, USAGE);
        assert!(run.stderr.contains("line 2 of standard input is not JSON"), "{}", run.stderr);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_the_method_returns_is_printed_and_exits_1() {
    watchdog(async {
        let name = unique_name!();
        let _server = server(&name, true).await;
        let run = cli(&["--json", "call", name.as_str(), "divide", "1", "0"]).await;
        expect_code(&run, CALL_FAILED);
        assert_eq!(run.json_lines(), [serde_json::json!({"DivideByZero": {"dividend": 1}})]);
        assert!(run.stderr.contains("divide: the method returned an error"), "{}", run.stderr);
        // A call past its --timeout fails the same way, saying so.
        let run = cli(&["--timeout", "200ms", "call", name.as_str(), "sleep_ms", "0", "10000"]).await;
        expect_code(&run, CALL_FAILED);
        assert!(run.stderr.contains("sleep_ms:"), "{}", run.stderr);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_exits_3_naming_the_endpoint() {
    watchdog(async {
        let name = unique_name!();
        for args in [vec!["probe", name.as_str()], vec!["call", name.as_str(), "unit"]] {
            let run = cli(&args).await;
            expect_code(&run, UNREACHABLE);
            assert!(run.stderr.contains(name.as_str()) && run.stderr.contains("not running"), "{}", run.stderr);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_introspection_exits_4_saying_how_to_enable_it() {
    watchdog(async {
        let name = unique_name!();
        let _server = server(&name, false).await;
        for args in [vec!["methods", name.as_str()], vec!["call", name.as_str(), "echo_string", "\"x\""]] {
            let run = cli(&args).await;
            expect_code(&run, NO_INTROSPECTION);
            assert!(run.stderr.contains("ServerConfig::introspection(true)"), "{}", run.stderr);
            assert!(run.stdout.is_empty(), "{}", run.stdout);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_exits_2_listing_the_known_ones() {
    watchdog(async {
        let name = unique_name!();
        let _server = server(&name, true).await;
        let run = cli(&["call", name.as_str(), "echo_strin", "\"x\""]).await;
        expect_code(&run, USAGE);
        assert!(run.stderr.contains("has no method `echo_strin`"), "{}", run.stderr);
        assert!(run.stderr.contains("echo_string, whoami"), "{}", run.stderr);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2_naming_the_argument() {
    watchdog(async {
        let name = unique_name!();
        let _server = server(&name, true).await;
        let n = name.as_str();
        // Not JSON: the argument is named, and a bare word gets the quoting hint.
        let run = cli(&["call", n, "many_args", "7", "x", "[]", "null"]).await;
        expect_code(&run, USAGE);
        assert!(run.stderr.contains("argument 2 (`b: String`) is not JSON"), "{}", run.stderr);
        assert!(run.stderr.contains("a string needs quotes"), "{}", run.stderr);
        // Too few: the signature and both forms.
        let run = cli(&["call", n, "many_args", "7"]).await;
        expect_code(&run, USAGE);
        assert!(run.stderr.contains("takes 4 arguments (many_args(a: u8"), "{}", run.stderr);
        // JSON of the wrong type: the server refuses the request; still a usage error.
        let run = cli(&["call", n, "many_args", "\"seven\"", "\"x\"", "[]", "null"]).await;
        expect_code(&run, USAGE);
        assert!(run.stderr.contains("could not read the arguments as many_args("), "{}", run.stderr);
        assert!(run.stderr.contains("expected u8"), "{}", run.stderr);
        // A method taking a callback cannot be served from here.
        let run = cli(&["call", n, "run_ticks", "3"]).await;
        expect_code(&run, USAGE);
        assert!(run.stderr.contains("takes a callback"), "{}", run.stderr);
        // Unknown option.
        let run = cli(&["list", "--frobnicate"]).await;
        expect_code(&run, USAGE);
        assert!(run.stderr.contains("unknown option `--frobnicate`"), "{}", run.stderr);
    })
    .await;
}
