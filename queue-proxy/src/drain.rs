//! Knative's Drainer (`knative.dev/pkg/network/handlers/drain.go`, `queue-proxy.md` §8.1).
//!
//! `drain()` starts a quiet-period timer and blocks until it fires; every non-probe request
//! while the timer runs restarts it; `reset()` releases the waiters and clears the draining
//! state (container restart, `/wait-for-drain` without SIGTERM). Once a drain completed, later
//! `drain()` calls return at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug)]
struct State {
    /// When the quiet period ends, while a drain runs.
    deadline: Option<Instant>,
    done: bool,
    /// Bumped by `reset()`, so that waiters of an older drain return.
    generation: u64,
}

/// The drain state machine; cheap to clone.
#[derive(Clone, Debug)]
pub struct Drainer {
    quiet: Duration,
    /// Fast path for the request path: false unless draining.
    draining: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl Drainer {
    /// A drainer with the given quiet period (`QUEUE_DRAIN_SECONDS`, default 30 s).
    pub fn new(quiet: Duration) -> Self {
        Self {
            quiet,
            draining: Arc::new(AtomicBool::new(false)),
            state: Arc::new(Mutex::new(State {
                deadline: None,
                done: false,
                generation: 0,
            })),
            changed: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while draining (probes answer 503 `shutting down`).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// A non-probe request arrived: restart the quiet period if it is running.
    pub fn touch(&self) {
        if !self.is_draining() {
            return;
        }
        let mut s = self.lock();
        if s.deadline.is_some() && !s.done {
            s.deadline = Some(Instant::now() + self.quiet);
        }
    }

    /// Starts draining (if not already) and waits until the quiet period passes without
    /// requests, or until [`Drainer::reset`].
    pub async fn drain(&self) {
        let generation = {
            let mut s = self.lock();
            if s.done {
                return;
            }
            if s.deadline.is_none() {
                s.deadline = Some(Instant::now() + self.quiet);
                self.draining.store(true, Ordering::Release);
            }
            s.generation
        };
        loop {
            let notified = self.changed.notified();
            let deadline = {
                let mut s = self.lock();
                if s.generation != generation || s.done {
                    return;
                }
                match s.deadline {
                    Some(d) if d <= Instant::now() => {
                        s.done = true;
                        drop(s);
                        self.changed.notify_waiters();
                        return;
                    }
                    Some(d) => d,
                    None => return,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = notified => {}
            }
        }
    }

    /// Stops the drain: releases waiters, probes work again, a later drain waits a full period.
    pub fn reset(&self) {
        let mut s = self.lock();
        if s.deadline.is_none() || s.done {
            return;
        }
        s.deadline = None;
        s.generation += 1;
        self.draining.store(false, Ordering::Release);
        drop(s);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn quiet_period_restarts_on_requests() {
        let d = Drainer::new(Duration::from_secs(30));
        assert!(!d.is_draining());
        let start = Instant::now();
        let w = tokio::spawn({
            let d = d.clone();
            async move { d.drain().await }
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(d.is_draining());
        d.touch();
        w.await.unwrap();
        assert!(Instant::now() - start >= Duration::from_secs(50));
        // Completed: later calls return at once, and still draining.
        let t = Instant::now();
        d.drain().await;
        assert_eq!(Instant::now(), t);
        assert!(d.is_draining());
    }

    #[tokio::test(start_paused = true)]
    async fn reset_releases_waiters_and_clears_draining() {
        let d = Drainer::new(Duration::from_secs(30));
        let w1 = tokio::spawn({
            let d = d.clone();
            async move { d.drain().await }
        });
        let w2 = tokio::spawn({
            let d = d.clone();
            async move { d.drain().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = Instant::now();
        d.reset();
        w1.await.unwrap();
        w2.await.unwrap();
        assert_eq!(Instant::now(), t);
        assert!(!d.is_draining());
        d.reset();
        let t = Instant::now();
        d.drain().await;
        assert_eq!(Instant::now() - t, Duration::from_secs(30));
    }
}
