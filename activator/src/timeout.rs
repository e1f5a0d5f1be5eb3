//! Revision timeouts after the response head (activator.md §3.6): the overall `timeoutSeconds`
//! (measured from arrival, so it includes the time held) and `idleTimeoutSeconds` (time since
//! the last frame). When one fires mid-body, Knative appends `activator request timeout` to the
//! body and ends the response; this wrapper does the same and drops the upstream body, which
//! aborts the upstream request.
//!
//! Deliberate deviation: `101` tunnels (websockets) are not cut by these timers
//! (knative/serving#16169, #16638); see docs/activator.md.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

/// Text appended when a timer fires (no newline, as in Knative).
pub const TIMEOUT_TEXT: &str = "activator request timeout";

pin_project! {
    /// A body cut at an overall deadline or after an idle gap.
    #[derive(Debug)]
    pub struct TimeoutBody<B> {
        #[pin]
        inner: B,
        deadline: Instant,
        idle: Option<Duration>,
        // When the last frame came (the idle timer counts from it).
        last: Instant,
        // One timer for both limits, armed at the first `Pending` of the inner body: a body
        // that is ready at once (most small responses) never allocates or registers a timer.
        timer: Option<Pin<Box<Sleep>>>,
        state: State,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    /// A timer fired: the text frame is next, then the end.
    Fired,
    Done,
}

impl<B> TimeoutBody<B> {
    /// Wraps `inner` with the overall `deadline` and an optional idle timeout.
    pub fn new(inner: B, deadline: Instant, idle: Option<Duration>) -> Self {
        Self {
            inner,
            deadline,
            last: if idle.is_some() {
                Instant::now()
            } else {
                deadline
            },
            idle,
            timer: None,
            state: State::Streaming,
        }
    }
}

impl<B> Body for TimeoutBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        loop {
            match *this.state {
                State::Done => return Poll::Ready(None),
                State::Fired => {
                    *this.state = State::Done;
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                        TIMEOUT_TEXT.as_bytes(),
                    )))));
                }
                State::Streaming => {}
            }
            if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
                if frame.is_none() {
                    *this.state = State::Done;
                }
                if let Some(d) = *this.idle {
                    *this.last = Instant::now();
                    if let Some(t) = this.timer.as_mut() {
                        t.as_mut().reset((*this.deadline).min(*this.last + d));
                    }
                }
                return Poll::Ready(frame);
            }
            let at = match *this.idle {
                Some(d) => (*this.deadline).min(*this.last + d),
                None => *this.deadline,
            };
            let timer = this.timer.get_or_insert_with(|| Box::pin(sleep_until(at)));
            if timer.as_mut().poll(cx).is_ready() {
                *this.state = State::Fired;
                continue;
            }
            return Poll::Pending;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done || (self.state == State::Streaming && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            // A timeout may add bytes, so only an upper-less hint is safe.
            State::Streaming => {
                let mut h = SizeHint::new();
                h.set_lower(self.inner.size_hint().lower());
                h
            }
            _ => SizeHint::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn overall_deadline_appends_text_and_ends() {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        tx.send(Ok(Frame::data(Bytes::from_static(b"part "))))
            .await
            .unwrap();
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        let body = TimeoutBody::new(
            StreamBody::new(stream),
            Instant::now() + Duration::from_secs(5),
            None,
        );
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out, "part activator request timeout");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timer_rearms_on_each_frame() {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        let mut body = TimeoutBody::new(
            StreamBody::new(Box::pin(stream)),
            Instant::now() + Duration::from_secs(100),
            Some(Duration::from_secs(2)),
        );
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(1500)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
                .await
                .unwrap();
            assert_eq!(
                body.frame().await.unwrap().unwrap().into_data().unwrap(),
                "x"
            );
        }
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, TIMEOUT_TEXT);
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn finished_bodies_pass_through() {
        let body = TimeoutBody::new(
            http_body_util::Full::new(Bytes::from_static(b"ok")),
            Instant::now() + Duration::from_secs(1),
            None,
        );
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
    }
}
