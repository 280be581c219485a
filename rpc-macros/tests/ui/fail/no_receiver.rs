#[rpc_core::service]
pub trait Svc {
    async fn version() -> String;
}

fn main() {}
