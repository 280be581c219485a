//! What spans cost when nobody wants them: nothing that can be seen from outside. With no
//! subscriber, or one at `INFO`, no span is opened, a call makes exactly as many
//! allocations either way, and no span callsite of pipe-rpc is ever reached (a subscriber is
//! asked about every callsite the first time it is reached: it is never asked about ours).
//! A subscriber at `DEBUG`, the control, sees all three. Instruction counts are in
//! `docs/ARCHITECTURE.md`.
//!
//! Its own test binary, with one test: the allocation counter is this binary's global
//! allocator, and callsite registration is global to the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rpc_core::{Channel, ClientConfig, Server};
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};

/// The service under test.
#[rpc_core::service]
pub trait Adder {
    /// `a + b`.
    async fn add(&self, a: u64, b: u64) -> u64;
}

struct Imp;
impl Adder for Imp {
    async fn add(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

thread_local! {
    /// Allocations made by this thread.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Counts the allocations of each thread.
struct Counting;

#[allow(unsafe_code)]
// SAFETY: every call is passed on to `System` unchanged; the count is a thread-local `Cell`
// with a `const` initializer, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A subscriber at a fixed level that notes every callsite it is asked about and every span
/// it is asked to make.
struct Watcher {
    level: tracing::level_filters::LevelFilter,
    callsites: Mutex<Vec<(String, &'static str)>>,
    spans: AtomicUsize,
    ids: AtomicUsize,
}

impl Watcher {
    fn new(level: tracing::level_filters::LevelFilter) -> Arc<Self> {
        Arc::new(Watcher { level, callsites: Mutex::default(), spans: AtomicUsize::new(0), ids: AtomicUsize::new(1) })
    }

    /// Callsites of pipe-rpc's spans it was asked about.
    fn rpc_callsites(&self) -> Vec<(String, &'static str)> {
        self.callsites
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, n)| t.starts_with("rpc_core") && n.starts_with("rpc."))
            .cloned()
            .collect()
    }
}

impl Subscriber for Watcher {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        self.callsites.lock().unwrap().push((meta.target().to_owned(), meta.name()));
        if self.enabled(meta) { Interest::always() } else { Interest::never() }
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(self.level)
    }
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        *meta.level() <= self.level
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.spans.fetch_add(1, Ordering::Relaxed);
        tracing::span::Id::from_u64(self.ids.fetch_add(1, Ordering::Relaxed) as u64)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A client of a new in-memory connection to a new server, both run by `rt`.
fn connect(rt: &tokio::runtime::Runtime) -> AdderClient {
    rt.block_on(async {
        let (a, b) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move { Server::new(AdderServer::new(Imp)).serve_connection(b).await });
        let handshake = Channel::from_io(a, AdderClient::ID, ClientConfig::default());
        let channel = tokio::time::timeout(Duration::from_secs(20), handshake).await.expect("handshake hung");
        AdderClient::from_channel(channel.expect("handshake"))
    })
}

/// The fewest allocations that `CALLS` calls made on this thread (client, server and both
/// engines all run on it), over three connections, each after `CALLS` calls to warm up. The
/// fewest, because some batches pay for something else: a buffer that grows (a queue's, the
/// runtime's), or a connection whose first call was preempted past 0.5 ms, which marks the
/// method long-running and gives every later call a task (and its allocation) of its own.
fn allocations_of_calls(rt: &tokio::runtime::Runtime) -> u64 {
    const CALLS: u64 = 200;
    let mut fewest = u64::MAX;
    for _ in 0..3 {
        let client = connect(rt);
        let made = rt.block_on(async {
            for i in 0..CALLS {
                assert_eq!(client.add(i, 1).await.unwrap(), i + 1);
            }
            let before = ALLOCATIONS.with(Cell::get);
            for i in 0..CALLS {
                assert_eq!(client.add(i, 1).await.unwrap(), i + 1);
            }
            ALLOCATIONS.with(Cell::get) - before
        });
        fewest = fewest.min(made);
    }
    fewest
}

#[test]
fn with_no_subscriber_or_one_at_info_spans_allocate_nothing_and_are_never_reached() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let opened = rpc_core::__private::spans_opened;
    let bare = allocations_of_calls(&rt);
    assert_eq!(opened(), 0, "spans were opened with no subscriber");

    let info = Watcher::new(tracing::level_filters::LevelFilter::INFO);
    let at_info = tracing::subscriber::with_default(info.clone(), || allocations_of_calls(&rt));
    assert_eq!(at_info, bare, "a subscriber at INFO changed the allocations of 200 calls");
    assert_eq!(info.rpc_callsites(), [], "a span callsite of pipe-rpc was reached with a subscriber at INFO");
    assert_eq!(info.spans.load(Ordering::Relaxed), 0);
    assert_eq!(opened(), 0, "spans were opened with a subscriber at INFO");

    // The control: at DEBUG the same calls reach the callsites, make spans, and allocate
    // more (so the two checks above can fail).
    let debug = Watcher::new(tracing::level_filters::LevelFilter::DEBUG);
    let at_debug = tracing::subscriber::with_default(debug.clone(), || allocations_of_calls(&rt));
    assert!(at_debug > bare, "spans at DEBUG allocated nothing more ({at_debug} vs {bare}): the counter sees nothing");
    let mut reached = debug.rpc_callsites();
    reached.sort();
    assert_eq!(
        reached,
        [
            ("rpc_core::client".to_owned(), "rpc.call"),
            ("rpc_core::client".to_owned(), "rpc.connection"),
            ("rpc_core::server".to_owned(), "rpc.call"),
            ("rpc_core::server".to_owned(), "rpc.connection")
        ],
        "the callsites of a call's spans and of its connections'"
    );
    // Three connections of 400 calls.
    assert_eq!(
        debug.spans.load(Ordering::Relaxed),
        2 * 1200 + 2 * 3,
        "two spans per call and per connection (one per end)"
    );
    assert_eq!(opened(), 2 * 1200 + 2 * 3);
}
