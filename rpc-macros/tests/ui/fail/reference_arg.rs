#[rpc_core::service]
pub trait Svc {
    async fn greet(&self, name: &str) -> String;
}

fn main() {}
