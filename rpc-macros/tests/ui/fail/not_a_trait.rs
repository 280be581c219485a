#[rpc_core::service]
pub struct Parser;

fn main() {}
