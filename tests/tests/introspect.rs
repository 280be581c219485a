//! Probing an endpoint (`rpc_core::introspect::probe`) across processes: what a server says
//! about itself with introspection off and on, what the operating system says about who
//! serves the pipe, and what a probe makes of a server older than probes, of a hostile one
//! and of a pipe that is not pipe-rpc at all.

use pipe_rpc_tests::raw::read_frame;
use pipe_rpc_tests::{ProbeClient, ProbeServer, ServerProcess, client_config, connect, unique_name, watchdog};
use rpc_core::introspect::{ServerDescription, probe};
use rpc_core::pipe::{PipeListener, PipeStream};
use rpc_core::wire::{self, FEATURE_INTROSPECTION, HandshakeStatus, Hello, Welcome};
use rpc_core::{Codec, PipeName, RpcError, Service, TransportError};
use tokio::io::AsyncWriteExt;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

async fn probe_ok(name: &PipeName) -> ServerDescription {
    match probe(name.clone(), client_config()).await {
        Ok(d) => d,
        Err(e) => panic!("probe of {name} failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_reports_service_fingerprint_limits_pid_and_user_but_no_methods_without_introspection() {
    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &["--max-in-flight", "7", "--max-message", "65536"]).await;
        let about = probe_ok(&name).await;
        assert_eq!(about.service, "Probe");
        assert_eq!(about.fingerprint, ProbeClient::ID.fingerprint);
        assert_eq!(about.protocol_version, wire::PROTOCOL_VERSION);
        assert_eq!(about.codecs, Codec::ALL.to_vec());
        assert_eq!((about.max_in_flight, about.max_message), (7, 65536));
        assert_eq!(about.server_pid, server.pid());
        let creds = about.server.as_ref().expect("the pipe's peer credentials");
        assert_eq!(creds.pid, Some(server.pid()), "the OS names the server process");
        assert!(!about.introspection && about.methods.is_empty() && !about.legacy, "{about:?}");
        // A probe is no session: the server goes on serving. It runs as this test's user,
        // which it sees as its client's.
        let (_, uid, _, _) = connect(&name).await.whoami().await.unwrap();
        #[cfg(unix)]
        assert_eq!(creds.uid, Some(uid), "the server runs as this user");
        let _ = uid;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_introspecting_server_lists_every_method_with_its_arguments_shape_and_doc() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--introspection", "on"]).await;
        let about = probe_ok(&name).await;
        assert!(about.introspection && !about.legacy);
        let methods = <ProbeServer<pipe_rpc_tests::ProbeImpl> as Service>::METHODS;
        assert_eq!(about.methods, methods.to_vec(), "the server's generated list, whole");
        let many = about.method("many_args").expect("many_args");
        let args: Vec<(&str, &str)> = many.args.iter().map(|a| (&*a.name, &*a.ty)).collect();
        assert_eq!(args, [("a", "u8"), ("b", "String"), ("c", "Vec<u16>"), ("d", "Option<bool>")]);
        assert_eq!(many.variant, "ManyArgs");
        assert_eq!(many.doc, "Returns its arguments as a tuple.");
        assert_eq!(about.method("ManyArgs"), Some(many), "found by its variant too");
        assert_eq!(about.method("divide").unwrap().shape.describe(), "call");
        assert!(about.method("divide").unwrap().shape.fallible);
        assert_eq!(about.method("note").unwrap().shape.describe(), "one-way");
        assert_eq!(about.method("count").unwrap().shape.describe(), "download");
        assert_eq!(about.method("sum").unwrap().shape.describe(), "upload");
        assert_eq!(about.method("double").unwrap().shape.describe(), "upload+download");
        assert_eq!(about.method("run_ticks").unwrap().shape.describe(), "call+callback");
        assert_eq!(
            about.method("sum").unwrap().signature(),
            "sum(items: RpcStream<u64>) -> u64",
            "the stream argument is part of the signature"
        );
    })
    .await;
}

/// Serves one connection on `name` in this process: reads the hello and answers `answer`
/// made from it.
async fn one_answer(
    name: &PipeName,
    answer: impl FnOnce(Hello) -> Vec<u8> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let listener = PipeListener::bind(name.clone()).expect("bind");
    tokio::spawn(async move {
        let mut io: PipeStream = listener.accept().await.expect("accept");
        let hello = Hello::decode(&read_frame(&mut io).await).expect("a hello");
        let bytes = answer(hello);
        let _ = io.write_all(&u32::try_from(bytes.len()).unwrap().to_be_bytes()).await;
        let _ = io.write_all(&bytes).await;
        let _ = io.flush().await;
        // Hold the pipe until the client is done with it.
        let _ = tokio::io::AsyncReadExt::read(&mut io, &mut [0u8; 1]).await;
    })
}

/// What a server before probes answered a hello for another service: a wrong-service
/// refusal naming its own, in the layout of that time (no codecs, no features).
fn old_refusal(hello: &Hello) -> Vec<u8> {
    assert_eq!(hello.flags, wire::HELLO_PROBE, "the probe flag is sent");
    let w = Welcome {
        method_status: Vec::new(),
        codecs: 0,
        features: 0,
        methods: Vec::new(),
        version: wire::PROTOCOL_VERSION,
        capabilities: 0,
        max_in_flight: 0,
        max_oneway: 0,
        stream_window: 0,
        status: HandshakeStatus::WrongService,
        codec: 0,
        max_message: 0,
        fingerprint: 0x1234_5678_9abc_def0,
        server_pid: 4242,
        service: "OldService".into(),
        message: "this pipe serves `OldService`".into(),
    };
    let mut bytes = w.encode();
    bytes.truncate(bytes.len() - 8);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_older_than_probes_is_reported_legacy_with_what_its_refusal_named() {
    watchdog(async {
        let name = unique_name!();
        let old = one_answer(&name, |hello| old_refusal(&hello)).await;
        let about = probe_ok(&name).await;
        assert!(about.legacy, "{about:?}");
        assert_eq!(
            (about.service.as_str(), about.fingerprint, about.server_pid),
            ("OldService", 0x1234_5678_9abc_def0, 4242)
        );
        assert!(about.codecs.is_empty() && !about.introspection && about.methods.is_empty());
        old.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_method_count_is_a_protocol_error_not_an_allocation() {
    watchdog(async {
        let name = unique_name!();
        let hostile = one_answer(&name, |_| {
            let w = Welcome {
                method_status: Vec::new(),
                codecs: 0,
                features: FEATURE_INTROSPECTION,
                methods: Vec::new(),
                version: wire::PROTOCOL_VERSION,
                capabilities: 0,
                max_in_flight: 1,
                max_oneway: 1,
                stream_window: 0,
                status: HandshakeStatus::Described,
                codec: 0,
                max_message: 1024,
                fingerprint: 1,
                server_pid: 1,
                service: "Hostile".into(),
                message: String::new(),
            };
            let mut bytes = w.encode();
            let n = bytes.len();
            // The method count: 65535, with nothing after it.
            bytes[n - 2..].copy_from_slice(&u16::MAX.to_le_bytes());
            bytes
        })
        .await;
        let err = probe(name.clone(), client_config()).await.unwrap_err();
        let RpcError::Transport(TransportError::Protocol { detail }) = &err else { panic!("{err:?}") };
        assert!(detail.contains("more methods than a description may hold"), "{detail}");
        hostile.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_that_is_not_pipe_rpc_is_a_protocol_error_naming_it() {
    watchdog(async {
        let name = unique_name!();
        let foreign = one_answer(&name, |_| b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()).await;
        let err = probe(name.clone(), client_config()).await.unwrap_err();
        let RpcError::Transport(TransportError::Protocol { detail }) = &err else { panic!("{err:?}") };
        assert!(detail.contains("not a pipe-rpc endpoint"), "{detail}");
        foreign.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_of_a_name_nobody_serves_is_not_running() {
    watchdog(async {
        let err = probe(unique_name!(), client_config()).await.unwrap_err();
        assert!(matches!(err, RpcError::Transport(TransportError::NotRunning { .. })), "{err:?}");
    })
    .await;
}

/// A probe is admitted like a client: a server whose access policy refuses this client
/// refuses the probe too, saying why, and describes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_goes_through_the_access_policy() {
    watchdog(async {
        let name = unique_name!();
        let policy = rpc_core::AccessPolicy::custom(|_| Err("no one today".to_owned()));
        let config = rpc_core::ServerConfig::default().introspection(true).access(policy);
        let server = rpc_core::Server::new(ProbeServer::new(pipe_rpc_tests::ProbeImpl::default()))
            .config(config)
            .bind(name.clone())
            .expect("bind");
        let shutdown = server.shutdown_handle();
        let running = tokio::spawn(server.run());
        let err = probe(name.clone(), client_config()).await.unwrap_err();
        let RpcError::Transport(TransportError::PermissionDenied { detail }) = &err else { panic!("{err:?}") };
        assert!(detail.contains("no one today"), "{detail}");
        shutdown.shutdown();
        running.await.expect("the server task").expect("the server");
    })
    .await;
}
