//! What every stage binary does around its stage: logging, metrics, schema
//! registration, heartbeats, and a shutdown token cancelled by SIGTERM or Ctrl-C.

use crate::pipeline::{self, Stage};
use crate::io::topics::register_all_schemas;
use crate::pipeline::heartbeat::Heartbeats;
use crate::io::http;
use std::sync::Arc;
use std::time::Duration;
use crate::KafkaArgs;
use tokio_util::sync::CancellationToken;

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing the open batch"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: finishing the open batch"),
        }
        cancel.cancel();
    });
    token
}

/// Runs one stage as a service until SIGTERM; an error means the process should exit
/// non-zero (and be restarted).
pub async fn run_stage<S: Stage>(stage: S, args: KafkaArgs) -> anyhow::Result<()> {
    run_stage_with_routes(stage, args, axum::Router::new()).await
}

/// [`run_stage`], with the stage's own HTTP routes next to `/metrics` and `/health`.
pub async fn run_stage_with_routes<S: Stage>(stage: S, args: KafkaArgs, routes: axum::Router) -> anyhow::Result<()> {
    let _export = crate::telemetry::otel::init(&format!("quire-{}", stage.context().stage));
    let readiness = stage.context().readiness.clone().checking(&args)?;
    http::serve(&args.metrics_addr, routes, readiness).await?;
    register_all_schemas(&stage.context().codec, &args).await?;
    let shutdown = shutdown_on_signals();
    let heartbeats = Arc::new(Heartbeats::new(&args, stage.context().stage.as_str(), stage.context().instance.clone())?);
    let ticking = CancellationToken::new();
    let beating = heartbeats.clone().spawn(Duration::from_millis(args.heartbeat_interval_ms), ticking.clone());
    let result = pipeline::run(stage, args, shutdown).await;
    ticking.cancel();
    let _ = beating.await;
    // Only a clean stop says goodbye: an instance that failed is reported dead.
    if result.is_ok() {
        heartbeats.goodbye().await;
    }
    Ok(result?)
}
