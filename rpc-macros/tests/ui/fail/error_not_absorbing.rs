#[rpc_core::service]
pub trait Parser {
    async fn parse(&self, text: String) -> Result<u32, String>;
}

fn main() {}
