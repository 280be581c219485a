#[rpc_core::service]
pub trait Events {
    async fn happened(&self, what: String);
}

#[rpc_core::service]
pub trait Watcher {
    async fn watch_twice(&self, a: rpc_core::Callback<EventsClient>, b: rpc_core::Callback<EventsClient>);
}

fn main() {}
