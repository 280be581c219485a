//! A work-queue management service over pipe-rpc: the service both processes share.
//!
//! The service follows the seed article "Interprocess Communication on Windows using
//! Named Pipes": management tools create, delete, start, stop and list work queues over
//! a local pipe, queues are created stopped, and failures come back as typed errors
//! instead of `ERROR error-code error-message` strings. Producers add work items and
//! workers take them.
//!
//! - [`WorkQueues`]: the service trait; `#[rpc_core::service]` derives
//!   [`WorkQueuesClient`] and [`WorkQueuesServer`] from it.
//! - [`MemoryQueues`]: an in-memory implementation.
//! - [`server::serve`]: runs it on a pipe until told to stop (used by the
//!   `work-queue-server` and `demo` binaries).
//! - [`session::run`]: a scripted client session (used by `work-queue-client` and `demo`).
//! - [`WorkQueues::watch`] streams a queue's events as they happen (`wq watch QUEUE`), and
//!   [`WorkQueues::log`] is a one-way call (`wq log TEXT`).
//!
//! Run the whole thing, server and client as two processes, with
//! `cargo run -p pipe-rpc-examples --bin demo`.
//!
//! The crate's other programs show the remaining exchange patterns, each in one file:
//!
//! | program | pattern |
//! |---|---|
//! | `push-lines` | server-to-client stream: a server pushes each line typed on its console to every follower ([`fanout`]) |
//! | `file-transfer` | client-to-server and server-to-client byte streams: upload and download of files of any size in bounded memory |
//! | `file-server` | security (seed 004): the client learns who serves it from the OS, and each file is read only if the calling user may read it (on Windows by `AccessCheck` against the caller's token: `win_access`) |
//! | `pubsub` | tarpc's publish/subscribe example, with one stream per subscription instead of a reverse connection |

use std::fmt;

use rpc_core::RpcStream;
use serde::{Deserialize, Serialize};

pub mod fanout;
mod memory;
pub mod server;
pub mod session;
#[cfg(windows)]
pub mod win_access;

pub use memory::MemoryQueues;

/// The default pipe name of the work-queue server.
pub const DEFAULT_PIPE: &str = "work-queues";

/// Whether workers may take work from a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QueueState {
    /// Work can be added but not taken. New queues start here.
    Stopped,
    /// Work can be added and taken.
    Running,
}

impl fmt::Display for QueueState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueState::Stopped => "stopped",
            QueueState::Running => "running",
        })
    }
}

/// A snapshot of one queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// Whether work can be taken from it.
    pub state: QueueState,
    /// Items waiting to be taken.
    pub pending: u64,
    /// Items taken from it so far.
    pub taken: u64,
}

impl fmt::Display for QueueInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {} pending, {} taken)", self.name, self.state, self.pending, self.taken)
    }
}

/// One unit of work: what to do (`kind`) and the data to do it on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkItem {
    /// What kind of work this is, for the worker to dispatch on (`"resize"`, ...).
    pub kind: String,
    /// The work's input. `serde_bytes` sends it as one byte string; a plain `Vec<u8>`
    /// would be encoded element by element.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl WorkItem {
    /// A work item of the given kind and payload.
    pub fn new(kind: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        WorkItem { kind: kind.into(), payload: payload.into() }
    }
}

impl fmt::Display for WorkItem {
    /// `kind "text"` for a UTF-8 payload, `kind <N bytes>` otherwise.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.payload) {
            Ok(text) => write!(f, "{} {text:?}", self.kind),
            Err(_) => write!(f, "{} <{} bytes>", self.kind, self.payload.len()),
        }
    }
}

/// What happened to a queue, as [`WorkQueues::watch`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueEvent {
    /// The first item of every watch: the queue as it is now, `None` if it does not exist
    /// (yet). Every event after it happened after this snapshot.
    Watching(Option<QueueInfo>),
    /// The queue was created (stopped).
    Created,
    /// The queue was deleted, with `discarded` items still in it.
    Deleted {
        /// Items that were pending.
        discarded: u64,
    },
    /// The queue was started (it was stopped).
    Started,
    /// The queue was stopped (it was running).
    Stopped,
    /// A work item was added.
    Added {
        /// The item's id.
        id: u64,
        /// The item.
        item: WorkItem,
    },
    /// A worker took an item.
    Taken {
        /// The item's id.
        id: u64,
    },
    /// The watcher read too slowly and the server skipped events to keep up: `missed`
    /// events (of all queues) were not delivered.
    Lagged {
        /// Events skipped.
        missed: u64,
    },
}

impl fmt::Display for QueueEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueEvent::Watching(Some(info)) => write!(f, "now: {info}"),
            QueueEvent::Watching(None) => f.write_str("now: does not exist"),
            QueueEvent::Created => f.write_str("created"),
            QueueEvent::Deleted { discarded } => write!(f, "deleted ({discarded} pending item(s) discarded)"),
            QueueEvent::Started => f.write_str("started"),
            QueueEvent::Stopped => f.write_str("stopped"),
            QueueEvent::Added { id, item } => write!(f, "added item {id}: {item}"),
            QueueEvent::Taken { id } => write!(f, "took item {id}"),
            QueueEvent::Lagged { missed } => write!(f, "fell behind: {missed} event(s) skipped"),
        }
    }
}

/// Why the service refused a request, or why the call did not get through.
///
/// The first variants are the service's own answers (the seed's `ERROR error-code
/// error-message`, typed). [`QueueError::Rpc`] carries pipe and call failures, which lets
/// every client method return one `Result<T, QueueError>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum QueueError {
    /// No queue has this name.
    #[error("no queue named `{name}`")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// A queue with this name exists already.
    #[error("queue `{name}` already exists")]
    AlreadyExists {
        /// The name asked for.
        name: String,
    },
    /// The name cannot be used for a queue.
    #[error("invalid queue name {name:?}: {reason}")]
    InvalidName {
        /// The name asked for.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// Work cannot be taken from a stopped queue; start it first.
    #[error("queue `{name}` is stopped: start it to take work")]
    Stopped {
        /// The queue's name.
        name: String,
    },
    /// The call failed on its way: server not running, deadline exceeded, ...
    #[error(transparent)]
    Rpc(#[from] rpc_core::RpcError),
}

impl QueueError {
    /// A short, stable code for the error, like the seed protocol's `error-code`:
    /// `not-found`, `already-exists`, `invalid-name`, `stopped` or `rpc`.
    pub fn code(&self) -> &'static str {
        match self {
            QueueError::NotFound { .. } => "not-found",
            QueueError::AlreadyExists { .. } => "already-exists",
            QueueError::InvalidName { .. } => "invalid-name",
            QueueError::Stopped { .. } => "stopped",
            QueueError::Rpc(_) => "rpc",
        }
    }
}

/// Management and use of work queues.
///
/// Queue names are 1 to 64 characters from `A-Z a-z 0-9 - _ .`.
#[rpc_core::service]
pub trait WorkQueues {
    /// Creates a queue in the stopped state.
    async fn create(&self, name: String) -> Result<QueueInfo, QueueError>;
    /// Deletes a queue and any work still in it.
    async fn delete(&self, name: String) -> Result<(), QueueError>;
    /// Starts a queue: workers may take its work. Starting a running queue is a no-op.
    async fn start(&self, name: String) -> Result<QueueInfo, QueueError>;
    /// Stops a queue: work accumulates until it is started again. Stopping a stopped
    /// queue is a no-op.
    async fn stop(&self, name: String) -> Result<QueueInfo, QueueError>;
    /// All queues, by name.
    async fn list(&self) -> Vec<QueueInfo>;
    /// Adds a work item; returns its id. Works on stopped queues too (they accumulate work).
    async fn add_work(&self, queue: String, item: WorkItem) -> Result<u64, QueueError>;
    /// Takes the oldest item of a running queue, waiting up to `wait_ms` for one to arrive.
    ///
    /// `Ok(None)` if none arrived in time. The call's own deadline must leave room for
    /// the wait (see `WorkQueuesClient::with_timeout`).
    async fn take_work(&self, queue: String, wait_ms: u64) -> Result<Option<(u64, WorkItem)>, QueueError>;
    /// Watches a queue: first [`QueueEvent::Watching`] (the queue now), then each change
    /// as it happens, until the caller drops the stream. The queue need not exist: its
    /// creation is an event too, and the watch outlives a delete.
    ///
    /// Watchers never slow the service down: one that reads too slowly misses events and
    /// is told so with [`QueueEvent::Lagged`]. Like every stream, a watch has no deadline
    /// unless the client handle sets one.
    async fn watch(&self, queue: String) -> RpcStream<QueueEvent>;
    /// One-way: appends a line to the server's log. The client's call returns once the
    /// line is queued for the pipe; nothing comes back, not even an error from the server.
    #[oneway]
    async fn log(&self, line: String);
}
