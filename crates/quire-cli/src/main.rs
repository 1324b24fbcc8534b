//! `quire`: the command line over Quire's library.
//!
//! # Layout
//! One command per file under `cli/`, each with an `Args` struct and a `run` function:
//! `stack` (local broker and registry), `topics` (apply topics.yaml), `publish`,
//! `status`/`verify` (in `report`), `dlq` (list, show, replay the quarantine), `redrive`
//! and `cancel` (operator actions on blocks), `demo` (the whole pipeline on a sample
//! dataset), `bench` (throughput and latency figures on a synthetic one).

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "quire", version, about = "Quire: Kafka-native AI document processing")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start, stop or inspect the local broker and schema registry.
    #[command(subcommand)]
    Stack(cli::stack::StackCommand),
    /// Create the topics declared in topics.yaml and report drift.
    #[command(subcommand)]
    Topics(cli::topics::TopicsCommand),
    /// Publish a dataset (a JSONL file or a folder of text files) to the ingest topic.
    Publish(cli::publish::Args),
    /// Show how far a dataset has got.
    Status(cli::report::StatusArgs),
    /// Check a dataset for lost or duplicated blocks (exit code 1 if any).
    Verify(cli::report::VerifyArgs),
    /// List, show and replay what is in quarantine.
    #[command(subcommand)]
    Dlq(cli::dlq::DlqCommand),
    /// Put stuck or failed blocks back on the queue, through the state machine.
    Redrive(cli::redrive::Args),
    /// Cancel every not-yet-completed block of a dataset.
    Cancel(cli::cancel::Args),
    /// Stack up, all services, a sample multilingual dataset through the pipeline, a summary.
    Demo(cli::demo::Args),
    /// Measure throughput and end-to-end latency on a synthetic dataset (own local stack).
    Bench(cli::bench::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        quire_kafka::telemetry::init_logging();
    }
    let cli = Cli::parse();
    // Spans of what the command writes (publish, replays, re-drives), when configured.
    let _export = quire_kafka::telemetry::otel::init("quire-cli");
    let result = match cli.command {
        Command::Stack(command) => cli::stack::run(command).await,
        Command::Topics(command) => cli::topics::run(command).await,
        Command::Publish(args) => cli::publish::run(args).await,
        Command::Status(args) => cli::report::status(args).await,
        Command::Verify(args) => cli::report::verify(args).await,
        Command::Dlq(command) => cli::dlq::run(command).await,
        Command::Redrive(args) => cli::redrive::run(args).await,
        Command::Cancel(args) => cli::cancel::run(args).await,
        Command::Demo(args) => cli::demo::run(args).await,
        Command::Bench(args) => cli::bench::run(args).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
