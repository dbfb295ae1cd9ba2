//! DealService: pipelines with ordered stages, deals moving through them, won or lost;
//! a deal for every qualified lead; live deal changes for watchers. Every change commits
//! with its event (`deals.created`, `deals.updated`, `deals.progressed`, `deals.won`,
//! `deals.lost`) through the transactional outbox.

mod api;
pub mod domain;
mod handler;
mod store;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use aida_core::bus::ConsumerSpec;
use aida_core::consumer::{self, ConsumerOptions};
use aida_core::db::Migrations;
use aida_core::runtime::{ServiceContext, StartError};
use aida_core::server;
use aida_proto::aida::deals::v1::deal_service_server::DealServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::{DealApi, deal_to_proto, pipeline_to_proto};
pub use handler::CONSUMER as QUALIFIED_LEADS_CONSUMER;
pub use store::DealStore;
pub use watch::WatchHub;

pub const SERVICE: &str = "deals";

/// This crate's migrations (pipelines, deals, creation idempotency keys).
pub fn migrations() -> Migrations {
    Migrations {
        postgres: sqlx::migrate!("./migrations/postgres"),
        sqlite: sqlx::migrate!("./migrations/sqlite"),
    }
}

/// Serves DealService on `listener` until `shutdown`, with the qualified-lead consumer and
/// the watch feed running beside it.
pub async fn serve(
    context: ServiceContext,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let relay_shutdown = CancellationToken::new();
    let relay = tokio::spawn(context.relay.clone().run(relay_shutdown.clone()));
    let store = DealStore::new(context.db.clone());

    let handler = Arc::new(handler::QualifiedLeadHandler {
        store: store.clone(),
        relay: context.relay.clone(),
        currency: context.settings.deals.default_currency.clone(),
    });
    let options = ConsumerOptions {
        spec: ConsumerSpec::durable(
            handler::CONSUMER,
            "CRM_LEADS",
            Some("leads.qualified"),
            Duration::from_secs(context.settings.bus.ack_wait_secs),
        ),
        max_deliver: context.settings.bus.max_deliver,
    };
    let consumer = tokio::spawn(consumer::run(
        context.bus.clone(),
        options,
        handler,
        shutdown.clone(),
    ));
    let hub = WatchHub::new();
    let watch = tokio::spawn(hub.clone().run(context.bus.clone(), shutdown.clone()));

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<DealServiceServer<DealApi>>()
        .await;
    let reporter = health_reporter.clone();
    let draining = shutdown.clone();
    tokio::spawn(async move {
        draining.cancelled().await;
        reporter
            .set_not_serving::<DealServiceServer<DealApi>>()
            .await;
    });
    let api = DealApi::new(
        store,
        context.relay.clone(),
        context.page_tokens.clone(),
        hub,
    );
    let reflection = server::reflection().map_err(|error| StartError::Server(error.to_string()))?;
    let router = server::builder(context.verifier.clone())
        .add_service(health)
        .add_service(reflection)
        .add_service(DealServiceServer::new(api));
    if let Some(local) = &context.local {
        local.register(SERVICE, &router);
    }
    let served = server::serve(router, listener, shutdown, context.tls.clone()).await;

    let _ = consumer.await;
    let _ = watch.await;
    relay_shutdown.cancel();
    let _ = relay.await;
    served.map_err(|error| StartError::Server(error.to_string()))
}
