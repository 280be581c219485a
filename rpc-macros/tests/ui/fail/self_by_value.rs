#[rpc_core::service]
pub trait Svc {
    async fn take(self) -> u32;
}

fn main() {}
