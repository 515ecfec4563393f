//! RPC services: request handlers keyed by service id.

use super::ServerHandle;
use bytes::Bytes;
use pushwire_engine::hub::ConnectionId;
use pushwire_engine::RequestResult;
use pushwire_protocol::Text;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

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
    /// Fires when the client cancels this request (protocol version 3) or its
    /// connection ends: a handler that can stop early watches it and answers
    /// `ErrorCode::Cancelled` (see [`Cancellation::result`]).
    pub cancellation: Cancellation,
}

/// Tells a running handler that its caller no longer wants the result. Cheap to
/// clone; every clone sees the same cancellation.
#[derive(Clone, Default)]
pub struct Cancellation(Option<Arc<CancelState>>);

#[derive(Default)]
struct CancelState {
    cancelled: AtomicBool,
    notify: Notify,
}

impl Cancellation {
    /// A cancellation that fires on [`Cancellation::cancel`].
    pub fn new() -> Self {
        Self(Some(Arc::default()))
    }

    /// A cancellation that never fires (for a connection whose protocol version
    /// cannot cancel).
    pub fn never() -> Self {
        Self(None)
    }

    /// Fires it: every waiter of [`cancelled`](Self::cancelled) wakes.
    pub fn cancel(&self) {
        if let Some(state) = &self.0 {
            state.cancelled.store(true, Ordering::Release);
            state.notify.notify_waiters();
        }
    }

    /// Whether it has fired.
    pub fn is_cancelled(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|state| state.cancelled.load(Ordering::Acquire))
    }

    /// Resolves once it has fired (never, for [`Cancellation::never`]).
    pub async fn cancelled(&self) {
        let Some(state) = &self.0 else {
            return std::future::pending().await;
        };
        loop {
            let notified = state.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a cancel between the two is not lost.
            notified.as_mut().enable();
            if state.cancelled.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// The answer of a handler that stopped on the cancellation.
    pub fn result() -> RequestResult {
        Err((
            pushwire_protocol::ErrorCode::Cancelled,
            Text::from("cancelled by the client while it ran"),
        ))
    }
}

impl std::fmt::Debug for Cancellation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancellation")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// A boxed handler future.
pub type CallFuture = Pin<Box<dyn Future<Output = RequestResult> + Send>>;

/// A service: answers the requests of connections that asked for its id. Each call
/// runs as its own task, off the connection's critical path; results still leave in
/// request order. A connection runs at most
/// [`ServerBuilder::max_running_requests`](super::ServerBuilder::max_running_requests)
/// calls at once; the rest wait, in order, and a cancelled one that has not started
/// never reaches the service.
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
