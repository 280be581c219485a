//! The counters (`rpc_core::stats`) and spans (`rpc_core::spans`) of both ends, over an
//! in-memory pipe (`tokio::io::duplex`) on a current-thread runtime, so that every handler,
//! both engines and the test run on one thread (a thread-local subscriber sees them all).
//! Cross-process counts are checked in `tests/tests/observability.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rpc_core::{Channel, ClientConfig, ClientStats, RpcError, RpcStream, Server, ServerConfig, ServerErrorKind};
use tokio::sync::Notify;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Held by every test of this file: they run one at a time. `tracing` caches per call site,
/// process-wide, whether any subscriber wants it; a call site first reached by a test without
/// a subscriber while another test is installing its own can keep "never" for good (seen
/// under wine: the `rpc.stream` spans of a capturing test went missing), so the tests that
/// capture spans must not share the process with one that runs at the same time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The service under test.
#[rpc_core::service]
pub trait Obs {
    /// `a + b`, logging an event.
    async fn add(&self, a: u64, b: u64) -> u64;
    /// Panics.
    async fn boom(&self) -> u64;
    /// Waits until released (or dropped); tells `entered` when it starts.
    async fn wait(&self) -> u64;
    /// Sleeps `ms` milliseconds.
    async fn slow(&self, ms: u64) -> u64;
    /// Streams `0..n`.
    async fn count(&self, n: u64) -> RpcStream<u64>;
    /// The sum of the caller's items.
    async fn sum(&self, items: RpcStream<u64>) -> u64;
    /// Records `n`.
    #[oneway]
    async fn note(&self, n: u64);
}

#[derive(Default)]
struct State {
    entered: Notify,
    dropped: Notify,
    notes: Mutex<Vec<u64>>,
}

#[derive(Clone, Default)]
struct Imp(Arc<State>);

/// Tells `dropped` when a `wait` handler is dropped unfinished.
struct DropTell(Arc<State>);
impl Drop for DropTell {
    fn drop(&mut self) {
        self.0.dropped.notify_one();
    }
}

impl Obs for Imp {
    async fn add(&self, a: u64, b: u64) -> u64 {
        tracing::info!(a, b, "adding");
        a + b
    }
    async fn boom(&self) -> u64 {
        panic!("boom on purpose")
    }
    async fn wait(&self) -> u64 {
        let _tell = DropTell(self.0.clone());
        self.0.entered.notify_one();
        std::future::pending().await
    }
    async fn slow(&self, ms: u64) -> u64 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        ms
    }
    async fn count(&self, n: u64) -> RpcStream<u64> {
        RpcStream::iter(0..n)
    }
    async fn sum(&self, items: RpcStream<u64>) -> u64 {
        items.map(|i| i.unwrap_or(0)).fold(0, |a, b| async move { a + b }).await
    }
    async fn note(&self, n: u64) {
        self.0.notes.lock().unwrap().push(n);
    }
}

async fn watchdog<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("test hung: watchdog fired")
}

/// A server (its deadline cap at 50 ms, so `slow` fails on the server's clock, not the
/// client's) serving one in-memory connection, and a client of it.
async fn pair(imp: Imp) -> (ObsClient, rpc_core::StatsHandle, tokio::task::JoinHandle<()>) {
    let server =
        Server::new(ObsServer::new(imp)).config(ServerConfig::default().max_deadline(Duration::from_millis(50)));
    let stats = server.stats_handle();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let serving = tokio::spawn(async move {
        let _ = server.serve_connection(b).await;
    });
    let channel = Channel::from_io(a, ObsClient::ID, ClientConfig::default()).await.expect("handshake");
    (ObsClient::from_channel(channel), stats, serving)
}

/// Makes 5 good calls, 2 that panic, 1 that passes the server's deadline, 1 that the client
/// cancels, a stream each way, a one-way call and a last good call: 13 exchanges.
async fn workload(client: &ObsClient, imp: &Imp, stats: &rpc_core::StatsHandle) {
    for i in 0..5 {
        assert_eq!(client.add(i, 1).await.unwrap(), i + 1);
    }
    for _ in 0..2 {
        let err = client.boom().await.unwrap_err();
        assert!(matches!(&err, RpcError::Server(e) if e.kind == ServerErrorKind::HandlerPanicked), "{err:?}");
    }
    let err = client.slow(10_000).await.unwrap_err();
    assert!(matches!(err, RpcError::DeadlineExceeded { .. }), "{err:?}");

    // A call in flight shows on both ends; dropping it cancels it on the server.
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.wait().await }
    });
    imp.0.entered.notified().await;
    assert_eq!(client.channel().stats().calls.in_flight, 1);
    assert_eq!(stats.get().calls.in_flight, 1);
    waiting.abort();
    // The handler is dropped once the server has taken the cancel (and counted it).
    imp.0.dropped.notified().await;

    let items: Vec<u64> = client.count(3).await.unwrap().map(Result::unwrap).collect().await;
    assert_eq!(items, [0, 1, 2]);
    assert_eq!(client.sum(RpcStream::iter([1, 2, 3])).await.unwrap(), 6);
    client.note(7).await.unwrap();
    // Handled in order: once this answers, the one-way call before it has run.
    assert_eq!(client.add(40, 2).await.unwrap(), 42);
    assert_eq!(*imp.0.notes.lock().unwrap(), [7]);
}

#[tokio::test(flavor = "current_thread")]
async fn server_and_client_count_every_call_by_outcome_and_agree_on_the_bytes() {
    let _serial = SERIAL.lock().await;
    watchdog(async {
        let imp = Imp::default();
        let (client, stats, serving) = pair(imp.clone()).await;
        assert_eq!(stats.get().connections_open, 1);
        workload(&client, &imp, &stats).await;

        let s = stats.get();
        let c = client.channel().stats();
        for (end, calls) in [("server", s.calls), ("client", c.calls)] {
            assert_eq!(calls.started, 13, "{end}: {calls:?}");
            assert_eq!(calls.finished, 13, "{end}: {calls:?}");
            assert_eq!(calls.in_flight, 0, "{end}: {calls:?}");
            assert_eq!(calls.ok, 9, "{end}: {calls:?}");
            assert_eq!(calls.oneway, 1, "{end}: {calls:?}");
            assert_eq!(calls.streams_started, 2, "{end}: {calls:?}");
            assert_eq!(calls.streams_open, 0, "{end}: {calls:?}");
            let e = calls.errors;
            assert_eq!((e.handler_panicked, e.deadline_exceeded, e.cancelled), (2, 1, 1), "{end}: {e:?}");
            assert_eq!(e.total(), 4, "{end}: {e:?}");
        }
        assert_eq!((s.connections_open, s.connections_accepted, s.connections_refused), (1, 1, 0));
        assert_eq!(c.connections, 1);
        // Stream items: 3 down (`count`), 3 up (`sum`), each counted by the end that sent it
        // and the end that took it.
        assert_eq!((s.items_in, s.items_out, c.items_in, c.items_out), (3, 3, 3, 3), "server {s:?}, client {c:?}");
        // Every byte one end wrote, the other read (the last call's answer was the last
        // message either way), and there were some.
        assert!(c.bytes_out > 13 * 14, "{c:?}");
        assert_eq!((s.bytes_in, s.bytes_out), (c.bytes_out, c.bytes_in), "server {s:?}, client {c:?}");

        // The client goes: the connection ends, and its counts stay in the server's totals.
        drop(client);
        serving.await.unwrap();
        let after = stats.get();
        assert_eq!((after.connections_open, after.connections_accepted), (0, 1));
        assert_eq!(after.calls, s.calls);
        assert_eq!((after.bytes_in, after.bytes_out), (s.bytes_in, s.bytes_out));
        assert_eq!((after.items_in, after.items_out), (3, 3));
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn open_streams_and_calls_are_in_flight_until_they_end() {
    let _serial = SERIAL.lock().await;
    watchdog(async {
        let (client, stats, _serving) = pair(Imp::default()).await;
        let (tx, rx) = RpcStream::channel(4);
        let summing = tokio::spawn({
            let client = client.clone();
            async move { client.sum(rx).await }
        });
        tx.send(5).await.unwrap();
        // The handler has the stream once its first item is through; wait for the counts.
        let open = |s: ClientStats| (s.calls.in_flight, s.calls.streams_open);
        while stats.get().calls.streams_open == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!((stats.get().calls.in_flight, stats.get().calls.streams_open), (1, 1));
        assert_eq!(open(client.channel().stats()), (1, 1));
        drop(tx);
        assert_eq!(summing.await.unwrap().unwrap(), 5);
        assert_eq!(open(client.channel().stats()), (0, 0));
        assert_eq!((stats.get().calls.in_flight, stats.get().calls.streams_open), (0, 0));
    })
    .await;
}

/// One span as the capturing layer saw it: name, target, every field recorded, and whether
/// it closed.
#[derive(Clone, Debug, Default)]
struct SpanRec {
    name: &'static str,
    target: String,
    fields: BTreeMap<String, String>,
    closed: bool,
    /// Messages of the events logged inside it.
    events: Vec<String>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<BTreeMap<u64, SpanRec>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);
impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, _: Context<'_, S>) {
        let mut rec = SpanRec {
            name: attrs.metadata().name(),
            target: attrs.metadata().target().to_owned(),
            ..SpanRec::default()
        };
        attrs.record(&mut Fields(&mut rec.fields));
        self.0.lock().unwrap().insert(id.into_u64(), rec);
    }
    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, _: Context<'_, S>) {
        if let Some(rec) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(&mut rec.fields));
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, cx: Context<'_, S>) {
        if let Some(span) = cx.event_span(event) {
            let mut fields = BTreeMap::new();
            event.record(&mut Fields(&mut fields));
            if let Some(rec) = self.0.lock().unwrap().get_mut(&span.id().into_u64()) {
                rec.events.push(fields.remove("message").unwrap_or_default());
            }
        }
    }
    fn on_close(&self, id: tracing::span::Id, _: Context<'_, S>) {
        if let Some(rec) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            rec.closed = true;
        }
    }
}

impl Capture {
    fn spans(&self) -> Vec<SpanRec> {
        self.0.lock().unwrap().values().cloned().collect()
    }

    /// The one span named `name` of `target` whose `method` field is `method`.
    fn one(&self, target: &str, name: &str, method: &str) -> SpanRec {
        let all = self.spans();
        let found: Vec<_> = all
            .iter()
            .filter(|s| {
                s.target == target && s.name == name && s.fields.get("method").map(String::as_str) == Some(method)
            })
            .collect();
        assert_eq!(found.len(), 1, "one {target} {name} span of `{method}` expected, in {all:#?}");
        found[0].clone()
    }
}

#[test]
fn each_exchange_has_a_span_on_each_end_with_its_outcome_and_duration() {
    let _serial = SERIAL.blocking_lock();
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _default = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(watchdog(async {
        let imp = Imp::default();
        let (client, stats, serving) = pair(imp.clone()).await;
        workload(&client, &imp, &stats).await;
        // The client leaves, and the server's connection (and its span) ends.
        drop(client);
        serving.await.unwrap();
        // The client's engine records its connection's end in its own task: wait for it.
        while !capture
            .spans()
            .iter()
            .any(|s| s.target == rpc_core::spans::CLIENT && s.name == "rpc.connection" && s.closed)
        {
            tokio::task::yield_now().await;
        }
    }));
    const S: &str = rpc_core::spans::SERVER;
    const C: &str = rpc_core::spans::CLIENT;

    // Every span closed, and each end has one per exchange.
    let all = capture.spans();
    assert!(all.iter().all(|s| s.closed), "{all:#?}");
    let on = |target: &str| {
        all.iter().filter(|s| s.target == target && s.name.starts_with("rpc.") && s.name != "rpc.connection").count()
    };
    assert_eq!((on(S), on(C)), (13, 13), "{all:#?}");
    // And each end's connection has one, with every exchange counted, and the client's
    // names its server (in memory: the pid it said in the handshake, ours).
    for target in [S, C] {
        let conn: Vec<_> = all.iter().filter(|s| s.target == target && s.name == "rpc.connection").collect();
        assert_eq!(conn.len(), 1, "{target}: {conn:#?}");
        assert_eq!((conn[0].fields["calls"].as_str(), conn[0].fields["outcome"].as_str()), ("13", "ok"), "{conn:?}");
    }
    let pid = std::process::id().to_string();
    for s in all.iter().filter(|s| s.target == C) {
        assert_eq!(s.fields.get("peer_pid"), Some(&pid), "{s:?}");
    }
    for s in all.iter().filter(|s| s.target == S || s.target == C) {
        assert_eq!(s.fields["service"], "Obs", "{s:?}");
        assert!(s.fields.contains_key("outcome"), "{s:?}");
        if s.name != "rpc.oneway" || s.target == S {
            assert!(s.fields["duration_us"].parse::<u64>().is_ok(), "{s:?}");
        }
    }

    let of = |target: &str, method: &str| -> Vec<&SpanRec> {
        all.iter()
            .filter(|s| s.target == target && s.fields.get("method").map(String::as_str) == Some(method))
            .collect()
    };
    let booms = of(S, "boom");
    assert_eq!(booms.len(), 2);
    for boom in booms {
        assert_eq!(boom.fields["outcome"], "panicked");
        assert!(boom.fields["error"].contains("boom on purpose"), "{boom:?}");
    }
    // A plain call: its id, deadline and outcome; what the handler logged is inside it.
    let served = of(S, "add");
    assert_eq!(served.len(), 6);
    // The deadline as each end applies it: the client's 10 s, capped at 50 ms by the server.
    assert!(served.iter().all(|s| s.fields["outcome"] == "ok" && s.fields["timeout_ms"] == "50"), "{served:?}");
    assert!(of(C, "add").iter().all(|s| s.fields["timeout_ms"] == "10000"), "{:?}", of(C, "add"));
    assert!(served.iter().all(|s| s.events == ["adding"]), "{served:?}");
    // The server's id is the client's.
    let ids = |target: &str| {
        let mut v: Vec<String> = of(target, "add").iter().map(|s| s.fields["id"].clone()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(S), ids(C));
    // No credentials on an in-memory pipe: no peer fields.
    assert!(!served[0].fields.contains_key("peer_pid"), "{:?}", served[0]);

    let slow = capture.one(S, "rpc.call", "slow");
    assert_eq!(slow.fields["outcome"], "deadline_exceeded");
    // Stopped at the server's cap, 50 ms after it began.
    assert!(slow.fields["duration_us"].parse::<u64>().unwrap() >= 50_000, "{slow:?}");
    assert_eq!(capture.one(C, "rpc.call", "slow").fields["outcome"], "deadline_exceeded");
    assert_eq!(capture.one(S, "rpc.call", "wait").fields["outcome"], "cancelled");
    assert_eq!(capture.one(C, "rpc.call", "wait").fields["outcome"], "cancelled");

    // Streams: direction, items and bytes.
    let down = capture.one(S, "rpc.stream", "count");
    assert_eq!((down.fields["direction"].as_str(), down.fields["outcome"].as_str()), ("down", "ok"));
    assert_eq!(down.fields["items_out"], "3");
    assert!(down.fields["bytes_out"].parse::<u64>().unwrap() >= 3 * 10, "{down:?}");
    let got = capture.one(C, "rpc.stream", "count");
    assert_eq!((got.fields["items_in"].as_str(), got.fields["outcome"].as_str()), ("3", "ok"));
    assert_eq!(got.fields["bytes_in"], down.fields["bytes_out"]);
    let up = capture.one(S, "rpc.stream", "sum");
    assert_eq!((up.fields["direction"].as_str(), up.fields["items_in"].as_str()), ("up", "3"));
    assert_eq!(capture.one(S, "rpc.oneway", "note").fields["outcome"], "ok");
    assert_eq!(capture.one(C, "rpc.oneway", "note").fields["outcome"], "ok");
}

#[test]
fn a_server_span_names_the_peer_the_os_reports() {
    let _serial = SERIAL.blocking_lock();
    let capture = Capture::default();
    let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(watchdog(async {
        let name = format!("rpc-core-obs-peer-{}", std::process::id());
        let server = Server::new(ObsServer::new(Imp::default())).bind(name.as_str()).expect("bind");
        let shutdown = server.shutdown_handle();
        let server_stats = server.stats_handle();
        let running = tokio::spawn(server.run());
        let client = ObsClient::connect(name.as_str()).await.expect("connect");
        let stats = server_stats.clone();
        assert_eq!(client.add(1, 2).await.unwrap(), 3);
        // The client leaves: the server's end of the connection closes (no event to wait
        // on but the counters; each poll is a fresh snapshot).
        drop(client);
        while stats.get().connections_open != 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // And the client's engine records its connection's end in its own task.
        while !capture
            .spans()
            .iter()
            .any(|s| s.target == rpc_core::spans::CLIENT && s.name == "rpc.connection" && s.closed)
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        shutdown.shutdown();
        running.await.unwrap().unwrap();
    }));
    let served = capture.one(rpc_core::spans::SERVER, "rpc.call", "add");
    // The client is this process: the server sees its pid and user.
    let pid = std::process::id().to_string();
    assert_eq!(served.fields["peer_pid"], pid, "{served:?}");
    let me = rpc_core::PeerCredentials::current_process();
    let user = me.uid.map(|u| u.to_string()).or_else(|| me.sid.map(|s| s.to_string())).expect("a user");
    assert_eq!(served.fields["peer_user"], user, "{served:?}");
    // Each end's connection span: the same peer (the server is this process too), its one
    // call, closed as `ok` (the client left); the client's call span names its server.
    let made = capture.one(rpc_core::spans::CLIENT, "rpc.call", "add");
    assert_eq!((made.fields["peer_pid"].as_str(), made.fields["peer_user"].as_str()), (pid.as_str(), user.as_str()));
    for target in [rpc_core::spans::SERVER, rpc_core::spans::CLIENT] {
        let conns: Vec<SpanRec> =
            capture.spans().into_iter().filter(|s| s.target == target && s.name == "rpc.connection").collect();
        assert_eq!(conns.len(), 1, "{target}: {conns:#?}");
        let conn = &conns[0].fields;
        assert_eq!((conn["peer_pid"].as_str(), conn["peer_user"].as_str()), (pid.as_str(), user.as_str()));
        assert_eq!((conn["outcome"].as_str(), conn["calls"].as_str()), ("ok", "1"), "{conn:?}");
        assert!(conn["bytes_in"].parse::<u64>().unwrap() > 0 && conns[0].closed, "{conn:?}");
    }
}
