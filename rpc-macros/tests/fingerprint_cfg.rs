//! The handshake fingerprint covers exactly the methods that are compiled in.
//!
//! A `#[cfg]` on a method removes its wire variants, which renumbers every later method
//! (serde encodes a variant by its index). Two builds that differ in a method's `#[cfg]`
//! must therefore announce different fingerprints, and a build must announce the same
//! fingerprint as a trait written without the disabled method. Every trait here is named
//! `Svc` on the wire, so only the methods make the fingerprints differ.

// `#[cfg(all())]` is the point: a condition that is always true.
#![allow(clippy::non_minimal_cfg)]

use rpc_core::{Callback, Client, Service};

/// The callback trait of the callback cases.
#[rpc_core::service]
pub trait Events {
    /// One event.
    async fn event(&self, n: u64);
}

/// `a` and `b`.
#[rpc_core::service(name = "Svc")]
pub trait Without {
    /// First.
    async fn a(&self) -> u8;
    /// Last.
    async fn b(&self, x: String) -> Vec<u8>;
}

/// `a`, `mid`, `b`.
#[rpc_core::service(name = "Svc")]
pub trait Plain {
    /// First.
    async fn a(&self) -> u8;
    /// In the middle.
    async fn mid(&self, x: u32) -> u32;
    /// Last.
    async fn b(&self, x: String) -> Vec<u8>;
}

/// `Plain` with `mid` never compiled in.
#[rpc_core::service(name = "Svc")]
pub trait CfgOff {
    /// First.
    async fn a(&self) -> u8;
    /// In the middle, never compiled in.
    #[cfg(any())]
    async fn mid(&self, x: u32) -> u32;
    /// Last.
    async fn b(&self, x: String) -> Vec<u8>;
}

/// `Plain` with `mid` always compiled in.
#[rpc_core::service(name = "Svc")]
pub trait CfgOn {
    /// First.
    async fn a(&self) -> u8;
    /// In the middle, always compiled in.
    #[cfg(all())]
    async fn mid(&self, x: u32) -> u32;
    /// Last.
    async fn b(&self, x: String) -> Vec<u8>;
}

/// `a`, `b` and a method taking a callback.
#[rpc_core::service(name = "Svc")]
pub trait PlainCallback {
    /// First.
    async fn a(&self) -> u8;
    /// Last.
    async fn b(&self, x: String) -> Vec<u8>;
    /// Calls back.
    async fn watch(&self, events: Callback<EventsClient>) -> u8;
}

/// `PlainCallback` with `watch` never compiled in.
#[rpc_core::service(name = "Svc")]
pub trait CfgOffCallback {
    /// First.
    async fn a(&self) -> u8;
    /// Last.
    async fn b(&self, x: String) -> Vec<u8>;
    /// Calls back, never compiled in.
    #[cfg(any())]
    async fn watch(&self, events: Callback<EventsClient>) -> u8;
}

/// `PlainCallback` with `watch` always compiled in.
#[rpc_core::service(name = "Svc")]
pub trait CfgOnCallback {
    /// First.
    async fn a(&self) -> u8;
    /// Last.
    async fn b(&self, x: String) -> Vec<u8>;
    /// Calls back, always compiled in.
    #[cfg(all())]
    async fn watch(&self, events: Callback<EventsClient>) -> u8;
}

/// The pinned fingerprint of rpc-macros' `fingerprint::tests::stable_value`.
#[rpc_core::service]
pub trait WorkQueues {
    /// Creates.
    async fn create(&self, name: String) -> Result<QueueInfo, QueueError>;
    /// Lists.
    async fn list(&self) -> Vec<QueueInfo>;
}

/// A queue.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct QueueInfo;

/// An error.
#[derive(serde::Serialize, serde::Deserialize)]
pub enum QueueError {
    /// Transport.
    Rpc(String),
}

impl From<rpc_core::RpcError> for QueueError {
    fn from(e: rpc_core::RpcError) -> Self {
        QueueError::Rpc(e.to_string())
    }
}

#[test]
fn a_method_under_a_cfg_that_is_off_leaves_the_fingerprint_as_if_it_were_not_written() {
    assert_eq!(CfgOffClient::ID, WithoutClient::ID);
}

#[test]
fn a_method_under_a_cfg_that_is_on_counts_as_if_written_plain() {
    assert_eq!(CfgOnClient::ID, PlainClient::ID);
}

#[test]
fn builds_that_differ_by_a_disabled_method_announce_different_fingerprints() {
    assert_ne!(CfgOffClient::ID.fingerprint, CfgOnClient::ID.fingerprint);
    assert_ne!(CfgOffClient::ID.fingerprint, PlainClient::ID.fingerprint);
    assert_ne!(WithoutClient::ID.fingerprint, PlainClient::ID.fingerprint);
}

#[test]
fn a_callback_method_under_a_cfg_that_is_off_mixes_in_no_callback_fingerprint() {
    assert_eq!(CfgOffCallbackClient::ID, WithoutClient::ID);
    assert_eq!(CfgOnCallbackClient::ID, PlainCallbackClient::ID);
    assert_ne!(CfgOffCallbackClient::ID.fingerprint, PlainCallbackClient::ID.fingerprint);
}

#[test]
fn the_server_announces_callbacks_only_when_a_callback_method_is_compiled_in() {
    struct Impl;
    impl CfgOffCallback for Impl {
        async fn a(&self) -> u8 {
            0
        }
        async fn b(&self, _: String) -> Vec<u8> {
            Vec::new()
        }
    }
    impl CfgOnCallback for Impl {
        async fn a(&self) -> u8 {
            0
        }
        async fn b(&self, _: String) -> Vec<u8> {
            Vec::new()
        }
        async fn watch(&self, _: Callback<EventsClient>) -> u8 {
            0
        }
    }
    let announced =
        [<CfgOffCallbackServer<Impl> as Service>::CALLBACKS, <CfgOnCallbackServer<Impl> as Service>::CALLBACKS];
    assert_eq!(announced, [false, true]);
}

#[test]
fn the_fingerprint_computed_in_the_const_is_the_pinned_fnv1a64_of_the_whole_text() {
    assert_eq!(WorkQueuesClient::ID.fingerprint, 0x02e1_8102_3a95_4e71);
    assert_eq!(<WorkQueuesClient as Client>::ID.name, "WorkQueues");
}
