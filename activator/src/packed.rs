//! A held request's URI and header fields packed into one buffer while it waits.
//!
//! A parsed `HeaderMap` costs ≈ 100 B per slot plus its index table, and over h2c every decoded
//! name and value is a small allocation of its own: ≈ 0.6–0.9 KiB for a typical head, for as
//! long as the request is held (10,000 held h2c streams: ≈ 6 MiB). Packed, the same head is its
//! bytes plus six per field. The map is rebuilt once the wait is over; its values are slices of
//! the packed buffer, so unpacking copies nothing but the non-standard names.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

/// The URI and header fields of a request, in one buffer.
#[derive(Debug)]
pub struct PackedHead {
    buf: Bytes,
    uri_len: usize,
    fields: usize,
}

/// Field flag: the value was marked sensitive (kept so HPACK does not index it upstream).
const SENSITIVE: u8 = 1;

impl PackedHead {
    /// Moves every header field of `parts` into one buffer, leaving an empty map (which
    /// allocates nothing), and re-points the URI at a copy in that buffer: an HTTP/1 head's URI
    /// is a slice of hyper's 8 KiB read buffer and would keep all of it alive.
    pub fn take(parts: &mut Parts) -> Self {
        let headers = std::mem::take(&mut parts.headers);
        let uri = parts.uri.to_string();
        let len = uri.len()
            + headers
                .iter()
                .map(|(n, v)| 7 + n.as_str().len() + v.len())
                .sum::<usize>();
        let mut buf = BytesMut::with_capacity(len);
        buf.put_slice(uri.as_bytes());
        let mut fields = 0;
        for (name, value) in &headers {
            // A field name or value never exceeds hyper's and h2's head limits (well below 4 GiB).
            buf.put_u16(u16::try_from(name.as_str().len()).unwrap_or(u16::MAX));
            buf.put_u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
            buf.put_u8(if value.is_sensitive() { SENSITIVE } else { 0 });
            buf.put_slice(name.as_str().as_bytes());
            buf.put_slice(value.as_bytes());
            fields += 1;
        }
        let buf = buf.freeze();
        if let Ok(u) = http::Uri::from_maybe_shared(buf.slice(..uri.len())) {
            parts.uri = u;
        }
        Self {
            buf,
            uri_len: uri.len(),
            fields,
        }
    }

    /// Restores the header fields, in their original order.
    pub fn restore(self, parts: &mut Parts) {
        let mut map = HeaderMap::with_capacity(self.fields);
        let mut at = self.uri_len;
        let b = &self.buf;
        while at + 7 <= b.len() {
            let name_len = usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
            let value_len =
                u32::from_be_bytes([b[at + 2], b[at + 3], b[at + 4], b[at + 5]]) as usize;
            let flags = b[at + 6];
            let name_at = at + 7;
            let value_at = name_at + name_len;
            at = value_at + value_len;
            // Both were a valid name and value when packed, so neither can fail; a field that
            // somehow does is dropped rather than sent altered.
            let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(&b[name_at..value_at]),
                HeaderValue::from_maybe_shared(b.slice(value_at..at)),
            ) else {
                continue;
            };
            value.set_sensitive(flags & SENSITIVE != 0);
            map.append(name, value);
        }
        parts.headers = map;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_order_repeats_sensitivity_and_the_uri() {
        let req = http::Request::get("http://rev.ns.svc/a/b?x=1&y=%20")
            .header("host", "rev.ns.svc")
            .header("x-custom", "one")
            .header("accept", "*/*")
            .header("x-custom", "two")
            .header("cookie", "")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        let mut auth = HeaderValue::from_static("Bearer t");
        auth.set_sensitive(true);
        parts.headers.insert("authorization", auth);
        let before = parts.headers.clone();
        let packed = PackedHead::take(&mut parts);
        assert!(parts.headers.is_empty());
        packed.restore(&mut parts);
        assert_eq!(parts.uri, "http://rev.ns.svc/a/b?x=1&y=%20");
        assert_eq!(parts.headers, before);
        let customs: Vec<_> = parts.headers.get_all("x-custom").iter().collect();
        assert_eq!(customs, ["one", "two"]);
        assert!(parts.headers["authorization"].is_sensitive());
        assert!(!parts.headers["host"].is_sensitive());
        assert_eq!(parts.headers["cookie"], "");
    }

    #[test]
    fn an_origin_form_uri_and_no_headers_survive() {
        let (mut parts, ()) = http::Request::get("/only?q").body(()).unwrap().into_parts();
        let packed = PackedHead::take(&mut parts);
        packed.restore(&mut parts);
        assert_eq!(parts.uri, "/only?q");
        assert!(parts.headers.is_empty());
    }
}
