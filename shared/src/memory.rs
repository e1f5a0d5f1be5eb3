//! Gives memory freed after a burst back to the OS (glibc only).
//!
//! Thousands of held requests (activator) or open connections (queue-proxy) cost tens of MiB
//! (connection buffers, request state). When their clients go away everything is freed at once, but glibc's malloc keeps freed chunks inside its
//! arenas, and only trims the very top of the main heap: RSS stayed at the peak (300 MiB after
//! 10,000 held requests) although nothing was in use (Knative's #13583 is this failure mode made
//! permanent). This loop watches how many free bytes malloc holds (`mallinfo2`, summed over all
//! arenas) and calls `malloc_trim(0)`, which returns the whole free pages inside them to the
//! kernel (`madvise(MADV_DONTNEED)`), once at least [`TRIM_THRESHOLD`] more bytes became free
//! since the last trim. Sampling every [`TICK`] keeps "back to baseline" under a second.
//!
//! On other C libraries (musl) the loop does nothing: their allocators behave differently and
//! have no `malloc_trim`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the free-byte count is sampled.
pub const TICK: Duration = Duration::from_millis(250);
/// New free bytes that make a trim worthwhile (a trim walks every arena; a few ms for 300 MiB).
pub const TRIM_THRESHOLD: usize = 4 * 1024 * 1024;

/// malloc's view of the heap (glibc `mallinfo2`, all arenas), for the profiling server's heap
/// summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes malloc took from the kernel with brk/sbrk (`arena`).
    pub arena: usize,
    /// Bytes in mmapped chunks (`hblkhd`).
    pub mmapped: usize,
    /// Bytes in chunks in use (`uordblks`).
    pub in_use: usize,
    /// Bytes in free chunks (`fordblks`).
    pub free: usize,
}

/// [`HeapStats`] now; `None` off glibc.
pub fn heap_stats() -> Option<HeapStats> {
    sys::heap_stats()
}

/// Runs until `shutdown`.
pub async fn run(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trimmer = Trimmer::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(free) = sys::free_bytes() else {
            return;
        };
        if trimmer.should_trim(free) {
            // A blocking call into the allocator; short, but keep it off the request workers.
            let released = tokio::task::spawn_blocking(sys::trim)
                .await
                .unwrap_or(false);
            tracing::debug!(free_bytes = free, released, "malloc_trim");
            if let Some(after) = sys::free_bytes() {
                trimmer.trimmed(free, after);
            }
        }
    }
}

/// When to trim, from successive samples of malloc's free bytes (pure, so it is unit-tested).
///
/// Two triggers: a burst (at least [`TRIM_THRESHOLD`] newly free), and a settled process (at
/// least [`SETTLED_THRESHOLD`] newly free and the free count steady for [`SETTLED_TICKS`]
/// samples). The second catches the tail of a burst that frees in steps below the threshold,
/// e.g. pooled upstream connections closing 1.5 s after their clients left, which otherwise
/// stayed resident for good (+3–5 MiB).
#[derive(Debug, Default)]
pub struct Trimmer {
    /// Free bytes right after the last trim, lowered whenever malloc reuses free memory.
    base: Option<usize>,
    /// The previous sample.
    last: Option<usize>,
    /// Consecutive samples within [`SETTLED_SLACK`] of the previous one.
    steady: u32,
}

/// Newly free bytes worth a trim once the process has settled.
pub const SETTLED_THRESHOLD: usize = 512 * 1024;
/// Change between samples that still counts as steady.
pub const SETTLED_SLACK: usize = 64 * 1024;
/// Steady samples before a settled trim.
pub const SETTLED_TICKS: u32 = 2;

impl Trimmer {
    /// Records the free count right after a trim (it may differ from the sample that caused it).
    pub fn resample(&mut self, free: usize) {
        self.base = Some(free);
        self.last = Some(free);
    }

    /// Records a trim caused by the sample `sampled`, with `after` free bytes right after it.
    /// Memory freed while the trim ran (the tail of a burst still being released) may have
    /// been missed by it, so it counts as new for the next sample instead of being taken as
    /// the new base (which kept ≈ 30 MiB resident after 10,000 held h2c streams were released
    /// slowly). A trim that shrank the heap lowers the base as usual.
    pub fn trimmed(&mut self, sampled: usize, after: usize) {
        self.resample(after.min(sampled));
        self.last = Some(after);
    }

    /// Whether to trim now, given the free bytes malloc holds.
    pub fn should_trim(&mut self, free: usize) -> bool {
        let base = *self.base.get_or_insert(free);
        let steady = self
            .last
            .replace(free)
            .is_some_and(|l| l.abs_diff(free) <= SETTLED_SLACK);
        self.steady = if steady { self.steady + 1 } else { 0 };
        if free < base {
            // Free memory was reused: what is freed next counts from here.
            self.base = Some(free);
            return false;
        }
        let fresh = free - base;
        if fresh >= TRIM_THRESHOLD || (fresh >= SETTLED_THRESHOLD && self.steady >= SETTLED_TICKS) {
            // Trimmed chunks stay "free" in malloc's books, so the next trim waits for as much
            // newly freed memory again.
            self.base = Some(free);
            self.steady = 0;
            return true;
        }
        false
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod sys {
    /// Bytes in free chunks, all arenas (`fordblks`).
    pub fn free_bytes() -> Option<usize> {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct (glibc ≥ 2.33).
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }

    /// Returns free pages of every arena to the kernel; true when something was released.
    pub fn trim() -> bool {
        // SAFETY: malloc_trim only walks and madvises malloc's own free chunks under its locks.
        unsafe { libc::malloc_trim(0) == 1 }
    }

    pub fn heap_stats() -> Option<super::HeapStats> {
        // SAFETY: as in `free_bytes`.
        let i = unsafe { libc::mallinfo2() };
        Some(super::HeapStats {
            arena: i.arena,
            mmapped: i.hblkhd,
            in_use: i.uordblks,
            free: i.fordblks,
        })
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod sys {
    pub fn free_bytes() -> Option<usize> {
        None
    }

    pub fn trim() -> bool {
        false
    }

    pub fn heap_stats() -> Option<super::HeapStats> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_threshold_of_newly_freed_memory() {
        let mut t = Trimmer::default();
        assert!(!t.should_trim(1_000), "first sample sets the base");
        assert!(!t.should_trim(1_000 + TRIM_THRESHOLD - 1));
        assert!(t.should_trim(1_000 + TRIM_THRESHOLD));
        // Same free bytes again (already trimmed): no second trim.
        assert!(!t.should_trim(1_000 + TRIM_THRESHOLD));
        // Memory reused, then freed again by a new burst.
        assert!(!t.should_trim(500));
        assert!(!t.should_trim(500 + TRIM_THRESHOLD / 2));
        assert!(t.should_trim(500 + TRIM_THRESHOLD));
    }

    #[test]
    fn trims_the_settled_tail_of_a_burst_below_the_threshold() {
        let mut t = Trimmer::default();
        assert!(!t.should_trim(1_000));
        let tail = 1_000 + SETTLED_THRESHOLD;
        assert!(!t.should_trim(tail), "just freed: not settled yet");
        assert!(!t.should_trim(tail + 10), "steady once");
        assert!(t.should_trim(tail + 20), "steady twice: trim");
        assert!(!t.should_trim(tail + 20), "nothing new since");
        // Less than SETTLED_THRESHOLD new, however long it stays: no trim.
        for _ in 0..10 {
            assert!(!t.should_trim(tail + 20 + SETTLED_THRESHOLD - 1));
        }
        // Busy (free count moving): only the burst threshold applies.
        let mut busy = Trimmer::default();
        assert!(!busy.should_trim(0));
        for i in 1..=7 {
            assert!(!busy.should_trim(i * SETTLED_THRESHOLD / 2 + i * SETTLED_SLACK));
        }
    }

    #[test]
    fn memory_freed_during_a_trim_triggers_the_next_one() {
        let mut t = Trimmer::default();
        assert!(!t.should_trim(1_000));
        let sampled = 1_000 + TRIM_THRESHOLD;
        assert!(t.should_trim(sampled));
        // The burst kept freeing while the trim ran.
        let after = sampled + 3 * TRIM_THRESHOLD;
        t.trimmed(sampled, after);
        assert!(
            t.should_trim(after),
            "what the trim may have missed is trimmed next"
        );
        t.trimmed(after, after);
        assert!(!t.should_trim(after), "nothing new since");
        // A trim that shrank the heap (free count fell) lowers the base.
        t.trimmed(after, 2_000);
        assert!(!t.should_trim(2_000 + TRIM_THRESHOLD - 1));
        assert!(t.should_trim(2_000 + TRIM_THRESHOLD));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_reports_free_bytes_and_trims() {
        let v: Vec<Vec<u8>> = (0..1024).map(|_| vec![1u8; 8192]).collect();
        drop(v);
        assert!(
            sys::free_bytes().is_some(),
            "mallinfo2 is available on glibc"
        );
        // Whether anything was released depends on the heap's layout; it must not crash.
        let _ = sys::trim();
    }
}
