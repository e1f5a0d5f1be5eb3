//! The HTTP/1.1 connection pool of [`super::Upstream`] (see the module docs of `proxy`,
//! "Connection pool").
//!
//! Written by hand instead of using hyper-util's legacy `Client` for speed (measured in
//! `benches/RESULTS.md`, "Second hot-path round"): an `Upstream` dials one fixed address, so the
//! pool is a single stack behind a mutex, with no key hashing, no waiter queue, no per-request
//! `on_idle` task and no boxed connect future per request. A connection goes back to the pool
//! when its response body ends, which is when hyper's connection task has already made it ready
//! for the next request.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;

use super::ForwardBody;
use crate::error::BoxError;

/// Idle HTTP/1.1 connections to one address, most recently used last.
pub(super) struct H1Pool<B> {
    state: Mutex<State<B>>,
    connector: HttpConnector,
    /// `http://<target>/`: what the connector dials.
    target: Uri,
    idle_timeout: Duration,
    max_idle: usize,
}

struct State<B> {
    /// Oldest first; checkout takes from the back (the warmest connection, and the one least
    /// likely to have been closed by the app's keep-alive timer).
    idle: VecDeque<Idle<B>>,
    /// A reaper task is running (it stops once the pool is empty).
    reaping: bool,
}

struct Idle<B> {
    tx: SendRequest<B>,
    since: Instant,
}

impl<B> std::fmt::Debug for H1Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("target", &self.target)
            .field("idle", &self.lock().idle.len())
            .field("idle_timeout", &self.idle_timeout)
            .field("max_idle", &self.max_idle)
            .finish()
    }
}

impl<B> H1Pool<B> {
    /// An empty pool dialling `target` with `connector`.
    pub(super) fn new(
        connector: HttpConnector,
        target: Uri,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                idle: VecDeque::new(),
                reaping: false,
            }),
            connector,
            target,
            idle_timeout,
            max_idle,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently returned connection that is open, idle for less than the idle
    /// timeout, and ready for a request; `None` if there is none. Closed and expired
    /// connections met on the way are dropped (which closes them).
    pub(super) fn checkout(&self) -> Option<SendRequest<B>> {
        let mut st = self.lock();
        let now = Instant::now();
        // Connections still finishing an exchange (a request body still being written after
        // the response ended, or a connection task that has not run yet on another worker) are
        // skipped and put back; allocates only when there is one.
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(c) = st.idle.pop_back() {
            if c.tx.is_closed() || now.saturating_duration_since(c.since) >= self.idle_timeout {
                continue;
            }
            if !c.tx.is_ready() {
                busy.push(c);
                continue;
            }
            found = Some(c.tx);
            break;
        }
        st.idle.extend(busy);
        found
    }

    /// Idle connections now (tests).
    #[cfg(test)]
    pub(super) fn idle_len(&self) -> usize {
        self.lock().idle.len()
    }
}

impl<B: Send + 'static> H1Pool<B> {
    /// Returns a connection after its response ended. Dropped (closed) instead when it is
    /// closed or the pool already holds `max_idle` connections.
    pub(super) fn put(this: &Arc<Self>, tx: SendRequest<B>) {
        if tx.is_closed() {
            return;
        }
        let mut st = this.lock();
        if st.idle.len() >= this.max_idle {
            return;
        }
        st.idle.push_back(Idle {
            tx,
            since: Instant::now(),
        });
        if !st.reaping {
            st.reaping = true;
            tokio::spawn(reap(Arc::downgrade(this), this.idle_timeout));
        }
    }
}

impl<B> H1Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Dials the target and starts a connection task (upgrades enabled).
    ///
    /// # Errors
    /// The connector's error (its source is the `io::Error`) or hyper's handshake error.
    pub(super) async fn connect(&self) -> Result<SendRequest<B>, BoxError> {
        let io = tower::Service::call(&mut self.connector.clone(), self.target.clone()).await?;
        let (tx, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(error = %error, "upstream connection ended with error");
            }
        });
        Ok(tx)
    }
}

/// Closes idle connections once they are past the idle timeout, so an app with a longer (or no)
/// keep-alive timeout does not keep them open. Runs while the pool has idle connections; holds
/// only a weak reference, so dropping the `Upstream` ends it.
async fn reap<B>(pool: Weak<H1Pool<B>>, every: Duration) {
    // Connections are never *used* past the timeout (checkout checks); this only bounds how long
    // an unused one stays open: at most twice the timeout.
    let every = every.max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let mut st = pool.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        st.idle.retain(|c| {
            !c.tx.is_closed() && now.saturating_duration_since(c.since) < pool.idle_timeout
        });
        if st.idle.is_empty() {
            st.reaping = false;
            return;
        }
    }
}

// === impl UpstreamBody ===

/// The response body of [`super::Upstream::forward`]: hyper's [`Incoming`] (streaming with
/// backpressure, trailers included), plus, for HTTP/1.1, the connection it came on, which goes
/// back to the pool when the body ends. Dropped before its end, it closes the connection (as
/// hyper does with any HTTP/1 response body dropped early).
pub struct UpstreamBody<B> {
    inner: Incoming,
    lease: Option<Lease<ForwardBody<B>>>,
}

/// A connection on loan to one exchange.
pub(super) struct Lease<B> {
    pub(super) pool: Arc<H1Pool<B>>,
    pub(super) tx: SendRequest<B>,
    /// False after a `101`.
    pub(super) reusable: bool,
}

impl<B: Send + 'static> UpstreamBody<B> {
    /// A body whose connection is not pooled by us (h2c, `101`).
    pub(super) fn unpooled(inner: Incoming) -> Self {
        Self { inner, lease: None }
    }

    /// A body whose connection returns to the pool at its end. A body that is already complete
    /// (no content, `HEAD`, `304`) returns it at once: nothing may ever poll it.
    pub(super) fn pooled(inner: Incoming, lease: Lease<ForwardBody<B>>) -> Self {
        if inner.is_end_stream() {
            H1Pool::put(&lease.pool, lease.tx);
            return Self::unpooled(inner);
        }
        Self {
            inner,
            lease: Some(lease),
        }
    }

    /// A `101` response: the connection is never pooled again; its sender is kept until
    /// [`UpstreamBody::take_upgraded`] or drop.
    pub(super) fn upgraded(inner: Incoming, lease: Lease<ForwardBody<B>>) -> Self {
        Self {
            inner,
            lease: Some(Lease {
                reusable: false,
                ..lease
            }),
        }
    }

    /// The sender of an upgraded connection.
    pub(super) fn take_upgraded(&mut self) -> Option<SendRequest<ForwardBody<B>>> {
        match self.lease.take() {
            Some(l) if !l.reusable => Some(l.tx),
            other => {
                self.lease = other;
                None
            }
        }
    }

    fn release(&mut self) {
        if let Some(l) = self.lease.take()
            && l.reusable
        {
            H1Pool::put(&l.pool, l.tx);
        }
    }
}

impl<B> std::fmt::Debug for UpstreamBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("inner", &self.inner)
            .field("pooled", &self.lease.is_some())
            .finish()
    }
}

impl<B: Send + 'static> Body for UpstreamBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            // The last frame (hyper may not poll again once `is_end_stream` says so) or the end.
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            None => this.release(),
            Some(Err(_)) => this.lease = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
