//! The watchdog: consumer-group lag in offsets and seconds (`lag`), blocks standing
//! too long in one state (`blocks`), instances silent past their TTL (`instances`), and
//! [`run`], which samples all three every interval and serves what it found.
//!
//! Every interval it samples each consumer group's lag and Burrow-style status,
//! exported under kafka-lag-exporter's names at `/metrics` and served at `/watchdog`,
//! with a log line per status change; judges the blocks (`/watchdog/blocks`): one left
//! in a state past its TTL after its stage read it is re-driven, a bounded number of
//! times, then quarantined as stalled; and follows the instances' heartbeats
//! (`/watchdog/instances`): one silent past its TTL is reported dead with the
//! partitions it held.

pub mod blocks;
pub mod instances;
pub mod lag;

use crate::{Error, KafkaArgs, Result};
use axum::routing::get;
use axum::{Json, Router};
use blocks::StallWatch;
use instances::InstanceWatch;
use lag::{GroupLag, LagWatch};
use quire_core::instances::InstanceReport;
use quire_core::records::now_ms;
use quire_core::stall::{StallPolicy, Stalled};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The watchdog's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchdogConfig {
    /// How often to sample the groups.
    #[arg(long, env = "QUIRE_WATCHDOG_INTERVAL_MS", default_value_t = 5_000)]
    pub interval_ms: u64,
    /// Span of the sliding window statuses are judged over.
    #[arg(long, env = "QUIRE_WATCHDOG_WINDOW_MS", default_value_t = 60_000)]
    pub window_ms: u64,
    /// `cluster_name` label of the lag metrics.
    #[arg(long, env = "QUIRE_CLUSTER_NAME", default_value = "quire")]
    pub cluster_name: String,
    /// How long a block may stay QUEUED (must exceed the longest retry delay).
    #[arg(long, env = "QUIRE_STALL_QUEUED_TTL_MS", default_value_t = 600_000)]
    pub stall_queued_ttl_ms: u64,
    /// How long a block may stay PROCESSING.
    #[arg(long, env = "QUIRE_STALL_PROCESSING_TTL_MS", default_value_t = 600_000)]
    pub stall_processing_ttl_ms: u64,
    /// How long a block may stay VALIDATING.
    #[arg(long, env = "QUIRE_STALL_VALIDATING_TTL_MS", default_value_t = 300_000)]
    pub stall_validating_ttl_ms: u64,
    /// An instance silent this long is dead.
    #[arg(long, env = "QUIRE_INSTANCE_TTL_MS", default_value_t = 20_000)]
    pub instance_ttl_ms: u64,
    /// Instances gone (dead or stopped) this long are no longer reported.
    #[arg(long, env = "QUIRE_INSTANCE_FORGET_MS", default_value_t = 3_600_000)]
    pub instance_forget_ms: u64,
    /// Re-drives of a stalled block before it is quarantined.
    #[arg(long, env = "QUIRE_STALL_MAX_REDRIVES", default_value_t = 2)]
    pub stall_max_redrives: u32,
}

impl WatchdogConfig {
    pub fn stall_policy(&self) -> StallPolicy {
        StallPolicy {
            queued: Duration::from_millis(self.stall_queued_ttl_ms),
            processing: Duration::from_millis(self.stall_processing_ttl_ms),
            validating: Duration::from_millis(self.stall_validating_ttl_ms),
            max_redrives: self.stall_max_redrives,
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// What the watchdog found last, as its HTTP routes serve it.
#[derive(Default, Clone)]
struct Findings {
    lag: Arc<Mutex<Vec<GroupLag>>>,
    stalled: Arc<Mutex<Vec<Stalled>>>,
    instances: Arc<Mutex<Vec<InstanceReport>>>,
}

impl Findings {
    fn routes(&self) -> Router {
        let Findings { lag, stalled, instances } = self.clone();
        Router::new()
            .route("/watchdog", get(move || std::future::ready(Json(lag.lock().expect("findings lock").clone()))))
            .route("/watchdog/blocks", get(move || std::future::ready(Json(stalled.lock().expect("findings lock").clone()))))
            .route("/watchdog/instances", get(move || std::future::ready(Json(instances.lock().expect("findings lock").clone()))))
    }
}

fn joined(e: tokio::task::JoinError) -> Error {
    Error::Other(format!("a watchdog task failed: {e}"))
}

/// Runs the watchdog until `shutdown`: serves `/metrics`, `/health/*` and the findings
/// on `kafka.metrics_addr`, samples lag and heartbeats every interval, and judges the
/// blocks on a task of its own. If that task or the endpoint ends, the watchdog ends
/// with it; both stop with it.
pub async fn run(kafka: KafkaArgs, config: WatchdogConfig, shutdown: CancellationToken) -> Result<()> {
    kafka.validate().map_err(Error::Other)?;
    if config.interval_ms == 0 || config.window_ms == 0 {
        return Err(Error::Other("interval_ms and window_ms must be above 0".into()));
    }
    let findings = Findings::default();
    let readiness = crate::io::http::Readiness::default().checking(&kafka)?;
    // Every gauge is set each round: one not set for ten minutes belongs to something gone.
    let idle = Duration::from_millis(config.interval_ms.saturating_mul(10)).max(Duration::from_secs(600));
    let stop = shutdown.child_token();
    let mut endpoint = crate::io::http::serve_forgetting_gauges(&kafka.metrics_addr, findings.routes(), readiness.clone(), Some(idle), stop.clone()).await?;
    let groups = lag::pipeline_groups(&kafka);
    let (args, cluster, window) = (kafka.clone(), config.cluster_name.clone(), Duration::from_millis(config.window_ms));
    let mut watch = tokio::task::spawn_blocking(move || LagWatch::new(&args, &cluster, groups, window)).await.map_err(joined)??;
    let (args, policy) = (kafka.clone(), config.stall_policy());
    let stalls = tokio::task::spawn_blocking(move || StallWatch::new(&args, policy)).await.map_err(joined)??;
    let mut instances = InstanceWatch::new(&kafka, Duration::from_millis(config.instance_ttl_ms), Duration::from_millis(config.instance_forget_ms))?;
    tracing::info!(interval_ms = config.interval_ms, window_ms = config.window_ms, "watchdog started");
    let mut judging = tokio::spawn(judge_blocks(stalls, findings.clone(), config.interval(), stop.clone()));
    let mut statuses: HashMap<String, &'static str> = HashMap::new();
    let mut ticker = tokio::time::interval(config.interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ended = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            ended = &mut judging => break Err(match ended {
                Ok(()) => Error::Other("the block judge stopped".into()),
                Err(e) => joined(e),
            }),
            // Ok: it stopped at shutdown, as everything does.
            stopped = endpoint.stopped() => break stopped,
            _ = ticker.tick() => {}
        }
        let (now, started) = (now_ms(), Instant::now());
        let (returned, polled) = tokio::task::spawn_blocking(move || {
            let polled = watch.poll(now);
            (watch, polled)
        })
        .await
        .map_err(joined)?;
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
                *findings.lag.lock().expect("findings lock") = reports;
            }
            Err(e) => {
                readiness.set(false);
                tracing::error!(error = %e, "could not sample consumer lag");
            }
        }
        watch.refresh_last_poll();
        match instances.poll(now_ms()).await {
            Ok(reports) => *findings.instances.lock().expect("findings lock") = reports,
            Err(e) => tracing::error!(error = %e, "could not read the heartbeats"),
        }
        if started.elapsed() > config.interval() {
            tracing::warn!(took_ms = started.elapsed().as_millis() as u64, interval_ms = config.interval_ms, "a watchdog round took longer than its interval");
        }
    };
    stop.cancel();
    if !judging.is_finished() {
        let _ = judging.await;
    }
    endpoint.join().await;
    tracing::info!("watchdog stopped");
    ended
}

/// Judges the blocks every `interval` against the latest lag sample's committed
/// offsets (read before the judge's own reads), until `stop`. A task of its own, so a
/// long read never delays a lag sample.
async fn judge_blocks(mut stalls: StallWatch, findings: Findings, interval: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let reports = findings.lag.lock().expect("findings lock").clone();
        if reports.is_empty() {
            continue;
        }
        let judged = async {
            stalls.catch_up(now_ms()).await?;
            stalls.check(&reports, now_ms()).await
        };
        match judged.await {
            Ok(stalled) => *findings.stalled.lock().expect("findings lock") = stalled,
            Err(e) => tracing::error!(error = %e, "could not judge the blocks"),
        }
    }
}
