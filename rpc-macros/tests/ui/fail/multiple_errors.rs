// Every mistake is reported in one pass, each at its own token.
#[rpc_core::service]
pub trait Svc {
    fn ping(&self) -> u32;
    async fn set(&mut self, value: u32);
    async fn greet(&self, name: &str) -> String;
}

fn main() {}
