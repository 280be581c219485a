// Generated items take the trait's visibility.
#![deny(unreachable_pub, dead_code)]

mod inner {
    #[rpc_core::service]
    pub(crate) trait CrateVisible {
        async fn f(&self) -> u8;
    }

    #[rpc_core::service]
    pub(super) trait ParentVisible {
        async fn g(&self);
    }

    // Private: usable in this module only.
    #[rpc_core::service]
    trait Private {
        async fn h(&self);
    }

    struct P;
    impl Private for P {
        async fn h(&self) {}
    }

    pub(crate) fn use_private() {
        let _ = PrivateServer::new(P);
        let _ = PrivateClient::ID;
        let _ = PrivateClient::from_channel;
        let _ = PrivateClient::h;
    }
}

struct Impl;

impl inner::CrateVisible for Impl {
    async fn f(&self) -> u8 {
        1
    }
}

impl inner::ParentVisible for Impl {
    async fn g(&self) {}
}

fn main() {
    inner::use_private();
    let _ = inner::CrateVisibleServer::new(Impl);
    let _ = inner::ParentVisibleServer::new(Impl);
    let _ = inner::CrateVisibleClient::f;
    let _ = inner::ParentVisibleClient::g;
    let _ = inner::CrateVisibleClient::from_channel;
    let _ = inner::ParentVisibleClient::from_channel;
    let _ = (inner::CrateVisibleClient::with_timeout, inner::CrateVisibleClient::with_options, inner::CrateVisibleClient::channel);
    let _ = inner::CrateVisibleRequest::F {};
    let _ = inner::ParentVisibleResponse::G(());
}
