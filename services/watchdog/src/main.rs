//! quire-watchdog: watches the pipeline. Every interval it samples each consumer group's
//! lag (offsets and seconds) and Burrow-style status, exported under kafka-lag-exporter's
//! names at `/metrics` and served at `/watchdog`, with a log line per status change; and
//! it judges the blocks (`/watchdog/blocks`): one left in a state past its TTL after its
//! stage read it is re-driven, a bounded number of times, then quarantined as stalled;
//! and it follows the instances' heartbeats (`/watchdog/instances`): one silent past its
//! TTL is reported dead with the partitions it held.

use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use quire_core::stall::{StallPolicy, Stalled};
use quire_core::instances::InstanceReport;
use quire_kafka::watch::instances::InstanceWatch;
use quire_kafka::watch::blocks::StallWatch;
use quire_kafka::watch::lag::{GroupLag, LagWatch};
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
    /// How long a block may stay QUEUED (must exceed the longest retry delay).
    #[arg(long, env = "QUIRE_STALL_QUEUED_TTL_MS", default_value_t = 600_000)]
    stall_queued_ttl_ms: u64,
    /// How long a block may stay PROCESSING.
    #[arg(long, env = "QUIRE_STALL_PROCESSING_TTL_MS", default_value_t = 600_000)]
    stall_processing_ttl_ms: u64,
    /// How long a block may stay VALIDATING.
    #[arg(long, env = "QUIRE_STALL_VALIDATING_TTL_MS", default_value_t = 300_000)]
    stall_validating_ttl_ms: u64,
    /// An instance silent this long is dead.
    #[arg(long, env = "QUIRE_INSTANCE_TTL_MS", default_value_t = 20_000)]
    instance_ttl_ms: u64,
    /// Instances gone (dead or stopped) this long are no longer reported.
    #[arg(long, env = "QUIRE_INSTANCE_FORGET_MS", default_value_t = 3_600_000)]
    instance_forget_ms: u64,
    /// Re-drives of a stalled block before it is quarantined.
    #[arg(long, env = "QUIRE_STALL_MAX_REDRIVES", default_value_t = 2)]
    stall_max_redrives: u32,
}

impl Cli {
    fn stall_policy(&self) -> StallPolicy {
        StallPolicy {
            queued: Duration::from_millis(self.stall_queued_ttl_ms),
            processing: Duration::from_millis(self.stall_processing_ttl_ms),
            validating: Duration::from_millis(self.stall_validating_ttl_ms),
            max_redrives: self.stall_max_redrives,
        }
    }
}

/// Reads the blocks' news and judges them against the groups' committed offsets.
async fn judge_blocks(stalls: &mut StallWatch, reports: &[GroupLag]) -> anyhow::Result<Vec<Stalled>> {
    stalls.catch_up(quire_core::records::now_ms()).await?;
    Ok(stalls.check(reports, quire_core::records::now_ms()).await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quire_kafka::telemetry::init_logging();
    let _export = quire_kafka::telemetry::otel::init("quire-watchdog");
    let cli = Cli::parse();
    cli.kafka.validate().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(cli.interval_ms > 0 && cli.window_ms > 0, "interval_ms and window_ms must be above 0");
    let last: Arc<Mutex<Vec<GroupLag>>> = Arc::default();
    let last_stalled: Arc<Mutex<Vec<Stalled>>> = Arc::default();
    let last_instances: Arc<Mutex<Vec<InstanceReport>>> = Arc::default();
    let (shown, shown_stalled, shown_instances) = (last.clone(), last_stalled.clone(), last_instances.clone());
    let routes = Router::new()
        .route("/watchdog", get(move || std::future::ready(Json(shown.lock().expect("report lock").clone()))))
        .route("/watchdog/blocks", get(move || std::future::ready(Json(shown_stalled.lock().expect("report lock").clone()))))
        .route("/watchdog/instances", get(move || std::future::ready(Json(shown_instances.lock().expect("report lock").clone()))));
    let readiness = quire_kafka::io::http::Readiness::default().checking(&cli.kafka)?;
    // Every gauge is set each round: one not set for ten minutes belongs to something gone.
    let idle = Duration::from_millis(cli.interval_ms.saturating_mul(10)).max(Duration::from_secs(600));
    quire_kafka::io::http::serve_forgetting_gauges(&cli.kafka.metrics_addr, routes, readiness.clone(), Some(idle)).await?;
    let groups = quire_kafka::watch::lag::pipeline_groups(&cli.kafka);
    let (kafka, cluster, window) = (cli.kafka.clone(), cli.cluster_name.clone(), Duration::from_millis(cli.window_ms));
    let mut watch = tokio::task::spawn_blocking(move || LagWatch::new(&kafka, &cluster, groups, window)).await??;
    let (kafka, policy) = (cli.kafka.clone(), cli.stall_policy());
    let mut stalls = tokio::task::spawn_blocking(move || StallWatch::new(&kafka, policy)).await??;
    let mut instances = InstanceWatch::new(&cli.kafka, Duration::from_millis(cli.instance_ttl_ms), Duration::from_millis(cli.instance_forget_ms))?;
    tracing::info!(interval_ms = cli.interval_ms, window_ms = cli.window_ms, "watchdog started");
    let shutdown = quire_kafka::pipeline::service::shutdown_on_signals();
    // Blocks are judged on a task of their own, so a long read never delays a lag
    // sample; against the latest poll's offsets, which were read before its own reads.
    let judging = {
        let (lags, shown, shutdown) = (last.clone(), last_stalled.clone(), shutdown.clone());
        let interval = Duration::from_millis(cli.interval_ms);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let reports = lags.lock().expect("report lock").clone();
                if reports.is_empty() {
                    continue;
                }
                match judge_blocks(&mut stalls, &reports).await {
                    Ok(stalled) => *shown.lock().expect("report lock") = stalled,
                    Err(e) => tracing::error!(error = %e, "could not judge the blocks"),
                }
            }
        })
    };
    let mut statuses: HashMap<String, &'static str> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(cli.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let (now, started) = (quire_core::records::now_ms(), std::time::Instant::now());
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
        watch.refresh_last_poll();
        match instances.poll(quire_core::records::now_ms()).await {
            Ok(reports) => *last_instances.lock().expect("report lock") = reports,
            Err(e) => tracing::error!(error = %e, "could not read the heartbeats"),
        }
        if started.elapsed() > Duration::from_millis(cli.interval_ms) {
            tracing::warn!(took_ms = started.elapsed().as_millis() as u64, interval_ms = cli.interval_ms, "a watchdog round took longer than its interval");
        }
    }
    let _ = judging.await;
    tracing::info!("watchdog stopped");
    Ok(())
}
