//! Thin entry point; everything lives in the library.

fn main() {
    eprintln!("activator: not implemented yet");
    std::process::exit(1);
}
