use super::*;

fn entry() -> (Entry, Revision) {
    let mut h = http::HeaderMap::new();
    h.insert("x-request-id", "abc-123".parse().unwrap());
    h.insert("user-agent", "curl/8.0 <x>".parse().unwrap());
    h.append("accept", "text/html".parse().unwrap());
    h.append("accept", "*/*".parse().unwrap());
    let e = Entry {
        method: "GET".into(),
        request_uri: "/a%20b/c?q=1&name=J+D&q=2".into(),
        proto: "HTTP/1.1",
        host: "hello.default.example.com".into(),
        remote_addr: "10.0.0.9:4242".into(),
        content_length: 0,
        user_agent: "curl/8.0 <x>".into(),
        referer: String::new(),
        code: 200,
        size: 13,
        latency: 0.25,
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        tls: None,
        headers: Some(h),
    };
    let r = Revision {
        name: "hello-00001".into(),
        namespace: "default".into(),
        service: "hello".into(),
        configuration: "hello".into(),
        pod_name: "hello-00001-deployment-x".into(),
        pod_ip: "10.0.0.2".into(),
    };
    (e, r)
}

fn render(src: &str) -> Result<String, String> {
    let (e, r) = entry();
    let t = Template::parse(src).map_err(|e| format!("parse: {e}"))?;
    let mut out = String::new();
    t.render_into(&mut out, &e, &r)
        .map_err(|e| format!("exec: {e}"))?;
    Ok(out)
}

/// The templates of issue 14 and the functions and actions Knative users write: each renders
/// what Go's `text/template` renders for the same request.
#[test]
fn renders_as_go() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{{.Request.Method}} {{.Request.Header.Get "X-Request-Id"}}"#,
            "GET abc-123\n",
        ),
        ("{{.Request.URL.Path}}", "/a b/c\n"),
        ("{{.Request.URL}}", "/a%20b/c?q=1&name=J+D&q=2\n"),
        (
            "{{.Request.URL.RawQuery}}|{{.Request.URL.Query.Get \"name\"}}",
            "q=1&name=J+D&q=2|J D\n",
        ),
        ("{{.Request.Host}}", "hello.default.example.com\n"),
        ("{{.Request.RequestURI}}", "/a%20b/c?q=1&name=J+D&q=2\n"),
        (r#"{{printf "code=%d" .Response.Code}}"#, "code=200\n"),
        ("{{if eq .Response.Code 200}}ok{{end}}", "ok\n"),
        (
            "{{if eq .Response.Code 500 503}}bad{{else}}fine{{end}}",
            "fine\n",
        ),
        (
            "{{with .Request.UserAgent}}{{js .}}{{end}}",
            "curl/8.0 \\u003Cx\\u003E\n",
        ),
        (
            "{{with .Request.Referer}}r={{.}}{{else}}none{{end}}",
            "none\n",
        ),
        ("{{html .Request.UserAgent}}", "curl/8.0 &lt;x&gt;\n"),
        ("{{.Request.UserAgent | urlquery}}", "curl%2F8.0+%3Cx%3E\n"),
        (
            "{{len .Request.Method}} {{index .Request.Header \"Accept\"}}",
            "3 [text/html */*]\n",
        ),
        ("{{index .Request.Header \"accept\"}}", "[]\n"),
        ("{{index (.Request.Header.Values \"Accept\") 1}}", "*/*\n"),
        (
            "{{and .Request.Method .Revision.Name}} {{or .Request.Referer \"-\"}} {{not true}}",
            "hello-00001 - false\n",
        ),
        (
            "{{if and (ge .Response.Code 200) (lt .Response.Code 300)}}2xx{{end}}",
            "2xx\n",
        ),
        ("{{if gt .Response.Latency 0.1}}slow{{end}}", "slow\n"),
        ("{{ne .Request.Method \"POST\"}} {{le 1 2}}", "true true\n"),
        (
            "{{range $i, $v := .Request.Header.Values \"Accept\"}}{{$i}}={{$v}};{{end}}",
            "0=text/html;1=*/*;\n",
        ),
        (
            "{{range .Request.Header.Values \"Nope\"}}x{{else}}empty{{end}}",
            "empty\n",
        ),
        (
            "{{range $k, $v := .Request.Header}}{{$k}} {{end}}",
            "Accept User-Agent X-Request-Id \n",
        ),
        (
            "{{range 5}}{{if eq . 3}}{{break}}{{end}}{{if eq . 1}}{{continue}}{{end}}{{.}}{{end}}",
            "02\n",
        ),
        (
            "{{$m := .Request.Method}}{{$m = printf \"%s!\" $m}}{{$m}}",
            "GET!\n",
        ),
        (
            "{{.Response.Latency}} {{.Response.Size}} {{.TraceID}}",
            "0.25 13 0af7651916cd43dd8448eb211c80319c\n",
        ),
        (
            "{{.Revision.Name}}/{{.Revision.Namespace}}/{{.Revision.PodIP}}",
            "hello-00001/default/10.0.0.2\n",
        ),
        ("{{print 1 2 \"a\" 3}}|{{println \"x\" 1}}", "1 2a3|x 1\n\n"),
        (
            "{{.Request.TLS}} {{if .Request.TLS}}tls{{else}}plain{{end}}",
            "<nil> plain\n",
        ),
        (
            "{{.Request.Proto}} {{.Request.ProtoMajor}}.{{.Request.ProtoMinor}} {{.Request.ProtoAtLeast 1 1}}",
            "HTTP/1.1 1.1 true\n",
        ),
        (
            "{{- /* a comment */ -}}  {{ .Request.Method -}}  \n  !",
            "GET!\n",
        ),
        (
            "{{define \"m\"}}[{{.}}]{{end}}{{template \"m\" .Request.Method}}",
            "[GET]\n",
        ),
        ("{{block \"b\" .Response.Code}}<{{.}}>{{end}}", "<200>\n"),
        (
            "{{`raw \\n`}} {{\"q\\t\\\"\"}} {{'a'}} {{0x1F}} {{1e3}} {{-2}}",
            "raw \\n q\t\" 97 31 1000 -2\n",
        ),
        (
            "{{slice .Request.Method 1}} {{slice .Request.Method 0 2}}",
            "ET GE\n",
        ),
        (
            "{{printf \"%-6s|%5.2f|%q|%v\" .Request.Method .Response.Latency .Request.Host .Response.Code}}",
            "GET   | 0.25|\"hello.default.example.com\"|200\n",
        ),
        (
            "{{.Request.ContentLength}} {{.Request.RemoteAddr}}",
            "0 10.0.0.9:4242\n",
        ),
        ("{{.Request.Header.Get \"x-request-id\"}}", "abc-123\n"),
        ("{{.Request.Method | printf \"%s-%s\" \"m\"}}", "m-GET\n"),
        (
            "{{$}}",
            "{{GET /a%20b/c?q=1&name=J+D&q=2 HTTP/1.1 1 1 map[Accept:[text/html */*] User-Agent:[curl/8.0 <x>] X-Request-Id:[abc-123]] 0 hello.default.example.com 10.0.0.9:4242 /a%20b/c?q=1&name=J+D&q=2} {200 13 0.25} {hello-00001 default hello hello hello-00001-deployment-x 10.0.0.2} 0af7651916cd43dd8448eb211c80319c}\n",
        ),
    ];
    for (src, want) in cases {
        assert_eq!(render(src).as_deref(), Ok(*want), "template {src:?}");
    }
}

/// What Go's parser rejects is rejected at start-up (upstream: the queue-proxy logs the error
/// and serves without request logs).
#[test]
fn rejects_what_go_rejects() {
    for src in [
        "{{.Request.Method",
        "{{if .Request.Method}}x",
        "{{end}}",
        "{{else}}",
        "{{nosuchfunc .Request.Method}}",
        "{{$undefined}}",
        "{{}}",
        "{{nil}}",
        "{{break}}",
        "{{\"unterminated}}",
        "{{.Request.Method | \"const\"}}",
        "{{/* unclosed }}",
        "{{1.2.3}}",
        "{{$x = 1}}",
        "{{(.Request.Method}}",
        "{{if}}{{end}}",
    ] {
        assert!(Template::parse(src).is_err(), "{src:?} should not parse");
    }
    let deep = format!("{}x{}", "{{if true}}".repeat(150), "{{end}}".repeat(150));
    assert!(Template::parse(&deep).is_err());
    let parens = format!("{{{{{}1{}}}}}", "(".repeat(150), ")".repeat(150));
    assert!(Template::parse(&parens).is_err());
    // As deep as the parser allows, inside a self-calling template: fails, does not overflow.
    let nested = format!("{}x{}", "{{if true}}".repeat(95), "{{end}}".repeat(95));
    let t = Template::parse(&format!(
        "{{{{define \"a\"}}}}{nested}{{{{template \"a\"}}}}{{{{end}}}}{{{{template \"a\"}}}}"
    ))
    .unwrap();
    let (e, r) = entry();
    assert!(t.render(&e, &r).starts_with("Invalid request log template"));
}

/// What Go's `Execute` fails on gives Knative's fallback line, not a panic and not an exit.
#[test]
fn exec_errors_give_the_fallback_line() {
    for src in [
        "{{.Request.Body}}",
        "{{.Nope}}",
        "{{lt .Response.Latency 1}}",
        "{{eq .Response.Code \"200\"}}",
        "{{index .Request.Header.Values 9}}",
        "{{.Request.TLS.Version}}",
        "{{template \"missing\"}}",
        "{{range .Response.Code}}{{end}}{{range true}}{{end}}",
        "{{call .Request.Method}}",
        "{{.Request.Method 1}}",
        "{{range 100000000}}{{end}}",
        "{{define \"a\"}}{{template \"a\" .}}{{end}}{{template \"a\" .}}",
        "{{range 1000}}{{range 1000}}{{range 1000}}{{end}}{{end}}{{end}}",
    ] {
        assert!(render(src).unwrap_err().starts_with("exec"), "{src:?}");
        let (e, r) = entry();
        assert_eq!(
            Template::parse(src).unwrap().render(&e, &r),
            "Invalid request log template: method: GET, response code: 200, latency: 0.25, url: /a%20b/c?q=1&name=J+D&q=2\n",
        );
    }
}

#[test]
fn headers_are_kept_only_when_read() {
    for (src, needs) in [
        (crate::telemetry::reqlog::DEFAULT_TEMPLATE, false),
        ("{{.Request.Header.Get \"X\"}}", true),
        ("{{with .Request}}{{.Header}}{{end}}", true),
        ("{{$}}", true),
        ("{{.Request.UserAgent}}", false),
    ] {
        assert_eq!(
            Template::parse(src).unwrap().needs_headers(),
            needs,
            "{src:?}"
        );
    }
}

#[test]
fn tls_fields() {
    let (mut e, r) = entry();
    e.tls = Some(crate::telemetry::reqlog::TlsState {
        version: 0x0304,
        cipher_suite: 0x1301,
        alpn: "h2".into(),
        server_name: "x".into(),
    });
    let t = Template::parse(
        "{{.Request.TLS.Version}} {{.Request.TLS.NegotiatedProtocol}} {{.Request.TLS}}",
    )
    .unwrap();
    assert_eq!(t.render(&e, &r), "772 h2 {772 true false 4865 h2 true x}\n");
}
