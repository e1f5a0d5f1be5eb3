//! Request-log rendering (issue 14): Knative's stock template and a Go template with a header
//! lookup, `printf` and `if`, through our `text/template` engine, against a naive baseline that
//! formats the same stock line with `format!` (what a hard-coded line would cost).

use criterion::{Criterion, criterion_group, criterion_main};
use shared::telemetry::reqlog::{DEFAULT_TEMPLATE, Entry, Revision, Template, go_float};

fn entry() -> (Entry, Revision) {
    let mut h = http::HeaderMap::new();
    h.insert("x-request-id", http::HeaderValue::from_static("0f1e2d3c"));
    h.insert("user-agent", http::HeaderValue::from_static("hey/0.0.1"));
    let e = Entry {
        method: "GET".into(),
        request_uri: "/api/items?page=2".into(),
        proto: "HTTP/1.1",
        host: "hello.default.example.com".into(),
        remote_addr: "10.1.2.3:51234".into(),
        content_length: 0,
        user_agent: "hey/0.0.1".into(),
        referer: String::new(),
        code: 200,
        size: 1024,
        latency: 0.001234,
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        tls: None,
        headers: Some(h),
    };
    let r = Revision {
        pod_ip: "10.0.0.2".into(),
        ..Revision::default()
    };
    (e, r)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_log");
    let (e, r) = entry();
    let stock = Template::parse(DEFAULT_TEMPLATE).expect("the stock template parses");
    g.bench_function("stock_template", |b| {
        b.iter(|| std::hint::black_box(stock.render(&e, &r)))
    });
    let custom = Template::parse(
        r#"{{.Request.Method}} {{.Request.URL.Path}} {{.Request.Header.Get "X-Request-Id"}} {{printf "code=%d" .Response.Code}}{{if ge .Response.Code 500}} ERROR{{end}} {{with .Request.UserAgent}}{{js .}}{{end}}"#,
    )
    .expect("the custom template parses");
    g.bench_function("header_printf_if_template", |b| {
        b.iter(|| std::hint::black_box(custom.render(&e, &r)))
    });
    g.bench_function("naive_format_baseline", |b| {
        b.iter(|| {
            std::hint::black_box(format!(
                "{{\"httpRequest\": {{\"requestMethod\": \"{}\", \"requestUrl\": \"{}\", \"requestSize\": \"{}\", \"status\": {}, \"responseSize\": \"{}\", \"userAgent\": \"{}\", \"remoteIp\": \"{}\", \"serverIp\": \"{}\", \"referer\": \"{}\", \"latency\": \"{}s\", \"protocol\": \"{}\"}}, \"traceId\": \"{}\"}}\n",
                e.method, e.request_uri, e.content_length, e.code, e.size, e.user_agent,
                e.remote_addr, r.pod_ip, e.referer, go_float(e.latency), e.proto, e.trace_id
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
