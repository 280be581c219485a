// Every mistake is reported in one pass, each at its own token: the attribute's
// arguments and the trait's alike.
#[rpc_core::service(nmae = "svc")]
pub trait Svc {
    fn ping(&self) -> u32;
    async fn set(&mut self, value: u32);
    async fn greet(&self, name: &str) -> String;
}

fn main() {}
