use std::borrow::Cow;

#[rpc_core::service]
pub trait Svc {
    async fn greet(&self, name: Cow<'_, str>);
}

fn main() {}
