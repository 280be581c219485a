#[rpc_core::service(client = "my client", server = "Hello", request = "Wire", response = "Wire", client = X)]
pub trait Hello {
    async fn hello(&self, name: String) -> String;
}

fn main() {}
