// `name = ".."` changes the handshake name; the fingerprint depends on it too.
#[rpc_core::service(name = "work-queues.v1")]
pub trait WorkQueues {
    async fn list(&self) -> Vec<String>;
}

mod plain {
    #[rpc_core::service]
    pub trait WorkQueues {
        async fn list(&self) -> Vec<String>;
    }
}

mod again {
    #[rpc_core::service]
    pub trait WorkQueues {
        async fn list(&self) -> Vec<String>;
    }
}

mod changed {
    #[rpc_core::service]
    pub trait WorkQueues {
        async fn list(&self) -> Vec<u8>;
    }
}

fn main() {
    assert_eq!(WorkQueuesClient::ID.name, "work-queues.v1");
    assert_eq!(plain::WorkQueuesClient::ID.name, "WorkQueues");
    assert_ne!(WorkQueuesClient::ID.fingerprint, plain::WorkQueuesClient::ID.fingerprint);
    // Same signatures, same fingerprint; a changed type changes it.
    assert_eq!(plain::WorkQueuesClient::ID, again::WorkQueuesClient::ID);
    assert_ne!(plain::WorkQueuesClient::ID, changed::WorkQueuesClient::ID);
}
