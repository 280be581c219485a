//! `pipe-rpc`: see the `pipe_rpc_cli` crate docs (`pipe-rpc --help`).

fn main() -> std::process::ExitCode {
    pipe_rpc_cli::main()
}
