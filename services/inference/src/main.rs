//! quire-inference: queued blocks in, engine results out. Serves the engines' breakers
//! at `GET /health/engines` and `POST /health/engines/{name}/reset`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::{Parser, ValueEnum};
use quire_engines::{EngineKind, Engines, EnginesConfig};
use quire_kafka::stages::inference::Inference;
use quire_core::StageName;
use quire_kafka::{KafkaArgs, StageContext};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, ValueEnum)]
enum BuiltIn {
    /// Offline language identification (lingua).
    LanguageId,
    /// Labels everything `noop`: for benchmarks only.
    Noop,
}

#[derive(Parser)]
#[command(version, about = "Runs queued blocks through model engines")]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Engines and fallback chains (YAML, see engines.example.yaml). Without it, the
    /// built-in engine `--engine` serves the language-id task alone.
    #[arg(long, env = "QUIRE_ENGINES_CONFIG")]
    engines_config: Option<String>,
    /// Built-in engine to run when there is no engines config.
    #[arg(long, env = "QUIRE_ENGINE", value_enum, default_value = "language-id")]
    engine: BuiltIn,
    /// Timeout of the built-in engine when there is no engines config.
    #[arg(long, env = "QUIRE_ENGINE_TIMEOUT_MS", default_value_t = 10_000)]
    engine_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quire_kafka::telemetry::init_logging();
    let cli = Cli::parse();
    let config = match &cli.engines_config {
        Some(path) => EnginesConfig::load(path)?,
        None => match cli.engine {
            BuiltIn::LanguageId => EnginesConfig::single("lingua", EngineKind::LanguageId, cli.engine_timeout_ms),
            BuiltIn::Noop => EnginesConfig::single("noop", EngineKind::Noop, cli.engine_timeout_ms),
        },
    };
    let engines = Arc::new(tokio::task::spawn_blocking(move || Engines::build(&config)).await??);
    tracing::info!(engines = ?engines.names(), "engines loaded");
    // Breaker gauges follow time (open → half-open) even when no block calls an engine.
    let shutdown = quire_kafka::pipeline::service::shutdown_on_signals();
    let (refreshed, stop) = (engines.clone(), shutdown.clone());
    let refreshing = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => refreshed.health(),
            };
        }
    });
    let context = StageContext::new(StageName::Inference, &cli.kafka)?;
    let stage = Inference::new(context, engines.clone());
    let ended = quire_kafka::pipeline::service::run_stage_with_routes(stage, cli.kafka, routes(engines), shutdown.clone()).await;
    shutdown.cancel();
    let _ = refreshing.await;
    ended
}

fn routes(engines: Arc<Engines>) -> Router {
    Router::new()
        .route("/health/engines", get(|State(engines): State<Arc<Engines>>| async move { Json(engines.health()) }))
        .route(
            "/health/engines/{name}/reset",
            post(|State(engines): State<Arc<Engines>>, Path(name): Path<String>| async move {
                if engines.reset(&name) {
                    (StatusCode::OK, format!("breaker of {name} closed\n"))
                } else {
                    (StatusCode::NOT_FOUND, format!("no engine {name}\n"))
                }
            }),
        )
        .with_state(engines)
}
