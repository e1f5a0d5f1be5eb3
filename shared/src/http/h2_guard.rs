//! Limits hyper's HTTP/2 server leaves to us: an idle timeout and a bound on early resets.
//!
//! - **Idle:** hyper keeps an HTTP/2 connection with no open stream for ever (its keep-alive
//!   PINGs only detect dead peers). A client that sent the preface, or finished its streams,
//!   and then stays silent pins a descriptor and ~16 KiB; nginx and Envoy close such
//!   connections. We send GOAWAY once a connection had no open stream for
//!   [`H2Limits::idle_timeout`] (Go's `http2.Server.IdleTimeout` semantics: the clock runs
//!   only while no stream is open).
//! - **Early resets:** h2 answers a *burst* of resets with GOAWAY (`too_many_resets`), but a
//!   client that paces HEADERS + RST_STREAM stays under it while each request still reaches
//!   the service. We count streams whose response head was not produced when the client reset
//!   them, per connection and per window; at [`H2Limits::early_resets`] in one
//!   [`H2Limits::reset_window`] (and at least half of the streams opened in it, so a busy
//!   client that cancels some of many is left alone) the connection gets GOAWAY, as Envoy's
//!   premature-reset rule.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Knobs of [`Streams`].
#[derive(Clone, Copy, Debug)]
pub struct H2Limits {
    /// GOAWAY after this long without an open stream; zero: never.
    pub idle_timeout: Duration,
    /// Early resets tolerated per [`Self::reset_window`].
    pub early_resets: usize,
    /// The window early resets are counted over.
    pub reset_window: Duration,
}

impl Default for H2Limits {
    fn default() -> Self {
        Self {
            // As long as an idle HTTP/1 keep-alive connection lives (the header read timeout).
            idle_timeout: Duration::from_secs(60),
            // Envoy's premature-reset threshold is 500 per connection lifetime; 200 per 10 s
            // stops a paced attack within a fraction of a second and leaves gRPC clients that
            // cancel now and then alone.
            early_resets: 200,
            reset_window: Duration::from_secs(10),
        }
    }
}

/// One HTTP/2 connection's streams: how many are open, and early resets in this window.
#[derive(Debug)]
pub struct Streams {
    limits: H2Limits,
    open: AtomicUsize,
    /// Bumped whenever a stream opens or closes: the idle clock restarts.
    epoch: AtomicU64,
    window: Mutex<Window>,
    tripped: Notify,
    has_tripped: AtomicBool,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    opened: usize,
    resets: usize,
}

impl Streams {
    /// Counters for a new connection.
    pub fn new(limits: H2Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            open: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            window: Mutex::new(Window {
                start: Instant::now(),
                opened: 0,
                resets: 0,
            }),
            tripped: Notify::new(),
            has_tripped: AtomicBool::new(false),
        })
    }

    /// A stream opened; the guard closes it when dropped.
    pub fn open(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut w) = self.window.lock() {
            self.roll(&mut w);
            w.opened += 1;
        }
        StreamGuard {
            streams: Arc::clone(self),
            answered: false,
        }
    }

    fn roll(&self, w: &mut Window) {
        if w.start.elapsed() >= self.limits.reset_window {
            *w = Window {
                start: Instant::now(),
                opened: 0,
                resets: 0,
            };
        }
    }

    fn closed(&self, answered: bool) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Relaxed);
        if answered {
            return;
        }
        let trip = self.window.lock().is_ok_and(|mut w| {
            self.roll(&mut w);
            w.resets += 1;
            let trip = w.resets >= self.limits.early_resets && w.resets * 2 >= w.opened;
            if trip {
                // The next trip needs as many resets again (after GOAWAY: drop the connection).
                w.resets = 0;
                w.opened = 0;
            }
            trip
        });
        if trip {
            self.has_tripped.store(true, Ordering::Relaxed);
            self.tripped.notify_one();
        }
    }

    /// Streams open now.
    pub fn open_now(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Resolves when too many streams were reset early (once per trip).
    pub async fn too_many_resets(&self) {
        self.tripped.notified().await;
    }

    /// Whether the reset limit was ever reached on this connection.
    pub fn has_tripped(&self) -> bool {
        self.has_tripped.load(Ordering::Relaxed)
    }

    /// Resolves once no stream has been open for the idle timeout (give or take half of it:
    /// the clock is checked every half timeout, which keeps this to one timer).
    pub async fn idle(&self) {
        if self.limits.idle_timeout.is_zero() {
            // Zero turns the idle timeout off (as Go's `IdleTimeout`).
            return std::future::pending().await;
        }
        let tick = self.limits.idle_timeout / 2;
        let mut quiet_ticks = 0;
        let mut seen = self.epoch.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(tick).await;
            let now = self.epoch.load(Ordering::Relaxed);
            if now == seen && self.open_now() == 0 {
                quiet_ticks += 1;
                if quiet_ticks >= 2 {
                    return;
                }
            } else {
                quiet_ticks = 0;
                seen = now;
            }
        }
    }
}

/// An open stream; dropping it before [`StreamGuard::answered`] counts an early reset.
#[derive(Debug)]
pub struct StreamGuard {
    streams: Arc<Streams>,
    answered: bool,
}

impl StreamGuard {
    /// The service produced the response head: the stream is no longer early.
    pub fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.streams.closed(self.answered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_early_resets_trip_and_answered_streams_do_not() {
        let s = Streams::new(H2Limits {
            early_resets: 5,
            ..H2Limits::default()
        });
        for _ in 0..100 {
            let mut g = s.open();
            g.answered();
        }
        assert!(!s.has_tripped(), "completed streams never count");
        // A busy client cancelling a few of many: 5 resets among 100 streams.
        for _ in 0..5 {
            drop(s.open());
        }
        assert!(!s.has_tripped(), "under half of the window's streams");
        let s = Streams::new(H2Limits {
            early_resets: 5,
            ..H2Limits::default()
        });
        for _ in 0..4 {
            drop(s.open());
        }
        assert!(!s.has_tripped());
        drop(s.open());
        assert!(s.has_tripped());
        assert_eq!(s.open_now(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_fires_only_without_open_streams() {
        let s = Streams::new(H2Limits {
            idle_timeout: Duration::from_secs(10),
            ..H2Limits::default()
        });
        let g = s.open();
        let held = tokio::time::timeout(Duration::from_secs(60), s.idle()).await;
        assert!(held.is_err(), "an open stream is not idle");
        drop(g);
        let t = tokio::time::Instant::now();
        s.idle().await;
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited <= Duration::from_secs(15),
            "{waited:?}"
        );
    }
}
