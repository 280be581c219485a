//! The `#[service]` attribute of pipe-rpc. Use it through `rpc_core::service`; see
//! [`macro@service`] for everything it accepts and generates.

use proc_macro::TokenStream;

mod attr;
mod expand;
mod fallback;
mod fingerprint;
mod model;
mod naming;
mod validate;

/// Turns a trait into a typed RPC service.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    let out = expand::service(args.into(), item.into());
    if std::env::var_os("RPC_MACROS_DEBUG").is_some() {
        eprintln!("{out}");
    }
    out.into()
}
