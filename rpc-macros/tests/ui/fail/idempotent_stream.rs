#[rpc_core::service]
pub trait Feed {
    #[idempotent]
    async fn watch(&self) -> rpc_core::RpcStream<u64>;
    #[idempotent]
    #[oneway]
    async fn log(&self, line: String);
}

fn main() {}
