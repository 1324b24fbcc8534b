//! An OTLP/HTTP collector for trace tests: takes `POST /v1/traces` in the JSON encoding
//! (`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) and keeps every span it is sent.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// One span as received.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP's SpanKind number: 4 producer, 5 consumer.
    pub kind: i64,
    pub attributes: Vec<(String, String)>,
}

impl CollectedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

type Spans = Arc<Mutex<Vec<CollectedSpan>>>;

/// A running collector; it stops when dropped.
pub struct OtlpCollector {
    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    spans: Spans,
    _runtime: tokio::runtime::Runtime,
}

impl OtlpCollector {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let spans: Spans = Arc::default();
        let app = Router::new().route("/v1/traces", post(receive)).with_state(spans.clone());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind collector");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        runtime.spawn(async move { axum::serve(listener, app).await });
        OtlpCollector { endpoint, spans, _runtime: runtime }
    }

    /// The environment that makes a Quire binary export its spans here, as JSON, soon.
    pub fn env(&self) -> [(&'static str, &str); 3] {
        [("OTEL_EXPORTER_OTLP_ENDPOINT", self.endpoint.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"), ("OTEL_BSP_SCHEDULE_DELAY", "200")]
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(map) => map.values().next().map(text).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn attributes(list: &Value) -> Vec<(String, String)> {
    list.as_array().into_iter().flatten().map(|a| (text(&a["key"]), text(&a["value"]))).collect()
}

async fn receive(State(spans): State<Spans>, Json(request): Json<Value>) -> Json<Value> {
    let mut received = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = attributes(&resource["resource"]["attributes"]).into_iter().find(|(k, _)| k == "service.name").map(|(_, v)| v).unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                received.push(CollectedSpan {
                    service: service.clone(),
                    name: text(&span["name"]),
                    trace_id: text(&span["traceId"]),
                    span_id: text(&span["spanId"]),
                    parent_span_id: text(&span["parentSpanId"]),
                    kind: span["kind"].as_i64().unwrap_or_default(),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    spans.lock().unwrap().extend(received);
    Json(serde_json::json!({}))
}
