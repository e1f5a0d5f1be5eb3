//! The `activator` command line: the Knative activator by default, plus subcommands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Knative's activator in Rust. Without a subcommand it runs as the activator (`--source`).
#[derive(Debug, Parser)]
#[command(name = "activator", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Activator settings (used when no subcommand is given).
    #[command(flatten)]
    pub serve: crate::config::ServeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay a trace against an autoscaler configuration (what-if simulator).
    Simulate(crate::simulate::SimulateArgs),
    /// Run Knative Service YAMLs as local processes, scaled by the embedded autoscaler.
    Local(crate::local::LocalArgs),
}

/// Runs the parsed command line and maps the outcome to an exit code.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Some(Command::Simulate(args)) => crate::simulate::main(args),
        Some(Command::Local(args)) => crate::local::main(args),
        None => crate::config::main(cli.serve),
    }
}
