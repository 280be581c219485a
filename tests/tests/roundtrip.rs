//! Every method shape `#[service]` supports round-trips through a real server process.

use std::collections::HashMap;

use pipe_rpc_tests::{ProbeError, ServerProcess, Shape, connect, pattern_byte, sample_record, unique_name, watchdog};
use rpc_core::{Codec, RpcError};
use serde_bytes::ByteBuf;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shape_round_trips_through_a_server_process() {
    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;

        // The server really is another process, and says so in the handshake too.
        assert_eq!(c.pid().await.unwrap(), server.pid());
        assert_ne!(server.pid(), std::process::id());
        assert_eq!(c.channel().peer().server_pid, server.pid());

        // Unit.
        let () = c.unit().await.unwrap();

        // Plain values.
        for s in ["", "hello", "ünïcødé ✓ \u{1F980}", &"x".repeat(10_000)] {
            assert_eq!(c.echo_string(s.to_owned()).await.unwrap(), s);
        }
        for seed in [0, 1, 7, u64::MAX - 1] {
            let r = sample_record(seed);
            assert_eq!(c.echo_struct(r.clone()).await.unwrap(), r);
        }
        let shapes = [
            Shape::Empty,
            Shape::Circle(2.5),
            Shape::Rect { w: 0, h: u32::MAX },
            Shape::Poly(vec![(1, -1), (i32::MIN, i32::MAX)], "poly".into()),
            Shape::Nested(Box::new(Shape::Nested(Box::new(Shape::Empty)))),
        ];
        for s in shapes {
            assert_eq!(c.echo_enum(s.clone()).await.unwrap(), s);
        }
        let t = (255u8, i64::MIN, "tuple".to_owned(), true);
        assert_eq!(c.echo_tuple(t.clone()).await.unwrap(), t);
        let m: HashMap<String, Vec<u32>> =
            (0..50).map(|i| (format!("key-{i}"), (0..i).collect())).chain([(String::new(), vec![])]).collect();
        assert_eq!(c.echo_map(m.clone()).await.unwrap(), m);
        assert_eq!(c.echo_map(HashMap::new()).await.unwrap(), HashMap::new());
        assert_eq!(c.echo_option(None).await.unwrap(), None);
        assert_eq!(c.echo_option(Some(sample_record(3))).await.unwrap(), Some(sample_record(3)));
        assert_eq!(
            c.many_args(7, "b".into(), vec![1, 2, u16::MAX], Some(false)).await.unwrap(),
            (7, "b".to_owned(), vec![1, 2, u16::MAX], Some(false))
        );
        assert_eq!(c.many_args(0, String::new(), vec![], None).await.unwrap(), (0, String::new(), vec![], None));

        // Bytes, both ways, including sizes around powers of two.
        for n in [0usize, 1, 255, 4096, 65_537, 1 << 20] {
            let data = ByteBuf::from((0..n).map(|i| (i * 31 % 256) as u8).collect::<Vec<u8>>());
            assert_eq!(c.echo_bytes(data.clone()).await.unwrap(), data, "echo of {n} bytes");
            let made = c.make_bytes(n as u64).await.unwrap();
            assert_eq!(made.len(), n);
            assert!(made.iter().enumerate().all(|(i, b)| *b == pattern_byte(i)), "make_bytes({n}) content");
        }

        // `Result<T, E>` absorbing RpcError: application errors come back typed.
        assert_eq!(c.divide(7, 2).await, Ok(3));
        assert_eq!(c.divide(-9, 3).await, Ok(-3));
        assert_eq!(c.divide(5, 0).await, Err(ProbeError::DivideByZero { dividend: 5 }));
        assert_eq!(c.divide(i64::MIN, -1).await, Err(ProbeError::Overflow));

        // `type ParseReply = Result<u32, String>`: not flattened, `Result<ParseReply, RpcError>`.
        let ok: Result<Result<u32, String>, RpcError> = c.parse_u32("42".into()).await;
        assert_eq!(ok, Ok(Ok(42)));
        let err = c.parse_u32("forty-two".into()).await.unwrap();
        assert!(matches!(&err, Err(msg) if msg.contains("forty-two")), "{err:?}");

        // The handler runs with the call's context.
        assert_eq!(c.context_method().await.unwrap().as_deref(), Some("context_method"));

        drop(c);
        let exit = server.shutdown_gracefully().await;
        assert!(exit.status.success(), "{exit:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_errors_absorb_transport_errors() {
    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        assert_eq!(c.divide(1, 1).await, Ok(1));
        server.kill().await;
        // The same `Result<i64, ProbeError>` carries the transport failure.
        match c.divide(1, 1).await {
            Err(ProbeError::Rpc(e)) => assert!(pipe_rpc_tests::is_disconnected(&e), "{e:?}"),
            other => panic!("expected ProbeError::Rpc(Disconnected), got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postcard_codec_round_trips_too() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let config = pipe_rpc_tests::client_config().codec(Codec::Postcard);
        let c = pipe_rpc_tests::ProbeClient::connect_with(name.clone(), config).await.unwrap();
        assert_eq!(c.channel().peer().codec, Codec::Postcard);
        let r = sample_record(11);
        assert_eq!(c.echo_struct(r.clone()).await.unwrap(), r);
        assert_eq!(c.echo_option(Some(r.clone())).await.unwrap(), Some(r));
        assert_eq!(c.divide(5, 0).await, Err(ProbeError::DivideByZero { dividend: 5 }));
        assert_eq!(c.parse_u32("7".into()).await, Ok(Ok(7)));
        let data = ByteBuf::from(vec![9u8; 70_000]);
        assert_eq!(c.echo_bytes(data.clone()).await.unwrap(), data);
    })
    .await;
}

#[test]
fn a_json_request_is_the_method_variant_with_its_arguments_by_name() {
    use pipe_rpc_tests::{ProbeRequest, ProbeResponse};
    let json = |v: &ProbeRequest| String::from_utf8(Codec::Json.encode(v, 1 << 20).unwrap().to_vec()).unwrap();
    assert_eq!(json(&ProbeRequest::EchoString { s: "hi".into() }), r#"{"EchoString":{"s":"hi"}}"#);
    assert_eq!(
        json(&ProbeRequest::ManyArgs { a: 1, b: "b".into(), c: vec![2, 3], d: None }),
        r#"{"ManyArgs":{"a":1,"b":"b","c":[2,3],"d":null}}"#
    );
    assert_eq!(json(&ProbeRequest::Unit {}), r#"{"Unit":{}}"#);
    // Written by hand, in any field order, with whitespace.
    let req: ProbeRequest =
        Codec::Json.decode(br#" { "ManyArgs" : { "d": true, "c": [], "b": "", "a": 255 } } "#).unwrap();
    assert!(matches!(req, ProbeRequest::ManyArgs { a: 255, d: Some(true), .. }));
    let resp = Codec::Json.encode(&ProbeResponse::EchoString("hi".into()), 100).unwrap();
    assert_eq!(&resp[..], br#"{"EchoString":"hi"}"#);
}

/// Answers `n * 10`, for the callback part of the JSON test.
#[derive(Clone)]
struct Tens;

impl pipe_rpc_tests::Ticks for Tens {
    async fn tick(&self, n: u64) -> u64 {
        n * 10
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_codec_carries_calls_streams_one_way_calls_and_callbacks() {
    use futures::StreamExt;
    use rpc_core::RpcStream;

    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let config = pipe_rpc_tests::client_config().codec(Codec::Json);
        let c = pipe_rpc_tests::ProbeClient::connect_with(name.clone(), config).await.unwrap();
        assert_eq!(c.channel().peer().codec, Codec::Json);
        assert_eq!(c.channel().peer().server_pid, server.pid());

        // Calls of every kind of value.
        let () = c.unit().await.unwrap();
        let r = sample_record(11);
        assert_eq!(c.echo_struct(r.clone()).await.unwrap(), r);
        assert_eq!(c.echo_option(Some(r.clone())).await.unwrap(), Some(r));
        assert_eq!(c.echo_option(None).await.unwrap(), None);
        let shape = Shape::Poly(vec![(1, -1), (i32::MIN, i32::MAX)], "ü \"quoted\"\n".into());
        assert_eq!(c.echo_enum(shape.clone()).await.unwrap(), shape);
        let m: HashMap<String, Vec<u32>> = (0..5).map(|i| (format!("k{i}"), (0..i).collect())).collect();
        assert_eq!(c.echo_map(m.clone()).await.unwrap(), m);
        assert_eq!(c.divide(5, 0).await, Err(ProbeError::DivideByZero { dividend: 5 }));
        assert_eq!(c.parse_u32("7".into()).await, Ok(Ok(7)));
        let data = ByteBuf::from((0..70_000).map(pattern_byte).collect::<Vec<u8>>());
        assert_eq!(c.echo_bytes(data.clone()).await.unwrap(), data);

        // Streams both ways (items, ends and credits are frames without a body).
        let items: Vec<u64> = c.count(3, 200, 0).await.unwrap().map(|i| i.unwrap()).collect().await;
        assert_eq!(items, (3..203).collect::<Vec<u64>>());
        assert_eq!(c.sum(RpcStream::iter(1..=100u64)).await.unwrap(), 5050);
        let doubled: Vec<u64> = c.double(RpcStream::iter(1..=50u64)).await.unwrap().map(|i| i.unwrap()).collect().await;
        assert_eq!(doubled, (1..=50u64).map(|i| i * 2).collect::<Vec<u64>>());

        // One-way calls, then a call that sees them.
        for seq in 0..20 {
            c.note(77, seq, 0).await.unwrap();
        }
        let stats = pipe_rpc_tests::wait_stats(&c, 77, pipe_rpc_tests::TagStats::min_started(20)).await;
        assert!(stats.started >= 20, "{stats:?}");
        assert_eq!(c.notes(77).await.unwrap(), (0..20).collect::<Vec<u64>>());

        // Callbacks: the server calls back with the connection's codec.
        assert_eq!(c.run_ticks(4, pipe_rpc_tests::TicksServer::new(Tens)).await.unwrap(), vec![0, 10, 20, 30]);

        // What JSON cannot carry is refused before it is sent, and the connection goes on.
        let mut odd = sample_record(1);
        odd.score = f64::NAN;
        let err = c.echo_struct(odd).await.unwrap_err();
        assert!(err.to_string().contains("JSON cannot carry the float NaN"), "{err}");
        assert_eq!(c.echo_string("still here".into()).await.unwrap(), "still here");
    })
    .await;
}
