//! Method shapes (service evolution, `rpc_core::evolution`): what the generated method table
//! sees and what it does not.
//!
//! The fingerprint hashes the spelling of the signatures; the shape hashes what the codecs
//! put on the wire. Every trait here is `Queues` on the wire, and its methods are looked up
//! by name.

use rpc_core::evolution::MethodEntry;
use serde::{Deserialize, Serialize};

/// The types of version 1, used by the traits `by_name` and `by_path`.
pub mod types {
    use super::{Deserialize, Serialize};

    /// A queue.
    #[derive(Serialize, Deserialize)]
    pub struct QueueInfo {
        /// Its name.
        pub name: String,
        /// Jobs waiting.
        pub len: u32,
        /// Its state.
        pub state: State,
    }

    /// A queue's state.
    #[derive(Serialize, Deserialize)]
    pub enum State {
        /// Runs.
        Running,
        /// Paused, with a reason.
        Paused(String),
    }
}

/// Version 1, the type written by its name.
pub mod by_name {
    use super::types::QueueInfo;

    /// The queues.
    #[rpc_core::service(name = "Queues")]
    pub trait Queues {
        /// All queues.
        async fn list(&self) -> Vec<QueueInfo>;
        /// One queue.
        async fn get(&self, name: String) -> Option<QueueInfo>;
    }
}

/// Version 1 again, the type written by its path.
pub mod by_path {
    /// The queues.
    #[rpc_core::service(name = "Queues")]
    pub trait Queues {
        /// All queues.
        async fn list(&self) -> Vec<crate::types::QueueInfo>;
        /// One queue.
        async fn get(&self, name: ::std::string::String) -> Option<crate::types::QueueInfo>;
    }
}

/// Version 2: `len` is a `u64` now, and `State` gained a variant. Spelled as in version 1.
pub mod changed {
    use serde::{Deserialize, Serialize};

    /// A queue.
    #[derive(Serialize, Deserialize)]
    pub struct QueueInfo {
        /// Its name.
        pub name: String,
        /// Jobs waiting.
        pub len: u64,
        /// Its state.
        pub state: super::types::State,
    }

    /// The queues.
    #[rpc_core::service(name = "Queues")]
    pub trait Queues {
        /// All queues.
        async fn list(&self) -> Vec<QueueInfo>;
        /// One queue.
        async fn get(&self, name: String) -> Option<QueueInfo>;
    }
}

/// Version 3: `State` gained a variant (in the middle), nothing else changed.
pub mod new_variant {
    use serde::{Deserialize, Serialize};

    /// A queue.
    #[derive(Serialize, Deserialize)]
    pub struct QueueInfo {
        /// Its name.
        pub name: String,
        /// Jobs waiting.
        pub len: u32,
        /// Its state.
        pub state: State,
    }

    /// A queue's state.
    #[derive(Serialize, Deserialize)]
    pub enum State {
        /// Runs.
        Running,
        /// Drains, then pauses.
        Draining,
        /// Paused, with a reason.
        Paused(String),
    }

    /// The queues.
    #[rpc_core::service(name = "Queues")]
    pub trait Queues {
        /// All queues.
        async fn list(&self) -> Vec<QueueInfo>;
        /// One queue.
        async fn get(&self, name: String) -> Option<QueueInfo>;
    }
}

fn method(table: Option<&'static [MethodEntry]>, name: &str) -> &'static MethodEntry {
    table.expect("a generated id has a method table").iter().find(|m| m.name == name).expect("the method")
}

#[test]
fn the_same_type_written_by_another_path_has_the_same_shape_though_not_the_same_fingerprint() {
    let (a, b) = (by_name::QueuesClient::ID, by_path::QueuesClient::ID);
    // The old check: the spelling differs, so the fingerprints do, and the two refused each other.
    assert_ne!(a.fingerprint, b.fingerprint);
    for name in ["list", "get"] {
        let (ma, mb) = (method(a.methods(), name), method(b.methods(), name));
        assert!(ma.traced && mb.traced, "{ma:?} {mb:?}");
        assert_eq!(ma.shape, mb.shape, "{name}");
    }
}

#[test]
fn a_changed_field_type_changes_the_shape_though_not_the_spelling() {
    let (v1, v2) = (by_name::QueuesClient::ID, changed::QueuesClient::ID);
    // The old check could not see it: same spelling, same fingerprint, and the two sides
    // then misread each other's `len` (and everything after it).
    assert_eq!(v1.fingerprint, v2.fingerprint);
    for name in ["list", "get"] {
        let (m1, m2) = (method(v1.methods(), name), method(v2.methods(), name));
        assert_eq!(m1.spelled, m2.spelled);
        assert_ne!(m1.shape, m2.shape, "{name}");
    }
}

#[test]
fn a_variant_added_to_a_nested_enum_changes_the_shape() {
    let (v1, v3) = (by_name::QueuesClient::ID, new_variant::QueuesClient::ID);
    assert_eq!(v1.fingerprint, v3.fingerprint);
    assert_ne!(method(v1.methods(), "list").shape, method(v3.methods(), "list").shape);
}

#[test]
fn the_table_lists_the_methods_in_declaration_order_and_is_computed_once() {
    let table = by_name::QueuesClient::ID.methods().unwrap();
    assert_eq!(table.iter().map(|m| m.name).collect::<Vec<_>>(), ["list", "get"]);
    assert_ne!(table[0].shape, table[1].shape);
    // The same `'static` table on every call: traced once per process.
    assert!(std::ptr::eq(table, by_name::QueuesClient::ID.methods().unwrap()));
}
