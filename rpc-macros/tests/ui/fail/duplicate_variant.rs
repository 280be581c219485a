#[rpc_core::service]
pub trait Svc {
    async fn get_x(&self) -> u32;
    #[allow(non_snake_case)]
    async fn getX(&self) -> u32;
}

fn main() {}
