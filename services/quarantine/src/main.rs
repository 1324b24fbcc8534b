//! quire-quarantine: Records every dead-lettered failure with its reason.

use clap::Parser;
use quire_kafka::pipeline::service::{run_stage, shutdown_on_signals};
use quire_kafka::stages::quarantine::Quarantine;
use quire_core::StageName;
use quire_kafka::{KafkaArgs, StageContext};

#[derive(Parser)]
#[command(version, about = "Records every dead-lettered failure with its reason")]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quire_kafka::telemetry::init_logging();
    let cli = Cli::parse();
    let context = StageContext::ignoring_cancellations(StageName::Quarantine, &cli.kafka)?;
    run_stage(Quarantine::new(context), cli.kafka, shutdown_on_signals()).await
}
