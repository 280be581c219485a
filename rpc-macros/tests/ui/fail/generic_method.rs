#[rpc_core::service]
pub trait Svc {
    async fn put<T: serde::Serialize>(&self, value: T);
}

fn main() {}
