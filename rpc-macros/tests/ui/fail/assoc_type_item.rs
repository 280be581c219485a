#[rpc_core::service]
pub trait Store {
    type Item;
    async fn get(&self, key: String) -> Option<u32>;
}

fn main() {}
