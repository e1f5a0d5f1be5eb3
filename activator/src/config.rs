//! Activator configuration (placeholder until the activator lands).

use std::process::ExitCode;

/// Activator settings.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Runs the activator.
pub fn main(_args: ServeArgs) -> ExitCode {
    eprintln!("activator: not implemented yet");
    ExitCode::FAILURE
}
