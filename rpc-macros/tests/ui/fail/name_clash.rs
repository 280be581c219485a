// A user item named like a generated one is a duplicate definition; rustc says so at the
// attribute (and then that the user's struct takes no type parameter). The fix is to name the
// generated item: `#[rpc_core::service(server = "HelloService")]` (see pass/chosen_names.rs).
pub struct HelloServer;

#[rpc_core::service]
pub trait Hello {
    async fn hello(&self, name: String) -> String;
}

fn main() {}
