pub struct Job {
    pub id: u64,
}

#[rpc_core::service]
pub trait Jobs {
    async fn submit(&self, job: Job) -> u64;
}

fn main() {}
