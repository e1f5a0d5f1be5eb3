//! Mirrors Knative's `wsserver` test image (test/test_images/wsserver): a WebSocket echo
//! server. Each message comes back with ` <SUFFIX>` appended when `SUFFIX` is set, after
//! `?delay=<seconds>` (taken from the upgrade request). On SIGTERM every open connection gets
//! a normal-closure Close frame (`bye`) and the process exits once they are closed. Listens on
//! `$PORT` (default 8080); a plain HTTP request (a TCP probe, a kubelet probe) is not upgraded.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

// The handshake callback's error type is tungstenite's (an HTTP response), not ours.
#[allow(clippy::result_large_err)]
async fn connection(
    stream: tokio::net::TcpStream,
    suffix: Arc<Option<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut delay = Duration::ZERO;
    let callback = |req: &Request, resp: Response| {
        if let Some(d) = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("delay="))
                .and_then(|v| v.parse::<u64>().ok())
        }) {
            delay = Duration::from_secs(d);
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
        return;
    };
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => {
                eprintln!("wsserver: SIGTERM; sending close");
                let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await;
                // Wait for the peer's Close (or the end of the stream).
                while let Some(Ok(_)) = ws.next().await {}
                return;
            }
        };
        let reply = match msg {
            Some(Ok(Message::Text(t))) => match suffix.as_deref() {
                Some(s) => Message::text(format!("{t} {s}")),
                None => Message::Text(t),
            },
            Some(Ok(Message::Binary(b))) => Message::Binary(b),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
            Some(Ok(_)) => continue,
        };
        tokio::time::sleep(delay).await;
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let suffix = Arc::new(std::env::var("SUFFIX").ok().filter(|s| !s.is_empty()));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            eprintln!("wsserver: listening on port {port}");
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let (stop_tx, stop) = watch::channel(false);
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    r = listener.accept() => {
                        let (stream, _) = r?;
                        conns.spawn(connection(stream, Arc::clone(&suffix), stop.clone()));
                    }
                    _ = term.recv() => break,
                    _ = tokio::signal::ctrl_c() => break,
                }
            }
            let _ = stop_tx.send(true);
            while conns.join_next().await.is_some() {}
            Ok(())
        })
}
