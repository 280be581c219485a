//! Why the tool stopped, and its exit code.

use std::process::ExitCode;

use rpc_core::{RpcError, TransportError};

/// Exit code: the call failed (an error answer, or the connection broke during it).
pub const CALL_FAILED: u8 = 1;
/// Exit code: the command line was wrong (command, option, argument, JSON, method).
pub const USAGE: u8 = 2;
/// Exit code: the endpoint could not be reached or refused us, or is not pipe-rpc.
pub const UNREACHABLE: u8 = 3;
/// Exit code: the server does not list its methods.
pub const NO_INTROSPECTION: u8 = 4;

/// A failure: what to say on stderr (nothing if empty) and the exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Failure {
        Failure::new(USAGE, message)
    }

    /// Stop without a word (stdout was closed: `pipe-rpc ... | head`).
    pub(crate) fn quiet() -> Failure {
        Failure::new(0, "")
    }

    /// An error reaching `name` (connect, handshake, probe).
    pub(crate) fn reaching(name: &str, e: &RpcError) -> Failure {
        let code = match e {
            RpcError::Transport(TransportError::InvalidName { .. }) => USAGE,
            _ => UNREACHABLE,
        };
        Failure::new(code, format!("{name}: {e}"))
    }

    /// An error of the call itself.
    pub(crate) fn call(method: &str, e: &RpcError) -> Failure {
        Failure::new(CALL_FAILED, format!("{method}: {e}"))
    }

    pub(crate) fn report(self) -> ExitCode {
        if !self.message.is_empty() {
            eprintln!("pipe-rpc: {}", self.message);
        }
        ExitCode::from(self.code)
    }
}
