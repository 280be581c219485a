#[rpc_core::service(name = "parser.v1", name = "parser.v2")]
pub trait Parser {
    async fn parse(&self, text: String) -> u32;
}

fn main() {}
