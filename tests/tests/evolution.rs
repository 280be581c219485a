//! Service evolution (`rpc_core::evolution`) across processes: a client built from an older
//! version of `Probe` against the test server.
//!
//! `OldProbe` is `Probe` as an older build saw it: its first fifteen methods as the server
//! has them (one with its type written by another path), then `stats` returning a
//! `TagStats` whose fields are declared in another order (spelled as the server's, so the
//! spelled fingerprint text of `stats` is the same: the old check could not see the
//! change), `retired`, which the server no longer has, then methods of every pattern that
//! the server has at other places, in another order. The server also has many methods the
//! client never heard of.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use pipe_rpc_tests::{
    ParseReply, ProbeClient, ProbeError, Record, ServerProcess, Ticks, TicksClient, TicksServer, client_config,
    connect, pattern_byte, unique_name, wait_stats, watchdog,
};
use rpc_core::codec::Codec;
use rpc_core::evolution::MethodStatus;
use rpc_core::{Callback, Channel, RpcError, RpcStream, ServiceId, TransportError};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

/// The server's `TagStats` with `started` and `finished` declared the other way round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagStats {
    finished: u64,
    started: u64,
    dropped_unfinished: u64,
    running: u64,
    max_concurrent: u64,
}

/// An older `Probe`.
#[rpc_core::service(name = "Probe")]
trait OldProbe {
    async fn unit(&self);
    async fn echo_string(&self, s: String) -> String;
    async fn whoami(&self) -> (u32, u32, u32, String);
    async fn echo_struct(&self, v: Record) -> Record;
    /// `Shape` written by its path: the server writes `Shape`.
    async fn echo_enum(&self, v: pipe_rpc_tests::Shape) -> pipe_rpc_tests::Shape;
    async fn echo_tuple(&self, v: (u8, i64, String, bool)) -> (u8, i64, String, bool);
    async fn echo_map(&self, v: HashMap<String, Vec<u32>>) -> HashMap<String, Vec<u32>>;
    async fn echo_option(&self, v: Option<Record>) -> Option<Record>;
    async fn many_args(&self, a: u8, b: String, c: Vec<u16>, d: Option<bool>) -> (u8, String, Vec<u16>, Option<bool>);
    async fn echo_bytes(&self, b: ByteBuf) -> ByteBuf;
    async fn make_bytes(&self, n: u64) -> ByteBuf;
    async fn divide(&self, a: i64, b: i64) -> Result<i64, ProbeError>;
    async fn parse_u32(&self, s: String) -> ParseReply;
    async fn sleep_ms(&self, tag: u64, ms: u64) -> u64;
    #[idempotent]
    async fn sleep_ms_idempotent(&self, tag: u64, ms: u64) -> u64;
    /// Changed: the server's `TagStats` has its fields in another order.
    async fn stats(&self, tag: u64) -> TagStats;
    /// Gone from the server.
    async fn retired(&self) -> u8;
    /// The server has it, after many methods this client does not know.
    async fn pid(&self) -> u32;
    // The server has these in another order, with others between them, so every one of
    // them, and the item variants of the two that take a stream, sit at other places.
    async fn double(&self, items: RpcStream<u64>) -> RpcStream<u64>;
    #[oneway]
    async fn note(&self, tag: u64, seq: u64, ms: u64);
    async fn upload_check(&self, items: RpcStream<ByteBuf>) -> (u64, bool);
    async fn notes(&self, tag: u64) -> Vec<u64>;
    async fn blobs(&self, n: u64, size: u64) -> RpcStream<ByteBuf>;
    async fn run_ticks(&self, n: u64, ticks: Callback<TicksClient>) -> Result<Vec<u64>, ProbeError>;
}

/// Answers `tick(n)` with `10 * n`.
#[derive(Clone)]
struct Tens;

impl Ticks for Tens {
    async fn tick(&self, n: u64) -> u64 {
        n * 10
    }
}

fn incompatible(result: Result<impl std::fmt::Debug, RpcError>) -> (String, MethodStatus) {
    match result {
        Err(RpcError::Incompatible { method, reason }) => (method, reason),
        other => panic!("expected RpcError::Incompatible, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_client_calls_the_methods_both_have_and_gets_a_typed_error_naming_each_other_one() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        // The old rule refused this client outright.
        assert_ne!(OldProbeClient::ID.fingerprint, ProbeClient::ID.fingerprint);
        for codec in Codec::ALL {
            let mut config = client_config();
            config.codec = codec;
            let old = OldProbeClient::connect_with(name.clone(), config).await.unwrap();
            // Shared methods work, including the one whose type is written by another path.
            old.unit().await.unwrap();
            assert_eq!(old.echo_string("évolution".into()).await.unwrap(), "évolution");
            let shape = pipe_rpc_tests::Shape::Rect { w: 3, h: 4 };
            assert_eq!(old.echo_enum(shape.clone()).await.unwrap(), shape);
            assert_eq!(old.divide(7, 2).await.unwrap(), 3);
            // The others fail at once, naming the method and why.
            assert_eq!(incompatible(old.stats(1).await), ("stats".to_owned(), MethodStatus::Changed), "{codec:?}");
            assert_eq!(incompatible(old.retired().await), ("retired".to_owned(), MethodStatus::Missing));
            let err = old.retired().await.unwrap_err();
            assert!(err.to_string().contains("`retired`") && err.to_string().contains("nothing was sent"), "{err}");
            // The connection is unharmed.
            assert_eq!(old.echo_string("still here".into()).await.unwrap(), "still here");
        }
        // Current clients are served as before.
        assert_eq!(connect(&name).await.echo_string("ok".into()).await.unwrap(), "ok");
    })
    .await;
}

/// Every pattern, with methods the server has at other places than the client: the server
/// translates the places of calls, one-way calls, items both ways (large items in pieces
/// included), replies, and a method with a callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_client_calls_every_method_the_server_moved_in_every_pattern_and_codec() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let server_pid = connect(&name).await.pid().await.unwrap();
        // The places differ: this is what the old server refused as `Moved`.
        let (old_table, table) = (OldProbeClient::ID.methods().unwrap(), ProbeClient::ID.methods().unwrap());
        let place = |t: &[rpc_core::evolution::MethodEntry], n: &str| t.iter().position(|m| m.name == n).unwrap();
        for method in ["pid", "double", "note", "upload_check", "notes", "blobs", "run_ticks"] {
            assert_ne!(place(old_table, method), place(table, method), "{method}");
        }
        for (tag, codec) in (1u64..).zip(Codec::ALL) {
            let mut config = client_config();
            config.codec = codec;
            let old = OldProbeClient::connect_with(name.clone(), config).await.unwrap();
            assert_eq!(old.pid().await.unwrap(), server_pid, "{codec:?}");
            for seq in 0..5 {
                old.note(tag, seq, 0).await.unwrap();
            }
            assert_eq!(old.notes(tag).await.unwrap(), [0, 1, 2, 3, 4], "{codec:?}");
            let doubled: Vec<u64> =
                old.double(RpcStream::iter([1u64, 2, 3])).await.unwrap().map(Result::unwrap).collect().await;
            assert_eq!(doubled, [2, 4, 6], "{codec:?}");
            // Items of 300 KB go in pieces; one of 10 B goes whole.
            let mut offset = 0;
            let mut chunks = Vec::new();
            for size in [300_000usize, 10, 300_000] {
                chunks.push(ByteBuf::from((offset..offset + size).map(pattern_byte).collect::<Vec<u8>>()));
                offset += size;
            }
            assert_eq!(old.upload_check(RpcStream::iter(chunks)).await.unwrap(), (offset as u64, true), "{codec:?}");
            let blobs: Vec<ByteBuf> = old.blobs(3, 300_000).await.unwrap().map(Result::unwrap).collect().await;
            let all: Vec<u8> = blobs.iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(all.len(), 900_000);
            assert!(all.iter().enumerate().all(|(i, &b)| b == pattern_byte(i)), "{codec:?}");
            assert_eq!(old.run_ticks(3, TicksServer::new(Tens)).await.unwrap(), [0, 10, 20], "{codec:?}");
        }
    })
    .await;
}

/// The negative control: without evolution (the exact rule, which a client spelled like
/// the server passes) the reordered `TagStats` is misread without any error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reordered_struct_is_misread_silently_under_the_exact_rule_and_refused_by_name_with_evolution() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let probe = ProbeClient::ID.methods().unwrap();
        let old_table = OldProbeClient::ID.methods().unwrap();
        let stats = probe.iter().position(|m| m.name == "stats").unwrap();
        // `stats` sits at the same place in both, spelled the same: only its shape differs.
        assert_eq!(old_table[stats].name, "stats");
        assert_eq!(old_table[stats].spelled, probe[stats].spelled);
        assert_ne!(old_table[stats].shape, probe[stats].shape);

        // A handler of tag 7 started and not finished: started 1, finished 0.
        let c = connect(&name).await.with_timeout(Duration::from_secs(25));
        let sleeper = tokio::spawn({
            let c = c.clone();
            async move { c.sleep_ms(7, 20_000).await }
        });
        wait_stats(&c, 7, pipe_rpc_tests::TagStats::min_started(1)).await;

        // The exact rule, as a client whose whole trait is spelled like the server's sees it.
        let id = ServiceId::new("Probe", ProbeClient::ID.fingerprint);
        let exact = OldProbeClient::from_channel(Channel::connect(name.clone(), id, client_config()).await.unwrap());
        let misread = exact.stats(7).await.unwrap();
        assert_eq!((misread.started, misread.finished), (0, 1), "the fields were not swapped: {misread:?}");

        // With evolution the same call is refused by name instead.
        let evolving = OldProbeClient::connect_with(name.clone(), client_config()).await.unwrap();
        assert_eq!(incompatible(evolving.stats(7).await), ("stats".to_owned(), MethodStatus::Changed));
        sleeper.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asks_for_the_exact_rule_is_refused_in_the_handshake() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let err =
            OldProbeClient::connect_with(name.clone(), client_config().exact_fingerprint(true)).await.unwrap_err();
        match &err {
            RpcError::Transport(TransportError::Incompatible { detail }) => {
                assert!(detail.contains("fingerprint"), "{detail}");
            }
            other => panic!("expected Incompatible, got {other:?}"),
        }
        // A current client asking for it is served.
        let exact = ProbeClient::connect_with(name.clone(), client_config().exact_fingerprint(true)).await.unwrap();
        assert_eq!(exact.echo_string("ok".into()).await.unwrap(), "ok");
    })
    .await;
}

/// A `Probe` whose `ProbeError` changed in its second variant, spelled as the server's.
mod changed_error {
    use rpc_core::RpcError;
    use serde::{Deserialize, Serialize};

    /// The server's `ProbeError` with `Overflow` holding a value.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
    pub(crate) enum ProbeError {
        #[error("cannot divide {dividend} by zero")]
        DivideByZero { dividend: i64 },
        #[error("the quotient overflows past {0}")]
        Overflow(u8),
        #[error(transparent)]
        Rpc(#[from] RpcError),
    }

    #[rpc_core::service(name = "Probe")]
    pub(crate) trait ChangedProbe {
        async fn unit(&self);
        async fn divide(&self, a: i64, b: i64) -> Result<i64, ProbeError>;
    }
}

/// The change is in a variant of the `E` of a `Result` (reached only through `Err`), which a
/// tracer that takes an enum's first variant once it has seen them all never reaches: the
/// method would have been compared by its spelling, which is the same, and misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_a_later_variant_of_a_results_error_is_seen_and_refused_by_name() {
    use changed_error::ChangedProbeClient;
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let (theirs, ours) = (ChangedProbeClient::ID.methods().unwrap(), ProbeClient::ID.methods().unwrap());
        let divide = |t: &'static [rpc_core::evolution::MethodEntry]| t.iter().find(|m| m.name == "divide").unwrap();
        assert!(divide(theirs).traced && divide(ours).traced);
        assert_eq!(divide(theirs).spelled, divide(ours).spelled);
        assert_ne!(divide(theirs).shape, divide(ours).shape);
        let client = ChangedProbeClient::connect_with(name.clone(), client_config()).await.unwrap();
        client.unit().await.unwrap();
        match client.divide(1, 0).await {
            Err(changed_error::ProbeError::Rpc(RpcError::Incompatible { method, reason })) => {
                assert_eq!((method.as_str(), reason), ("divide", MethodStatus::Changed));
            }
            other => panic!("expected Incompatible, got {other:?}"),
        }
    })
    .await;
}
