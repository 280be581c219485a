//! `evolution`: a client built from an older version of a service trait, talking to a server
//! built from a newer one (the README's "Service evolution").
//!
//! ```text
//! evolution --serve NAME     # terminal 1: the server, built from `Inventory` version 2
//! evolution --v1 NAME        # terminal 2: a client built from version 1 calls every method it knows
//! ```
//!
//! With cargo: `cargo run -p pipe-rpc-examples --bin evolution -- --serve inv`, then
//! `cargo run -p pipe-rpc-examples --bin evolution -- --v1 inv`.
//!
//! Version 2 inserted a method at the top (`ping`), so every method the two versions share
//! sits at another place in the wire enums, and the stream items of `restock` at another
//! place again; it removed `price`; and its `Item` gained a field, which changes `list`. The
//! version-1 client still calls `add`, `count`, `restock` (a stream to the server) and
//! `events` (a stream from it): the server translates the places. `price` and `list` fail at
//! once, each with a typed error naming the method and why, and nothing is sent for them.
//!
//! The client prints one line per method, `METHOD: ok (...)` or `METHOD: refused: why`, and
//! exits with status 0 if every method did what version 2 says it should, else 1 (2 if the
//! server cannot be reached). The server prints `listening on NAME` and serves until Ctrl-C.

use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use rpc_core::{ClientConfig, RpcError, RpcStream, Server};

const USAGE: &str = "\
usage: evolution --serve NAME     serve version 2 of the Inventory service on pipe NAME
       evolution --v1 NAME        call every method of version 1 on the server at NAME";

/// Version 1 of the service, as an older client was built.
mod v1 {
    use rpc_core::RpcStream;
    use serde::{Deserialize, Serialize};

    /// An item as version 1 knows it.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub(crate) struct Item {
        pub(crate) name: String,
        pub(crate) count: u32,
    }

    /// A small inventory.
    #[rpc_core::service(name = "Inventory")]
    pub(crate) trait Inventory {
        /// Adds `count` of `name`; returns how many there are now.
        async fn add(&self, name: String, count: u32) -> u64;
        /// How many of `name` there are.
        async fn count(&self, name: String) -> u64;
        /// The price of `name` (version 2 removed it).
        async fn price(&self, name: String) -> u32;
        /// Every item (version 2's `Item` has another field).
        async fn list(&self) -> Vec<Item>;
        /// Adds each `(name, count)` of the caller's stream; returns how many it added.
        async fn restock(&self, items: RpcStream<(String, u32)>) -> u64;
        /// The changes made so far, one line each.
        async fn events(&self) -> RpcStream<String>;
    }
}

/// Version 2: `ping` inserted first, `price` removed, `Item` with a `shelf`.
mod v2 {
    use rpc_core::RpcStream;
    use serde::{Deserialize, Serialize};

    /// An item, now with where it is kept.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    pub(crate) struct Item {
        pub(crate) name: String,
        pub(crate) count: u32,
        pub(crate) shelf: String,
    }

    /// A small inventory.
    #[rpc_core::service(name = "Inventory")]
    pub(crate) trait Inventory {
        /// New in version 2.
        async fn ping(&self) -> String;
        /// Adds `count` of `name`; returns how many there are now.
        async fn add(&self, name: String, count: u32) -> u64;
        /// How many of `name` there are.
        async fn count(&self, name: String) -> u64;
        /// Every item.
        async fn list(&self) -> Vec<Item>;
        /// Adds each `(name, count)` of the caller's stream; returns how many it added.
        async fn restock(&self, items: RpcStream<(String, u32)>) -> u64;
        /// The changes made so far, one line each.
        async fn events(&self) -> RpcStream<String>;
    }
}

/// The version-2 server's state.
#[derive(Default)]
struct Stock {
    items: Mutex<Vec<(String, u64)>>,
    log: Mutex<Vec<String>>,
}

impl Stock {
    fn add(&self, name: &str, count: u32) -> u64 {
        let mut items = self.items.lock().unwrap();
        let total = match items.iter_mut().find(|(n, _)| n == name) {
            Some((_, have)) => {
                *have += u64::from(count);
                *have
            }
            None => {
                items.push((name.to_owned(), u64::from(count)));
                u64::from(count)
            }
        };
        self.log.lock().unwrap().push(format!("{name} +{count} = {total}"));
        total
    }
}

impl v2::Inventory for std::sync::Arc<Stock> {
    async fn ping(&self) -> String {
        "pong".into()
    }

    async fn add(&self, name: String, count: u32) -> u64 {
        Stock::add(self, &name, count)
    }

    async fn count(&self, name: String) -> u64 {
        self.items.lock().unwrap().iter().find(|(n, _)| *n == name).map_or(0, |(_, c)| *c)
    }

    async fn list(&self) -> Vec<v2::Item> {
        let items = self.items.lock().unwrap();
        items
            .iter()
            .map(|(name, count)| v2::Item {
                name: name.clone(),
                count: u32::try_from(*count).unwrap_or(u32::MAX),
                shelf: "A1".into(),
            })
            .collect()
    }

    async fn restock(&self, mut items: RpcStream<(String, u32)>) -> u64 {
        let mut added = 0;
        while let Some(Ok((name, count))) = items.next().await {
            Stock::add(self, &name, count);
            added += 1;
        }
        added
    }

    async fn events(&self) -> RpcStream<String> {
        RpcStream::iter(self.log.lock().unwrap().clone())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--serve", name] => match serve(name).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("evolution --serve: {e}");
                ExitCode::from(2)
            }
        },
        ["--v1", name] => v1_client(name).await,
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn serve(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::new(v2::InventoryServer::new(std::sync::Arc::new(Stock::default()))).bind(name)?;
    println!("listening on {}", server.name());
    let shutdown = server.shutdown_handle();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            shutdown.shutdown();
        }
    });
    server.run().await?;
    Ok(())
}

/// Calls every method of version 1 and says what each did; `true` if each did what version
/// 2 makes of it.
async fn v1_client(name: &str) -> ExitCode {
    let config = ClientConfig::default().connect_timeout(Duration::from_secs(10));
    let client = match v1::InventoryClient::connect_with(name, config).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("evolution --v1: cannot connect to {name}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut as_expected = true;
    let mut report = |method: &str, result: Result<String, RpcError>, should_work: bool| {
        match &result {
            Ok(what) => println!("{method}: ok ({what})"),
            Err(e) => println!("{method}: refused: {e}"),
        }
        let refused_by_name = matches!(&result, Err(RpcError::Incompatible { method: m, .. }) if m == method);
        as_expected &= if should_work { result.is_ok() } else { refused_by_name };
    };
    report("add", client.add("bolts".into(), 3).await.map(|total| format!("{total} bolts")), true);
    report("count", client.count("bolts".into()).await.map(|n| format!("{n} bolts")), true);
    let restock = RpcStream::iter([("nuts".to_owned(), 10), ("bolts".to_owned(), 2)]);
    report("restock", client.restock(restock).await.map(|n| format!("{n} items added")), true);
    let events = match client.events().await {
        Ok(stream) => stream.collect::<Vec<_>>().await.into_iter().collect::<Result<Vec<_>, _>>(),
        Err(e) => Err(e),
    };
    report("events", events.map(|lines| lines.join("; ")), true);
    report("price", client.price("bolts".into()).await.map(|p| p.to_string()), false);
    report("list", client.list().await.map(|items| format!("{} items", items.len())), false);
    if as_expected { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
