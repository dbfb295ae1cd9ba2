//! AnalyticsService: durable JetStream consumers write every lead, deal and comms event
//! into DuckDB in batches (idempotent by event id, pseudonyms only); the reports read it;
//! a periodic job publishes `analytics.computed` snapshots and `analytics.alerted` alerts.

mod alerts;
mod api;
mod ingest;
pub mod warehouse;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use aida_core::bus::ConsumerSpec;
use aida_core::consumer::{self, BatchOptions, ConsumerOptions};
use aida_core::db::Migrations;
use aida_core::runtime::{ServiceContext, StartError};
use aida_core::server;
use aida_proto::aida::analytics::v1::analytics_service_server::AnalyticsServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use alerts::{AlertStore, Monitor};
pub use api::AnalyticsApi;
pub use ingest::{Ingestor, Pseudonymizer, to_row};
pub use warehouse::Warehouse;

pub const SERVICE: &str = "analytics";

/// The durable consumers: one per stream analytics reads.
pub const CONSUMERS: [(&str, &str); 3] = [
    ("analytics-leads", "CRM_LEADS"),
    ("analytics-deals", "CRM_DEALS"),
    ("analytics-comms", "CRM_COMMS"),
];

/// This crate's SQL migrations (alert rules and alerts; events live in DuckDB).
pub fn migrations() -> Migrations {
    Migrations {
        postgres: sqlx::migrate!("./migrations/postgres"),
        sqlite: sqlx::migrate!("./migrations/sqlite"),
    }
}

/// Serves AnalyticsService on `listener` until `shutdown`, with the ingesting consumers and
/// the snapshot/alert job beside it.
pub async fn serve(
    context: ServiceContext,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let path = context
        .settings
        .analytics
        .duckdb_path
        .clone()
        .unwrap_or_else(|| context.settings.data_dir.join("analytics.duckdb"));
    let warehouse =
        Warehouse::open(&path).map_err(|error| StartError::Server(error.to_string()))?;
    let ingestor = Arc::new(Ingestor {
        warehouse: warehouse.clone(),
        pseudonyms: Pseudonymizer::new(&context.settings.signing_key()?),
        ingested: Arc::new(AtomicU64::new(0)),
    });
    let batch = BatchOptions {
        max_size: context.settings.analytics.batch_max_events.max(1),
        max_wait: Duration::from_millis(context.settings.analytics.batch_max_wait_ms),
    };
    let mut tasks = Vec::new();
    for (name, stream) in CONSUMERS {
        let options = ConsumerOptions {
            spec: ConsumerSpec::durable(
                name,
                stream,
                None,
                Duration::from_secs(context.settings.bus.ack_wait_secs),
            ),
            max_deliver: context.settings.bus.max_deliver,
        };
        tasks.push(tokio::spawn(consumer::run_batched(
            context.bus.clone(),
            options,
            batch,
            ingestor.clone(),
            shutdown.clone(),
        )));
    }
    let relay_shutdown = CancellationToken::new();
    let relay = tokio::spawn(context.relay.clone().run(relay_shutdown.clone()));
    let alert_store = AlertStore::new(context.db.clone());
    let monitor = Monitor {
        warehouse: warehouse.clone(),
        alerts: alert_store.clone(),
        db: context.db.clone(),
        relay: context.relay.clone(),
        interval: Duration::from_secs(context.settings.analytics.snapshot_interval_secs.max(1)),
    };
    tasks.push(tokio::spawn(monitor.run(shutdown.clone())));

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AnalyticsServiceServer<AnalyticsApi>>()
        .await;
    let reporter = health_reporter.clone();
    let draining = shutdown.clone();
    tokio::spawn(async move {
        draining.cancelled().await;
        reporter
            .set_not_serving::<AnalyticsServiceServer<AnalyticsApi>>()
            .await;
    });
    let api = AnalyticsApi {
        warehouse,
        alerts: alert_store,
        page_tokens: context.page_tokens.clone(),
    };
    let reflection = server::reflection().map_err(|error| StartError::Server(error.to_string()))?;
    let router = server::builder(context.verifier.clone())
        .add_service(health)
        .add_service(reflection)
        .add_service(AnalyticsServiceServer::new(api));
    if let Some(local) = &context.local {
        local.register(SERVICE, &router);
    }
    let served = server::serve(router, listener, shutdown, context.tls.clone()).await;
    for task in tasks {
        let _ = task.await;
    }
    relay_shutdown.cancel();
    let _ = relay.await;
    served.map_err(|error| StartError::Server(error.to_string()))
}
