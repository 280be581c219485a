#[rpc_core::service]
pub trait Svc {
    async fn add(&self, (a, b): (u32, u32)) -> u32;
}

fn main() {}
