//! `derive(..)` adds derives to the wire enums, next to serde's.
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
}

#[rpc_core::service(derive(Clone, Debug, PartialEq))]
pub trait Jobs {
    async fn submit(&self, job: Job) -> u64;
    async fn upload(&self, items: rpc_core::RpcStream<Job>) -> Vec<Job>;
}

fn main() {
    let request = JobsRequest::Submit { job: Job { id: 1 } };
    assert_eq!(request.clone(), request);
    assert_eq!(format!("{request:?}"), "Submit { job: Job { id: 1 } }");
    assert_ne!(JobsResponse::Submit(1), JobsResponse::Upload(Vec::new()));
}
