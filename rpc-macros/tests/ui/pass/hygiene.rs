// The generated code names everything by absolute path: it compiles without the prelude,
// with rpc-core under another name, and with user items shadowing std names.
#![no_implicit_prelude]

extern crate rpc_core as renamed;
extern crate serde;
extern crate std;

// Shadow names the generated code must not pick up.
#[allow(dead_code)]
mod shadows {
    pub struct Result;
    pub struct Option;
    pub struct Box;
    pub struct Arc;
    pub struct Vec;
    pub struct String;
    pub trait Send {}
    pub trait Sync {}
    pub trait Future {}
    pub trait Clone {}
    pub trait Default {}
    pub trait Into {}
}
#[allow(unused_imports)]
use shadows::*;

#[derive(::serde::Serialize, ::serde::Deserialize)]
pub struct Item {
    pub id: u64,
}

#[renamed::service(crate = renamed)]
pub trait Hygienic {
    async fn get(&self, id: u64) -> ::std::option::Option<Item>;
    async fn put(&self, item: Item, service: ::std::string::String);
    async fn try_get(&self, id: u64) -> ::std::result::Result<Item, renamed::RpcError>;
}

// A trait named like the server's type parameter.
#[renamed::service(crate = crate::renamed)]
pub trait S {
    async fn f(&self) -> u8;
}

struct Impl;

impl Hygienic for Impl {
    async fn get(&self, id: u64) -> ::std::option::Option<Item> {
        ::std::option::Option::Some(Item { id })
    }
    async fn put(&self, _item: Item, _service: ::std::string::String) {}
    async fn try_get(&self, id: u64) -> ::std::result::Result<Item, renamed::RpcError> {
        ::std::result::Result::Ok(Item { id })
    }
}

impl S for Impl {
    async fn f(&self) -> u8 {
        1
    }
}

fn main() {
    let _ = renamed::Server::new(HygienicServer::new(Impl));
    let _ = renamed::Server::new(SServer::new(Impl));
}
