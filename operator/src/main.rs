//! `kitfleet-operator`: parse the configuration, set up logging, run.
#![forbid(unsafe_code)]

use clap::{CommandFactory, Parser, Subcommand};
use kitfleet_operator::config::{Config, RunArgs};

#[derive(Debug, Parser)]
#[command(
    name = "kitfleet-operator",
    version,
    about = "Kitfleet operator: builds NodeImages in Jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controllers (every flag falls back to the environment variable shown in --help).
    Run(RunArgs),
    /// Check the configuration `run` would use (flags, then environment, then defaults), print it and exit.
    CheckConfig(RunArgs),
    /// The CRDs compiled into this binary (the chart's CRD upgrade hook).
    #[command(subcommand)]
    Crds(kitfleet_operator::crds_apply::CrdsCommand),
}

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let (name, sub) = matches.subcommand().expect("a subcommand is required");
    if name == "crds"
        && let Ok(Command::Crds(cmd)) =
            <Command as clap::FromArgMatches>::from_arg_matches(&matches)
    {
        return kitfleet_operator::crds_apply::main(cmd);
    }
    let config = match Config::from_matches(sub) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kitfleet-operator: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if name == "check-config" {
        println!("{config:#?}");
        return std::process::ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let json = std::env::var("KITFLEET_LOG_FORMAT").is_ok_and(|f| f == "json");
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    kitfleet_builder::source::install_crypto_provider();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kitfleet-operator: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(kitfleet_operator::run::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            std::process::ExitCode::from(1)
        }
    }
}
