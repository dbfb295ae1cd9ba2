//! LeadService: captures prospects, qualifies or rejects them, lists them; every change
//! commits with its event (`leads.captured`, `leads.qualified`, `leads.rejected`,
//! `leads.updated`, `leads.deleted`, `leads.merged`) through the transactional outbox.
//! Leads are searchable by meaning ([`index`]: embeddings in the vector store, healed by a
//! background re-indexer), duplicates are found by [`duplicates`] and merged.

mod api;
pub mod domain;
pub mod duplicates;
mod handler;
pub mod index;
pub mod scoring;
mod store;

use std::sync::Arc;
use std::time::Duration;

use aida_core::bus::ConsumerSpec;
use aida_core::consumer::{self, ConsumerOptions};
use aida_core::db::Migrations;
use aida_core::runtime::{ServiceContext, StartError};
use aida_core::server;
use aida_proto::aida::leads::v1::lead_service_server::LeadServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::{LeadApi, to_proto};
pub use store::LeadStore;

/// The service's name: its database file, health entry and log target.
pub const SERVICE: &str = "leads";

/// This crate's migrations (the leads table and capture idempotency keys).
pub fn migrations() -> Migrations {
    Migrations {
        postgres: sqlx::migrate!("./migrations/postgres"),
        sqlite: sqlx::migrate!("./migrations/sqlite"),
    }
}

/// Serves LeadService (with health and reflection) on `listener` until `shutdown`; then
/// lets in-flight calls finish and flushes the outbox.
pub async fn serve(
    context: ServiceContext,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let store = LeadStore::new(context.db.clone());
    let index = Arc::new(
        index::SearchIndex::open(&context.settings, store.clone())
            .map_err(|error| StartError::Server(error.to_string()))?,
    );
    // The re-indexer heals what a crash between commit and indexing left behind, at start
    // and then periodically; it stops with the server.
    let indexer_shutdown = CancellationToken::new();
    let indexer = tokio::spawn(index.clone().run(
        Duration::from_secs(context.settings.ai.reindex_interval_secs.max(1)),
        indexer_shutdown.clone(),
    ));
    let relay_shutdown = CancellationToken::new();
    let relay = tokio::spawn(context.relay.clone().run(relay_shutdown.clone()));
    let conversions = tokio::spawn(consumer::run(
        context.bus.clone(),
        ConsumerOptions {
            spec: ConsumerSpec::durable(
                handler::CONSUMER,
                "CRM_DEALS",
                Some("deals.created"),
                Duration::from_secs(context.settings.bus.ack_wait_secs),
            ),
            max_deliver: context.settings.bus.max_deliver,
        },
        Arc::new(handler::ConversionHandler {
            store: LeadStore::new(context.db.clone()),
            relay: context.relay.clone(),
        }),
        shutdown.clone(),
    ));

    // Scoring follows lead changes, engagement and outcomes on three streams, one durable
    // consumer (and inbox) each.
    let scorer = Arc::new(scoring::Scorer::new(
        LeadStore::new(context.db.clone()),
        context.db.clone(),
        context.relay.clone(),
        index.embedder(),
        index.vectors(),
        aida_ai::scoring::TrainConfig {
            min_labelled: context.settings.ai.scoring_min_labelled,
            min_per_class: context.settings.ai.scoring_min_per_class,
            ..aida_ai::scoring::TrainConfig::default()
        },
    ));
    let mut scoring_consumers = Vec::new();
    for (consumer, stream) in [
        (scoring::LEADS_CONSUMER, "CRM_LEADS"),
        (scoring::COMMS_CONSUMER, "CRM_COMMS"),
        (scoring::OUTCOMES_CONSUMER, "CRM_DEALS"),
    ] {
        scoring_consumers.push(tokio::spawn(consumer::run(
            context.bus.clone(),
            ConsumerOptions {
                spec: ConsumerSpec::durable(
                    consumer,
                    stream,
                    None,
                    Duration::from_secs(context.settings.bus.ack_wait_secs),
                ),
                max_deliver: context.settings.bus.max_deliver,
            },
            Arc::new(scoring::ScoringHandler {
                scorer: scorer.clone(),
                consumer,
            }),
            shutdown.clone(),
        )));
    }

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<LeadServiceServer<LeadApi>>()
        .await;
    let reporter = health_reporter.clone();
    let draining = shutdown.clone();
    tokio::spawn(async move {
        draining.cancelled().await;
        reporter
            .set_not_serving::<LeadServiceServer<LeadApi>>()
            .await;
    });

    let api = LeadApi::new(
        store,
        context.relay.clone(),
        context.page_tokens.clone(),
        index,
        scoring::Scores::new(context.db.clone()),
    );
    let reflection = server::reflection().map_err(|error| StartError::Server(error.to_string()))?;
    let router = server::builder(context.verifier.clone())
        .add_service(health)
        .add_service(reflection)
        // Every LeadService call is authenticated; health and reflection are public.
        .add_service(LeadServiceServer::new(api));
    if let Some(local) = &context.local {
        local.register(SERVICE, &router);
    }
    let served = server::serve(router, listener, shutdown, context.tls.clone()).await;

    // The server has drained: flush what the last calls committed, then stop the relay.
    let _ = conversions.await;
    for consumer in scoring_consumers {
        let _ = consumer.await;
    }
    relay_shutdown.cancel();
    let _ = relay.await;
    indexer_shutdown.cancel();
    let _ = indexer.await;
    served.map_err(|error| StartError::Server(error.to_string()))
}
