//! How a user tests a service with `rpc-testkit`, on the work-queue service of this package:
//! the same checks three ways.
//!
//! - In memory ([`rpc_testkit::pair`]): a unit test of the service, no process, no pipe.
//! - In a child process of this test binary ([`ServerCommand::this_binary`]): the `#[test]`
//!   `queue_server` is the server's entry; the harness re-runs this binary for that test
//!   alone, on a pipe name of the calling test's own, and waits until it is bound.
//! - A binary of the package ([`ServerCommand::program`] with `CARGO_BIN_EXE_*`): the real
//!   `work-queue-server`, told its pipe with `--pipe NAME`, ready once its pipe accepts.
//!
//! Each server is killed, and its socket and lock files removed, when its `TestServer` is
//! dropped, also when an assertion fails; [`watchdog`] fails a test that hangs.

use pipe_rpc_examples::{MemoryQueues, QueueError, WorkItem, WorkQueuesClient, WorkQueuesServer};
use rpc_core::Server;
use rpc_testkit::{ServerCommand, TEST_WATCHDOG, serve_in_child, watchdog};

/// What every variant checks: a queue takes work once started, and says why it refuses.
async fn queues_take_work_in_order(client: &WorkQueuesClient) {
    client.create("jobs".into()).await.unwrap();
    let first = client.add_work("jobs".into(), WorkItem::new("build", *b"a")).await.unwrap();
    let second = client.add_work("jobs".into(), WorkItem::new("test", *b"b")).await.unwrap();
    let err = client.take_work("jobs".into(), 0).await.unwrap_err();
    assert_eq!(err, QueueError::Stopped { name: "jobs".into() });
    client.start("jobs".into()).await.unwrap();
    let (id, item) = client.take_work("jobs".into(), 0).await.unwrap().expect("an item");
    assert_eq!((id, item.kind.as_str()), (first, "build"));
    let (id, _) = client.take_work("jobs".into(), 0).await.unwrap().expect("an item");
    assert_eq!(id, second);
    assert_eq!(client.take_work("jobs".into(), 0).await.unwrap(), None);
}

#[tokio::test]
async fn in_memory() {
    watchdog(TEST_WATCHDOG, async {
        let (client, _server) =
            rpc_testkit::pair::<WorkQueuesClient, _>(WorkQueuesServer::new(MemoryQueues::new())).await;
        queues_take_work_in_order(&client).await;
    })
    .await;
}

/// The server's entry: in a normal test run it does nothing; in the child that
/// `ServerCommand::this_binary("queue_server")` starts, it serves until the test is over.
#[test]
fn queue_server() {
    serve_in_child("queue_server", |child| {
        Server::new(WorkQueuesServer::new(MemoryQueues::new())).bind(child.name().clone())
    });
}

#[tokio::test]
async fn in_a_child_process_of_this_test_binary() {
    watchdog(TEST_WATCHDOG, async {
        let server = ServerCommand::this_binary("queue_server").spawn().await.unwrap();
        let client = WorkQueuesClient::connect(server.name().clone()).await.unwrap();
        assert_eq!(client.channel().peer().server_pid, server.pid());
        queues_take_work_in_order(&client).await;
    })
    .await;
}

#[tokio::test]
async fn in_the_packages_server_binary() {
    watchdog(TEST_WATCHDOG, async {
        let mut server = ServerCommand::program(env!("CARGO_BIN_EXE_work-queue-server"))
            .name_flag("--pipe")
            .ready_when_accepting()
            .spawn()
            .await
            .unwrap();
        let client = WorkQueuesClient::connect(server.name().clone()).await.unwrap();
        assert_eq!(client.channel().peer().server_pid, server.pid());
        queues_take_work_in_order(&client).await;
        // A graceful stop, through the server's own protocol (a `shutdown` line on stdin);
        // without it, dropping `server` would kill it.
        drop(client);
        server.send_line("shutdown");
        let exit = server.wait_exit().await;
        assert!(exit.status.success(), "{exit}");
        assert!(exit.stdout.iter().any(|l| l.starts_with("stopped; 1 queue(s)")), "{exit}");
    })
    .await;
}
