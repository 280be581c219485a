//! `pipe-rpc list`: the current user's endpoints, each probed.

use std::time::Duration;

use futures::StreamExt;

use rpc_core::introspect::ServerDescription;
use rpc_core::pipe::LocalEndpoint;
use rpc_core::{ClientConfig, RpcError, TransportError};
use serde_json::json;

use crate::args::Options;
use crate::describe::{credentials_json, pid_text, user_text};
use crate::fail::{Failure, UNREACHABLE};
use crate::out::Printer;

/// Where the endpoints are listed from, for an error.
const WHERE: &str =
    if cfg!(windows) { r"the pipe namespace \\.\pipe\pipe-rpc.*" } else { "the per-user socket directory" };

/// Probes in flight at once.
const PARALLEL_PROBES: usize = 32;

/// Per endpoint without `--timeout`: a live local server answers in microseconds.
const PER_ENDPOINT: Duration = Duration::from_secs(1);

/// What probing an endpoint found.
enum State {
    /// A pipe-rpc server answered.
    Live(Box<ServerDescription>),
    /// Nothing listens (a socket file left by a server that is gone).
    Stale,
    /// Every instance taken, or the server at its connection limits.
    Busy,
    /// It would not talk to us (access policy, another user's pipe).
    Refused(String),
    /// Connected, but no answer within the time.
    Silent,
    /// It answered something that is not pipe-rpc.
    Foreign(String),
    /// Something else went wrong.
    Error(String),
}

impl State {
    fn word(&self) -> &'static str {
        match self {
            State::Live(_) => "live",
            State::Stale => "stale",
            State::Busy => "busy",
            State::Refused(_) => "refused",
            State::Silent => "no-answer",
            State::Foreign(_) => "not-pipe-rpc",
            State::Error(_) => "error",
        }
    }
}

async fn probe(endpoint: &LocalEndpoint, per: Duration) -> State {
    // The handshake gets the whole time; the outer limit is what `no-answer` means.
    let config = ClientConfig::default().connect_timeout(per).handshake_timeout(per * 2);
    let probe = rpc_core::introspect::probe(endpoint.name.clone(), config);
    match tokio::time::timeout(per, probe).await {
        Err(_) => State::Silent,
        Ok(Ok(about)) => State::Live(Box::new(about)),
        Ok(Err(RpcError::Transport(e))) => match e {
            TransportError::NotRunning { .. } => State::Stale,
            TransportError::Busy { .. } => State::Busy,
            TransportError::PermissionDenied { detail } => State::Refused(detail),
            TransportError::Protocol { detail } | TransportError::Incompatible { detail } => State::Foreign(detail),
            TransportError::Disconnected { detail } => State::Foreign(detail),
            other => State::Error(other.to_string()),
        },
        Ok(Err(other)) => State::Error(other.to_string()),
    }
}

/// `pipe-rpc list`.
pub(crate) async fn list(opts: &Options, out: &mut Printer) -> Result<(), Failure> {
    let endpoints = rpc_core::pipe::list_local()
        .map_err(|e| Failure::new(UNREACHABLE, format!("cannot list the endpoints ({WHERE}): {e}")))?;
    let per = opts.timeout.unwrap_or(PER_ENDPOINT);
    // A few at a time: each probe holds a descriptor (or pipe instance) while it waits,
    // and a directory of thousands of sockets must not exhaust them.
    let states: Vec<State> =
        futures::stream::iter(endpoints.iter().map(|e| probe(e, per))).buffered(PARALLEL_PROBES).collect().await;
    // Only pipe-rpc's endpoints are listed (the per-user directory on Unix, the `pipe-rpc.`
    // names on Windows). `--live`: only servers that answered; stale sockets and the rest
    // are left out.
    let show = |s: &State| !opts.live || matches!(s, State::Live(_));
    let found: Vec<(&LocalEndpoint, State)> = endpoints.iter().zip(states).filter(|(_, s)| show(s)).collect();
    if out.json {
        for (endpoint, state) in &found {
            let mut v = json!({
                "name": endpoint.name.as_str(),
                "address": endpoint.address.display().to_string(),
                "state": state.word(),
            });
            match state {
                State::Live(about) => {
                    v["service"] = json!(about.service);
                    v["fingerprint"] = json!(format!("{:016x}", about.fingerprint));
                    v["pid"] = json!(about.server.as_ref().and_then(|c| c.pid).unwrap_or(about.server_pid));
                    v["server"] = json!(about.server.as_ref().map(credentials_json));
                    v["introspection"] = json!(about.introspection);
                }
                State::Refused(why) | State::Foreign(why) | State::Error(why) => v["detail"] = json!(why),
                State::Stale | State::Busy | State::Silent => {}
            }
            out.json_line(&v)?;
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|(endpoint, state)| {
            let (service, pid, user, methods) = match state {
                State::Live(about) => (
                    about.service.clone(),
                    pid_text(about),
                    about.server.as_ref().map_or_else(|| "unknown".to_owned(), user_text),
                    if about.introspection { format!("{}", about.methods.len()) } else { "-".to_owned() },
                ),
                _ => ("-".to_owned(), "-".to_owned(), "-".to_owned(), "-".to_owned()),
            };
            vec![endpoint.name.as_str().to_owned(), state.word().to_owned(), service, pid, user, methods]
        })
        .collect();
    out.table(&["NAME", "STATE", "SERVICE", "PID", "USER", "METHODS"], &rows)
}
