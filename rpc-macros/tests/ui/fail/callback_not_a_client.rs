#[rpc_core::service]
pub trait Watcher {
    // The callback must name the generated client of a service trait.
    async fn watch(&self, events: rpc_core::Callback<String>);
}

fn main() {}
