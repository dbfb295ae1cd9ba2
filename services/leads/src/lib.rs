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

use aida_core::bus::{COMMS_STREAM, DEALS_STREAM, LEADS_STREAM};
use aida_core::db::Migrations;
use aida_core::runner::ServiceRunner;
use aida_core::runtime::{ServiceContext, StartError};
use aida_proto::aida::leads::v1::lead_service_server::LeadServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService as _;

pub use api::{LeadApi, to_proto};
pub use store::LeadStore;

/// The service's name: its database file, health entry and log target.
pub const SERVICE: &str = aida_core::mesh::LEADS.name;

/// This crate's migrations (the leads table and capture idempotency keys).
pub fn migrations() -> Migrations {
    Migrations {
        postgres: sqlx::migrate!("./migrations/postgres"),
        sqlite: sqlx::migrate!("./migrations/sqlite"),
    }
}

/// Serves LeadService (with health and reflection) on `listener` until `shutdown`, with
/// the conversion and scoring consumers and the search re-indexer beside it (see
/// [`aida_core::runner`] for the start and shutdown order).
pub async fn serve(
    context: ServiceContext,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let seal = context.settings.crypto.enabled;
    let store = LeadStore::new(context.db.clone(), context.keys.clone(), seal);
    let sealed = store
        .seal_legacy()
        .await
        .map_err(|error| StartError::Server(format!("sealing stored leads: {error}")))?;
    if sealed > 0 {
        tracing::info!(
            sealed,
            "leads written before encryption at rest are sealed now"
        );
    }
    let index = Arc::new(
        index::SearchIndex::open(&context.settings, store.clone())
            .map_err(|error| StartError::Server(error.to_string()))?,
    );
    let mut runner = ServiceRunner::new(context.clone(), SERVICE, shutdown);
    // The re-indexer heals what a crash between commit and indexing left behind, at start
    // and then periodically; it stops last.
    let reindex = Duration::from_secs(context.settings.ai.reindex_interval_secs.max(1));
    let indexer = index.clone();
    runner.spawn_after_relay(|stop| indexer.run(reindex, stop));
    runner.consume(
        handler::CONSUMER,
        DEALS_STREAM,
        Some("deals.created"),
        Arc::new(handler::ConversionHandler {
            store: store.clone(),
            relay: context.relay.clone(),
        }),
    );

    // Scoring follows lead changes, engagement and outcomes on three streams, one durable
    // consumer (and inbox) each.
    let scorer = Arc::new(scoring::Scorer::new(
        store.clone(),
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
    for (consumer, stream) in [
        (scoring::LEADS_CONSUMER, LEADS_STREAM),
        (scoring::COMMS_CONSUMER, COMMS_STREAM),
        (scoring::OUTCOMES_CONSUMER, DEALS_STREAM),
    ] {
        runner.consume(
            consumer,
            stream,
            None,
            Arc::new(scoring::ScoringHandler {
                scorer: scorer.clone(),
                consumer,
            }),
        );
    }

    let api = LeadApi::new(
        store,
        context.relay.clone(),
        context.page_tokens.clone(),
        index,
        scoring::Scores::new(context.db.clone()),
    );
    runner
        .serve(listener, &[LeadServiceServer::<LeadApi>::NAME], |routes| {
            routes.add_service(LeadServiceServer::new(api))
        })
        .await
}
