#[rpc_core::service(nmae = "parser.v1")]
pub trait Parser {
    async fn parse(&self, text: String) -> u32;
}

fn main() {}
