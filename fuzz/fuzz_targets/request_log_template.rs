//! Request-log templates (`logging.request-log-template`, issue 14): any input either fails to
//! parse or renders (possibly to Knative's fallback line) without panicking, within the
//! engine's step and output budgets.
#![no_main]

use shared::telemetry::reqlog::{Entry, Revision, Template};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = Template::parse(text) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("x-request-id", http::HeaderValue::from_static("r1"));
    headers.append("accept", http::HeaderValue::from_static("*/*"));
    let e = Entry {
        method: "GET".into(),
        request_uri: "/p%20a?q=1&q=2".into(),
        proto: "HTTP/1.1",
        host: "h".into(),
        code: 200,
        latency: 0.001,
        headers: Some(headers),
        ..Entry::default()
    };
    let line = t.render(&e, &Revision::default());
    assert!(line.len() <= (1 << 20) + 4096);
});
