//! The blocking client of every method shape, with the signature each one gets.
use rpc_core::{BlockingStream, Callback, RpcError, RpcStream};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum AppError {
    Rpc(RpcError),
}

impl From<RpcError> for AppError {
    fn from(e: RpcError) -> Self {
        AppError::Rpc(e)
    }
}

#[rpc_core::service]
pub trait Events {
    async fn event(&self, n: u64);
}

#[rpc_core::service(blocking_client = "Sync")]
pub trait Shapes {
    async fn plain(&self, a: u8) -> u16;
    async fn unit(&self);
    async fn fallible(&self, a: u8) -> Result<u16, AppError>;
    #[oneway]
    async fn one_way(&self, line: String);
    async fn download(&self, from: u64) -> RpcStream<u64>;
    async fn upload(&self, name: String, items: RpcStream<Vec<u8>>) -> Result<u64, AppError>;
    async fn both(&self, items: RpcStream<u8>) -> RpcStream<u8>;
    async fn with_callback(&self, n: u64, events: Callback<EventsClient>) -> u64;
    async fn r#type(&self, r#in: u8) -> u8;
}

struct Handler;

impl Events for Handler {
    async fn event(&self, _n: u64) {}
}

#[allow(dead_code)]
fn calls(c: &Sync) -> Result<(), AppError> {
    let _: Result<u16, RpcError> = c.plain(1);
    let _: Result<(), RpcError> = c.unit();
    let _: Result<u16, AppError> = c.fallible(1);
    let _: Result<(), RpcError> = c.one_way("x".into());
    let stream: BlockingStream<u64> = c.download(0)?;
    for item in stream {
        let _: u64 = item?;
    }
    // An upload takes any iterator of the items, or an `RpcStream`.
    let _: u64 = c.upload("a".into(), vec![vec![1u8]])?;
    let _: u64 = c.upload("b".into(), std::iter::repeat_n(vec![0u8; 8], 3))?;
    let _: u64 = c.upload("c".into(), RpcStream::iter([vec![2u8]]))?;
    let _: Vec<u8> = c.both(0..10u8)?.collect::<Result<_, _>>()?;
    let _: u64 = c.with_callback(3, EventsServer::new(Handler))?;
    let _: u8 = c.r#type(1)?;
    // The async client on the same connection, and the stream as the async client has it.
    let _: &ShapesClient = c.as_async();
    let _: RpcStream<u64> = c.download(0)?.into_async();
    let _: Sync = c.with_timeout(std::time::Duration::from_secs(1));
    let _: ShapesClient = c.clone().into_async();
    Ok(())
}

#[allow(dead_code)]
fn connects() -> Result<Sync, RpcError> {
    Sync::connect("shapes")
}

fn main() {}
