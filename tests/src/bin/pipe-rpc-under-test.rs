//! The `pipe-rpc` command-line tool, as its own `main` (`pipe-rpc-cli/src/main.rs`) runs
//! it, built in this package so that `tests/tests/cli.rs` can run it as a process next to
//! `test-server` (a test only sees its own package's binaries).

fn main() -> std::process::ExitCode {
    pipe_rpc_cli::main()
}
