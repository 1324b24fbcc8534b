//! Spans over OTLP, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set; off otherwise, at no cost.
//!
//! The trace context itself always travels in the records' W3C `traceparent` headers;
//! this module only decides the span ids and, when exporting, records the spans under
//! OpenTelemetry's messaging conventions: `quire publish` a PRODUCER span `send <topic>`
//! (the trace's root), each stage a CONSUMER span `process <topic>` per input record,
//! child of the record's `traceparent`, whose id the stage's outputs carry on.
//!
//! Export is OTLP over HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`, the default,
//! or `http/json`) from a batch thread; the endpoint, headers and timeout come from the
//! standard `OTEL_EXPORTER_OTLP_*` variables.

use crate::record::headers;
use crate::record::Input;
use opentelemetry::trace::{Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::sync::OnceLock;
use std::time::SystemTime;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Flushes and stops the export when dropped (at the end of `main`).
pub struct ExportGuard;

impl Drop for ExportGuard {
    fn drop(&mut self) {
        if let Some(provider) = PROVIDER.get() {
            // Blocking, and not allowed on a runtime's thread: on a thread of its own.
            let provider = provider.clone();
            let _ = std::thread::spawn(move || provider.shutdown()).join();
        }
    }
}

/// Starts exporting spans as `service` if an OTLP endpoint is configured.
pub fn init(service: &str) -> Option<ExportGuard> {
    let configured = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if !configured("OTEL_EXPORTER_OTLP_ENDPOINT") && !configured("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return None;
    }
    let protocol_setting = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL")).unwrap_or_default();
    let protocol = match protocol_setting.trim() {
        "http/json" => Protocol::HttpJson,
        "" | "http/protobuf" => Protocol::HttpBinary,
        other => {
            tracing::warn!(protocol = other, "unsupported OTLP protocol; using http/protobuf");
            Protocol::HttpBinary
        }
    };
    let exporter = match SpanExporter::builder().with_http().with_protocol(protocol).build() {
        Ok(exporter) => exporter,
        Err(e) => {
            tracing::error!(error = %e, "spans will not be exported: the OTLP exporter could not be built");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service.to_owned()).build())
        .build();
    if PROVIDER.set(provider).is_err() {
        return None;
    }
    tracing::info!(service, protocol = ?protocol, "exporting spans over OTLP");
    Some(ExportGuard)
}

/// The span context of a version-00 W3C `traceparent`.
fn span_context(traceparent: &str) -> Option<SpanContext> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let ["00", trace, span, flags] = parts.as_slice() else { return None };
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(TraceId::from_hex(trace).ok()?, SpanId::from_hex(span).ok()?, TraceFlags::new(flags), true, TraceState::default());
    context.is_valid().then_some(context)
}

fn traceparent_of(context: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), context.trace_flags().to_u8())
}

/// A span that ends when dropped.
pub struct OpenSpan(Option<opentelemetry_sdk::trace::Span>);

impl Drop for OpenSpan {
    fn drop(&mut self) {
        if let Some(span) = self.0.as_mut() {
            span.end();
        }
    }
}

/// A PRODUCER span `send <topic>` under `parent`, with `more` attributes.
fn send_span(provider: &SdkTracerProvider, topic: &str, parent: &Context, more: Vec<KeyValue>) -> opentelemetry_sdk::trace::Span {
    let tracer = provider.tracer("quire");
    let mut attributes = vec![
        KeyValue::new("messaging.system", "kafka"),
        KeyValue::new("messaging.operation.name", "send"),
        KeyValue::new("messaging.destination.name", topic.to_owned()),
    ];
    attributes.extend(more);
    tracer.span_builder(format!("send {topic}")).with_kind(SpanKind::Producer).with_attributes(attributes).start_with_context(&tracer, parent)
}

/// The `traceparent` of a new trace for the records `quire publish` sends to `topic`,
/// and its PRODUCER span (recorded when exporting), open until dropped.
pub fn publish_span(topic: &str) -> (String, OpenSpan) {
    let Some(provider) = PROVIDER.get() else { return (headers::new_traceparent(), OpenSpan(None)) };
    let span = send_span(provider, topic, &Context::new(), Vec::new());
    (traceparent_of(span.span_context()), OpenSpan(Some(span)))
}

/// The `traceparent` for the records an action outside the stages writes to `topic`
/// (a re-queue by an operator or the watchdog), continuing `trace` (a `traceparent`,
/// or only a trace id when no more was kept); recorded as a PRODUCER span
/// `send <topic>` named after `action` when exporting. None without a trace to continue.
pub fn action_span(topic: &str, action: &str, trace: &str) -> Option<String> {
    let Some(provider) = PROVIDER.get() else { return headers::continue_trace(trace) };
    // With only a trace id, the parent is a span of that trace nobody recorded.
    let parent = span_context(trace).or_else(|| span_context(&format!("00-{trace}-{:016x}-01", rand::random::<u64>() | 1)))?;
    let parent = Context::new().with_remote_span_context(parent);
    let mut span = send_span(provider, topic, &parent, vec![KeyValue::new("quire.action", action.to_owned())]);
    let traceparent = traceparent_of(span.span_context());
    span.end();
    Some(traceparent)
}

/// The `traceparent` for what `stage` (consumer group `group`) writes while processing
/// `input`: a child of the input's (a new trace if it carries none, e.g. a record from
/// another producer), recorded as a CONSUMER span from `started` to now when exporting.
pub fn process_span(stage: &str, group: &str, input: &Input, started: SystemTime) -> String {
    let parent = headers::header(&input.headers, headers::TRACEPARENT).and_then(|v| std::str::from_utf8(v).ok());
    let Some(provider) = PROVIDER.get() else {
        return parent.and_then(headers::child_traceparent).unwrap_or_else(headers::new_traceparent);
    };
    let parent = parent.and_then(span_context).map_or_else(Context::new, |p| Context::new().with_remote_span_context(p));
    let tracer = provider.tracer("quire");
    let mut attributes = vec![
        KeyValue::new("messaging.system", "kafka"),
        KeyValue::new("messaging.operation.name", "process"),
        KeyValue::new("messaging.destination.name", input.topic.clone()),
        KeyValue::new("messaging.destination.partition.id", input.partition.to_string()),
        KeyValue::new("messaging.consumer.group.name", group.to_owned()),
        KeyValue::new("messaging.kafka.offset", input.offset),
        KeyValue::new("quire.stage", stage.to_owned()),
    ];
    if let Some(key) = input.key_str() {
        attributes.push(KeyValue::new("messaging.kafka.message.key", key));
    }
    let mut span = tracer
        .span_builder(format!("process {}", input.topic))
        .with_kind(SpanKind::Consumer)
        .with_start_time(started)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    let traceparent = traceparent_of(span.span_context());
    span.end();
    traceparent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip_through_span_contexts() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent_of(&span_context(parent).unwrap()), parent);
        assert!(span_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(span_context("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_none());
        assert!(span_context("00-4bf92f35-00f067aa0ba902b7-01").is_none(), "short ids are refused");
    }
}
