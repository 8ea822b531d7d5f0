use anyhow::Result;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum Which {
    /// Workload slowdown with and without the agent (page faults, fork/exit).
    Overhead,
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Overhead => anyhow::bail!("not yet"),
    }
}
