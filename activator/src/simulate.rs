//! `activator simulate` (placeholder until the autoscaler library lands).

use std::process::ExitCode;

/// Simulator arguments.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {}

/// Runs the simulator.
pub fn main(_args: SimulateArgs) -> ExitCode {
    eprintln!("activator simulate: not implemented yet");
    ExitCode::FAILURE
}
