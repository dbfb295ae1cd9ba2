//! The one way a service of the mesh runs: what it serves, what runs beside it, and one
//! start and shutdown order for all of them.
//!
//! ```text
//! start     relay running → workers spawned → health SERVING ("" and each named service)
//!           → reflection, local registration (`aida up`) → listening
//! shutdown  signal → health NOT_SERVING ("" and named) → in-flight calls drain
//!           (at most `SHUTDOWN_GRACE`) → workers stopped and awaited → the relay publishes
//!           what the last calls and workers committed, then stops → tasks started with
//!           `spawn_after_relay` stop last
//! ```
//!
//! A service builds its parts, then:
//!
//! ```text
//! let mut runner = ServiceRunner::new(context, SERVICE, shutdown);
//! runner.consume(CONSUMER, LEADS_STREAM, Some("leads.qualified"), handler);
//! runner.serve(listener, &[DealServiceServer::<DealApi>::NAME], |routes| {
//!     routes.add_service(DealServiceServer::new(api))
//! }).await
//! ```

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::consumer::{self, EventHandler};
use crate::runtime::{ServiceContext, StartError};
use crate::server::{self, MeshRouter};

/// A service being started: its context, its background work, its shutdown signal.
pub struct ServiceRunner {
    context: ServiceContext,
    service: &'static str,
    shutdown: CancellationToken,
    relay_shutdown: CancellationToken,
    relay: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
    after_relay_shutdown: CancellationToken,
    after_relay: Vec<JoinHandle<()>>,
}

impl ServiceRunner {
    /// Starts the relay of `context` for `service` (its name in the mesh registry),
    /// running until `shutdown` and the drain that follows it.
    pub fn new(
        context: ServiceContext,
        service: &'static str,
        shutdown: CancellationToken,
    ) -> Self {
        let relay_shutdown = CancellationToken::new();
        let relay = tokio::spawn(context.relay.clone().run(relay_shutdown.clone()));
        Self {
            context,
            service,
            shutdown,
            relay_shutdown,
            relay,
            workers: Vec::new(),
            after_relay_shutdown: CancellationToken::new(),
            after_relay: Vec::new(),
        }
    }

    pub fn context(&self) -> &ServiceContext {
        &self.context
    }

    /// The service's stop signal: workers end when it fires.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs `task` beside the server. It must end once [`Self::shutdown`] fires; it is
    /// awaited after the server drained and before the relay's last flush, so what it
    /// committed is published.
    pub fn spawn<T: Send + 'static>(&mut self, task: impl Future<Output = T> + Send + 'static) {
        self.workers.push(tokio::spawn(async move {
            let _ = task.await;
        }));
    }

    /// A durable consumer `name` of `stream` (only `filter`'s subjects when given), as a
    /// worker.
    pub fn consume(
        &mut self,
        name: &str,
        stream: &str,
        filter: Option<&str>,
        handler: Arc<dyn EventHandler>,
    ) {
        let options = self.context.durable(name, stream, filter);
        let task = consumer::run(
            self.context.bus.clone(),
            options,
            handler,
            self.shutdown.clone(),
        );
        self.spawn(task);
    }

    /// Runs the task `start` makes from its own stop signal, which fires only after the
    /// relay stopped: for work the last calls still rely on (the search re-indexer).
    pub fn spawn_after_relay<F, T>(&mut self, start: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let task = start(self.after_relay_shutdown.clone());
        self.after_relay.push(tokio::spawn(async move {
            let _ = task.await;
        }));
    }

    /// Serves the gRPC services `add` puts on the mesh's routes (next to health and
    /// reflection), reporting health for `named` (their gRPC names) and the server as a
    /// whole (`""`), until the shutdown signal; then stops everything in the one order.
    pub async fn serve(
        self,
        listener: TcpListener,
        named: &[&'static str],
        add: impl FnOnce(MeshRouter) -> MeshRouter,
    ) -> Result<(), StartError> {
        let (reporter, health) = tonic_health::server::health_reporter();
        for name in std::iter::once("").chain(named.iter().copied()) {
            reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        // Draining: balancers and the edge stop sending new calls before the server stops.
        let draining = self.shutdown.clone();
        let names = named.to_vec();
        tokio::spawn(async move {
            draining.cancelled().await;
            for name in std::iter::once("").chain(names) {
                reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
        });
        let reflection =
            server::reflection().map_err(|error| StartError::Server(error.to_string()))?;
        let router = add(server::builder(self.context.verifier.clone())
            .add_service(health)
            .add_service(reflection));
        if let Some(local) = &self.context.local {
            local.register(self.service, &router);
        }
        let served = server::serve(
            router,
            listener,
            self.shutdown.clone(),
            self.context.tls.clone(),
        )
        .await;

        // The server has drained. Workers end on the same signal; what they and the last
        // calls committed is then published by the relay's final round.
        for worker in self.workers {
            let _ = worker.await;
        }
        self.relay_shutdown.cancel();
        let _ = self.relay.await;
        self.after_relay_shutdown.cancel();
        for task in self.after_relay {
            let _ = task.await;
        }
        served.map_err(|error| StartError::Server(error.to_string()))
    }
}
