//! `quire cancel DATASET`: stops a dataset; every block not yet completed ends CANCELED
//! (the rules are `quire_kafka::ops::cancel`'s; this prints). A canceled block never
//! reaches the completed topic.

use quire_kafka::ops::{cancel, Operator};
use quire_kafka::KafkaArgs;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Dataset to cancel.
    pub dataset: String,
    /// Why, for the audit trail.
    #[arg(long)]
    pub reason: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let operator = Operator::new(&args.kafka, "cancel")?;
    let report = cancel::cancel(&operator, &args.dataset, args.reason.as_deref()).await?;
    println!(
        "dataset {} canceled: {} block(s) in ERROR canceled now, {} already completed; blocks in flight are canceled where the stages meet them",
        args.dataset, report.canceled_at_rest, report.already_completed
    );
    Ok(ExitCode::SUCCESS)
}
