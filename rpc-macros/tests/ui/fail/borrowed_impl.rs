// An implementation for a borrow (`impl Trait for &mut T`) is accepted, but a server
// needs a `'static` one: the error is at the borrow, and says so.
#[rpc_core::service]
pub trait Counter {
    async fn get(&self) -> u64;
}

pub struct Impl(u64);

impl Counter for &mut Impl {
    async fn get(&self) -> u64 {
        self.0
    }
}

fn main() {
    let mut state = Impl(1);
    let _ = rpc_core::Server::new(CounterServer::new(&mut state));
}
