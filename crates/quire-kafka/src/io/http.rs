//! Every service's HTTP endpoint: `/metrics` for Prometheus, `/health/live`,
//! `/health/ready` (partitions assigned, broker and registry reachable; JSON naming what
//! is not), plus routes a stage adds (inference: `/health/engines`).

use crate::{Codec, KafkaArgs};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use rdkafka::consumer::{BaseConsumer, Consumer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Whether the service is ready: it has work (a stage: partitions assigned; the
/// watchdog: a successful poll) and, when asked, reaches the broker and the registry.
#[derive(Clone, Default)]
pub struct Readiness {
    assigned: Arc<AtomicBool>,
    dependencies: Option<Arc<Dependencies>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").field("assigned", &self.is_assigned()).field("checks_dependencies", &self.dependencies.is_some()).finish()
    }
}

/// What `/health/ready` checks on each request.
struct Dependencies {
    codec: Codec,
    broker: Arc<Mutex<BaseConsumer>>,
    /// A topic every deployment has: asking for its metadata alone proves the broker
    /// answers, without listing the whole cluster.
    topic: String,
}

impl Readiness {
    /// The same flag, and the broker and registry of `args` checked on each request.
    pub fn checking(self, args: &KafkaArgs) -> crate::Result<Self> {
        let broker: BaseConsumer = args.client_config().set("group.id", "quire-readiness").create()?;
        let topic = crate::config::TopicNames::new(&args.topic_prefix).instances();
        let dependencies = Dependencies { codec: Codec::new(&args.schema_registry_url)?, broker: Arc::new(Mutex::new(broker)), topic };
        Ok(Readiness { dependencies: Some(Arc::new(dependencies)), ..self })
    }

    pub fn set(&self, assigned: bool) {
        self.assigned.store(assigned, Ordering::SeqCst);
    }

    pub fn is_assigned(&self) -> bool {
        self.assigned.load(Ordering::SeqCst)
    }

    /// The readiness report: 200 when everything is fine, else 503 naming what is not.
    async fn report(&self) -> (StatusCode, Json<serde_json::Value>) {
        let assigned = self.is_assigned();
        let (mut broker, mut registry) = (Ok(()), Ok(()));
        if let Some(deps) = &self.dependencies {
            registry = deps.codec.ping().await.map_err(|e| e.to_string());
            let (client, topic) = (deps.broker.clone(), deps.topic.clone());
            broker = tokio::task::spawn_blocking(move || {
                client.lock().expect("readiness client").fetch_metadata(Some(&topic), Duration::from_secs(3)).map(|_| ()).map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        }
        let ready = assigned && broker.is_ok() && registry.is_ok();
        let show = |r: &Result<(), String>| r.as_ref().map_or_else(|e| format!("unreachable: {e}"), |_| "ok".to_owned());
        let body = serde_json::json!({"ready": ready, "assigned": assigned, "broker": show(&broker), "registry": show(&registry)});
        (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
    }
}

/// A served endpoint: its task, which ends at shutdown or when serving fails.
#[derive(Debug, Default)]
pub struct Endpoint {
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Endpoint {
    /// Waits until the endpoint stops (never, for an address that serves nothing): Ok at
    /// shutdown, the reason if it failed.
    pub async fn stopped(&mut self) -> crate::Result<()> {
        let Some(task) = &mut self.task else { return std::future::pending().await };
        let ended = task.await;
        self.task = None;
        match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(crate::Error::Other(format!("the HTTP endpoint stopped: {e}"))),
            Err(e) => Err(crate::Error::Other(format!("the HTTP endpoint failed: {e}"))),
        }
    }

    /// Waits for the endpoint to stop once `shutdown` was cancelled.
    pub async fn join(mut self) {
        if self.task.is_some() {
            if let Err(e) = self.stopped().await {
                tracing::warn!(error = %e, "HTTP endpoint");
            }
        }
    }
}

/// Installs the Prometheus recorder and serves the endpoint on `addr` (an empty address
/// serves nothing), with `routes` merged in, until `shutdown`.
pub async fn serve(addr: &str, routes: Router, readiness: Readiness, shutdown: CancellationToken) -> crate::Result<Endpoint> {
    serve_forgetting_gauges(addr, routes, readiness, None, shutdown).await
}

/// [`serve`], dropping gauges not set for `idle` (a service that sets its gauges every
/// round, so that a partition or group gone from the cluster leaves no stale series).
pub async fn serve_forgetting_gauges(
    addr: &str,
    routes: Router,
    readiness: Readiness,
    idle: Option<Duration>,
    shutdown: CancellationToken,
) -> crate::Result<Endpoint> {
    if addr.is_empty() {
        return Ok(Endpoint::default());
    }
    let failed = |message: String| crate::Error::Endpoint { addr: addr.to_owned(), message };
    let socket: SocketAddr = addr.parse().map_err(|e| failed(format!("not an address: {e}")))?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &crate::telemetry::SECONDS_BUCKETS)
        .and_then(|builder| builder.idle_timeout(MetricKindMask::GAUGE, idle).install_recorder())
        .map_err(|e| failed(format!("metrics recorder: {e}")))?;
    let app = router(handle.clone(), readiness).merge(routes);
    let listener = tokio::net::TcpListener::bind(socket).await.map_err(|e| failed(format!("cannot listen: {e}")))?;
    tracing::info!(%addr, "serving /metrics and /health");
    let task = tokio::spawn(async move {
        let upkeep = async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                handle.run_upkeep();
            }
        };
        tokio::select! {
            served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()) => served,
            never = upkeep => never,
        }
    });
    Ok(Endpoint { task: Some(task) })
}

fn router(handle: PrometheusHandle, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/health/live", get(|| async { "live\n" }))
        .route(
            "/health/ready",
            get(move || {
                let readiness = readiness.clone();
                async move { readiness.report().await }
            }),
        )
}
