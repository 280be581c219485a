use rpc_core::RpcStream;

#[rpc_core::service]
pub trait Feeds {
    // A one-way call is one message: it cannot carry a stream.
    #[oneway]
    async fn push(&self, items: RpcStream<u64>);
    // One stream per direction.
    async fn merge(&self, a: RpcStream<u64>, b: RpcStream<u64>) -> u64;
    // A stream is a whole argument or the whole return type.
    async fn nested(&self) -> Result<RpcStream<u64>, String>;
}

fn main() {}
