//! Every service's HTTP endpoint: `/metrics` for Prometheus, `/health/live`,
//! `/health/ready`, plus routes a stage adds (inference: `/health/engines`).

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Whether the service is ready: set once its processing loop consumes.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Installs the Prometheus recorder and serves the endpoint on `addr` (an empty address
/// serves nothing), with `routes` merged in.
pub async fn serve(addr: &str, routes: Router, readiness: Readiness) -> anyhow::Result<()> {
    if addr.is_empty() {
        return Ok(());
    }
    let socket: SocketAddr = addr.parse().map_err(|e| anyhow::anyhow!("HTTP address {addr:?}: {e}"))?;
    let handle = PrometheusBuilder::new().install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let app = router(handle, readiness).merge(routes);
    let listener = tokio::net::TcpListener::bind(socket).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "serving /metrics and /health");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(())
}

fn router(handle: PrometheusHandle, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/health/live", get(|| async { "live\n" }))
        .route(
            "/health/ready",
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
}
