//! Generated items are documented and lint-clean in a crate with strict lints.
#![deny(missing_docs, missing_debug_implementations, unreachable_pub, unused_qualifications, unused_results)]
#![deny(rust_2018_idioms, deprecated, unused_lifetimes, single_use_lifetimes)]

use serde::{Deserialize, Serialize};

/// A value.
#[derive(Debug, Serialize, Deserialize)]
pub struct Value(pub u32);

/// Docs on the trait carry over.
#[rpc_core::service]
pub trait Documented {
    /// Docs on a method carry over to the client method.
    async fn documented(&self, v: Value) -> Value;
    /// A method the generated server calls without a deprecation warning.
    #[deprecated = "use `documented`"]
    async fn old(&self);
}

/// A private implementation.
#[derive(Debug)]
struct Impl;

#[allow(deprecated)]
impl Documented for Impl {
    async fn documented(&self, v: Value) -> Value {
        v
    }
    async fn old(&self) {}
}

fn main() {
    let server = DocumentedServer::new(Impl);
    let _: &Impl = server.get_ref();
    let _ = format!("{server:?}");
}
