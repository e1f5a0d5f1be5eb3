//! W3C trace-context propagation (extracting B3 too). We do not export spans by default; we keep
//! the trace id flowing so the user's own spans join the caller's trace, and log it.

use http::HeaderMap;

use crate::http::headers::{B3, TRACEPARENT, X_B3_SAMPLED, X_B3_SPAN_ID, X_B3_TRACE_ID, first};

/// A parsed trace context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 16-byte trace id.
    pub trace_id: [u8; 16],
    /// 8-byte parent span id.
    pub span_id: [u8; 8],
    /// Sampled flag.
    pub sampled: bool,
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl TraceContext {
    /// Parses `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); falls back to B3 (single `b3`
    /// header or `X-B3-*`), padding 64-bit B3 trace ids to 128 bits as the B3 spec says.
    pub fn extract(headers: &HeaderMap) -> Option<Self> {
        if let Some(tp) = first(headers, &TRACEPARENT) {
            let mut it = tp.split('-');
            let (v, t, s, f) = (it.next()?, it.next()?, it.next()?, it.next()?);
            if v.len() == 2 && v != "ff" {
                let trace_id = hex::<16>(t)?;
                let span_id = hex::<8>(s)?;
                let flags = hex::<1>(f)?[0];
                if trace_id != [0; 16] && span_id != [0; 8] {
                    return Some(Self {
                        trace_id,
                        span_id,
                        sampled: flags & 1 == 1,
                    });
                }
            }
            return None;
        }
        let (t, s, sampled) = if let Some(b3) = first(headers, &B3) {
            let mut it = b3.split('-');
            let t = it.next()?;
            let s = it.next()?;
            let sampled = it.next().is_some_and(|f| f == "1" || f == "d");
            (t, s, sampled)
        } else {
            let t = first(headers, &X_B3_TRACE_ID)?;
            let s = first(headers, &X_B3_SPAN_ID)?;
            (t, s, first(headers, &X_B3_SAMPLED) == Some("1"))
        };
        let trace_id = match t.len() {
            32 => hex::<16>(t)?,
            16 => {
                let short = hex::<8>(t)?;
                let mut id = [0u8; 16];
                id[8..].copy_from_slice(&short);
                id
            }
            _ => return None,
        };
        Some(Self {
            trace_id,
            span_id: hex::<8>(s)?,
            sampled,
        })
    }

    /// The trace id as 32 lowercase hex characters.
    pub fn trace_id_hex(&self) -> String {
        self.trace_id.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Renders a `traceparent` value with `span_id` as the parent.
    pub fn traceparent(&self) -> String {
        let span: String = self.span_id.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id_hex(),
            span,
            u8::from(self.sampled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn parses_w3c_and_b3() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let tc = TraceContext::extract(&h).unwrap();
        assert!(tc.sampled);
        assert_eq!(
            tc.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let mut h = HeaderMap::new();
        h.insert(
            B3,
            HeaderValue::from_static("a3ce929d0e0e4736-00f067aa0ba902b7-1"),
        );
        let tc = TraceContext::extract(&h).unwrap();
        assert_eq!(tc.trace_id_hex(), "0000000000000000a3ce929d0e0e4736");
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        assert!(TraceContext::extract(&h).is_none());
    }
}
