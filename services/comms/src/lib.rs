//! CommsService: templates, e-mail and SMS to leads, tracking of opens (human and machine),
//! clicks and replies, one-click unsubscribe, a suppression list and a per-lead frequency
//! cap. TrackingService is its public side, authenticated by sealed link tokens. Events:
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

use aida_core::bus::LEADS_STREAM;
use aida_core::db::Migrations;
use aida_core::pagination::PageTokens;
use aida_core::runner::ServiceRunner;
use aida_core::runtime::{ServiceContext, StartError};
use aida_proto::aida::ai::v1::autonomy_service_server::AutonomyServiceServer;
use aida_proto::aida::comms::v1::comms_service_server::CommsServiceServer;
use aida_proto::aida::comms::v1::tracking_service_server::TrackingServiceServer;
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService as _;

pub use api::{Comms, CommsApi, TrackingApi};
pub use autonomy::{Autonomy, AutonomyApi};
pub use store::CommsStore;

use providers::{
    EmailSender, FileEmailSender, FileSmsSender, HttpSmsSender, SmsSender, SmtpSender,
};

pub const SERVICE: &str = aida_core::mesh::COMMS.name;

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
    let leads_channel = context.peer_channel(
        "services.leads_url",
        &context.settings.services.leads_url,
        aida_core::mesh::LEADS.name,
    )?;
    let autonomy = Arc::new(Autonomy::new(
        autonomy::store::AutonomyStore::new(context.db.clone()),
        context.relay.clone(),
        context.page_tokens.clone(),
        autonomy::policy(&context.settings.comms),
    ));
    let sealer = store::MessageSealer::new(context.keys.clone(), context.settings.crypto.enabled);
    let writer = Arc::new(writer::Writer::from_settings(
        &context.settings,
        context.db.clone(),
        sealer.clone(),
    )?);
    let comms = Arc::new(Comms {
        store: CommsStore::new(context.db.clone(), sealer),
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

    let mut runner = ServiceRunner::new(context.clone(), SERVICE, shutdown);
    // The outreach agent follows CRM_LEADS and sends what is due, as far as it has earned.
    if context.settings.comms.outreach_agent {
        let outreach = Arc::new(agent::Outreach::new(
            comms.clone(),
            agent::LeadBook::new(context.db.clone(), context.keys.clone()),
            autonomy::budget(&context.settings.comms),
        ));
        runner.consume(agent::CONSUMER, LEADS_STREAM, None, outreach.clone());
        runner.spawn(outreach.run(
            Duration::from_secs(context.settings.comms.outreach_tick_secs),
            runner.shutdown(),
        ));
    }
    runner
        .serve(
            listener,
            &[
                CommsServiceServer::<CommsApi>::NAME,
                TrackingServiceServer::<TrackingApi>::NAME,
                AutonomyServiceServer::<AutonomyApi>::NAME,
            ],
            |routes| {
                routes
                    .add_service(CommsServiceServer::new(CommsApi(comms.clone())))
                    .add_service(AutonomyServiceServer::new(AutonomyApi(autonomy)))
                    // Tracking links are opened by mail clients: the sealed token is the
                    // credential.
                    .add_service(TrackingServiceServer::new(TrackingApi(comms)))
            },
        )
        .await
}
