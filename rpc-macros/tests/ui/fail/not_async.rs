#[rpc_core::service]
pub trait Svc {
    fn ping(&self) -> u32;
}

// The trait is still emitted, so this impl adds no errors of its own.
struct Impl;
impl Svc for Impl {
    fn ping(&self) -> u32 {
        1
    }
}

fn main() {}
