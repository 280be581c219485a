//! A scripted client session: the seed article's "create a work queue" scenario and the
//! rest of the service, printed step by step.
//!
//! Every step checks its outcome, so the session doubles as an end-to-end test of a
//! server: [`run`] fails on the first surprise.

use std::fmt::Display;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rpc_core::{RpcError, RpcStream};
use tokio::task::JoinSet;

use crate::{QueueError, QueueEvent, QueueState, WorkItem, WorkQueuesClient};

/// The queue the session works on.
pub const QUEUE: &str = "jobs";

/// The queue the session watches while it creates, uses and deletes it.
pub const WATCHED: &str = "watched";

/// How long the session waits for an event it caused.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A call failed that should have succeeded.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A call that cannot fail in the service failed on its way.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// A call succeeded or failed differently than the script expects.
    #[error("unexpected outcome of {step}: {got}")]
    Unexpected {
        /// The call.
        step: String,
        /// What it returned.
        got: String,
    },
}

/// Prints one step: the call on the left, its outcome on the right.
fn show(call: impl Display, outcome: impl Display) {
    println!("    {:<44} -> {outcome}", call.to_string());
}

/// Prints an expected error with its error code, as the seed's `ERROR code message`.
fn show_err(call: impl Display, e: &QueueError) {
    show(call, format_args!("ERROR {}: {e}", e.code()));
}

/// Expects `result` to be the error `want` picks out, and prints it.
fn expect_err<T: std::fmt::Debug>(
    call: String,
    result: Result<T, QueueError>,
    want: fn(&QueueError) -> bool,
) -> Result<(), SessionError> {
    match result {
        Err(e) if want(&e) => {
            show_err(call, &e);
            Ok(())
        }
        other => Err(SessionError::Unexpected { step: call, got: format!("{other:?}") }),
    }
}

/// Checks a condition of the script.
fn ensure(ok: bool, step: &str, got: impl std::fmt::Debug) -> Result<(), SessionError> {
    if ok { Ok(()) } else { Err(SessionError::Unexpected { step: step.to_owned(), got: format!("{got:?}") }) }
}

fn item(kind: &str, payload: &str) -> WorkItem {
    WorkItem::new(kind, payload)
}

fn taken(t: &Option<(u64, WorkItem)>) -> String {
    match t {
        Some((id, item)) => format!("item {id}: {item}"),
        None => "nothing".to_owned(),
    }
}

/// Runs the session against the server behind `client`, printing each step.
///
/// Starts by deleting [`QUEUE`] if it exists, so it can run against a server that has
/// seen earlier sessions; ends with the queue deleted again.
///
/// # Errors
///
/// The first call whose outcome differs from the script's expectation.
pub async fn run(client: &WorkQueuesClient) -> Result<(), SessionError> {
    scenario(client).await?;
    typed_errors(client).await?;
    stopped_queue_accumulates(client).await?;
    start_and_take(client).await?;
    waiting_worker(client).await?;
    deadline(client).await?;
    concurrent_calls(client).await?;
    watching(client).await?;
    one_way(client).await?;
    clean_up(client).await
}

fn q() -> String {
    QUEUE.to_owned()
}

/// The seed article's scenario, step by step.
async fn scenario(client: &WorkQueuesClient) -> Result<(), SessionError> {
    println!("Scenario: create a work queue");
    println!("  given the work queue does not exist");
    match client.delete(q()).await {
        Ok(()) => show(format!("delete({QUEUE:?})"), "deleted (left over from an earlier run)"),
        Err(e @ QueueError::NotFound { .. }) => show_err(format!("delete({QUEUE:?})"), &e),
        Err(e) => return Err(e.into()),
    }
    println!("  when I create the work queue");
    let info = client.create(q()).await?;
    show(format!("create({QUEUE:?})"), &info);
    println!("  then the work queue will be created, and stopped");
    let all = client.list().await?;
    show("list()", format_args!("{} queue(s): {}", all.len(), names(&all)));
    ensure(info.state == QueueState::Stopped && all.iter().any(|i| i.name == QUEUE), "create", &all)
}

async fn typed_errors(client: &WorkQueuesClient) -> Result<(), SessionError> {
    println!("\nErrors are typed values, not strings to parse");
    expect_err(format!("create({QUEUE:?}) again"), client.create(q()).await, |e| {
        matches!(e, QueueError::AlreadyExists { .. })
    })?;
    expect_err("create(\"no spaces\")".into(), client.create("no spaces".into()).await, |e| {
        matches!(e, QueueError::InvalidName { .. })
    })
}

async fn stopped_queue_accumulates(client: &WorkQueuesClient) -> Result<(), SessionError> {
    println!("\nA stopped queue accumulates work");
    for photo in ["photo-1.jpg", "photo-2.jpg"] {
        let work = item("resize", photo);
        let call = format!("add_work({QUEUE:?}, {work})");
        show(call, format_args!("item {}", client.add_work(q(), work).await?));
    }
    expect_err(format!("take_work({QUEUE:?}, 0)"), client.take_work(q(), 0).await, |e| {
        matches!(e, QueueError::Stopped { .. })
    })
}

async fn start_and_take(client: &WorkQueuesClient) -> Result<(), SessionError> {
    println!("\nStart it; work comes out oldest first");
    show(format!("start({QUEUE:?})"), client.start(q()).await?);
    for expected in [Some("photo-1.jpg"), Some("photo-2.jpg"), None] {
        let t = client.take_work(q(), 0).await?;
        show(format!("take_work({QUEUE:?}, 0)"), taken(&t));
        let payload = t.as_ref().map(|(_, item)| item.payload.as_slice());
        ensure(payload == expected.map(str::as_bytes), "take_work", &t)?;
    }
    Ok(())
}

/// A take that waits, and the add that satisfies it, in flight together on one connection.
async fn waiting_worker(client: &WorkQueuesClient) -> Result<(), SessionError> {
    println!("\nA worker waits for work; calls share one connection");
    let start = Instant::now();
    let (t, added) = tokio::join!(client.take_work(q(), 2_000), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.add_work(q(), item("resize", "photo-3.jpg")).await
    });
    let (t, added) = (t?, added?);
    show(
        format!("take_work({QUEUE:?}, 2000), add 100 ms later"),
        format_args!("{} after {} ms", taken(&t), start.elapsed().as_millis()),
    );
    ensure(t.as_ref().map(|(id, _)| *id) == Some(added), "waiting take_work", &t)
}

async fn deadline(client: &WorkQueuesClient) -> Result<(), SessionError> {
    println!("\nDeadlines: every call has one, and the server drops the call when it passes");
    let start = Instant::now();
    // The queue is empty, so this take would wait 5 s; its 50 ms deadline ends it first.
    let result = client.with_timeout(Duration::from_millis(50)).take_work(q(), 5_000).await;
    let call = format!("with_timeout(50 ms).take_work({QUEUE:?}, 5000)");
    match result {
        Err(QueueError::Rpc(e @ RpcError::DeadlineExceeded { .. })) => {
            show(call, format_args!("{e} (after {} ms)", start.elapsed().as_millis()));
            Ok(())
        }
        other => Err(SessionError::Unexpected { step: call, got: format!("{other:?}") }),
    }
}

async fn concurrent_calls(client: &WorkQueuesClient) -> Result<(), SessionError> {
    println!("\n100 concurrent calls on one connection");
    let start = Instant::now();
    let mut calls = JoinSet::new();
    for n in 0..100 {
        // Clones share the connection; each call runs as its own task.
        let client = client.clone();
        calls.spawn(async move { client.add_work(q(), item("thumbnail", &format!("page-{n}"))).await });
    }
    let mut ids = Vec::with_capacity(100);
    while let Some(id) = calls.join_next().await {
        ids.push(id.expect("add_work task panicked")?);
    }
    let elapsed = start.elapsed();
    ids.sort_unstable();
    ids.dedup();
    ensure(ids.len() == 100, "100 x add_work", &ids)?;
    show(
        "100 x add_work, all in flight at once",
        format_args!("{} distinct ids {}..={} in {:.1} ms", ids.len(), ids[0], ids[99], ms(elapsed)),
    );
    Ok(())
}

/// The next event of a watch, which the session has just caused.
async fn next_event(events: &mut RpcStream<QueueEvent>) -> Result<QueueEvent, SessionError> {
    let unexpected = |got: &str| SessionError::Unexpected { step: "watch".into(), got: got.to_owned() };
    match tokio::time::timeout(EVENT_TIMEOUT, events.next()).await {
        Ok(Some(Ok(event))) => Ok(event),
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(None) => Err(unexpected("the stream ended")),
        Err(_) => Err(unexpected("no event within 10 s")),
    }
}

/// A server-to-client stream: the events of a queue, pushed as they happen.
async fn watching(client: &WorkQueuesClient) -> Result<(), SessionError> {
    println!("\nWatching a queue: the server pushes its events as they happen (a stream)");
    let w = || WATCHED.to_owned();
    // Left over from an interrupted earlier run?
    match client.delete(w()).await {
        Ok(()) | Err(QueueError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let mut events = client.watch(w()).await?;
    // The first item is the queue as it is now; every later change arrives as an event.
    let now = next_event(&mut events).await?;
    show(format!("watch({WATCHED:?})"), format_args!("stream open; first item: {now}"));
    ensure(now == QueueEvent::Watching(None), "watch", &now)?;

    client.create(w()).await?;
    let work = item("resize", "photo-4.jpg");
    let id = client.add_work(w(), work.clone()).await?;
    client.start(w()).await?;
    client.take_work(w(), 0).await?;
    client.delete(w()).await?;
    println!("    (create, add_work, start, take_work, delete on {WATCHED:?} from this client; the stream says:)");
    let expected = [
        QueueEvent::Created,
        QueueEvent::Added { id, item: work },
        QueueEvent::Started,
        QueueEvent::Taken { id },
        QueueEvent::Deleted { discarded: 0 },
    ];
    for want in expected {
        let event = next_event(&mut events).await?;
        show("  event", &event);
        ensure(event == want, "watch event", &event)?;
    }
    // Dropping the stream ends the watch on the server too.
    drop(events);
    Ok(())
}

/// A one-way call: queued for the pipe and never answered.
async fn one_way(client: &WorkQueuesClient) -> Result<(), SessionError> {
    println!("\nOne-way calls: sent, never answered");
    let line = "session: the watch step passed";
    client.log(line.to_owned()).await?;
    show(format!("log({line:?})"), "queued for the pipe; no reply (the server prints it)");
    Ok(())
}

async fn clean_up(client: &WorkQueuesClient) -> Result<(), SessionError> {
    println!("\nList, stop, and clean up");
    for info in client.list().await? {
        show("list()", info);
    }
    show(format!("stop({QUEUE:?})"), client.stop(q()).await?);
    expect_err(format!("take_work({QUEUE:?}, 0)"), client.take_work(q(), 0).await, |e| {
        matches!(e, QueueError::Stopped { .. })
    })?;
    client.delete(q()).await?;
    show(format!("delete({QUEUE:?})"), "deleted, with its pending work");
    expect_err(format!("delete({QUEUE:?}) again"), client.delete(q()).await, |e| {
        matches!(e, QueueError::NotFound { .. })
    })?;
    let all = client.list().await?;
    show("list()", format_args!("{} queue(s)", all.len()));
    Ok(())
}

/// Who is talking to whom: this process's pid and the server's, from the handshake.
pub fn describe_peers(client: &WorkQueuesClient) -> String {
    let server = client.channel().peer().server_pid;
    let me = std::process::id();
    let relation = if server == me { "this same process" } else { "a separate process" };
    format!("client pid {me} is talking to server pid {server} ({relation})")
}

fn names(queues: &[crate::QueueInfo]) -> String {
    queues.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use rpc_core::{Channel, ClientConfig, Server};

    use super::*;
    use crate::{MemoryQueues, WorkQueuesServer};

    /// The whole script against an in-process server over an in-memory byte stream.
    #[tokio::test]
    async fn the_script_passes_against_memory_queues() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = Server::new(WorkQueuesServer::new(MemoryQueues::new()));
        tokio::spawn(async move { server.serve_connection(server_io).await });
        let channel = Channel::from_io(client_io, WorkQueuesClient::ID, ClientConfig::default()).await.unwrap();
        let client = WorkQueuesClient::from_channel(channel);
        assert!(describe_peers(&client).contains("this same process"));
        run(&client).await.unwrap();
        // Again: the script cleans up after itself.
        run(&client).await.unwrap();
    }
}
