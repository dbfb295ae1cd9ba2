//! AnalyticsService: durable JetStream consumers write every lead, deal and comms event
//! into DuckDB in batches (idempotent by event id, pseudonyms only); the reports read it;
//! a periodic job publishes `analytics.computed` snapshots and `analytics.alerted` alerts.
//! The server also keeps the audit log ([`audit`]): it chains every `audit.recorded` event
//! and serves AuditService.

mod alerts;
mod api;
pub mod audit;
mod ingest;
pub mod warehouse;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use aida_core::consumer::BatchOptions;
use aida_core::db::Migrations;
use aida_core::runner::ServiceRunner;
use aida_core::runtime::{ServiceContext, StartError};
use aida_proto::aida::analytics::v1::analytics_service_server::AnalyticsServiceServer;
use aida_proto::aida::audit::v1::audit_service_server::AuditServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService as _;

pub use alerts::{AlertStore, Monitor};
pub use api::AnalyticsApi;
pub use ingest::{Ingestor, Pseudonymizer, to_row};
pub use warehouse::Warehouse;

pub const SERVICE: &str = aida_core::mesh::ANALYTICS.name;

/// The durable consumers: one per stream analytics reads.
pub const CONSUMERS: [(&str, &str); 3] = [
    ("analytics-leads", aida_core::bus::LEADS_STREAM),
    ("analytics-deals", aida_core::bus::DEALS_STREAM),
    ("analytics-comms", aida_core::bus::COMMS_STREAM),
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
        pseudonyms: Pseudonymizer::new(&context.settings.pseudonym_key()?),
        ingested: Arc::new(AtomicU64::new(0)),
    });
    let batch = BatchOptions {
        max_size: context.settings.analytics.batch_max_events.max(1),
        max_wait: Duration::from_millis(context.settings.analytics.batch_max_wait_ms),
    };
    let mut runner = ServiceRunner::new(context.clone(), SERVICE, shutdown);
    for (name, stream) in CONSUMERS {
        let name = context.settings.analytics.consumer_name(name);
        runner.consume_batched(&name, stream, None, batch, ingestor.clone());
    }
    // One name for every replica: each record is chained once, in delivery order.
    runner.consume_batched(
        audit::CONSUMER,
        aida_core::bus::AUDIT_STREAM,
        None,
        batch,
        Arc::new(audit::Chain {
            db: context.db.clone(),
        }),
    );
    let alert_store = AlertStore::new(context.db.clone());
    let monitor = Monitor {
        warehouse: warehouse.clone(),
        alerts: alert_store.clone(),
        db: context.db.clone(),
        relay: context.relay.clone(),
        interval: Duration::from_secs(context.settings.analytics.snapshot_interval_secs.max(1)),
    };
    if context.settings.analytics.monitor {
        runner.spawn(monitor.run(runner.shutdown()));
    }
    let api = AnalyticsApi {
        warehouse,
        alerts: alert_store,
        page_tokens: context.page_tokens.clone(),
    };
    let audit_api = audit::AuditApi {
        db: context.db.clone(),
        page_tokens: context.page_tokens.clone(),
    };
    runner
        .serve(
            listener,
            &[
                AnalyticsServiceServer::<AnalyticsApi>::NAME,
                AuditServiceServer::<audit::AuditApi>::NAME,
            ],
            |routes| {
                routes
                    .add_service(AnalyticsServiceServer::new(api))
                    .add_service(AuditServiceServer::new(audit_api))
            },
        )
        .await
}
