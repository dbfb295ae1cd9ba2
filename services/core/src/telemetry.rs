//! Logging and tracing: the tracing subscriber, and OpenTelemetry traces exported over OTLP
//! gRPC when `telemetry.otlp_endpoint` is set.
//!
//! The W3C `traceparent` (the one propagation format of the mesh) carries a trace from hop
//! to hop: the edge starts or continues it,
//! gRPC metadata takes it into a service ([`parent_from_headers`] in the server's span),
//! an event's envelope and its NATS headers take it to every consumer
//! ([`current_traceparent`] when the envelope is built, [`parent_from_traceparent`] when it
//! is handled). Every span carries `trace_id`, so log lines do too.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::settings::{LogFormat, LogSettings, TelemetrySettings};

/// What [`init`] started; dropping it flushes the spans and error reports not yet sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    _sentry: Option<sentry::ClientInitGuard>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("telemetry: spans not flushed at exit: {error}");
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` if set, else the configured filter; JSON
/// lines or human text, to stderr so that stdout carries only what a command prints for
/// the user; and, with `telemetry.otlp_endpoint`, every span exported as the OpenTelemetry
/// service `service`. Calling it twice keeps the first (tests start several services).
pub fn init(log: &LogSettings, telemetry: &TelemetrySettings, service: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let provider =
        telemetry
            .otlp_endpoint
            .as_deref()
            .and_then(|endpoint| match provider(endpoint, service) {
                Ok(provider) => Some(provider),
                Err(error) => {
                    eprintln!("telemetry: no traces exported to {endpoint}: {error}");
                    None
                }
            });
    // Each layer filters for itself: the log filter (often `warn`) must not starve the
    // traces of their `info` spans.
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("aida"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let registry = tracing_subscriber::registry().with(traces);
    let installed = match log.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
    };
    let sentry = telemetry.sentry_dsn.as_ref().and_then(|dsn| {
        init_sentry(dsn, service)
            .map_err(|error| eprintln!("telemetry: no error reports to Sentry: {error}"))
            .ok()
    });
    Telemetry {
        // A second subscriber was refused: its provider would never see a span.
        provider: provider.filter(|_| installed.is_ok()),
        _sentry: sentry,
    }
}

/// Sends panics and server errors ([`report_server_error`]) to the Sentry project of `dsn`,
/// as `service`. Nothing about a person leaves: no default PII, no request, no user.
pub fn init_sentry(
    dsn: &secrecy::SecretString,
    service: &str,
) -> Result<sentry::ClientInitGuard, String> {
    use secrecy::ExposeSecret as _;
    let dsn: sentry::types::Dsn = dsn
        .expose_secret()
        .parse()
        .map_err(|error| format!("telemetry.sentry_dsn: {error}"))?;
    let guard = sentry::init(sentry::ClientOptions {
        dsn: Some(dsn),
        release: sentry::release_name!(),
        // The service, not the host's name.
        server_name: Some(service.to_owned().into()),
        send_default_pii: false,
        // A server error's stack is the reporting code's; a panic brings its own.
        attach_stacktrace: false,
        before_send: Some(std::sync::Arc::new(|mut event| {
            event.user = None;
            event.request = None;
            Some(event)
        })),
        ..Default::default()
    });
    // `init` binds the calling thread's hub; threads that start later inherit the process
    // hub's, so bind it there too, wherever `init` ran.
    if let Some(client) = sentry::Hub::current().client() {
        sentry::Hub::main().bind_client(Some(client));
    }
    Ok(guard)
}

/// Reports a server error to Sentry (when configured): `what` failed with `code`, for the
/// request `request_id` in trace `trace_id`. Only these identifiers are sent, never the
/// request's content or the error's cause (which may name a person).
pub fn report_server_error(what: &str, code: &str, request_id: &str, trace_id: Option<&str>) {
    if sentry::Hub::current()
        .client()
        .is_none_or(|client| !client.is_enabled())
    {
        return;
    }
    sentry::with_scope(
        |scope| {
            scope.set_tag("endpoint", what);
            scope.set_tag("code", code);
            if !request_id.is_empty() {
                scope.set_tag("request_id", request_id);
            }
            if let Some(trace_id) = trace_id {
                scope.set_tag("trace_id", trace_id);
            }
            scope.set_fingerprint(Some(&["server-error", what, code]));
        },
        || sentry::capture_message(&format!("{code} from {what}"), sentry::Level::Error),
    );
}

/// The trace a request belongs to: the one its `traceparent` names, else the current span's.
pub fn trace_id_of(headers: &http::HeaderMap) -> Option<String> {
    let continued = parent_from_headers(headers)
        .span()
        .span_context()
        .trace_id();
    let trace_id = if continued == opentelemetry::trace::TraceId::INVALID {
        tracing::Span::current()
            .context()
            .span()
            .span_context()
            .trace_id()
    } else {
        continued
    };
    (trace_id != opentelemetry::trace::TraceId::INVALID).then(|| trace_id.to_string())
}

/// The tracer provider exporting to the OTLP gRPC collector at `endpoint`.
fn provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    let runtime = export_runtime()?;
    let exporter = {
        // The channel belongs to the export runtime, whose thread drives its I/O.
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|error| error.to_string())?
    };
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(OnExportRuntime { inner: exporter })
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build())
}

/// The runtime the OTLP exporter runs on. The SDK's batch processor exports from a plain
/// thread, and tonic needs a Tokio reactor: one small runtime of its own, for the whole
/// process, so that exporting never depends on (or stalls) the service's runtime.
fn export_runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("otlp-export")
                .enable_all()
                .build()
                .map_err(|error| error.to_string())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The OTLP exporter, its calls driven on [`export_runtime`].
#[derive(Debug)]
struct OnExportRuntime {
    inner: opentelemetry_otlp::SpanExporter,
}

impl SpanExporter for OnExportRuntime {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let result = match export_runtime() {
            Ok(runtime) => runtime.block_on(self.inner.export(batch)),
            Err(error) => Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                error,
            )),
        };
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MapCarrier(HashMap<String, String>);

impl Extractor for MapCarrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl Injector for MapCarrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// The trace a request continues, from its `traceparent` (and `tracestate`) header.
pub fn parent_from_headers(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The trace an event continues, from the `traceparent` it carries.
pub fn parent_from_traceparent(traceparent: &str) -> opentelemetry::Context {
    let carrier = MapCarrier(HashMap::from([(
        "traceparent".to_owned(),
        traceparent.to_owned(),
    )]));
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent` of the current span, when it belongs to a trace (traces exported, or a
/// caller's trace continued).
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = MapCarrier(HashMap::new());
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0.remove("traceparent")
}

/// Makes `span` continue `parent` and records its trace id on it (the `trace_id` field,
/// declared empty), so the log lines inside carry it.
pub fn continue_trace(span: &tracing::Span, parent: opentelemetry::Context) {
    use opentelemetry::trace::TraceId;
    let continued = parent.span().span_context().trace_id();
    // Without an exporter the span has no context of its own: it still names the trace.
    let _ = span.set_parent(parent);
    let own = span.context().span().span_context().trace_id();
    let trace_id = if own == TraceId::INVALID {
        continued
    } else {
        own
    };
    if trace_id != TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}
