//! Error reports as Sentry receives them: a local HTTP endpoint stands in for sentry.io and
//! reads the envelopes the `sentry` client posts (the real wire format), for a gRPC call
//! answered INTERNAL and for a panic.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aida_core::metrics::GrpcMetricsLayer;
use aida_core::testing::eventually;
use secrecy::SecretString;
use tower::{Layer as _, ServiceExt as _};

/// Every body posted to the stand-in, as text.
#[derive(Clone, Default)]
struct Ingest(Arc<Mutex<Vec<String>>>);

impl Ingest {
    async fn start(&self) -> String {
        let bodies = self.0.clone();
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let bodies = bodies.clone();
            async move {
                bodies
                    .lock()
                    .expect("bodies")
                    .push(String::from_utf8_lossy(&body).into_owned());
                "{}"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://public-key@127.0.0.1:{port}/42")
    }

    fn any(&self, needle: &str) -> Option<String> {
        self.0
            .lock()
            .expect("bodies")
            .iter()
            .find(|body| body.contains(needle))
            .cloned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_errors_and_panics_reach_sentry_with_request_and_trace_ids_and_no_pii() {
    let ingest = Ingest::default();
    let dsn = ingest.start().await;
    let _sentry =
        aida_core::telemetry::init_sentry(&SecretString::from(dsn), "aida-test").expect("dsn");

    // A call answered INTERNAL (trailers-only, as tonic answers errors), through the layer
    // every server of the mesh has.
    let failing = tower::service_fn(|_request: http::Request<tonic::body::Body>| async {
        Ok::<_, std::convert::Infallible>(tonic::Status::internal("internal error").into_http())
    });
    let service = GrpcMetricsLayer.layer(failing);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let request = http::Request::builder()
        .uri("/aida.leads.v1.LeadService/CaptureLead")
        .header("x-request-id", "req-sentry-7")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("x-contact", "ada@example.com")
        .body(tonic::body::Body::empty())
        .expect("request");
    let response = service.oneshot(request).await.expect("answered");
    drop(response);

    let reported = eventually(Duration::from_secs(10), || async {
        ingest.any("req-sentry-7").is_some()
    })
    .await;
    assert!(reported, "the INTERNAL answer reached Sentry");
    let envelope = ingest.any("req-sentry-7").expect("envelope");
    assert!(envelope.contains(trace), "trace id tagged: {envelope}");
    assert!(
        envelope.contains("aida.leads.v1.LeadService/CaptureLead") && envelope.contains("INTERNAL"),
        "method and code tagged: {envelope}"
    );
    assert!(!envelope.contains("ada@example.com"), "no PII: {envelope}");

    // A panic anywhere in the process.
    let panicked = std::thread::spawn(|| panic!("sentry-test-panic-31")).join();
    assert!(panicked.is_err());
    let reported = eventually(Duration::from_secs(10), || async {
        ingest.any("sentry-test-panic-31").is_some()
    })
    .await;
    assert!(reported, "the panic reached Sentry");
}
