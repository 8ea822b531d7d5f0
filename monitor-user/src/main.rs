use std::time::Duration;

use clap::Parser as _;
use monitor_user::{
    agent,
    cli::{Cli, Command},
};

/// Blocking work still running at exit (a profile being symbolized) gets this long; the exit
/// must stay inside a supervisor's grace period whatever a client asked for.
const BLOCKING_WORK_AT_EXIT: Duration = Duration::from_secs(2);

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leakscope: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => agent::run(*args).await,
            Command::Investigate(args) => {
                monitor_user::investigate::command::run(args.into()).await
            }
            Command::Report(args) => Ok(monitor_user::report::run(args.into()).await?),
            Command::Top(args) => monitor_user::top::run(args).await,
            Command::BenchFloor => monitor_user::floor::run().await,
        }
    });
    runtime.shutdown_timeout(BLOCKING_WORK_AT_EXIT);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leakscope: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
