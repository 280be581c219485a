// A type without serde derives, in a service that is served and called: the type is
// reported once at the trait, and each use of the service says what it needs.
pub struct Job {
    pub id: u64,
}

#[rpc_core::service]
pub trait Jobs {
    async fn submit(&self, job: Job) -> u64;
}

struct Impl;

impl Jobs for Impl {
    async fn submit(&self, job: Job) -> u64 {
        job.id
    }
}

#[allow(dead_code)]
async fn client(c: JobsClient) -> Result<u64, rpc_core::RpcError> {
    c.submit(Job { id: 1 }).await
}

fn main() {
    let _ = rpc_core::Server::new(JobsServer::new(Impl));
}
