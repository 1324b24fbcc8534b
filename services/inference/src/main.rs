//! quire-inference: queued blocks in, engine results out.

use clap::{Parser, ValueEnum};
use quire_core::engine::{Engine, LanguageIdEngine, NoopEngine};
use quire_kafka::stages::inference::Inference;
use quire_kafka::{KafkaArgs, StageContext};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum)]
enum EngineKind {
    /// Offline language identification (lingua).
    LanguageId,
    /// Labels everything `noop`: for benchmarks only.
    Noop,
}

#[derive(Parser)]
#[command(version, about = "Runs queued blocks through a model engine")]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Engine to run.
    #[arg(long, env = "QUIRE_ENGINE", value_enum, default_value = "language-id")]
    engine: EngineKind,
    /// Longest an engine may take on one block before the block fails as transient.
    #[arg(long, env = "QUIRE_ENGINE_TIMEOUT_MS", default_value_t = 10_000)]
    engine_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quire_kafka::telemetry::init_logging();
    let cli = Cli::parse();
    let engine: Arc<dyn Engine> = match cli.engine {
        EngineKind::LanguageId => Arc::new(tokio::task::spawn_blocking(LanguageIdEngine::new).await?),
        EngineKind::Noop => Arc::new(NoopEngine),
    };
    tracing::info!(engine = engine.name(), "engine loaded");
    let context = StageContext::new("inference", &cli.kafka)?;
    let stage = Inference::new(context, engine, Duration::from_millis(cli.engine_timeout_ms));
    quire_kafka::service::run_stage(stage, cli.kafka).await
}
