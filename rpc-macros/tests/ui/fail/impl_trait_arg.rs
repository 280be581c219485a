#[rpc_core::service]
pub trait Svc {
    async fn greet(&self, name: impl Into<String>);
}

fn main() {}
