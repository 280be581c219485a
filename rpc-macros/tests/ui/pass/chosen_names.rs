//! The generated items can be named, so a user item with a default name (tarpc's own
//! examples have a `HelloServer`) does not clash. `new` and `into_inner` are ordinary
//! method names: the client has no such items.
use rpc_core::RpcError;

/// The user's own type, named like the default server adapter of `Hello`.
pub struct HelloServer {
    greeting: String,
}

#[rpc_core::service(
    server = "HelloService",
    client = HelloStub,
    blocking_client = "HelloSync",
    request = "HelloReq",
    response = "HelloResp",
    name = "hello.v1"
)]
pub trait Hello {
    async fn hello(&self, name: String) -> String;
    async fn new(&self) -> u8;
    async fn into_inner(&self) -> u8;
}

impl Hello for HelloServer {
    async fn hello(&self, name: String) -> String {
        format!("{}, {name}", self.greeting)
    }
    async fn new(&self) -> u8 {
        1
    }
    async fn into_inner(&self) -> u8 {
        2
    }
}

#[allow(dead_code)]
async fn calls(c: HelloStub) -> Result<(), RpcError> {
    let _: String = c.hello("you".into()).await?;
    let _: u8 = c.new().await?;
    let _: u8 = c.into_inner().await?;
    Ok(())
}

#[allow(dead_code)]
fn blocking_calls(c: HelloSync) -> Result<(), RpcError> {
    let _: String = c.hello("you".into())?;
    let _: &HelloStub = c.as_async();
    Ok(())
}

fn main() {
    let _ = rpc_core::Server::new(HelloService::new(HelloServer { greeting: "hi".into() }));
    let _ = HelloReq::Hello { name: String::new() };
    let _ = HelloResp::New(1);
    assert_eq!(HelloStub::ID.name, "hello.v1");
}
