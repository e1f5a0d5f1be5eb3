//! The sample apps as processes: `helloworld` answers `Hello <TARGET>!`, `autoscale` sleeps and
//! counts primes, both on `$PORT`. (This test also makes `cargo test --workspace` build the two
//! binaries, which `activator`'s local-mode tests run as pods.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start(bin: &str, port: u16, env: &[(&str, &str)]) -> Killed {
    let child = Command::new(bin)
        .env_clear()
        .env("PORT", port.to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn app");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{bin} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Killed(child)
}

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn helloworld_greets_target() {
    let port = free_port();
    let _app = start(
        env!("CARGO_BIN_EXE_helloworld"),
        port,
        &[("TARGET", "Knative")],
    );
    let resp = get(port, "/");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with("Hello Knative!\n"), "{resp}");
}

#[test]
fn autoscale_sleeps_and_counts_primes() {
    let port = free_port();
    let _app = start(env!("CARGO_BIN_EXE_autoscale"), port, &[]);
    let t = Instant::now();
    let resp = get(port, "/?sleep=50&prime=100&bloat=1");
    assert!(t.elapsed() >= Duration::from_millis(50), "did not sleep");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("Slept for 50 milliseconds."), "{resp}");
    assert!(
        resp.contains("The number of primes below 100 is 25."),
        "{resp}"
    );
    assert!(resp.contains("Allocated 1 Mb of memory."), "{resp}");
}
