//! System-internal TLS on `QUEUE_SERVING_TLS_PORT`, against the real binary and curl.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::*;

fn cert_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qp-tls-bb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A self-signed certificate for 127.0.0.1 in `dir` (it is its own CA for curl).
fn write_self_signed(dir: &std::path::Path) {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    std::fs::write(dir.join("tls.crt"), c.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), c.key_pair.serialize_pem()).unwrap();
}

/// curl (installed by `.ci/run`), bounded; returns (success, stdout, stderr).
fn curl(args: &[String]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn tls_port_serves_the_same_stack_with_alpn_and_tls13_minimum() {
    let app = start_app().await;
    let dir = cert_dir("serve");
    write_self_signed(&dir);
    let qp = start_qp(
        env(app.addr.port())
            .set("QUEUE_TLS_CERT_DIR", dir.to_str().unwrap())
            // Knative's e2e `TestTLSRequestLog` template.
            .set(
                "OBSERVABILITY_CONFIG",
                r#"{"enableRequestLog":true,"requestLogTemplate":"TLS: {{.Request.TLS}}"}"#,
            ),
    )
    .await;
    let tls = qp
        .tls
        .expect("TLS listener when the certificate files exist");
    let ca = dir.join("tls.crt").to_str().unwrap().to_owned();
    let url = format!("https://{tls}/headers");
    let run = move |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "--cacert".into(),
            ca.clone(),
            "-w".into(),
            "|%{http_version}\n".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        curl(&args)
    };
    let (ok, out, err) = tokio::task::spawn_blocking({
        let (run, url) = (run.clone(), url.clone());
        move || run(&["--http1.1", &url])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(
        out.starts_with("HTTP/1.1 host=") && out.ends_with("|1.1\n"),
        "{out}"
    );
    assert!(out.contains("x-forwarded-for: 127.0.0.1\n"), "{out}");
    // ALPN h2: the app sees h2c, as for any inbound HTTP/2.
    let (ok, out, err) = tokio::task::spawn_blocking({
        let (run, url) = (run.clone(), url.clone());
        move || run(&["--http2", &url])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(
        out.starts_with("HTTP/2.0 host=") && out.ends_with("|2\n"),
        "{out}"
    );
    // Knative's default minimum is TLS 1.3.
    let (ok, _, err) = tokio::task::spawn_blocking({
        let (run, url) = (run.clone(), url.clone());
        move || run(&["--tls-max", "1.2", &url])
    })
    .await
    .unwrap();
    assert!(!ok, "TLS 1.2 must be refused by default: {err}");
    // Probes are answered on the TLS port too, and never reach the app.
    let hits = app.stats.hits.load(std::sync::atomic::Ordering::SeqCst);
    let probe_url = format!("https://{tls}/");
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        run(&[
            "-H",
            "User-Agent: Knative-Activator-Probe",
            "-H",
            "K-Network-Probe: queue",
            &probe_url,
        ])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("queue|"), "{out}");
    assert_eq!(
        app.stats.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits
    );
    // The plain port keeps serving.
    assert_eq!(get(qp.serving, "/", &[]).await.0, http::StatusCode::OK);
    // The request log tells TLS requests (`{…}`, as Go prints a ConnectionState) from plain.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let lines = qp.lines.lock().unwrap().clone();
        let tls_lines = lines.iter().filter(|l| l.starts_with("TLS: {")).count();
        let plain = lines.iter().filter(|l| *l == "TLS: <nil>").count();
        if tls_lines == 2 && plain == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{lines:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(qp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tls12_is_served_when_the_minimum_is_lowered() {
    let app = start_app().await;
    let dir = cert_dir("tls12");
    write_self_signed(&dir);
    let qp = start_qp(
        env(app.addr.port())
            .set("QUEUE_TLS_CERT_DIR", dir.to_str().unwrap())
            .set("QUEUE_PROXY_TLS_MIN_VERSION", "1.2")
            .set(
                "QUEUE_PROXY_TLS_CIPHER_SUITES",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ),
    )
    .await;
    let args = vec![
        "--cacert".to_owned(),
        dir.join("tls.crt").to_str().unwrap().to_owned(),
        "--tls-max".into(),
        "1.2".into(),
        "-w".into(),
        "|%{ssl_verify_result}".into(),
        format!("https://{}/", qp.tls.unwrap()),
    ];
    let (ok, out, err) = tokio::task::spawn_blocking(move || curl(&args))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert_eq!(out, "ok|0");
    drop(qp);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unparsable_certificate_is_fatal() {
    let dir = cert_dir("bad");
    std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
    std::fs::write(dir.join("tls.key"), "not a key").unwrap();
    let out = env(1)
        .set("QUEUE_TLS_CERT_DIR", dir.to_str().unwrap())
        .command()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(all.contains("tls."), "{all}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// GET `/` over TLS, verifying the server against `ca` only: (success, status, stderr).
fn served_cert(addr: std::net::SocketAddr, ca: &std::path::Path) -> (bool, String, String) {
    curl(&[
        "--cacert".into(),
        ca.to_str().unwrap().into(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        format!("https://{addr}/"),
    ])
}

#[tokio::test]
async fn a_rotated_certificate_is_reloaded_and_logged_with_knatives_line() {
    let app = start_app().await;
    let dir = cert_dir("rotate");
    write_self_signed(&dir);
    let old_ca = dir.join("old.crt");
    std::fs::copy(dir.join("tls.crt"), &old_ca).unwrap();
    let qp = start_qp(
        env(app.addr.port())
            .set("QUEUE_TLS_CERT_DIR", dir.to_str().unwrap())
            .set("QUEUE_TLS_RELOAD_SECONDS", "1"),
    )
    .await;
    let tls = qp.tls.unwrap();
    let (ok, code, err) = tokio::task::spawn_blocking({
        let ca = old_ca.clone();
        move || served_cert(tls, &ca)
    })
    .await
    .unwrap();
    assert!(ok && code == "200", "{code} {err}");
    // Rotate: a new self-signed pair; only the new certificate verifies it.
    write_self_signed(&dir);
    let new_ca = dir.join("tls.crt");
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let ca = new_ca.clone();
        let (ok, code, _) = tokio::task::spawn_blocking(move || served_cert(tls, &ca))
            .await
            .unwrap();
        if ok && code == "200" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate never served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (ok, _, _) = tokio::task::spawn_blocking(move || served_cert(tls, &old_ca))
        .await
        .unwrap();
    assert!(!ok, "the old certificate is no longer served");
    // The line is logged right after the swap; give the output reader a moment.
    let reloaded = |v: &serde_json::Value| {
        v["message"] == "Certificate and/or key have changed on disk and were reloaded."
    };
    let deadline = std::time::Instant::now() + DEADLINE;
    while qp.json_lines(reloaded).is_empty() {
        assert!(std::time::Instant::now() < deadline, "no reload log line");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(qp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One raw HTTP/1.1 exchange over TLS (our own client, so the bytes are exactly ours): sends
/// `raw`, returns everything the server wrote before closing (bounded).
async fn tls_raw(addr: std::net::SocketAddr, ca_pem: &[u8], raw: &[u8]) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    // A closed or reset connection ends the answer; both are fine here.
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tls.read_to_end(&mut out),
    )
    .await
    .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The TLS port takes the plain port's path after the handshake: a request with both
/// `Content-Length` and `Transfer-Encoding` gets 400 and an oversized head 431, and neither
/// reaches the app (scenarios 17 and 18 of docs/reliability.md, over TLS).
#[tokio::test]
async fn tls_port_rejects_ambiguous_framing_and_oversized_heads_like_the_plain_port() {
    let app = start_app().await;
    let dir = cert_dir("hostile");
    write_self_signed(&dir);
    let qp = start_qp(env(app.addr.port()).set("QUEUE_TLS_CERT_DIR", dir.to_str().unwrap())).await;
    let tls = qp.tls.expect("TLS listener");
    let ca = std::fs::read(dir.join("tls.crt")).unwrap();
    let hits = app.stats.hits.load(std::sync::atomic::Ordering::SeqCst);

    let out = tls_raw(
        tls,
        &ca,
        b"POST /headers HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    let big = format!(
        "GET /headers HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(shared::http::server::MAX_HEADER_BYTES)
    );
    let out = tls_raw(tls, &ca, big.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    // A plain request on the same port still works, and only it reached the app.
    let out = tls_raw(
        tls,
        &ca,
        b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(
        app.stats.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits + 1
    );
}
