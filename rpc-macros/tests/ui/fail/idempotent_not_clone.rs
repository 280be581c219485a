use serde::{Deserialize, Serialize};

/// Crosses the pipe, but cannot be copied for a second attempt.
#[derive(Serialize, Deserialize)]
pub struct Ticket(u64);

#[rpc_core::service]
pub trait Tickets {
    #[idempotent]
    async fn redeem(&self, ticket: Ticket) -> bool;
}

fn main() {}
