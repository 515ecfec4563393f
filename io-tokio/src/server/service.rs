//! RPC services: request handlers keyed by service id.

use super::ServerHandle;
use bytes::Bytes;
use pushwire_engine::hub::ConnectionId;
use pushwire_engine::RequestResult;
use pushwire_protocol::Text;
use std::future::Future;
use std::pin::Pin;

/// One request, as a handler sees it.
#[derive(Clone)]
pub struct Call {
    /// The method id.
    pub method: u32,
    /// Arguments.
    pub payload: Bytes,
    /// The caller's user id.
    pub user_id: Text,
    /// The caller's connection, to push on its behalf.
    pub connection: ConnectionId,
    /// The server, for its push API.
    pub server: ServerHandle,
}

/// A boxed handler future.
pub type CallFuture = Pin<Box<dyn Future<Output = RequestResult> + Send>>;

/// A service: answers the requests of connections that asked for its id. Each call
/// runs as its own task, off the connection's critical path; results still leave in
/// request order.
pub trait Service: Send + Sync + 'static {
    /// Handles one request.
    fn call(&self, call: Call) -> CallFuture;
}

/// A service from an async closure.
pub fn service_fn<F, Fut>(f: F) -> impl Service
where
    F: Fn(Call) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = RequestResult> + Send + 'static,
{
    struct FnService<F>(F);
    impl<F, Fut> Service for FnService<F>
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = RequestResult> + Send + 'static,
    {
        fn call(&self, call: Call) -> CallFuture {
            Box::pin((self.0)(call))
        }
    }
    FnService(f)
}
