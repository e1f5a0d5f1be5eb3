//! Thin entry point; everything lives in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    activator::cli::main(activator::cli::Cli::parse())
}
