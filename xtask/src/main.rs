//! Project automation: `cargo xtask setup | build | run | test | bench`.
//!
//! Everything a fresh machine needs is installed here, so the README's two commands work as
//! they are on a new host and in CI.

mod bench;
mod layers;
mod setup;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install whatever is missing: nightly rust-src, llvm-N-dev, bpf-linker (and test deps).
    Setup {
        /// Also install what the tests need.
        #[arg(long)]
        tests: bool,
    },
    /// Set up, build, and run the agent on this host (arguments after `--` go to `leakscope run`).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test: formatting, lints, unit tests, root integration tests.
    Test {
        /// Extra arguments for the integration test binary (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Check that monitor-user's top-level modules import each other one way (no cycle) and
    /// that only its kernel layer holds the BPF object.
    Layers,
    /// Benchmarks, reported as ratios against a baseline run side by side.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup { tests } => setup::run(tests),
        Command::Run { args } => run(args),
        Command::Test { args } => test(args),
        Command::Bench { which } => bench::run(which),
        Command::Layers => layers::run(),
    }
}

fn run(args: Vec<String>) -> Result<()> {
    setup::run(false)?;
    let bin = util::build_agent(true)?;
    eprintln!(
        "xtask: starting {} — metrics at http://127.0.0.1:9633/metrics, processes at \
         /api/v1/processes, health at /healthz; Ctrl-C stops it",
        bin.display()
    );
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("run").args(args);
    util::exec(cmd)
}

fn test(args: Vec<String>) -> Result<()> {
    setup::run(true)?;
    let root = util::workspace_root();
    util::cargo(&["fmt", "--all", "--check"])?;
    // Cheap, so first: monitor-user's modules import one way, and only its kernel layer holds
    // the BPF object.
    layers::run()?;
    util::cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "monitor-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    util::cargo(&[
        "test",
        "-p",
        "monitor-common",
        "-p",
        "monitor-user",
        "-p",
        "leakscope-api",
        "-p",
        "dev-agent",
        "-p",
        "xtask",
    ])?;

    // deploy/: alert rules (promtool), manifests, dashboard queries.
    let venv_bin = setup::venv_dir().join("bin");
    let path = std::env::join_paths(std::iter::once(venv_bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let mut deploy = std::process::Command::new("bash");
    deploy.arg(root.join("deploy/check.sh")).env("PATH", &path);
    util::check(deploy)?;

    // The Python integration, against real Celery/RQ/Dramatiq and a real redis-server.
    let mut pytest = std::process::Command::new(setup::venv_python());
    pytest
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .current_dir(root.join("integrations/python"))
        .env("PATH", &path);
    util::check(pytest)?;

    // Last: the agent as root against real processes (its summary closes the run).
    let bin = util::build_agent(false)?;
    let mut cmd = util::cargo_cmd(&["test", "-p", "integration-tests", "--"]);
    cmd.args(["--test-threads", "1"]).args(args);
    cmd.env("LEAKSCOPE_BIN", &bin)
        .env("LEAKSCOPE_PYTHON", setup::venv_python())
        .env("PATH", &path)
        .current_dir(&root);
    util::check(cmd)
}
