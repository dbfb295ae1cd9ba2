//! What every gRPC server of the mesh shares: health, reflection, request spans and
//! graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tower::layer::util::{Identity, Stack};
use tower::{Layer as _, ServiceExt as _};

use crate::audit::AuditLayer;
use crate::auth::{AuthLayer, TokenVerifier};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;

/// A gRPC service called in process: the same routes and [`AuthLayer`] as over the
/// network, without a socket, HTTP/2 framing or TLS.
pub type LocalService =
    tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, CallError>;

/// Why a call did not get a response (a transport failure of a network replica): the
/// original error, kept as the source so tonic still tells connection failures apart.
#[derive(Debug)]
pub struct CallError(pub tower::BoxError);

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// The services of one process (`aida up`), by service name, for callers in the same
/// process (the edge): nothing of such a call leaves the process, and the service still
/// verifies the token and the RBAC table.
#[derive(Clone, Default)]
pub struct LocalMesh {
    services: Arc<RwLock<HashMap<String, LocalService>>>,
}

impl LocalMesh {
    /// Makes `router` reachable in process as `service`.
    pub fn register(&self, service: &str, router: &MeshRouter) {
        if let Ok(mut services) = self.services.write() {
            services.insert(service.to_owned(), router.local());
        }
    }

    /// `service`, if it runs in this process.
    pub fn get(&self, service: &str) -> Option<LocalService> {
        self.services.read().ok()?.get(service).cloned()
    }
}

/// The routes every service builds: its services, served behind the [`AuthLayer`] on its
/// listener and, in `aida up`, in process too.
pub struct MeshRouter {
    routes: Routes,
    verifier: Arc<TokenVerifier>,
    audit: AuditLayer,
}

impl MeshRouter {
    /// Adds a gRPC service.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes = self.routes.add_service(service);
        self
    }

    /// Records the calls with `audit` (outside the [`AuthLayer`], so refusals too).
    pub fn audited(mut self, audit: AuditLayer) -> Self {
        self.audit = audit;
        self
    }

    /// The routes behind the [`AuthLayer`], callable in process. The caller's
    /// `grpc-timeout` is enforced as the network server enforces it.
    pub fn local(&self) -> LocalService {
        // Counted as the network server counts them: refusals of the AuthLayer included.
        let inner = crate::metrics::GrpcMetricsLayer.layer(
            self.audit
                .layer(AuthLayer::new(self.verifier.clone()).layer(self.routes.clone())),
        );
        let service = tower::service_fn(move |mut request: http::Request<Body>| {
            let inner = inner.clone();
            request.extensions_mut().insert(crate::audit::InProcess);
            let span = call_span(request.uri().path(), request.headers());
            tracing::Instrument::instrument(
                async move {
                    let called = match grpc_timeout(request.headers()) {
                        Some(limit) => {
                            match tokio::time::timeout(limit, inner.oneshot(request)).await {
                                Ok(called) => called,
                                Err(_) => Ok(tonic::Status::deadline_exceeded(
                                    "the deadline passed before the call finished",
                                )
                                .into_http()),
                            }
                        }
                        None => inner.oneshot(request).await,
                    };
                    called.map_err(|never: Infallible| -> CallError { match never {} })
                },
                span,
            )
        });
        tower::util::BoxCloneSyncService::new(service)
    }
}

/// The `grpc-timeout` of a call: up to eight digits and a unit (H, M, S, m, u, n); `None`
/// when absent or malformed (the one parser of the mesh: services and the edge).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The span of one gRPC call, named by its method, continuing the caller's trace.
pub fn call_span(path: &str, headers: &http::HeaderMap) -> tracing::Span {
    let request_id = headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        method = %path,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, crate::telemetry::parent_from_headers(headers));
    span
}

/// The mesh's routes: every call is authenticated and checked against the RBAC table
/// (health, reflection and public methods pass without a token).
pub fn builder(verifier: Arc<TokenVerifier>) -> MeshRouter {
    MeshRouter {
        routes: Routes::default(),
        verifier,
        audit: AuditLayer::off(),
    }
}

/// A server with the mesh's transport settings: the RED metrics outermost (so refused
/// calls are counted with their code), the audit, then the [`AuthLayer`].
#[allow(clippy::type_complexity)]
fn server(
    verifier: Arc<TokenVerifier>,
    audit: AuditLayer,
) -> Server<Stack<AuthLayer, Stack<AuditLayer, Stack<crate::metrics::GrpcMetricsLayer, Identity>>>>
{
    Server::builder()
        // A span per call, named by the method, so every log line carries it.
        .trace_fn(|request| call_span(request.uri().path(), request.headers()))
        // Dead peers are noticed and their streams freed.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true)
        .layer(crate::metrics::GrpcMetricsLayer)
        .layer(audit)
        .layer(AuthLayer::new(verifier))
}

/// The gRPC reflection service over every contract of the mesh.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(aida_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
}

/// How long in-flight calls may run after the shutdown signal before they are cut off.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown`; in-flight calls then get
/// [`SHUTDOWN_GRACE`] to finish, so a stuck peer cannot keep the process alive.
pub async fn serve(
    router: MeshRouter,
    listener: TcpListener,
    shutdown: CancellationToken,
    tls: Option<Arc<crate::tls::MeshTls>>,
) -> Result<(), tonic::transport::Error> {
    let MeshRouter {
        routes,
        verifier,
        audit,
    } = router;
    let router = server(verifier, audit).add_routes(routes);
    let signal = shutdown.clone().cancelled_owned();
    let accepting = shutdown.child_token();
    let serving = async move {
        match tls.as_ref().map(|tls| tls.server_config()) {
            // Mutual TLS: only clients with a certificate of the mesh CA get a connection.
            Some(Ok(config)) => {
                let incoming = crate::tls::incoming(listener, config, accepting);
                router.serve_with_incoming_shutdown(incoming, signal).await
            }
            Some(Err(error)) => {
                tracing::error!(%error, "tls configuration failed; not serving");
                Ok(())
            }
            None => {
                // The builder's `tcp_nodelay` does not reach an incoming stream we hand
                // it: set it here, or small replies wait for the peer's delayed ACK.
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                router.serve_with_incoming_shutdown(incoming, signal).await
            }
        }
    };
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = serving => result,
        () = deadline => {
            tracing::warn!("calls still running {SHUTDOWN_GRACE:?} after the shutdown signal were cut off");
            Ok(())
        }
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut terminate =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(signal) => signal,
                    Err(error) => {
                        tracing::error!(%error, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        token.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().expect("header value"));
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_malformed_ones_ignored() {
        assert_eq!(timeout_of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout_of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout_of("10S"), Some(Duration::from_secs(10)));
        assert_eq!(timeout_of("4999m"), Some(Duration::from_millis(4999)));
        assert_eq!(timeout_of("250u"), Some(Duration::from_micros(250)));
        assert_eq!(
            timeout_of("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "5", "5x", "-5m", "123456789m", "1.5S"] {
            assert_eq!(timeout_of(bad), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }
}
