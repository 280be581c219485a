//! In-process round trip through the generated client and server over `tokio::io::duplex`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rpc_core::{Channel, RpcError, Server};
use serde::{Deserialize, Serialize};

/// A queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// Its name.
    pub name: String,
    /// Whether it runs.
    pub running: bool,
}

/// Application errors, able to carry transport errors.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum QueueError {
    /// Already there.
    #[error("queue {0} exists")]
    Exists(String),
    /// Transport or call failure.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// Escapes flattening: the client returns `Result<Reply, RpcError>`.
pub type Reply = Result<u32, String>;

/// Work queues.
#[rpc_core::service]
pub trait WorkQueues {
    /// Creates a queue in the stopped state.
    async fn create(&self, name: String) -> Result<QueueInfo, QueueError>;
    /// Lists queues.
    async fn list(&self) -> Vec<QueueInfo>;
    /// Unit return.
    async fn clear(&self);
    /// Raw identifiers.
    async fn r#type(&self, r#in: u8, service: u8, request: u8) -> u16;
    /// Alias escape.
    async fn parse(&self, text: String) -> Reply;
    /// Several shapes at once.
    async fn shapes(
        &self,
        map: HashMap<String, Vec<u8>>,
        pair: (u8, Option<String>),
        bytes: serde_bytes::ByteBuf,
    ) -> (usize, usize, usize);
    /// Never answers in time.
    async fn slow(&self) -> ();
    /// Only with the cfg.
    #[cfg(any())]
    async fn gone(&self, x: NotEvenAType) -> AlsoMissing;
}

#[derive(Default)]
struct Queues(Mutex<Vec<QueueInfo>>);

impl WorkQueues for Queues {
    async fn create(&self, name: String) -> Result<QueueInfo, QueueError> {
        let mut qs = self.0.lock().unwrap();
        if qs.iter().any(|q| q.name == name) {
            return Err(QueueError::Exists(name));
        }
        let q = QueueInfo { name, running: false };
        qs.push(q.clone());
        Ok(q)
    }
    async fn list(&self) -> Vec<QueueInfo> {
        self.0.lock().unwrap().clone()
    }
    async fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
    async fn r#type(&self, r#in: u8, service: u8, request: u8) -> u16 {
        u16::from(r#in) * 100 + u16::from(service) * 10 + u16::from(request)
    }
    async fn parse(&self, text: String) -> Reply {
        text.parse().map_err(|e| format!("{e}"))
    }
    async fn shapes(
        &self,
        map: HashMap<String, Vec<u8>>,
        pair: (u8, Option<String>),
        bytes: serde_bytes::ByteBuf,
    ) -> (usize, usize, usize) {
        (map.values().map(Vec::len).sum(), usize::from(pair.0) + pair.1.map_or(0, |s| s.len()), bytes.len())
    }
    async fn slow(&self) {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

async fn connect() -> WorkQueuesClient {
    let (a, b) = tokio::io::duplex(1 << 16);
    let server = Server::new(WorkQueuesServer::new(Queues::default()));
    tokio::spawn(async move { server.serve_connection(b).await });
    let channel = Channel::from_io(a, WorkQueuesClient::ID, Default::default()).await.unwrap();
    WorkQueuesClient::from_channel(channel)
}

/// Fails the test instead of hanging it.
async fn watchdog<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f).await.expect("test hung: watchdog fired")
}

#[tokio::test]
async fn round_trip() {
    watchdog(round_trip_body()).await;
}

async fn round_trip_body() {
    let q = connect().await;
    let info = q.create("jobs".into()).await.unwrap();
    assert_eq!(info, QueueInfo { name: "jobs".into(), running: false });
    assert!(matches!(q.create("jobs".into()).await, Err(QueueError::Exists(n)) if n == "jobs"));
    assert_eq!(q.list().await.unwrap(), vec![info]);
    q.clear().await.unwrap();
    assert!(q.list().await.unwrap().is_empty());
    assert_eq!(q.r#type(1, 2, 3).await.unwrap(), 123);
    assert_eq!(q.parse("7".into()).await.unwrap(), Ok(7));
    assert!(q.parse("x".into()).await.unwrap().is_err());
    let map = HashMap::from([("a".to_string(), vec![1, 2]), ("b".to_string(), vec![3])]);
    let shapes = q.shapes(map, (4, Some("xy".into())), serde_bytes::ByteBuf::from(vec![0; 5])).await.unwrap();
    assert_eq!(shapes, (3, 6, 5));
}

#[tokio::test]
async fn timeouts_and_clones() {
    watchdog(timeouts_and_clones_body()).await;
}

async fn timeouts_and_clones_body() {
    let q = connect().await;
    let quick = q.with_timeout(Duration::from_millis(50));
    assert!(matches!(quick.slow().await, Err(RpcError::DeadlineExceeded { .. })));
    // The original handle and clones keep working on the same connection.
    let clone = q.clone();
    assert_eq!(clone.r#type(0, 0, 9).await.unwrap(), 9);
    assert!(!q.channel().is_closed());
    q.channel().close();
    let err = clone.create("late".into()).await.unwrap_err();
    assert!(matches!(err, QueueError::Rpc(_)), "{err:?}");
}

#[test]
fn generated_api() {
    use rpc_core::Service;
    assert_eq!(WorkQueuesClient::ID.name, "WorkQueues");
    assert_eq!(<WorkQueuesServer<Queues> as Service>::ID, WorkQueuesClient::ID);
    let name = |r: &WorkQueuesRequest| <WorkQueuesServer<Queues> as Service>::method_name(r);
    assert_eq!(name(&WorkQueuesRequest::Type { r#in: 1, service: 2, request: 3 }), "type");
    assert_eq!(name(&WorkQueuesRequest::List {}), "list");
    let server = WorkQueuesServer::new(Queues::default());
    let clone = server.clone();
    assert!(std::ptr::eq(server.get_ref(), clone.get_ref()));
    assert_eq!(format!("{server:?}"), "WorkQueuesServer { .. }");
}

#[test]
fn the_method_list_describes_every_compiled_in_method_as_a_json_client_needs_it() {
    use rpc_core::Service;
    let methods = <WorkQueuesServer<Queues> as Service>::METHODS;
    let names: Vec<&str> = methods.iter().map(|m| &*m.name).collect();
    // `gone` is compiled out.
    assert_eq!(names, ["create", "list", "clear", "type", "parse", "shapes", "slow"]);
    let create = &methods[0];
    assert_eq!((&*create.variant, &*create.returns), ("Create", "Result<QueueInfo, QueueError>"));
    assert_eq!(&*create.doc, "Creates a queue in the stopped state.");
    assert!(create.shape.fallible && !create.shape.oneway);
    assert_eq!(create.signature(), "create(name: String) -> Result<QueueInfo, QueueError>");
    // Raw identifiers are shown as serde names them.
    let ty = &methods[3];
    assert_eq!(&*ty.variant, "Type");
    let args: Vec<(&str, &str)> = ty.args.iter().map(|a| (&*a.name, &*a.ty)).collect();
    assert_eq!(args, [("in", "u8"), ("service", "u8"), ("request", "u8")]);
    assert_eq!(methods[2].signature(), "clear()");
    assert_eq!(methods[5].args[0].ty, "HashMap<String, Vec<u8>>");
    assert_eq!(methods[5].args[1].ty, "(u8, Option<String>)");
    // The parse alias is not fallible (by syntax, as the client sees it).
    assert!(!methods[4].shape.fallible);
    // A request written from the description is the generated request.
    let json = br#"{"Type":{"in":1,"service":2,"request":3}}"#;
    let request: WorkQueuesRequest = rpc_core::Codec::Json.decode(json).unwrap();
    assert!(matches!(request, WorkQueuesRequest::Type { r#in: 1, service: 2, request: 3 }));
}
