#[rpc_core::service]
pub trait Svc {
    async fn ping(&self) -> u32 {
        1
    }
}

fn main() {}
