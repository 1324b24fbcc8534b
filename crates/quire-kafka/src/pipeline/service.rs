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

/// Runs one stage as a service until `shutdown` (see [`shutdown_on_signals`]); an error
/// means the process should exit non-zero (and be restarted). Its HTTP endpoint and
/// heartbeats stop with it, and it stops (finishing its batch) if the endpoint fails.
pub async fn run_stage<S: Stage>(stage: S, args: KafkaArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_stage_with_routes(stage, args, axum::Router::new(), shutdown).await
}

/// [`run_stage`], with the stage's own HTTP routes next to `/metrics` and `/health`.
pub async fn run_stage_with_routes<S: Stage>(stage: S, args: KafkaArgs, routes: axum::Router, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _export = crate::telemetry::otel::init(&format!("quire-{}", stage.context().stage));
    let stop = shutdown.child_token();
    let readiness = stage.context().readiness.clone().checking(&args)?;
    let mut endpoint = http::serve(&args.metrics_addr, routes, readiness, stop.clone()).await?;
    register_all_schemas(&stage.context().codec, &args).await?;
    let heartbeats = Arc::new(Heartbeats::new(&args, stage.context().stage.as_str(), stage.context().instance.clone())?);
    let beating = heartbeats.clone().spawn(Duration::from_millis(args.heartbeat_interval_ms), stop.clone());
    let running = pipeline::run(stage, args, stop.clone());
    tokio::pin!(running);
    let (result, endpoint_failure) = tokio::select! {
        ended = &mut running => (ended, None),
        // Stopped cleanly (shutdown), or failed: then stop cleanly rather than run unobserved.
        stopped = endpoint.stopped() => {
            stop.cancel();
            (running.as_mut().await, stopped.err())
        }
    };
    stop.cancel();
    let _ = beating.await;
    endpoint.join().await;
    // Only a clean stop says goodbye: an instance that failed is reported dead.
    if result.is_ok() && endpoint_failure.is_none() {
        heartbeats.goodbye().await;
    }
    result?;
    endpoint_failure.map_or(Ok(()), |e| Err(e.into()))
}
