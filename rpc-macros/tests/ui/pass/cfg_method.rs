// `#[cfg]` on a method removes every generated piece of it, its type checks included:
// a disabled method may name types that do not exist.
#[rpc_core::service]
pub trait Svc {
    async fn always(&self) -> u8;
    #[cfg(any())]
    async fn never(&self, x: DoesNotExist) -> AlsoMissing;
    #[cfg(all())]
    async fn enabled(&self) -> u8;
    // A disabled callback method may name a client that does not exist: the fingerprint
    // mixes in its callback trait only under its `#[cfg]`.
    #[cfg(any())]
    async fn watch(&self, c: rpc_core::Callback<NoSuchClient>) -> u8;
}

// A trait whose only method is disabled expands like an empty one.
#[rpc_core::service]
pub trait AllGone {
    #[cfg(any())]
    async fn f(&self, x: DoesNotExist);
}

impl AllGone for Impl {}

// A trait-level `#[cfg]` (below the attribute) applies to all generated items.
#[rpc_core::service]
#[cfg(any())]
pub trait Gone {
    async fn f(&self, x: DoesNotExist);
}

struct Impl;

impl Svc for Impl {
    async fn always(&self) -> u8 {
        1
    }
    async fn enabled(&self) -> u8 {
        2
    }
}

#[allow(dead_code)]
async fn calls(c: SvcClient) {
    let _ = c.always().await;
    let _ = c.enabled().await;
}

fn main() {
    let _ = SvcServer::new(Impl);
    let _ = SvcRequest::Enabled {};
    let _ = rpc_core::Server::new(AllGoneServer::new(Impl));
    let _ = AllGoneClient::ID;
}
