#[rpc_core::service]
pub trait Svc {
    async fn name(&self) -> &'static str;
}

fn main() {}
