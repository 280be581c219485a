// Raw identifiers as method, argument and type names, and arguments named like the
// generated code's own locals.
#[allow(non_camel_case_types)]
pub type r#struct = u8;

#[rpc_core::service]
pub trait r#Keywords {
    async fn r#type(&self, r#in: r#struct, r#match: String) -> u8;
    async fn r#async(&self);
    async fn locals(&self, service: u8, request: u8, __rpc_service: u8, __rpc_request: u8, __rpc_response: u8, __rpc_value: u8, channel: u8, options: u8) -> u8;
}

struct Impl;

impl Keywords for Impl {
    async fn r#type(&self, r#in: r#struct, r#match: String) -> u8 {
        r#in + r#match.len() as u8
    }
    async fn r#async(&self) {}
    #[allow(clippy::too_many_arguments)]
    async fn locals(&self, service: u8, request: u8, __rpc_service: u8, __rpc_request: u8, __rpc_response: u8, __rpc_value: u8, channel: u8, options: u8) -> u8 {
        service + request + __rpc_service + __rpc_request + __rpc_response + __rpc_value + channel + options
    }
}

#[allow(dead_code)]
async fn calls(c: KeywordsClient) -> Result<u8, rpc_core::RpcError> {
    c.r#async().await?;
    c.locals(1, 2, 3, 4, 5, 6, 7, 8).await?;
    c.r#type(1, "x".into()).await
}

fn main() {
    let _ = KeywordsRequest::Type { r#in: 1, r#match: String::new() };
    let _ = KeywordsRequest::Async {};
    let _ = KeywordsServer::new(Impl);
    assert_eq!(KeywordsClient::ID.name, "Keywords");
}
