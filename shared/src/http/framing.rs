//! Request-smuggling guard for HTTP/1 connections (reliability plan, scenario 18).
//!
//! hyper handles a request carrying both `Content-Length` and `Transfer-Encoding` the way
//! RFC 9112 §6.3 allows: it frames the body as chunked, drops `Content-Length` and closes the
//! connection afterwards. The service never learns that the request was ambiguous, so it would
//! forward it. We want the stricter answer the RFC also allows, `400` with nothing forwarded, as
//! Envoy and linkerd do. hyper gives no hook for that, so [`Inspect`] watches the bytes hyper
//! reads and [`Tracker`] follows the connection's HTTP/1 message boundaries with `httparse`
//! (hyper's own parser), queueing one verdict per request head. The server pops the verdict
//! for each request hyper hands it and rejects the ambiguous ones before any layer runs.
//!
//! The tracker only has to agree with hyper on framing. Wherever it cannot (a head hyper will
//! reject anyway, an upgrade, h2c's preface, a malformed chunk) it stops inspecting and queues
//! nothing more: from then on requests pass with hyper's own (still safe) handling.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest chunk-size or trailer line we accept (Go's chunked reader refuses longer lines too).
/// Small enough that a huge chunk extension sent with the head is over it within hyper's first
/// 8 KiB read, so the request is refused before it reaches the service.
const MAX_LINE: usize = 4096;

/// Header slots parsed on the stack (8 KiB, never initialised); larger limits use the heap.
const STACK_HEADERS: usize = 256;

/// What the tracker decided about one request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Unambiguous framing.
    Clean,
    /// Both `Content-Length` and `Transfer-Encoding`: reject with 400.
    Ambiguous,
    /// A malformed chunked body, seen before the request reached the service: reject with 400.
    /// A chunk-size or trailer line longer than [`MAX_LINE`] (a huge chunk extension) counts.
    BadChunk,
    /// More than one `Content-Length` value, even identical ones: reject with 400.
    DuplicateLength,
    /// An HTTP/1.1 `Transfer-Encoding` other than one field saying exactly `chunked`
    /// (`gzip, chunked`, `identity, chunked`, two `chunked` lines): reject with 501, as Go.
    UnsupportedCoding,
}

#[derive(Debug)]
enum State {
    /// Expecting a request head; bytes so far are in `Tracker::buf`.
    Head,
    /// In a `Content-Length` body with this many bytes left.
    Fixed(u64),
    /// Expecting a chunk-size line (buffered in `buf`).
    ChunkSize,
    /// In chunk data with this many bytes left.
    ChunkData(u64),
    /// Expecting the CRLF after chunk data; this many bytes left.
    ChunkEnd(u8),
    /// Expecting trailer lines until an empty one.
    Trailers,
    /// No longer inspecting (see the module docs).
    Passthrough,
}

/// Follows HTTP/1 request framing over a connection's inbound bytes.
#[derive(Debug)]
pub struct Tracker {
    state: State,
    buf: Vec<u8>,
    max_head: usize,
    max_headers: usize,
}

impl Tracker {
    /// A tracker for a fresh connection with the server's head limits.
    pub fn new(max_head: usize, max_headers: usize) -> Self {
        Self {
            state: State::Head,
            buf: Vec::new(),
            max_head,
            max_headers,
        }
    }

    /// Whether the tracker stopped inspecting.
    pub fn is_passthrough(&self) -> bool {
        matches!(self.state, State::Passthrough)
    }

    /// Consumes the next inbound bytes, calling `verdict` once per complete request head, and
    /// with [`Verdict::BadChunk`] when the current request's chunked body is malformed.
    pub fn feed(&mut self, data: &[u8], verdict: &mut impl FnMut(Verdict)) {
        // A loop, not recursion: one read may hold thousands of pipelined heads.
        let mut rest = self.step(data, verdict);
        while let Some(r) = rest {
            rest = self.step(&r, verdict);
        }
    }

    /// Consumes `data` up to the end of the next complete head; returns what follows it.
    fn step(&mut self, mut data: &[u8], verdict: &mut impl FnMut(Verdict)) -> Option<Vec<u8>> {
        while !data.is_empty() {
            match self.state {
                State::Passthrough => return None,
                State::Fixed(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Fixed(left)
                    };
                }
                State::ChunkData(n) => {
                    let take = usize::try_from(n).unwrap_or(usize::MAX).min(data.len());
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(left)
                    };
                }
                State::ChunkEnd(k) => {
                    let expected: &[u8] = if k == 2 { b"\r\n" } else { b"\n" };
                    let take = usize::from(k).min(data.len());
                    if data[..take] != expected[..take] {
                        self.state = State::Passthrough;
                        verdict(Verdict::BadChunk);
                        return None;
                    }
                    data = &data[take..];
                    let left = k - take as u8;
                    self.state = if left == 0 {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(left)
                    };
                }
                State::ChunkSize | State::Trailers => {
                    let Some(end) = data.iter().position(|b| *b == b'\n') else {
                        self.buf.extend_from_slice(data);
                        if self.buf.len() > MAX_LINE {
                            // A 64 KiB chunk extension: hyper would fail the body mid-request
                            // (a 502 from the proxy); answer 400 before anything is forwarded.
                            self.state = State::Passthrough;
                            verdict(Verdict::BadChunk);
                        }
                        return None;
                    };
                    self.buf.extend_from_slice(&data[..=end]);
                    data = &data[end + 1..];
                    if self.buf.len() > MAX_LINE {
                        // Same answer however the line was split across reads.
                        self.state = State::Passthrough;
                        verdict(Verdict::BadChunk);
                        return None;
                    }
                    let line = std::mem::take(&mut self.buf);
                    self.state = match self.state {
                        State::ChunkSize => match httparse::parse_chunk_size(&line) {
                            Ok(httparse::Status::Complete((_, 0))) => State::Trailers,
                            Ok(httparse::Status::Complete((_, n))) => State::ChunkData(n),
                            _ => {
                                verdict(Verdict::BadChunk);
                                State::Passthrough
                            }
                        },
                        _ if line == b"\r\n" || line == b"\n" => State::Head,
                        _ => State::Trailers,
                    };
                }
                State::Head => {
                    self.buf.extend_from_slice(data);
                    return self.parse_head(verdict);
                }
            }
        }
        None
    }

    /// Parses the head in `buf` if complete; returns the bytes after it.
    fn parse_head(&mut self, verdict: &mut impl FnMut(Verdict)) -> Option<Vec<u8>> {
        // One head per request: parse into uninitialised slots on the stack rather than a
        // zeroed heap vector of `max_headers` (6.4 KiB allocated and cleared per request showed
        // up in the queue-proxy's profile). Same parser, same default config, same limit.
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut heap;
        let slots = if self.max_headers <= STACK_HEADERS {
            &mut stack[..self.max_headers]
        } else {
            heap = vec![MaybeUninit::uninit(); self.max_headers];
            &mut heap[..]
        };
        let mut req = httparse::Request::new(&mut []);
        let parsed = match req.parse_with_uninit_headers(&self.buf, slots) {
            // hyper answers 431 to a head over the limit, however it arrived.
            Ok(httparse::Status::Complete(n)) if n > self.max_head => {
                self.state = State::Passthrough;
                return None;
            }
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() > self.max_head {
                    self.state = State::Passthrough;
                }
                return None;
            }
            // hyper answers these itself (400 or 431) and closes.
            Err(_) => {
                self.state = State::Passthrough;
                return None;
            }
        };
        let (mut cl, mut te, mut tes, mut upgrade) = (Vec::new(), None, 0usize, false);
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                cl.push(h.value);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = Some(h.value);
                tes += 1;
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let v = if te.is_some() && !cl.is_empty() {
            Verdict::Ambiguous
        } else if cl.len() > 1 || cl.iter().any(|v| v.contains(&b',')) {
            // hyper folds identical values into one length; a proxy in front of us may have
            // picked another line, so any repetition is refused (docs/queue-proxy.md).
            Verdict::DuplicateLength
        } else if req.version == Some(1)
            && te.is_some_and(|te| tes > 1 || !te.trim_ascii().eq_ignore_ascii_case(b"chunked"))
        {
            // Go supports exactly one `Transfer-Encoding: chunked` field on HTTP/1.1 and
            // answers 501 to anything else; hyper would drop `gzip` and hand on gzip bytes
            // labelled only `chunked`. HTTP/1.0 ignores the field in Go; hyper frames it.
            Verdict::UnsupportedCoding
        } else {
            Verdict::Clean
        };
        verdict(v);
        let connect = req.method == Some("CONNECT");
        self.state = if v != Verdict::Clean || upgrade || connect {
            // hyper closes after an ambiguous request; after an upgrade the bytes are not HTTP.
            State::Passthrough
        } else if let Some(te) = te {
            if last_coding_is_chunked(te) {
                State::ChunkSize
            } else {
                State::Passthrough
            }
        } else if cl.is_empty() {
            State::Head
        } else {
            match content_length(&cl) {
                Some(0) => State::Head,
                Some(n) => State::Fixed(n),
                None => State::Passthrough,
            }
        };
        let rest = self.buf.split_off(parsed);
        self.buf.clear();
        (!rest.is_empty()).then_some(rest)
    }
}

fn last_coding_is_chunked(te: &[u8]) -> bool {
    te.rsplit(|b| *b == b',')
        .next()
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The single length all `Content-Length` values agree on (hyper's rule), if any.
fn content_length(values: &[&[u8]]) -> Option<u64> {
    let mut len = None;
    for v in values {
        for part in v.split(|b| *b == b',') {
            let part = std::str::from_utf8(part.trim_ascii()).ok()?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = part.parse().ok()?;
            if len.is_some_and(|l| l != n) {
                return None;
            }
            len = Some(n);
        }
    }
    len
}

/// Verdicts in request order, shared by a connection's [`Inspect`] and its service.
#[derive(Clone, Debug, Default)]
pub struct Verdicts(Arc<Mutex<VecDeque<Verdict>>>);

impl Verdicts {
    /// The verdict for the next request hyper hands the service; `Clean` when the tracker
    /// stopped inspecting.
    pub fn next(&self, headers: &HeaderMap) -> Verdict {
        let popped = self
            .0
            .lock()
            .map(|mut q| q.pop_front())
            .unwrap_or(None)
            .unwrap_or(Verdict::Clean);
        // hyper removed `Content-Length`, so only `Transfer-Encoding` can be left; a clean
        // verdict with both present cannot happen, but costs nothing to check.
        if headers.contains_key(http::header::CONTENT_LENGTH)
            && headers.contains_key(http::header::TRANSFER_ENCODING)
        {
            return Verdict::Ambiguous;
        }
        popped
    }

    fn push(&self, v: Verdict) {
        if let Ok(mut q) = self.0.lock() {
            if v == Verdict::BadChunk {
                // The body belongs to the newest head: amend its verdict if the service has not
                // taken it yet (otherwise hyper fails the body mid-request, also never clean).
                if let Some(last) = q.back_mut().filter(|l| **l == Verdict::Clean) {
                    *last = Verdict::BadChunk;
                }
            } else {
                q.push_back(v);
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection whose inbound bytes pass through a [`Tracker`] on their way to hyper.
    #[derive(Debug)]
    pub struct Inspect<IO> {
        #[pin]
        io: IO,
        tracker: Tracker,
        verdicts: Verdicts,
    }
}

impl<IO> Inspect<IO> {
    /// Wraps `io`; verdicts go to `verdicts`.
    pub fn new(io: IO, tracker: Tracker, verdicts: Verdicts) -> Self {
        Self {
            io,
            tracker,
            verdicts,
        }
    }
}

impl<IO: AsyncRead> AsyncRead for Inspect<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        if !this.tracker.is_passthrough() {
            let verdicts = this.verdicts;
            this.tracker
                .feed(&buf.filled()[before..], &mut |v| verdicts.push(v));
            if this.tracker.is_passthrough() {
                // Nothing more will be parsed here; free the buffer.
                this.tracker.buf = Vec::new();
            }
        }
        res
    }
}

impl<IO: AsyncWrite> AsyncWrite for Inspect<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;
