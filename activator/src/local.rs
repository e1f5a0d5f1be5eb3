//! `activator local` (placeholder until local mode lands).

use std::process::ExitCode;

/// Local-mode arguments.
#[derive(Debug, clap::Args)]
pub struct LocalArgs {}

/// Runs local mode.
pub fn main(_args: LocalArgs) -> ExitCode {
    eprintln!("activator local: not implemented yet");
    ExitCode::FAILURE
}
