//! quire-validator: Validates engine results and completes their blocks.

use clap::Parser;
use quire_kafka::pipeline::service::{run_stage, shutdown_on_signals};
use quire_kafka::stages::validator::Validator;
use quire_core::StageName;
use quire_kafka::{KafkaArgs, StageContext};

#[derive(Parser)]
#[command(version, about = "Validates engine results and completes their blocks")]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quire_kafka::telemetry::init_logging();
    let cli = Cli::parse();
    let context = StageContext::new(StageName::Validator, &cli.kafka)?;
    run_stage(Validator::new(context), cli.kafka, shutdown_on_signals()).await
}
