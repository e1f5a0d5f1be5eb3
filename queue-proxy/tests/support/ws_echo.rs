//! The websocket echo both test upstreams (`common`, `stub`) serve on `/ws`: takes the upgrade,
//! echoes text and binary messages until close, and returns the `Sec-WebSocket-Accept` value
//! for the caller's `101` response (each upstream has its own body type).

use futures_util::{SinkExt, StreamExt};
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

pub fn spawn_echo(req: &mut Request<Incoming>) -> String {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(up),
                Role::Server,
                None,
            )
            .await;
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() || m.is_binary() {
                    if ws.send(m).await.is_err() {
                        break;
                    }
                } else if m.is_close() {
                    break;
                }
            }
        }
    });
    key
}
