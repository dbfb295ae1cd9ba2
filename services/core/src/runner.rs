//! The one way a service of the mesh runs: what it serves, what runs beside it, and one
//! start and shutdown order for all of them.
//!
//! ```text
//! start     relay running → workers spawned → health SERVING ("" and each named service)
//!           → reflection, local registration (`aida up`) → listening
//! running   every HEALTH_INTERVAL: NOT_SERVING ("" and named) while the database or the
//!           bus is unreachable, SERVING again once both answer; outbox backlog, pool and
//!           consumer gauges sampled
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
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

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
    durables: Vec<crate::bus::ConsumerSpec>,
}

/// How often a running service checks its database and bus and samples its gauges.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// Whether the service's `dependency` (`database`, `bus`) answered at the last check.
pub const DEPENDENCY_UP: &str = "aida_dependency_up";
/// Connections of the service's database pool, by `state` (`in_use`, `idle`).
pub const POOL_CONNECTIONS: &str = "aida_db_pool_connections";

impl ServiceRunner {
    /// Starts the relay of `context` for `service` (its name in the mesh registry),
    /// running until `shutdown` and the drain that follows it.
    pub fn new(
        context: ServiceContext,
        service: &'static str,
        shutdown: CancellationToken,
    ) -> Self {
        // Before anything records: a sample taken without the recorder is lost.
        crate::metrics::install();
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
            durables: Vec::new(),
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
        self.durables.push(options.spec.clone());
        let task = consumer::run(
            self.context.bus.clone(),
            options,
            handler,
            self.shutdown.clone(),
        );
        self.spawn(task);
    }

    /// A durable consumer `name` of `stream` handed events in batches (see
    /// [`consumer::run_batched`]), as a worker.
    pub fn consume_batched(
        &mut self,
        name: &str,
        stream: &str,
        filter: Option<&str>,
        batch: consumer::BatchOptions,
        handler: Arc<dyn consumer::BatchHandler>,
    ) {
        let options = self.context.durable(name, stream, filter);
        self.durables.push(options.spec.clone());
        let task = consumer::run_batched(
            self.context.bus.clone(),
            options,
            batch,
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
        tokio::spawn(watch(
            Watched {
                service: self.service,
                named: named.to_vec(),
                context: self.context.clone(),
                durables: self.durables.clone(),
            },
            reporter,
            self.shutdown.clone(),
        ));
        let reflection =
            server::reflection().map_err(|error| StartError::Server(error.to_string()))?;
        let audit = if self.context.settings.audit.enabled {
            crate::audit::AuditLayer::new(
                crate::audit::Sink::Outbox {
                    db: self.context.db.clone(),
                    relay: self.context.relay.clone(),
                },
                self.service,
            )
        } else {
            crate::audit::AuditLayer::off()
        };
        let router = add(server::builder(self.context.verifier.clone())
            .audited(audit)
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

/// What the health watcher of one service looks at.
struct Watched {
    service: &'static str,
    named: Vec<&'static str>,
    context: ServiceContext,
    durables: Vec<crate::bus::ConsumerSpec>,
}

/// Reports the service's health until shutdown: NOT_SERVING ("" and named) while its
/// database or bus is unreachable, and for good once draining begins (balancers and the
/// edge stop sending new calls before the server stops). Samples the gauges meanwhile.
async fn watch(watched: Watched, reporter: HealthReporter, shutdown: CancellationToken) {
    let mut serving = true;
    let mut round: u64 = 0;
    loop {
        // Draining wins over everything here, even a probe that is still waiting.
        let checked = async {
            tokio::time::sleep(HEALTH_INTERVAL).await;
            let database = watched.context.db.ping(HEALTH_INTERVAL).await;
            let bus = watched.context.bus.is_connected();
            sample(&watched, database, round).await;
            (database, bus)
        };
        let (database, bus) = tokio::select! {
            () = shutdown.cancelled() => break,
            checked = checked => checked,
        };
        round += 1;
        for (dependency, up) in [("database", database), ("bus", bus)] {
            metrics::gauge!(DEPENDENCY_UP, "service" => watched.service, "dependency" => dependency)
                .set(if up { 1.0 } else { 0.0 });
        }
        let healthy = database && bus;
        if healthy == serving {
            continue;
        }
        serving = healthy;
        if healthy {
            tracing::info!(
                service = watched.service,
                "database and bus answer again; serving"
            );
        } else {
            tracing::warn!(
                service = watched.service,
                database,
                bus,
                "a dependency is unreachable; reporting NOT_SERVING"
            );
        }
        let status = if healthy {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in std::iter::once("").chain(watched.named.iter().copied()) {
            reporter.set_service_status(name, status).await;
        }
    }
    for name in std::iter::once("").chain(watched.named.iter().copied()) {
        reporter
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
}

/// Samples the gauges no single call sees: the pool, the outbox backlog and (every few
/// rounds, as it asks the bus) each durable's pending messages.
async fn sample(watched: &Watched, database: bool, round: u64) {
    let (in_use, idle) = watched.context.db.pool_state();
    metrics::gauge!(POOL_CONNECTIONS, "service" => watched.service, "state" => "in_use")
        .set(f64::from(in_use));
    metrics::gauge!(POOL_CONNECTIONS, "service" => watched.service, "state" => "idle")
        .set(f64::from(idle));
    if database && let Ok(backlog) = watched.context.relay.pending_count().await {
        metrics::gauge!(crate::outbox::BACKLOG, "service" => watched.service).set(backlog as f64);
    }
    if round.is_multiple_of(5) && watched.context.bus.is_connected() {
        for spec in &watched.durables {
            if let Some(pending) = watched.context.bus.pending(spec).await {
                metrics::gauge!(consumer::PENDING, "consumer" => spec.durable_name.clone())
                    .set(pending as f64);
            }
        }
    }
}
