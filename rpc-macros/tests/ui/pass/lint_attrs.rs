//! Lint attributes on a method reach every generated piece of it, and those on the
//! trait every generated item, so a crate that denies warnings builds (tarpc's
//! examples name methods in CamelCase under `#[allow(non_snake_case)]`).
#![deny(warnings, unused_qualifications)]

/// A trait whose name is not CamelCase: its generated items (`my_serviceClient`, ...)
/// are not either, and the trait's `#[allow]` covers them.
#[allow(non_camel_case_types)]
#[rpc_core::service]
pub trait my_service {
    /// A CamelCase method with CamelCase arguments (fields of its wire variant).
    #[allow(non_snake_case)]
    async fn HelloWorld(&self, Name: String) -> String;
    /// `#[expect]` is checked on the trait method and becomes `#[allow]` elsewhere, where
    /// the lint may not fire.
    #[expect(non_snake_case)]
    async fn Upload(&self, Chunks: rpc_core::RpcStream<u8>) -> u64;
    /// Under a `cfg_attr`.
    #[cfg_attr(all(), allow(non_snake_case))]
    async fn Ping(&self);
    /// A `#[deny]` for lints the generated body would trip does not reach it.
    #[deny(unused_qualifications, clippy::absolute_paths)]
    async fn plain(&self, x: u8) -> u8;
}

struct Impl;

#[allow(non_snake_case)]
impl my_service for Impl {
    async fn HelloWorld(&self, Name: String) -> String {
        Name
    }
    async fn Upload(&self, _Chunks: rpc_core::RpcStream<u8>) -> u64 {
        0
    }
    async fn Ping(&self) {}
    async fn plain(&self, x: u8) -> u8 {
        x
    }
}

#[allow(dead_code)]
async fn calls(c: my_serviceClient) -> Result<(), rpc_core::RpcError> {
    let _: String = c.HelloWorld("x".into()).await?;
    let _: u64 = c.Upload(rpc_core::RpcStream::iter([1u8])).await?;
    c.Ping().await?;
    let _: u8 = c.plain(1).await?;
    Ok(())
}

fn main() {
    let _ = rpc_core::Server::new(my_serviceServer::new(Impl));
}
