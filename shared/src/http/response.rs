//! Responses the proxies produce themselves, with Knative's exact bodies and headers.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::headers::X_CONTENT_TYPE_OPTIONS;

/// `text/plain; charset=utf-8`, what Go's `http.Error` and sniffing produce.
pub const TEXT_PLAIN_UTF8: &str = "text/plain; charset=utf-8";

/// Go's `http.Error`: the body is `msg` plus a newline, with `text/plain` and `nosniff`.
pub fn go_error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let mut body = String::with_capacity(msg.len() + 1);
    body.push_str(msg);
    body.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN_UTF8));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// A body written with `w.Write` only: Go sniffs `text/plain; charset=utf-8`, and no `nosniff`.
pub fn sniffed_text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    if !body.is_empty() {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN_UTF8));
    }
    resp
}

/// An empty response with `status`.
pub fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}
