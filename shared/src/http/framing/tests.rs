use super::*;

fn verdicts(chunks: &[&[u8]]) -> (Vec<Verdict>, bool) {
    let mut t = Tracker::new(64 * 1024, 100);
    let mut out = Vec::new();
    for c in chunks {
        t.feed(c, &mut |v| out.push(v));
    }
    (out, t.is_passthrough())
}

/// Feeds `raw` one byte at a time and all at once; both must agree.
fn both_ways(raw: &[u8]) -> (Vec<Verdict>, bool) {
    let whole = verdicts(&[raw]);
    let bytes: Vec<&[u8]> = raw.chunks(1).collect();
    assert_eq!(verdicts(&bytes), whole, "byte-at-a-time differs");
    whole
}

use Verdict::{Ambiguous, BadChunk, Clean, DuplicateLength, UnsupportedCoding};

#[test]
fn keep_alive_requests_each_get_a_verdict() {
    let raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\
        POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
        POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
        5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n\
        GET /c HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_eq!(both_ways(raw), (vec![Clean; 4], false));
}

#[test]
fn cl_and_te_in_either_order_are_ambiguous_and_stop_inspection() {
    for raw in [
        &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(both_ways(raw), (vec![Ambiguous], true));
    }
}

#[test]
fn smuggling_hidden_in_a_body_is_not_a_head() {
    // The second "request" is the first one's body, as hyper frames it.
    let raw = b"POST / HTTP/1.1\r\nContent-Length: 66\r\n\r\n\
        POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    let body_len =
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".len();
    assert_eq!(body_len, 66);
    assert_eq!(both_ways(raw), (vec![Clean], false));
}

#[test]
fn second_request_with_cl_and_te_is_caught() {
    let raw = b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(both_ways(raw), (vec![Clean, Ambiguous], true));
}

#[test]
fn shapes_hyper_rejects_or_tunnels_stop_inspection() {
    for raw in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        b"G@T / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        assert!(both_ways(raw).1, "{}", String::from_utf8_lossy(raw));
    }
    // Upgrades and CONNECT get their verdict, then the bytes are not HTTP any more.
    let up = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello";
    assert_eq!(both_ways(up), (vec![Clean], true));
}

#[test]
fn malformed_chunks_are_reported_after_the_head() {
    for raw in [
        &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
    ] {
        assert_eq!(both_ways(raw), (vec![Clean, BadChunk], true));
    }
    // The queue amends the pending head's verdict; a taken verdict is not touched.
    let v = Verdicts::default();
    v.push(Clean);
    v.push(BadChunk);
    assert_eq!(v.next(&HeaderMap::new()), BadChunk);
    v.push(BadChunk);
    assert_eq!(v.next(&HeaderMap::new()), Clean);
}

#[test]
fn oversized_heads_and_chunk_lines_stop_inspection_with_bounded_memory() {
    let mut t = Tracker::new(1024, 100);
    let mut n = 0;
    t.feed(b"GET / HTTP/1.1\r\nX: ", &mut |_| n += 1);
    t.feed(&[b'a'; 2048], &mut |_| n += 1);
    assert!(t.is_passthrough());
    let mut t = Tracker::new(1024, 100);
    t.feed(
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        &mut |_| n += 1,
    );
    t.feed(&[b'1'; MAX_LINE + 1], &mut |_| n += 1);
    assert!(t.is_passthrough());
    // The head's verdict, then the over-long chunk line's.
    assert_eq!(n, 2);
}

#[test]
fn transfer_codings_other_than_one_chunked_are_unsupported() {
    let head = |te: &str| format!("POST / HTTP/1.1\r\nHost: h\r\n{te}\r\n0\r\n\r\n");
    for te in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
    ] {
        assert_eq!(
            both_ways(head(te).as_bytes()),
            (vec![UnsupportedCoding], true),
            "{te}"
        );
    }
    // Case and surrounding blanks do not matter (Go compares case-insensitively).
    assert_eq!(
        both_ways(head("Transfer-Encoding:  Chunked \r\n").as_bytes()),
        (vec![Clean], false)
    );
    // HTTP/1.0 is left to hyper's framing.
    let old = b"POST / HTTP/1.0\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(both_ways(old).0, vec![Clean]);
}

#[test]
fn repeated_content_lengths_are_refused_even_when_identical() {
    for cl in [
        "Content-Length: 3\r\nContent-Length: 3\r\n",
        "Content-Length: 3, 3\r\n",
    ] {
        let raw = format!("POST / HTTP/1.1\r\n{cl}\r\nabc");
        assert_eq!(
            both_ways(raw.as_bytes()),
            (vec![DuplicateLength], true),
            "{cl}"
        );
    }
}

#[test]
fn a_64_kib_chunk_extension_is_a_bad_chunk() {
    let mut raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;e=".to_vec();
    raw.extend(std::iter::repeat_n(b'x', 64 * 1024));
    raw.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
    let (v, pass) = both_ways(&raw);
    assert_eq!((&v[..], pass), (&[Clean, BadChunk][..], true));
    // Verdicts queue: the head's Clean was amended to BadChunk before the service took it.
    let q = Verdicts::default();
    for v in v {
        q.push(v);
    }
    assert_eq!(q.next(&HeaderMap::new()), BadChunk);
}

#[test]
fn thousands_of_pipelined_heads_in_one_read() {
    let raw = b"GET / HTTP/1.1\r\n\r\n".repeat(5000);
    let (v, passthrough) = verdicts(&[&raw]);
    assert_eq!((v.len(), passthrough), (5000, false));
}

proptest::proptest! {
    /// Arbitrary input never panics, and the buffer stays bounded.
    #[test]
    fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(
        proptest::collection::vec(proptest::num::u8::ANY, 0..200), 0..20)) {
        let mut t = Tracker::new(1024, 10);
        for c in &chunks {
            t.feed(c, &mut |_| {});
            proptest::prop_assert!(t.buf.len() <= 1024 + 200 + MAX_LINE);
        }
    }
}
