// `#[cfg]` on a method removes every generated piece of it, its type checks included:
// a disabled method may name types that do not exist.
#[rpc_core::service]
pub trait Svc {
    async fn always(&self) -> u8;
    #[cfg(any())]
    async fn never(&self, x: DoesNotExist) -> AlsoMissing;
    #[cfg(all())]
    async fn enabled(&self) -> u8;
}

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
}
