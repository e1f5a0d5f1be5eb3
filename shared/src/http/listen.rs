//! Listening sockets with the system's accept backlog.
//!
//! tokio (through mio) and the standard library listen with a backlog of 128. A burst of
//! simultaneous connects beyond it overflows the accept queue, and each dropped SYN costs its
//! client a 1 s retransmit. Go listens with `net.core.somaxconn` instead (4096 on current
//! kernels); so do we.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// The backlog when `/proc/sys/net/core/somaxconn` cannot be read (the kernel default since
/// Linux 5.4; the kernel caps any larger value at `somaxconn` anyway).
const FALLBACK_BACKLOG: u32 = 4096;

/// The accept backlog we listen with: `net.core.somaxconn`, capped at 65535 as Go does for
/// kernels whose backlog field is 16 bits wide.
pub fn backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
        .map_or(FALLBACK_BACKLOG, |n| n.min(u32::from(u16::MAX)))
}

/// Binds `addr` (with `SO_REUSEADDR`, as tokio's `bind`) and listens with [`backlog`].
///
/// # Errors
/// The socket cannot be created, bound or put into listening state.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// 300 simultaneous connects to a listener that accepts none of them: every handshake
    /// completes from the accept queue. With a backlog of 128, about half wait for a SYN
    /// retransmit (1 s) and miss the 500 ms deadline.
    #[tokio::test]
    async fn a_burst_of_connects_fits_the_backlog() {
        let n = 300.min(backlog().saturating_sub(8) as usize);
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            set.spawn(tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            ));
        }
        let mut ok = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(Ok(s)) = r.unwrap() {
                ok.push(s);
            }
        }
        assert_eq!(ok.len(), n, "connects completed within 500 ms");
        drop(l);
    }
}
