//! Holding ("parking") the first request of a new HTTP/1 connection outside hyper.
//!
//! A request that must wait (the activator holding a request for a revision scaled to zero) costs
//! about 21 KiB while hyper owns its connection: an 8 KiB read buffer, an 8 KiB write buffer
//! (allocated up front, not configurable), the connection state machine and the request-path
//! futures. None of that is needed while the request only waits. So, for a server given a
//! [`FirstHead`] hook, [`super::server::serve_with`] reads the first request head of every new
//! HTTP/1 connection itself into a small buffer and asks the hook whether to hold it. While held,
//! the connection is only its socket, the bytes read so far (sized to fit) and the hook's future.
//! When that future resolves, the connection goes to hyper with the bytes replayed ([`Rewind`]),
//! and the [`http::Extensions`] the future returned are added to the connection's first request
//! (the activator passes the already acquired lease that way, so the request does not queue
//! twice).
//!
//! While held, a client that leaves (end of stream, reset) ends the hold at once: the hook's
//! future is dropped, which frees whatever it holds. Bytes the client sends meanwhile (a request
//! body) are buffered up to [`MAX_PARKED_BYTES`]; beyond that the server stops reading (TCP
//! backpressure), and a disconnect is then only seen once hyper takes over.
//!
//! Only heads with plain framing are offered to the hook (see [`offer`]); anything unusual goes
//! to hyper at once, with the bytes replayed, so hyper's answers (400, 431, …) are unchanged.
//! Only the first request of a connection can be held here: later requests on a kept-alive
//! connection are parsed by hyper, whose buffers already exist by then, so holding them outside
//! would free nothing while hyper still owns the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::server::ConnInfo;

/// Largest first head read by us; a longer one goes to hyper unparked.
pub const MAX_PARKED_HEAD: usize = 8 * 1024;

/// Most header fields in a head offered to the hook (more go to hyper unparked).
pub const MAX_PARKED_HEADERS: usize = 64;

/// Most bytes buffered for a held connection (head plus body bytes sent while waiting).
pub const MAX_PARKED_BYTES: usize = 16 * 1024;

/// First read of a new connection: most heads fit, and a longer one grows the buffer.
const FIRST_READ: usize = 1024;

/// What a hold resolves to: extensions for the connection's first request.
pub type HoldFuture = Pin<Box<dyn Future<Output = http::Extensions> + Send>>;

/// Decides from the first request head of a new HTTP/1 connection whether to hold it.
pub trait FirstHead: Send + Sync + 'static {
    /// `Some(future)` holds the connection until the future resolves (its extensions go into
    /// the first request's); `None` hands it to hyper now. Called once per connection, before
    /// hyper sees it; must not block.
    fn hold(&self, head: &httparse::Request<'_, '_>, info: &ConnInfo) -> Option<HoldFuture>;
}

/// How reading the first head ended.
pub(crate) enum First {
    /// Hold the connection until the future resolves.
    Hold(HoldFuture),
    /// Hand the connection (and the bytes read) to hyper.
    Hyper,
}

impl std::fmt::Debug for dyn FirstHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FirstHead")
    }
}

/// Reads until the first request head is complete (or proves unusual) and asks `hook`.
///
/// # Errors
/// The connection failed or ended before a complete head.
pub(crate) async fn first_request(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    hook: &dyn FirstHead,
    info: &ConnInfo,
) -> io::Result<First> {
    buf.reserve(FIRST_READ);
    loop {
        stream.readable().await?;
        match stream.try_read_buf(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        match offer(buf, hook, info) {
            Offer::Decided(first) => return Ok(first),
            Offer::Partial if buf.len() < MAX_PARKED_HEAD => {
                if buf.len() == buf.capacity() {
                    buf.reserve(buf.len());
                }
            }
            Offer::Partial => return Ok(First::Hyper),
        }
    }
}

enum Offer {
    Decided(First),
    Partial,
}

/// Parses `buf` and offers a complete, plainly framed head to `hook`. Synchronous on purpose:
/// the header array lives on the stack here, not in every connection's future.
fn offer(buf: &[u8], hook: &dyn FirstHead, info: &ConnInfo) -> Offer {
    let mut headers = [httparse::EMPTY_HEADER; MAX_PARKED_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            if !plain(&req, buf.len() - head_len) {
                return Offer::Decided(First::Hyper);
            }
            Offer::Decided(match hook.hold(&req, info) {
                Some(fut) => First::Hold(fut),
                None => First::Hyper,
            })
        }
        Ok(httparse::Status::Partial) => Offer::Partial,
        // Malformed, or more headers than we look at: hyper decides.
        Err(_) => Offer::Decided(First::Hyper),
    }
}

/// Whether a complete head is one hyper frames the ordinary way, with nothing pipelined behind
/// it: `extra` bytes after the head must belong to its body. Everything else (ambiguous or odd
/// framing, `CONNECT`, an `h2c` upgrade, pipelining) goes to hyper unheld.
fn plain(req: &httparse::Request<'_, '_>, extra: usize) -> bool {
    if req.method == Some("CONNECT") {
        return false;
    }
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
            else {
                return false;
            };
            if content_length.replace(n).is_some() {
                return false;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !h.value.eq_ignore_ascii_case(b"chunked") {
                return false;
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("upgrade")
            && h.value
                .split(|b| *b == b',')
                .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"))
        {
            return false;
        }
    }
    match (content_length, chunked) {
        (Some(_), true) => false,
        (Some(n), false) => (extra as u64) <= n,
        // Chunked: the body's length is unknown here; the bytes are replayed exactly anyway.
        (None, true) => true,
        (None, false) => extra == 0,
    }
}

/// Waits for `hold` while watching the client. `None` when the client went away (the future is
/// dropped); otherwise the extensions for the first request. Bytes the client sends meanwhile
/// are appended to `buf` (up to [`MAX_PARKED_BYTES`]).
pub(crate) async fn wait(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    mut hold: HoldFuture,
) -> Option<http::Extensions> {
    // The head buffer was sized for reading; keep only what was read while held.
    buf.shrink_to_fit();
    let mut watching = true;
    loop {
        tokio::select! {
            ext = hold.as_mut() => return Some(ext),
            ready = stream.readable(), if watching => {
                ready.ok()?;
                match drain(stream, buf) {
                    Drained::Open => {}
                    Drained::Full => watching = false,
                    Drained::Closed => return None,
                }
            }
        }
    }
}

enum Drained {
    Open,
    Full,
    Closed,
}

/// Reads what is available into `buf`. Synchronous, so the scratch buffer is on the stack only
/// while reading.
fn drain(stream: &TcpStream, buf: &mut Vec<u8>) -> Drained {
    let mut scratch = [0u8; 1024];
    loop {
        let room = MAX_PARKED_BYTES
            .saturating_sub(buf.len())
            .min(scratch.len());
        if room == 0 {
            return Drained::Full;
        }
        match stream.try_read(&mut scratch[..room]) {
            Ok(0) => return Drained::Closed,
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drained::Open,
            Err(_) => return Drained::Closed,
        }
    }
}

// === impl Rewind ===

/// An IO that first replays bytes already read from it, then reads from it again.
#[derive(Debug)]
pub struct Rewind<IO> {
    pre: Vec<u8>,
    pos: usize,
    io: IO,
}

impl<IO> Rewind<IO> {
    /// `io`, with `pre` to be read first.
    pub fn new(io: IO, pre: Vec<u8>) -> Self {
        Self { pre, pos: 0, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.pre.len() {
            let n = (this.pre.len() - this.pos).min(out.remaining());
            out.put_slice(&this.pre[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.pre.len() {
                // Replayed: free the buffer now rather than with the connection.
                this.pre = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, out)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
