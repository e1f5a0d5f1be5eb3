//! System-internal TLS on `QUEUE_SERVING_TLS_PORT`, against the real binary and curl.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

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
