// A trait with a mistake reports that mistake and nothing else: code implementing the
// trait and using its server and client (the method in error included) adds no errors.
#![deny(warnings)]

#[rpc_core::service]
pub trait Counter {
    async fn get(&self) -> u64;
    async fn set(&mut self, value: u64);
}

struct Impl;

impl Counter for Impl {
    async fn get(&self) -> u64 {
        1
    }
    async fn set(&mut self, _value: u64) {}
}

#[allow(dead_code)]
async fn client() -> Result<u64, rpc_core::RpcError> {
    let c = CounterClient::connect("counter").await?;
    c.set(2).await?;
    c.with_timeout(std::time::Duration::from_secs(1)).get().await
}

fn main() {
    let _ = rpc_core::Server::new(CounterServer::new(Impl));
}
