//! CommsService: templates, e-mail and SMS to leads, tracking of opens (human and machine),
//! clicks and replies, one-click unsubscribe, a suppression list and a per-lead frequency
//! cap. TrackingService is its public side, authenticated by signed link tokens. Events:
//! `comms.sent`, `comms.opened`, `comms.clicked`, `comms.replied`, `comms.unsubscribed`.
//! The same server hosts AutonomyService ([`autonomy`]): the earned autonomy of the AI
//! agents that write and send, with `comms.autonomy_changed` and `comms.autonomy_proposed`.

pub mod agent;
mod api;
pub mod autonomy;
pub mod domain;
pub mod providers;
mod store;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use aida_core::bus::ConsumerSpec;
use aida_core::consumer::{self, ConsumerOptions};
use aida_core::db::Migrations;
use aida_core::pagination::PageTokens;
use aida_core::runtime::{ServiceContext, StartError};
use aida_core::server;
use aida_proto::aida::ai::v1::autonomy_service_server::AutonomyServiceServer;
use aida_proto::aida::comms::v1::comms_service_server::CommsServiceServer;
use aida_proto::aida::comms::v1::tracking_service_server::TrackingServiceServer;
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::{Comms, CommsApi, TrackingApi};
pub use autonomy::{Autonomy, AutonomyApi};
pub use store::CommsStore;

use providers::{
    EmailSender, FileEmailSender, FileSmsSender, HttpSmsSender, SmsSender, SmtpSender,
};

pub const SERVICE: &str = "comms";

/// This crate's migrations (templates, messages, suppressions).
pub fn migrations() -> Migrations {
    Migrations {
        postgres: sqlx::migrate!("./migrations/postgres"),
        sqlite: sqlx::migrate!("./migrations/sqlite"),
    }
}

/// The e-mail and SMS senders.
type Senders = (Arc<dyn EmailSender>, Arc<dyn SmsSender>);

/// The senders the settings ask for: SMTP and an HTTP SMS provider, or directories.
fn senders(context: &ServiceContext) -> Result<Senders, StartError> {
    let settings = &context.settings.comms;
    let email: Arc<dyn EmailSender> = match &settings.smtp_url {
        Some(url) => Arc::new(SmtpSender::new(url).map_err(StartError::Server)?),
        None => {
            let dir = settings
                .mail_dir
                .clone()
                .unwrap_or_else(|| context.settings.data_dir.join("mail"));
            Arc::new(FileEmailSender::new(dir)?)
        }
    };
    let sms: Arc<dyn SmsSender> = match &settings.sms_url {
        Some(url) => Arc::new(
            HttpSmsSender::new(
                url.clone(),
                settings.sms_api_key.clone(),
                settings.sms_from.clone(),
            )
            .map_err(StartError::Server)?,
        ),
        None => {
            let dir = settings
                .sms_dir
                .clone()
                .unwrap_or_else(|| context.settings.data_dir.join("sms"));
            Arc::new(FileSmsSender::new(dir, settings.sms_from.clone())?)
        }
    };
    Ok((email, sms))
}

/// Serves CommsService and TrackingService on `listener` until `shutdown`.
pub async fn serve(
    context: ServiceContext,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let (email, sms) = senders(&context)?;
    let leads_endpoint =
        tonic::transport::Endpoint::from_shared(context.settings.services.leads_url.clone())
            .map_err(|error| StartError::Server(format!("services.leads_url: {error}")))?;
    // With mutual TLS, LeadService must prove it is spiffe://aida/leads.
    let leads_channel = match &context.tls {
        Some(tls) => aida_core::tls::channel(tls, leads_endpoint, "leads")
            .map_err(|error| StartError::Server(error.to_string()))?,
        None => leads_endpoint.connect_lazy(),
    };
    let autonomy = Arc::new(Autonomy::new(
        autonomy::store::AutonomyStore::new(context.db.clone()),
        context.relay.clone(),
        context.page_tokens.clone(),
        autonomy::policy(&context.settings.comms),
    ));
    let writer = Arc::new(writer::Writer::from_settings(
        &context.settings,
        context.db.clone(),
    )?);
    let comms = Arc::new(Comms {
        store: CommsStore::new(context.db.clone()),
        relay: context.relay.clone(),
        page_tokens: context.page_tokens.clone(),
        tracking_tokens: PageTokens::for_purpose(
            &context.settings.signing_key()?,
            "tracking links",
            "token",
        ),
        settings: context.settings.comms.clone(),
        email,
        sms,
        leads: LeadServiceClient::new(leads_channel),
        writer,
        autonomy: autonomy.clone(),
    });

    let relay_shutdown = CancellationToken::new();
    let relay = tokio::spawn(context.relay.clone().run(relay_shutdown.clone()));
    // The outreach agent follows CRM_LEADS and sends what is due, as far as it has earned.
    let mut agent_tasks = Vec::new();
    if context.settings.comms.outreach_agent {
        let outreach = Arc::new(agent::Outreach::new(
            comms.clone(),
            agent::LeadBook::new(context.db.clone()),
            autonomy::budget(&context.settings.comms),
        ));
        agent_tasks.push(tokio::spawn(consumer::run(
            context.bus.clone(),
            ConsumerOptions {
                spec: ConsumerSpec::durable(
                    agent::CONSUMER,
                    "CRM_LEADS",
                    None,
                    Duration::from_secs(context.settings.bus.ack_wait_secs),
                ),
                max_deliver: context.settings.bus.max_deliver,
            },
            outreach.clone(),
            relay_shutdown.clone(),
        )));
        agent_tasks.push(tokio::spawn(outreach.run(
            Duration::from_secs(context.settings.comms.outreach_tick_secs),
            relay_shutdown.clone(),
        )));
    }
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CommsServiceServer<CommsApi>>()
        .await;
    health_reporter
        .set_serving::<TrackingServiceServer<TrackingApi>>()
        .await;
    health_reporter
        .set_serving::<AutonomyServiceServer<AutonomyApi>>()
        .await;
    let reporter = health_reporter.clone();
    let draining = shutdown.clone();
    tokio::spawn(async move {
        draining.cancelled().await;
        reporter
            .set_not_serving::<CommsServiceServer<CommsApi>>()
            .await;
        reporter
            .set_not_serving::<TrackingServiceServer<TrackingApi>>()
            .await;
        reporter
            .set_not_serving::<AutonomyServiceServer<AutonomyApi>>()
            .await;
    });
    let reflection = server::reflection().map_err(|error| StartError::Server(error.to_string()))?;
    let router = server::builder(context.verifier.clone())
        .add_service(health)
        .add_service(reflection)
        .add_service(CommsServiceServer::new(CommsApi(comms.clone())))
        .add_service(AutonomyServiceServer::new(AutonomyApi(autonomy)))
        // Tracking links are opened by mail clients: the signed token is the credential.
        .add_service(TrackingServiceServer::new(TrackingApi(comms)));
    if let Some(local) = &context.local {
        local.register(SERVICE, &router);
    }
    let served = server::serve(router, listener, shutdown, context.tls.clone()).await;
    relay_shutdown.cancel();
    let _ = relay.await;
    for task in agent_tasks {
        let _ = task.await;
    }
    served.map_err(|error| StartError::Server(error.to_string()))
}
