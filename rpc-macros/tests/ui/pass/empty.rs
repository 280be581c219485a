// A service without methods still expands (and can be served).
#[rpc_core::service]
pub trait Empty {}

struct Impl;
impl Empty for Impl {}

fn main() {
    let _ = rpc_core::Server::new(EmptyServer::new(Impl));
    let _ = EmptyClient::ID;
}
