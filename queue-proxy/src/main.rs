//! Thin entry point; everything lives in the library.

fn main() {
    eprintln!("queue-proxy: not implemented yet");
    std::process::exit(1);
}
