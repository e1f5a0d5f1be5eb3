//! `Upgrade: h2c` on the serving port (RFC 7540 §3.2), as Knative's `h2c.NewHandler` serves it.
//!
//! hyper serves h2c with prior knowledge but has no server-side upgrade: after the `101`, the
//! HTTP/1 request that asked for the upgrade must be answered as HTTP/2 stream 1, which the
//! client never sends. [`H2cUpgrade`] answers `101`, then runs an HTTP/2 server on the upgraded
//! connection whose input is the client's preface and `SETTINGS`, followed by a `HEADERS` frame
//! for stream 1 that we encode from the original request (HPACK literals without indexing, so
//! the client's header table stays untouched), followed by the rest of the client's bytes.
//! Everything past that frame is hyper's HTTP/2.
//!
//! Only body-less requests are upgraded. A request with a body is served as HTTP/1.1 and its
//! upgrade headers are dropped, which RFC 9110 §7.8 allows (a server may ignore `Upgrade`).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, HOST, HeaderValue, UPGRADE};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use shared::http::server::ConnInfo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tower::Service;

/// The request header carrying the client's base64url `SETTINGS` payload.
pub const HTTP2_SETTINGS: &str = "http2-settings";
/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame types and flags we write or check (RFC 9113 §6).
const FRAME_HEADERS: u8 = 0x1;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
/// SETTINGS_MAX_FRAME_SIZE's initial value: the largest frame we may send before the server
/// advertised more, and the largest client SETTINGS frame we accept.
const MAX_FRAME: usize = 16_384;
/// How long the client may take to send its preface after the `101` (Go's ReadHeaderTimeout).
const PREFACE_TIMEOUT: Duration = Duration::from_secs(60);

/// Wraps the serving stack; upgrades `Upgrade: h2c` requests and passes everything else on.
#[derive(Clone, Debug)]
pub struct H2cUpgrade<S> {
    inner: S,
}

impl<S> H2cUpgrade<S> {
    /// Serves `inner` on HTTP/1.1, and on HTTP/2 after an h2c upgrade.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

/// True if `headers` ask for h2c (`Upgrade: h2c`, `Connection: Upgrade, HTTP2-Settings` and
/// exactly one `HTTP2-Settings`), as Go's `h2c.isH2CUpgrade`.
pub fn is_h2c_upgrade(headers: &HeaderMap) -> bool {
    let has = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(UPGRADE, "h2c")
        && has(CONNECTION, "upgrade")
        && has(CONNECTION, HTTP2_SETTINGS)
        && headers.get_all(HTTP2_SETTINGS).iter().count() == 1
}

/// Maps a response that was not upgraded into the service's response type.
type PlainMap<B> =
    fn(Result<Response<B>, Infallible>) -> Result<Response<Either<B, Empty<Bytes>>>, Infallible>;

impl<S, B> Service<Request<Incoming>> for H2cUpgrade<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<shared::BoxError>,
{
    type Response = Response<Either<B, Empty<Bytes>>>;
    type Error = Infallible;
    /// Not boxed: this wraps every request on the serving port (one allocation less each).
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Self::Response, Infallible>>,
        futures_util::future::Map<
            S::Future,
            fn(Result<Response<B>, Infallible>) -> Result<Self::Response, Infallible>,
        >,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        if is_h2c_upgrade(req.headers()) {
            if req.version() == Version::HTTP_11 && req.body().is_end_stream() {
                return futures_util::future::Either::Left(std::future::ready(Ok(
                    self.upgrade(req)
                )));
            }
            // Not upgraded: make sure the proxy does not forward an h2c upgrade to the app.
            req.headers_mut().remove(UPGRADE);
            req.headers_mut().remove(HTTP2_SETTINGS);
        }
        // Always ready (every layer of the stack is): call in place, no per-request clone.
        let plain: PlainMap<B> = |r| r.map(|r| r.map(Either::Left));
        futures_util::future::Either::Right(futures_util::FutureExt::map(
            self.inner.call(req),
            plain,
        ))
    }
}

impl<S> H2cUpgrade<S> {
    fn upgrade<B>(&self, mut req: Request<Incoming>) -> Response<Either<B, Empty<Bytes>>>
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<shared::BoxError>,
    {
        let stream1 = headers_frames(&req);
        let info = req.extensions().get::<ConnInfo>().copied();
        let on = hyper::upgrade::on(&mut req);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_upgraded(on, stream1, inner, info).await {
                tracing::debug!(error = %error, "h2c upgraded connection ended with error");
            }
        });
        let mut resp = Response::new(Either::Right(Empty::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        resp.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("h2c"));
        resp
    }
}

async fn serve_upgraded<S, B>(
    on: hyper::upgrade::OnUpgrade,
    stream1: Bytes,
    svc: S,
    info: Option<ConnInfo>,
) -> Result<(), shared::BoxError>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<shared::BoxError>,
{
    let mut io = TokioIo::new(on.await?);
    // The preface and the client's first SETTINGS frame must reach the HTTP/2 server before
    // stream 1 (a SETTINGS frame must come first); read exactly those, then splice.
    let mut head = vec![0u8; PREFACE.len() + 9];
    tokio::time::timeout(PREFACE_TIMEOUT, io.read_exact(&mut head)).await??;
    if &head[..PREFACE.len()] != PREFACE || head[PREFACE.len() + 3] != FRAME_SETTINGS {
        return Err("h2c upgrade: no HTTP/2 preface and SETTINGS after 101".into());
    }
    let len = usize::from(head[24]) << 16 | usize::from(head[25]) << 8 | usize::from(head[26]);
    if len > MAX_FRAME {
        return Err("h2c upgrade: oversized SETTINGS frame".into());
    }
    let mut settings = vec![0u8; len];
    tokio::time::timeout(PREFACE_TIMEOUT, io.read_exact(&mut settings)).await??;
    let mut prefix = BytesMut::with_capacity(head.len() + len + stream1.len());
    prefix.extend_from_slice(&head);
    prefix.extend_from_slice(&settings);
    prefix.extend_from_slice(&stream1);
    let io = Prefixed {
        prefix: prefix.freeze(),
        inner: io,
    };
    let info = info.ok_or("h2c upgrade: no connection info")?;
    // The shared HTTP/2 server: idle timeout, early-reset bound and field-count rule as on a
    // prior-knowledge connection.
    let opts = shared::http::server::ServerOptions::default();
    shared::http::server::serve_h2(io, svc, opts, info).await;
    Ok(())
}

/// Headers that are connection-specific in HTTP/1 and forbidden in HTTP/2 (RFC 9113 §8.2.2).
fn is_connection_specific(name: &str, value: &HeaderValue) -> bool {
    matches!(
        name,
        "connection"
            | "upgrade"
            | "http2-settings"
            | "host"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
    ) || (name == "te" && value.as_bytes() != b"trailers")
}

/// The HEADERS (+ CONTINUATION) frames of stream 1, carrying `req`'s head and END_STREAM.
fn headers_frames<B>(req: &Request<B>) -> Bytes {
    let mut block = BytesMut::new();
    let authority = req
        .headers()
        .get(HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes()))
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .as_bytes();
    hpack_literal(&mut block, b":method", req.method().as_str().as_bytes());
    hpack_literal(&mut block, b":scheme", b"http");
    // An empty `:authority` is malformed in HTTP/2; leave it out (HTTP/1.0-style request).
    if !authority.is_empty() {
        hpack_literal(&mut block, b":authority", authority);
    }
    hpack_literal(&mut block, b":path", path);
    for (name, value) in req.headers() {
        if !is_connection_specific(name.as_str(), value) {
            hpack_literal(&mut block, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let mut out = BytesMut::with_capacity(block.len() + 9 * (block.len() / MAX_FRAME + 1));
    let chunks: Vec<&[u8]> = if block.is_empty() {
        vec![&[]]
    } else {
        block.chunks(MAX_FRAME).collect()
    };
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let (kind, mut flags) = if i == 0 {
            (FRAME_HEADERS, FLAG_END_STREAM)
        } else {
            (FRAME_CONTINUATION, 0)
        };
        if i == last {
            flags |= FLAG_END_HEADERS;
        }
        // `chunk.len() <= MAX_FRAME` fits the 24-bit length.
        let len = chunk.len();
        out.put_u8((len >> 16) as u8);
        out.put_u8((len >> 8) as u8);
        out.put_u8(len as u8);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u32(1);
        out.extend_from_slice(chunk);
    }
    out.freeze()
}

/// HPACK "literal header field without indexing — new name" (RFC 7541 §6.2.2), no Huffman.
fn hpack_literal(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_u8(0);
    hpack_string(out, name);
    hpack_string(out, value);
}

/// An HPACK string literal: H = 0 and a 7-bit-prefix length (RFC 7541 §5.1, §5.2).
fn hpack_string(out: &mut BytesMut, s: &[u8]) {
    let mut n = s.len();
    if n < 127 {
        out.put_u8(n as u8);
    } else {
        out.put_u8(127);
        n -= 127;
        while n >= 128 {
            out.put_u8((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.put_u8(n as u8);
    }
    out.extend_from_slice(s);
}

/// An I/O whose reads first return `prefix`, then the inner stream's bytes.
struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_only_complete_h2c_upgrades() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            m
        };
        let ok = [
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
        ];
        assert!(is_h2c_upgrade(&h(&ok)));
        assert!(!is_h2c_upgrade(&h(&ok[..2])), "no settings");
        assert!(!is_h2c_upgrade(&h(&[
            ok[0],
            ("connection", "Upgrade"),
            ok[2]
        ])));
        assert!(!is_h2c_upgrade(&h(&[
            ("upgrade", "websocket"),
            ok[1],
            ok[2]
        ])));
        assert!(
            !is_h2c_upgrade(&h(&[ok[0], ok[1], ok[2], ok[2]])),
            "two settings"
        );
    }

    #[test]
    fn hpack_lengths_use_the_7_bit_prefix_integer() {
        let mut b = BytesMut::new();
        hpack_string(&mut b, &[b'a'; 126]);
        assert_eq!(b[0], 126);
        let mut b = BytesMut::new();
        hpack_string(&mut b, &[b'a'; 127 + 200]);
        // RFC 7541 §5.1: 127, then 200 = 0b1_1001000 → 0xc8, 0x01.
        assert_eq!(&b[..3], &[127, 0xc8, 0x01]);
        assert_eq!(b.len(), 3 + 327);
    }

    #[test]
    fn large_heads_are_split_into_continuation_frames() {
        let big = "x".repeat(40_000);
        let req = Request::get("/p?q")
            .header("host", "h")
            .header("x-big", big.as_str())
            .header("connection", "Upgrade, HTTP2-Settings")
            .body(())
            .unwrap();
        let f = headers_frames(&req);
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < f.len() {
            let len =
                usize::from(f[at]) << 16 | usize::from(f[at + 1]) << 8 | usize::from(f[at + 2]);
            kinds.push((f[at + 3], f[at + 4]));
            assert_eq!(&f[at + 5..at + 9], &[0, 0, 0, 1]);
            at += 9 + len;
        }
        assert_eq!(at, f.len());
        assert_eq!(
            kinds,
            vec![
                (FRAME_HEADERS, FLAG_END_STREAM),
                (FRAME_CONTINUATION, 0),
                (FRAME_CONTINUATION, FLAG_END_HEADERS)
            ]
        );
        assert!(!f.windows(10).any(|w| w == b"connection"));
    }
}
