//! Ports for local pods, handed out without the bind-0-and-release race.
//!
//! In a cluster every pod has its own IP; here all pods share `127.0.0.1`, so each needs its own
//! ports. Binding port 0 and releasing it (what this replaced) hands out numbers from the
//! kernel's ephemeral range, which the kernel hands out again: to the next bind-0 of a sibling
//! pod started at the same moment, or as the source port of any outgoing connection (the
//! activator's own, to the pods). Both happened: two pods got the same number and one became
//! ready through the other's listener.
//!
//! So ports come from a band *below* the ephemeral range (`ip_local_port_range`), which the
//! kernel never picks by itself; a number is handed out once while a pod holds it (a [`Lease`],
//! returned when the pod is dropped), and skipped when a test bind shows another process has
//! it. Several `activator local` processes start at different points of the band (by pid), and
//! what remains between them (both test-binding the same free number before either child binds
//! it) is caught later: the child fails to bind and exits, and a pod is only ready when the
//! queue-proxy that answers names it ([`super::pod`]).

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

/// Ports per pod: queue-proxy serving, TLS, admin, metrics, user metrics, and the app's `PORT`.
pub const PER_POD: usize = 6;

/// The kernel's default `ip_local_port_range` start, when the file cannot be read.
const EPHEMERAL_START: u16 = 32768;
/// How many ports below the ephemeral range are used (≈ 2,000 pods).
const BAND: u16 = 12288;

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// Ports held by one pod; returned to the pool on drop.
#[derive(Debug)]
pub struct Lease {
    ports: Vec<u16>,
}

impl Lease {
    /// The `i`-th port of the lease.
    ///
    /// # Panics
    /// When `i` is not below the count allocated (a programming error).
    pub fn get(&self, i: usize) -> u16 {
        self.ports[i]
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = pool.as_mut() {
            for port in &self.ports {
                p.in_use.remove(port);
            }
        }
    }
}

#[derive(Debug)]
struct Pool {
    band: Range<u16>,
    next: u16,
    in_use: HashSet<u16>,
}

/// The band below the ephemeral range given `/proc/sys/net/ipv4/ip_local_port_range`'s text:
/// `[start - BAND, start)`, never below 1024 (privileged); empty when no band fits.
pub fn band_below(ephemeral: &str) -> Range<u16> {
    let start = ephemeral
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(EPHEMERAL_START);
    let lo = start.saturating_sub(BAND).max(1024);
    lo..start.max(lo)
}

/// `n` ports no other pod of this process holds and no other process was listening on.
///
/// # Errors
/// When the band is exhausted (every port held or taken).
pub fn allocate(n: usize) -> std::io::Result<Lease> {
    let mut guard = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let pool = guard.get_or_insert_with(|| {
        let text =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
        let band = band_below(&text);
        let width = u32::from(band.end - band.start).max(1);
        // Processes start at different points of the band, so two of them rarely meet.
        let offset =
            u16::try_from(std::process::id().wrapping_mul(2_654_435_761) % width).unwrap_or(0);
        Pool {
            next: band.start + offset,
            band,
            in_use: HashSet::new(),
        }
    });
    let mut ports = Vec::with_capacity(n);
    let width = usize::from(pool.band.end - pool.band.start);
    for _ in 0..width {
        if ports.len() == n {
            break;
        }
        let p = pool.next;
        pool.next = if p + 1 >= pool.band.end {
            pool.band.start
        } else {
            p + 1
        };
        if pool.in_use.contains(&p) || std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
            continue;
        }
        pool.in_use.insert(p);
        ports.push(p);
    }
    if ports.len() < n {
        for p in &ports {
            pool.in_use.remove(p);
        }
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "no free ports left in {}..{}",
                pool.band.start, pool.band.end
            ),
        ));
    }
    Ok(Lease { ports })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_band_lies_below_the_ephemeral_range() {
        assert_eq!(band_below("32768\t60999\n"), 20480..32768);
        assert_eq!(band_below(""), 20480..32768);
        // A low ephemeral start leaves a smaller band, never privileged ports.
        assert_eq!(band_below("5000 65000"), 1024..5000);
        assert_eq!(band_below("1024 65000"), 1024..1024);
    }

    /// The race this module exists for: many pods allocated at once never share a port, none
    /// comes from the kernel's ephemeral range, a held port is never handed out again, and a
    /// port a process listens on is skipped.
    #[test]
    fn ports_are_unique_while_held_and_outside_the_ephemeral_range() {
        let text =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
        let band = band_below(&text);
        let leases: Vec<Lease> = (0..40).map(|_| allocate(PER_POD).expect("ports")).collect();
        let all: Vec<u16> = leases.iter().flat_map(|l| l.ports.clone()).collect();
        let unique: HashSet<u16> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "a port handed out twice");
        assert!(
            all.iter().all(|p| band.contains(p)),
            "{all:?} outside {band:?}"
        );
        // Someone else listens on the next port: it is skipped.
        let next = POOL
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|p| p.next)
            .expect("pool");
        let taken = std::net::TcpListener::bind(("127.0.0.1", next));
        let l = allocate(1).expect("port");
        if taken.is_ok() {
            assert_ne!(l.get(0), next);
        }
        drop(leases);
        assert!(
            POOL.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .is_some_and(|p| p.in_use.len() == 1),
            "dropped leases return their ports"
        );
    }
}
