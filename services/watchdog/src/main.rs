//! quire-watchdog: watches the pipeline's consumer groups. Every interval it samples each
//! group's lag (offsets and seconds) and Burrow-style status, exports them under
//! kafka-lag-exporter's names at `/metrics`, serves the last report at `/watchdog`, and
//! logs every status change.

use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use quire_kafka::config::TopicNames;
use quire_kafka::watchdog::{GroupLag, LagWatch};
use quire_kafka::KafkaArgs;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Parser)]
#[command(version, about = "Watches the pipeline's consumer lag and health")]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// How often to sample the groups.
    #[arg(long, env = "QUIRE_WATCHDOG_INTERVAL_MS", default_value_t = 5_000)]
    interval_ms: u64,
    /// Span of the sliding window statuses are judged over.
    #[arg(long, env = "QUIRE_WATCHDOG_WINDOW_MS", default_value_t = 60_000)]
    window_ms: u64,
    /// `cluster_name` label of the lag metrics.
    #[arg(long, env = "QUIRE_CLUSTER_NAME", default_value = "quire")]
    cluster_name: String,
}

/// Every stage's group and the topics it consumes.
fn pipeline_groups(args: &KafkaArgs) -> Vec<(String, Vec<String>)> {
    let names = TopicNames::new(&args.topic_prefix);
    let queued = names.queued();
    let mut inference = vec![queued.clone()];
    inference.extend(TopicNames::retries(&queued, &args.retry_schedule()));
    let dead_letters = [names.ingest(), names.queued(), names.results()].iter().map(|t| TopicNames::dead_letter(t)).collect();
    vec![
        (names.group("claimer"), vec![names.ingest()]),
        (names.group("inference"), inference),
        (names.group("validator"), vec![names.results()]),
        (names.group("quarantine"), dead_letters),
    ]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quire_kafka::telemetry::init_logging();
    let cli = Cli::parse();
    cli.kafka.validate().map_err(anyhow::Error::msg)?;
    let last: Arc<Mutex<Vec<GroupLag>>> = Arc::default();
    let shown = last.clone();
    let routes = Router::new().route("/watchdog", get(move || std::future::ready(Json(shown.lock().expect("report lock").clone()))));
    let readiness = quire_kafka::http::Readiness::default().checking(&cli.kafka)?;
    quire_kafka::http::serve(&cli.kafka.metrics_addr, routes, readiness.clone()).await?;
    let groups = pipeline_groups(&cli.kafka);
    let (kafka, cluster, window) = (cli.kafka.clone(), cli.cluster_name.clone(), Duration::from_millis(cli.window_ms));
    let mut watch = tokio::task::spawn_blocking(move || LagWatch::new(&kafka, &cluster, groups, window)).await??;
    tracing::info!(interval_ms = cli.interval_ms, window_ms = cli.window_ms, "watchdog started");
    let shutdown = quire_kafka::service::shutdown_on_signals();
    let mut statuses: HashMap<String, &'static str> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(cli.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = quire_core::records::now_ms();
        let (returned, polled) = tokio::task::spawn_blocking(move || {
            let polled = watch.poll(now);
            (watch, polled)
        })
        .await?;
        watch = returned;
        match polled {
            Ok(reports) => {
                watch.export(&reports);
                readiness.set(true);
                for report in &reports {
                    let before = statuses.insert(report.group.clone(), report.status);
                    if before != Some(report.status) {
                        tracing::warn!(group = %report.group, from = before.unwrap_or("-"), to = report.status, max_lag = report.max_lag, max_lag_seconds = report.max_lag_seconds, "consumer group status changed");
                    }
                }
                *last.lock().expect("report lock") = reports;
            }
            Err(e) => {
                readiness.set(false);
                tracing::error!(error = %e, "could not sample consumer lag");
            }
        }
    }
    tracing::info!("watchdog stopped");
    Ok(())
}
