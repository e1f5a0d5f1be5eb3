//! Body wrappers for the proxy path.
//!
//! Bodies stream; guards (breaker permits, in-flight counters, stats "out" events) must live until
//! the **end of the body**, not until the response headers, so they ride inside the body.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A body that holds `guard` until the inner body ends (last frame or error) or is dropped
    /// (client went away). Frames, trailers and size hints pass through untouched.
    ///
    /// Mirrors linkerd's `hyper-balance` `PendingUntilEos`.
    #[derive(Debug)]
    pub struct Guarded<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> Guarded<B, G> {
    /// Wraps `inner`, holding `guard` until the end of the stream.
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: Body, G> Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        match &res {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => drop(this.guard.take()),
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Told how many data bytes a [`Counted`] body carried; dropped at the body's end (or when the
/// body is dropped), so its `Drop` sees the total (request logs: `.Response.Size`).
pub trait Tally {
    /// `bytes` more data bytes went out.
    fn add(&mut self, bytes: u64);
}

pin_project! {
    /// Like [`Guarded`], and the guard also counts the data bytes that pass.
    #[derive(Debug)]
    pub struct Counted<B, T> {
        #[pin]
        inner: B,
        tally: Option<T>,
    }
}

impl<B, T> Counted<B, T> {
    /// Wraps `inner`, telling `tally` about every data frame until the end of the stream.
    pub fn new(inner: B, tally: T) -> Self {
        Self {
            inner,
            tally: Some(tally),
        }
    }
}

impl<B: Body, T: Tally> Body for Counted<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        use bytes::Buf;
        let this = self.project();
        let res = this.inner.poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(t)) = (frame.data_ref(), this.tally.as_mut()) {
                    t.add(d.remaining() as u64);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => drop(this.tally.take()),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(Arc<AtomicUsize>);
    impl Drop for Count {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn guard_released_at_end_of_stream() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut body = Guarded::new(Full::new(Bytes::from_static(b"hi")), Count(dropped.clone()));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hi");
        assert_eq!(dropped.load(Ordering::SeqCst), 0, "held until the end");
        assert!(body.frame().await.is_none());
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "released at the end");
        drop(body);
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "released once");
    }

    struct Total(Arc<AtomicUsize>, u64);
    impl Tally for Total {
        fn add(&mut self, bytes: u64) {
            self.1 += bytes;
        }
    }
    impl Drop for Total {
        fn drop(&mut self) {
            self.0.store(self.1 as usize + 1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn counted_sees_every_data_byte_then_ends() {
        let seen = Arc::new(AtomicUsize::new(0));
        let body = Counted::new(
            Full::new(Bytes::from_static(b"hello")),
            Total(seen.clone(), 0),
        );
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out, "hello");
        assert_eq!(
            seen.load(Ordering::SeqCst),
            6,
            "5 bytes, tally dropped once"
        );
    }

    #[test]
    fn guard_released_on_drop() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let body = Guarded::new(Full::new(Bytes::new()), Count(dropped.clone()));
        drop(body);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }
}
