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

use aida_core::bus::LEADS_STREAM;
use aida_core::db::Migrations;
use aida_core::runner::ServiceRunner;
use aida_core::runtime::{ServiceContext, StartError};
use aida_proto::aida::deals::v1::deal_service_server::DealServiceServer;
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService as _;

pub use api::{DealApi, deal_to_proto, pipeline_to_proto};
pub use handler::CONSUMER as QUALIFIED_LEADS_CONSUMER;
pub use store::DealStore;
pub use watch::WatchHub;

pub const SERVICE: &str = aida_core::mesh::DEALS.name;

/// This crate's migrations (pipelines, deals, creation idempotency keys).
pub fn migrations() -> Migrations {
    Migrations {
        postgres: sqlx::migrate!("./migrations/postgres"),
        sqlite: sqlx::migrate!("./migrations/sqlite"),
    }
}

/// Serves DealService on `listener` until `shutdown`, with the qualified-lead consumer and
/// the watch feed running beside it (see [`aida_core::runner`] for the order).
pub async fn serve(
    context: ServiceContext,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let store = DealStore::new(context.db.clone());
    let mut runner = ServiceRunner::new(context.clone(), SERVICE, shutdown);
    runner.consume(
        handler::CONSUMER,
        LEADS_STREAM,
        Some("leads.qualified"),
        Arc::new(handler::QualifiedLeadHandler {
            store: store.clone(),
            relay: context.relay.clone(),
            currency: context.settings.deals.default_currency.clone(),
        }),
    );
    let hub = WatchHub::new();
    runner.spawn(hub.clone().run(context.bus.clone(), runner.shutdown()));
    let leads = context.peer_channel(
        "services.leads_url",
        &context.settings.services.leads_url,
        aida_core::mesh::LEADS.name,
    )?;
    let api = DealApi::new(
        store,
        context.relay.clone(),
        context.page_tokens.clone(),
        hub,
        LeadServiceClient::new(leads),
    );
    runner
        .serve(listener, &[DealServiceServer::<DealApi>::NAME], |routes| {
            routes.add_service(DealServiceServer::new(api))
        })
        .await
}
