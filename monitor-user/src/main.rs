use clap::Parser as _;
use monitor_user::{
    agent,
    cli::{Cli, Command},
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => agent::run(*args).await,
        Command::Investigate(args) => monitor_user::investigate::command::run(args).await,
        Command::BenchFloor => monitor_user::floor::run().await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leakscope: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
