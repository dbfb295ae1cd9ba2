//! What every gRPC server of the mesh shares: health, reflection, request spans and
//! graceful shutdown.

use std::time::Duration;

use std::sync::Arc;

use tokio::net::TcpListener;
use tower::layer::util::{Identity, Stack};

use crate::auth::{AuthLayer, TokenVerifier};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::Router;

/// The router every service builds: its services behind the [`AuthLayer`].
pub type MeshRouter = Router<Stack<AuthLayer, Identity>>;

/// A server builder with the mesh's transport settings; every call is authenticated and
/// checked against the RBAC table (health, reflection and public methods pass without a
/// token).
pub fn builder(verifier: Arc<TokenVerifier>) -> Server<Stack<AuthLayer, Identity>> {
    Server::builder()
        // A span per call, named by the method, so every log line carries it.
        .trace_fn(|request| {
            let request_id = request
                .headers()
                .get("x-request-id")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("");
            tracing::info_span!("grpc", method = %request.uri().path(), request_id = %request_id)
        })
        // Dead peers are noticed and their streams freed.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true)
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
