//! quire-claimer: dataset documents in, queued blocks out.

use clap::Parser;
use quire_kafka::pipeline::service::{run_stage, shutdown_on_signals};
use quire_kafka::stages::claimer::Claimer;
use quire_core::StageName;
use quire_kafka::{KafkaArgs, StageContext};

#[derive(Parser)]
#[command(version, about = "Splits submitted documents into blocks and queues them")]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Largest block, in characters.
    #[arg(long, env = "QUIRE_MAX_BLOCK_CHARS", default_value_t = quire_core::split::DEFAULT_MAX_BLOCK_CHARS)]
    max_block_chars: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quire_kafka::telemetry::init_logging();
    let cli = Cli::parse();
    let context = StageContext::new(StageName::Claimer, &cli.kafka)?;
    run_stage(Claimer::new(context, cli.max_block_chars), cli.kafka, shutdown_on_signals()).await
}
