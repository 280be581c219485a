pub struct Job {
    pub id: u64,
}

#[rpc_core::service]
pub trait Jobs {
    async fn next(&self) -> Option<Job>;
}

fn main() {}
