//! Keeping a concurrency slot until the upstream exchange has really ended.
//!
//! When a client gives up (its connection closes, its stream is reset, or a layer above times
//! out) hyper drops the request's future. Dropping the upstream call with it frees the
//! breaker slot at once, but the app does not learn of it: an app that ignores cancellation
//! keeps working on the abandoned request while the next one is admitted on top, and
//! `containerConcurrency` no longer holds at the app (Knative shares this weakness).
//! [`Detached`] runs the upstream call like any future; dropped before it finished, it hands
//! the call and the slot to a background task that waits for the response head, reads the body
//! to its end and discards it, and only then releases the slot, all bounded by the revision
//! timeout. The happy path costs nothing more: the task exists only for abandoned calls.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;

/// The upstream call `fut` (boxed or otherwise `Unpin`: no second allocation) holding `guard` (a breaker permit, a throttler lease) until it has
/// ended, even when this future is dropped first (module docs).
pub struct Detached<F, G>
where
    F: Future + Send + Unpin + 'static,
    F::Output: Drain,
    G: Send + 'static,
{
    fut: Option<F>,
    guard: Option<G>,
    until: Instant,
}

impl<F, G> Detached<F, G>
where
    F: Future + Send + Unpin + 'static,
    F::Output: Drain,
    G: Send + 'static,
{
    /// Runs `fut`; an abandoned call keeps `guard` for at most `limit` from now.
    pub fn new(fut: F, guard: G, limit: Duration) -> Self {
        Self {
            fut: Some(fut),
            guard: Some(guard),
            until: Instant::now() + limit,
        }
    }
}

impl<F, G> Unpin for Detached<F, G>
where
    F: Future + Send + Unpin + 'static,
    F::Output: Drain,
    G: Send + 'static,
{
}

impl<F, G, B, E> Future for Detached<F, G>
where
    F: Future<Output = Result<Response<B>, E>> + Send + Unpin + 'static,
    B: Body + Send + Unpin,
    B::Data: Send,
    E: Send,
    G: Send + 'static,
{
    /// The call's outcome and the guard, which the caller keeps for the response body.
    type Output = (Result<Response<B>, E>, G);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            panic!("Detached polled after completion");
        };
        let out = std::task::ready!(Pin::new(fut).poll(cx));
        self.fut = None;
        match self.guard.take() {
            Some(g) => Poll::Ready((out, g)),
            None => panic!("Detached polled after completion"),
        }
    }
}

impl<F, G> Drop for Detached<F, G>
where
    F: Future + Send + Unpin + 'static,
    F::Output: Drain,
    G: Send + 'static,
{
    fn drop(&mut self) {
        let (Some(fut), Some(guard)) = (self.fut.take(), self.guard.take()) else {
            return;
        };
        let until = self.until;
        // Outside a runtime (process teardown) there is nothing left to protect.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(finish(fut, guard, until));
    }
}

/// Waits out an abandoned call (head, then body, discarded), then drops `guard`.
async fn finish<F, G>(fut: F, guard: G, until: Instant)
where
    F: Future + Send + Unpin + 'static,
    F::Output: Drain,
    G: Send + 'static,
{
    let _ = tokio::time::timeout_at(until, async move {
        // The output's type is not known here; `Drain` reads a response body to its end.
        fut.await.drain().await;
    })
    .await;
    drop(guard);
}

/// Something whose remaining upstream bytes can be read and discarded.
pub trait Drain: Send {
    /// Reads to the end, discarding.
    fn drain(self) -> impl Future<Output = ()> + Send;
}

impl<B, E> Drain for Result<Response<B>, E>
where
    B: Body + Send + Unpin,
    B::Data: Send,
    E: Send,
{
    async fn drain(self) {
        if let Ok(resp) = self {
            let mut body = resp.into_body();
            while let Some(Ok(_)) = body.frame().await {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_call_keeps_its_guard_until_the_response_ends() {
        let released = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let call = async move {
            let _ = rx.await;
            Ok::<_, ()>(Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"x"),
            )))
        };
        let d = Detached::new(
            Box::pin(call),
            Flag(Arc::clone(&released)),
            Duration::from_secs(300),
        );
        // The client gives up before the app answered.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), d)
                .await
                .is_err()
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(
            !released.load(Ordering::SeqCst),
            "slot kept while the app works"
        );
        tx.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            released.load(Ordering::SeqCst),
            "slot freed once the app answered"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_revision_timeout_bounds_the_wait() {
        let released = Arc::new(AtomicBool::new(false));
        let call =
            std::future::pending::<Result<Response<http_body_util::Empty<bytes::Bytes>>, ()>>();
        let d = Detached::new(call, Flag(Arc::clone(&released)), Duration::from_secs(30));
        drop(d);
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!released.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(released.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_finished_call_hands_back_its_guard() {
        let released = Arc::new(AtomicBool::new(false));
        let call =
            async { Ok::<_, ()>(Response::new(http_body_util::Empty::<bytes::Bytes>::new())) };
        let (out, g) = Detached::new(
            Box::pin(call),
            Flag(Arc::clone(&released)),
            Duration::from_secs(1),
        )
        .await;
        assert!(out.is_ok());
        assert!(!released.load(Ordering::SeqCst));
        drop(g);
        assert!(released.load(Ordering::SeqCst));
    }
}
