#[rpc_core::service]
pub trait WorkQueues {
    async fn connect(&self, queue: String);
}

fn main() {}
