//! Optional OTLP export (`tracing.otlp.endpoint`): one server span per request, with the
//! trace and span ids sandgate put in the `traceparent` it sent on, so the backend's spans
//! hang under it. A request hands its span to a bounded queue and never waits: when the queue
//! is full (a slow or dead collector) the span is dropped and counted. One task sends batches
//! over OTLP/HTTP (protobuf) with the opentelemetry crates, each send bounded by
//! `tracing.otlp.timeout`.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId as OtelTraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;

use crate::config::OtlpConfig;
use crate::metrics::{OTLP_SPANS_DROPPED_TOTAL, OTLP_SPANS_EXPORTED_TOTAL};
use crate::trace::TraceId;

/// Spans waiting for export, at most.
const QUEUE: usize = 8192;
/// Spans sent in one request, at most.
const BATCH: usize = 512;
/// How long the exporter waits to fill a batch.
const LINGER: Duration = Duration::from_millis(500);

/// The exporter's queue.
pub struct Otlp {
    tx: mpsc::Sender<SpanData>,
    dropped: metrics::Counter,
    scope: InstrumentationScope,
}

/// What the request path knows of one request, for its span.
pub struct RequestSpan<'a> {
    /// Trace, span and parent ids.
    pub trace: TraceId,
    /// When it arrived, and how long it took.
    pub started: Instant,
    /// Method.
    pub method: &'a str,
    /// Path.
    pub path: &'a str,
    /// Status answered.
    pub status: u16,
    /// Route name, if one matched.
    pub route: Option<&'a str>,
    /// Backend that answered, if any.
    pub backend: Option<&'a str>,
    /// Tries made.
    pub attempts: u32,
    /// Error code, if any.
    pub error: Option<&'static str>,
}

impl Otlp {
    /// Starts the exporter task on the current runtime.
    pub fn start(cfg: &OtlpConfig) -> Result<Self, String> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(cfg.timeout)
            .build()
            .map_err(|e| format!("tracing.otlp: {e}"))?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name("sandgate")
                .build(),
        );
        let (tx, rx) = mpsc::channel(QUEUE);
        let timeout = cfg.timeout;
        tokio::spawn(export(exporter, rx, timeout));
        Ok(Self {
            tx,
            dropped: metrics::counter!(OTLP_SPANS_DROPPED_TOTAL),
            scope: InstrumentationScope::builder("sandgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// Queues the span of one request; drops it when the queue is full.
    pub fn record(&self, r: &RequestSpan<'_>) {
        if !r.trace.sampled {
            return;
        }
        let elapsed = r.started.elapsed();
        let end = SystemTime::now();
        let mut attributes = vec![
            KeyValue::new("http.request.method", r.method.to_owned()),
            KeyValue::new("url.path", r.path.to_owned()),
            KeyValue::new("http.response.status_code", i64::from(r.status)),
            KeyValue::new("sandgate.attempts", i64::from(r.attempts)),
        ];
        if let Some(route) = r.route {
            attributes.push(KeyValue::new("http.route", route.to_owned()));
        }
        if let Some(b) = r.backend {
            attributes.push(KeyValue::new("server.address", b.to_owned()));
        }
        if let Some(e) = r.error {
            attributes.push(KeyValue::new("error.type", e));
        }
        let span = SpanData {
            span_context: SpanContext::new(
                OtelTraceId::from_bytes(r.trace.trace().to_be_bytes()),
                SpanId::from_bytes(r.trace.span.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from_bytes(r.trace.parent.to_be_bytes()),
            parent_span_is_remote: r.trace.parent != 0,
            span_kind: SpanKind::Server,
            name: Cow::Owned(format!("{} {}", r.method, r.route.unwrap_or("-"))),
            start_time: end.checked_sub(elapsed).unwrap_or(end),
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if r.status >= 500 {
                Status::error(r.error.unwrap_or("server error"))
            } else {
                Status::Unset
            },
            instrumentation_scope: self.scope.clone(),
        };
        if self.tx.try_send(span).is_err() {
            self.dropped.increment(1);
        }
    }
}

/// Sends batches until every sender is gone; a failed send is logged (at most once a
/// minute) and its spans dropped.
async fn export(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    timeout: Duration,
) {
    let exported = metrics::counter!(OTLP_SPANS_EXPORTED_TOTAL);
    let dropped = metrics::counter!(OTLP_SPANS_DROPPED_TOTAL);
    let mut last_warning: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let sent = tokio::time::timeout(timeout, exporter.export(batch)).await;
        match sent {
            Ok(Ok(())) => exported.increment(n),
            failed => {
                dropped.increment(n);
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {timeout:?}"),
                };
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(spans = n, error = %why, "OTLP export failed; spans dropped");
                    last_warning = Some(Instant::now());
                }
            }
        }
    }
}
