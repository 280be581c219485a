#[rpc_core::service]
pub trait Svc: Send + Clone {
    async fn ping(&self);
}

fn main() {}
