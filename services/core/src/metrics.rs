//! Prometheus metrics: one recorder per process, rate/errors/duration of every gRPC call
//! (one tower layer), and the `/metrics` endpoint that serves them.
//!
//! Every metric of the mesh is recorded with the `metrics` macros under a name defined
//! here or next to the code that records it; [`render`] is the Prometheus text of all of
//! them. In `aida up` the whole mesh is one process and so one set of series; with
//! `aida serve <service>` each process serves its own.
//!
//! gRPC calls (names as in go-grpc-prometheus, so stock dashboards fit):
//! - `grpc_server_started_total{grpc_service, grpc_method}`
//! - `grpc_server_handled_total{grpc_service, grpc_method, grpc_code}`
//! - `grpc_server_handling_seconds{grpc_service, grpc_method}` (histogram, until the last
//!   byte of the response, so a stream counts its whole life)

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Latency buckets (seconds) of every `*_seconds` histogram: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Set by [`disable`]: no recorder, nothing recorded (`telemetry.metrics = false`).
static DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns metrics off for this process (`telemetry.metrics = false`): call before anything
/// records. Every macro then goes to the no-op recorder, the gRPC layer passes calls
/// straight through and [`render`] is empty.
pub fn disable() {
    DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this process records metrics.
pub fn enabled() -> bool {
    !DISABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The process's recorder, installed on first use.
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed before aida's; /metrics is empty");
        }
        describe();
        // Histograms are kept in buckets that must be drained now and then.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .ok();
        handle
    })
}

/// The `# HELP` lines of the series every service has.
fn describe() {
    use crate::{consumer, outbox, runner};
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("grpc_server_started_total", "gRPC calls started");
    describe_counter!(
        "grpc_server_handled_total",
        "gRPC calls answered, by grpc_code"
    );
    describe_histogram!(
        "grpc_server_handling_seconds",
        Unit::Seconds,
        "gRPC call duration until the last response byte"
    );
    describe_counter!(outbox::PUBLISHED, "Events the outbox relay published");
    describe_counter!(
        outbox::PUBLISH_FAILURES,
        "Events a relay round failed to publish"
    );
    describe_histogram!(
        outbox::PUBLISH_LAG,
        Unit::Seconds,
        "Commit to bus ack, by event_type"
    );
    describe_gauge!(outbox::BACKLOG, "Events committed and not yet published");
    describe_counter!(
        consumer::EVENTS,
        "Events a durable consumer settled, by outcome"
    );
    describe_counter!(consumer::REDELIVERIES, "Deliveries that were redeliveries");
    describe_counter!(
        consumer::DEAD_LETTERS,
        "Deliveries moved to the dead-letter stream"
    );
    describe_histogram!(
        consumer::HANDLING_SECONDS,
        Unit::Seconds,
        "One event's handler time"
    );
    describe_histogram!(
        consumer::BATCH_SECONDS,
        Unit::Seconds,
        "One batch's handler time (analytics ingest)"
    );
    describe_histogram!(consumer::BATCH_SIZE, "Events per handled batch");
    describe_gauge!(
        consumer::PENDING,
        "Messages not yet delivered to the durable"
    );
    describe_gauge!(
        runner::DEPENDENCY_UP,
        "Whether the database or bus answered the last health check"
    );
    describe_gauge!(
        runner::POOL_CONNECTIONS,
        "Database pool connections, by state"
    );
}

/// Installs the recorder (idempotent): call before recording, so no early sample is lost.
pub fn install() {
    if enabled() {
        handle();
    }
}

/// The Prometheus text exposition of every metric of the process (empty when off).
pub fn render() -> String {
    if enabled() {
        handle().render()
    } else {
        String::new()
    }
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` on `listener` until `shutdown` (the small listener beside a
/// service's gRPC port).
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    install();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], render()) }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds the metrics listener at `address` and serves it in the background until
/// `shutdown`; the bound address (port 0 picks a free one).
pub async fn spawn(
    address: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(error) = serve(listener, shutdown).await {
            tracing::error!(%error, "the metrics listener stopped");
        }
    });
    Ok(bound)
}

/// The gRPC service and method of a call path, as metric labels. Paths outside the
/// contracts (anyone can send any path) become `unknown`, so they cannot grow the series.
fn labels_of(path: &str) -> (&'static str, &'static str) {
    static KNOWN: OnceLock<Vec<(&'static str, &'static str, &'static str)>> = OnceLock::new();
    let known = KNOWN.get_or_init(|| {
        let mut known: Vec<_> = crate::rbac::TABLE
            .iter()
            .filter_map(|(name, _)| {
                let (service, method) = name.split_once('/')?;
                Some((*name, service, method))
            })
            .collect();
        known.push((
            "grpc.health.v1.Health/Check",
            "grpc.health.v1.Health",
            "Check",
        ));
        known.push((
            "grpc.health.v1.Health/Watch",
            "grpc.health.v1.Health",
            "Watch",
        ));
        known
    });
    let path = path.trim_start_matches('/');
    if path.starts_with("grpc.reflection.") {
        return ("grpc.reflection", "ServerReflectionInfo");
    }
    known
        .iter()
        .find(|(name, _, _)| *name == path)
        .map_or(("unknown", "unknown"), |(_, service, method)| {
            (service, method)
        })
}

/// The canonical name of a gRPC status code, as in `grpc_code` labels.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(tonic::Code::from_i32(value.parse().ok()?))
}

/// Counts and times every gRPC call it wraps (see the module docs for the series).
#[derive(Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        install();
        GrpcMetrics { inner }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !enabled() {
            return Box::pin(self.inner.call(request));
        }
        let (service, method) = labels_of(request.uri().path());
        metrics::counter!(
            "grpc_server_started_total",
            "grpc_service" => service,
            "grpc_method" => method
        )
        .increment(1);
        let call = Call {
            service,
            method,
            start: Instant::now(),
            request_id: request
                .headers()
                .get("x-request-id")
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            trace_id: crate::telemetry::trace_id_of(request.headers()),
        };
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            let code = status_of(response.headers());
            let (parts, body) = response.into_parts();
            let body = Observed {
                body,
                code,
                ended: code.is_some(),
                call: Some(call),
            };
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(body),
            ))
        })
    }
}

/// One call being answered.
struct Call {
    service: &'static str,
    method: &'static str,
    start: Instant,
    request_id: String,
    trace_id: Option<String>,
}

impl Call {
    fn finish(self, code: tonic::Code) {
        if matches!(
            code,
            tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss
        ) {
            crate::telemetry::report_server_error(
                &format!("{}/{}", self.service, self.method),
                code_name(code),
                &self.request_id,
                self.trace_id.as_deref(),
            );
        }
        metrics::counter!(
            "grpc_server_handled_total",
            "grpc_service" => self.service,
            "grpc_method" => self.method,
            "grpc_code" => code_name(code)
        )
        .increment(1);
        metrics::histogram!(
            "grpc_server_handling_seconds",
            "grpc_service" => self.service,
            "grpc_method" => self.method
        )
        .record(self.start.elapsed().as_secs_f64());
    }
}

/// A response body that records its call when it is done: the code from a trailers-only
/// response or from the trailers; a body dropped before its end was cancelled.
struct Observed {
    body: tonic::body::Body,
    code: Option<tonic::Code>,
    ended: bool,
    call: Option<Call>,
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    self.code = Some(code);
                    self.ended = true;
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.code = Some(tonic::Code::Internal);
                self.ended = true;
            }
            Poll::Ready(None) => self.ended = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            let code = match (self.code, self.ended) {
                (Some(code), _) => code,
                // Ended without a status: a plain HTTP answer (no gRPC status) is OK.
                (None, true) => tonic::Code::Ok,
                (None, false) => tonic::Code::Cancelled,
            };
            call.finish(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_paths_outside_the_contracts_share_one_label() {
        assert_eq!(
            labels_of("/aida.leads.v1.LeadService/CaptureLead"),
            ("aida.leads.v1.LeadService", "CaptureLead")
        );
        assert_eq!(
            labels_of("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(labels_of("/evil.Service/x1"), ("unknown", "unknown"));
        assert_eq!(
            labels_of("/aida.leads.v1.LeadService/Nope"),
            ("unknown", "unknown")
        );
    }

    #[test]
    fn codes_are_named_as_in_the_grpc_spec() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::from_i32(14)), "UNAVAILABLE");
    }
}
