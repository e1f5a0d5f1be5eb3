//! Helpers shared by the black-box tests of `activator local` (console, reload, images).
#![allow(dead_code)] // not every test binary uses every helper

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The directory of the built binaries, checked to hold the queue-proxy and the example app.
pub fn bin_dir() -> PathBuf {
    let activator = Path::new(env!("CARGO_BIN_EXE_activator"));
    let dir = activator.parent().expect("binary dir").to_path_buf();
    for b in ["queue-proxy", "helloworld"] {
        assert!(
            dir.join(b).is_file(),
            "{b} is not built next to the activator in {}: run `cargo test --workspace` \
             (or `cargo build -p queue-proxy -p examples` first)",
            dir.display()
        );
    }
    dir
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One HTTP/1.1 GET with `Host: host`: status and body.
pub fn get(port: u16, path: &str, host: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}
