//! `GET /status` on the admin listener: the latest status of every revision as JSON.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Per-revision status (`namespace/name` → object), written by the revision loops.
pub type StatusMap = Arc<Mutex<BTreeMap<String, serde_json::Value>>>;

/// Sets one revision's status.
pub fn publish(status: &StatusMap, key: String, value: serde_json::Value) {
    status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, value);
}

/// Serves `GET /status` until the process ends; other paths get 404.
pub async fn serve(listener: TcpListener, status: StatusMap) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let status = Arc::clone(&status);
        tokio::spawn(async move {
            // Read the whole head: closing with unread bytes would reset the connection.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let req = String::from_utf8_lossy(&buf);
            let (code, body) = if req.starts_with("GET /status ") {
                let v = serde_json::to_string(&*status.lock().unwrap_or_else(|e| e.into_inner()))
                    .unwrap_or_default();
                ("200 OK", v)
            } else {
                (
                    "404 Not Found",
                    "{\"error\":\"try GET /status\"}".to_owned(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}
