//! Starts LeadService on a loopback port against a fresh database and bus, like
//! production does, and gives tests an authenticated client.

#![allow(dead_code)]

use std::time::Duration;

use aida_core::db::{Count, Database, Sql};
use aida_core::testing::{RunningServer, TestEnv, eventually};
use aida_proto::aida::events::v1::EventEnvelope;
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{
    CaptureLeadRequest, DeleteLeadRequest, GetLeadRequest, Lead, QualifyLeadRequest,
    RejectLeadRequest, UpdateLeadRequest,
};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

#[allow(unused_imports)]
pub use aida_core::testing::{Backend, violated_fields, with_token};

pub struct TestApp {
    pub env: TestEnv,
    pub server: RunningServer,
    pub db: Database,
    pub keys: std::sync::Arc<aida_core::crypto::Keyring>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::start(TestEnv::new(backend).await).await
    }

    /// With settings changed by `configure` first.
    #[allow(dead_code)]
    pub async fn spawn_configured(backend: Backend, configure: impl FnOnce(&mut TestEnv)) -> Self {
        let mut env = TestEnv::new(backend).await;
        configure(&mut env);
        Self::start(env).await
    }

    /// PostgreSQL plus the NATS server at `url`.
    pub async fn spawn_with_nats(url: &str) -> Self {
        Self::start(TestEnv::with_nats(url).await).await
    }

    async fn start(env: TestEnv) -> Self {
        let context = env
            .context(aida_leads::SERVICE, aida_leads::migrations())
            .await;
        let db = context.db.clone();
        let keys = context.keys.clone();
        let server = RunningServer::start(|listener, shutdown| {
            aida_leads::serve(context, listener, shutdown)
        })
        .await;
        Self {
            env,
            server,
            db,
            keys,
        }
    }

    pub async fn client(&self) -> LeadServiceClient<Channel> {
        LeadServiceClient::new(self.server.channel().await)
    }

    /// GetLead as `tenant`.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Lead, Status> {
        let request = self.request(tenant, GetLeadRequest { id: id.to_owned() });
        let mut client = self.client().await;
        client.get_lead(request).await.map(Response::into_inner)
    }

    /// UpdateLead as `tenant` with the mask `paths` (none: the fields `lead` populates).
    pub async fn update(&self, tenant: &str, lead: Lead, paths: &[&str]) -> Result<Lead, Status> {
        let update_mask = (!paths.is_empty()).then(|| prost_types::FieldMask {
            paths: paths.iter().map(|path| (*path).to_owned()).collect(),
        });
        let request = UpdateLeadRequest {
            lead: Some(lead),
            update_mask,
        };
        let mut client = self.client().await;
        client
            .update_lead(self.request(tenant, request))
            .await
            .map(Response::into_inner)
    }

    /// QualifyLead as `tenant`, without an etag.
    pub async fn qualify(&self, tenant: &str, id: &str) -> Result<Lead, Status> {
        let request = QualifyLeadRequest {
            id: id.to_owned(),
            ..Default::default()
        };
        let mut client = self.client().await;
        client
            .qualify_lead(self.request(tenant, request))
            .await
            .map(Response::into_inner)
    }

    /// RejectLead as `tenant` for `reason`, without an etag.
    pub async fn reject(&self, tenant: &str, id: &str, reason: &str) -> Result<Lead, Status> {
        let request = RejectLeadRequest {
            id: id.to_owned(),
            reason: reason.to_owned(),
            etag: String::new(),
        };
        let mut client = self.client().await;
        client
            .reject_lead(self.request(tenant, request))
            .await
            .map(Response::into_inner)
    }

    /// DeleteLead as `tenant`, without an etag.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<(), Status> {
        let request = DeleteLeadRequest {
            id: id.to_owned(),
            etag: String::new(),
        };
        let mut client = self.client().await;
        client
            .delete_lead(self.request(tenant, request))
            .await
            .map(Response::into_inner)
    }

    /// A token for `tenant` with the admin role.
    pub fn token(&self, tenant: &str) -> String {
        self.env.token_with(tenant, &["admin"])
    }

    /// `message` with a bearer token for `tenant`.
    pub fn request<T>(&self, tenant: &str, message: T) -> Request<T> {
        self.env.request(tenant, message)
    }

    pub async fn stop(&mut self) {
        self.server.stop().await;
    }

    /// Stops the server and starts a new one on the same database, bus and data directory.
    pub async fn restart(&mut self) {
        self.server.stop().await;
        let context = self
            .env
            .context(aida_leads::SERVICE, aida_leads::migrations())
            .await;
        self.db = context.db.clone();
        self.keys = context.keys.clone();
        self.server = RunningServer::start(|listener, shutdown| {
            aida_leads::serve(context, listener, shutdown)
        })
        .await;
    }

    pub async fn count(&self, table: &str) -> i64 {
        let count: Count = self
            .db
            .fetch_one(Sql::new(format!("SELECT COUNT(*) AS count FROM {table}")))
            .await
            .expect("count");
        count.count
    }

    /// Every event in CRM_LEADS but the scores (`leads.scored`, published asynchronously
    /// after each change), decoded.
    pub async fn lead_events(&self) -> Vec<(String, String, EventEnvelope)> {
        self.all_lead_events()
            .await
            .into_iter()
            .filter(|(event_type, _, _)| event_type != "leads.scored")
            .collect()
    }

    /// Every event in CRM_LEADS, decoded.
    pub async fn all_lead_events(&self) -> Vec<(String, String, EventEnvelope)> {
        self.env
            .bus
            .stored("CRM_LEADS")
            .await
            .into_iter()
            .map(|message| {
                let envelope = EventEnvelope::decode(message.payload.as_ref()).expect("envelope");
                (message.event_type, message.message_id, envelope)
            })
            .collect()
    }

    /// Waits until CRM_LEADS holds at least `count` events, then returns them.
    pub async fn wait_for_lead_events(&self, count: usize) -> Vec<(String, String, EventEnvelope)> {
        let reached = eventually(Duration::from_secs(20), || async {
            self.lead_events().await.len() >= count
        })
        .await;
        let events = self.lead_events().await;
        assert!(reached, "expected {count} events, found {}", events.len());
        events
    }
}

/// A valid lead to capture.
pub fn lead(email: &str) -> Lead {
    Lead {
        email: email.to_owned(),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
        company: "Analytical Engines".into(),
        title: "Head of Research".into(),
        phone: "+44 20 7946 0958".into(),
        source: aida_proto::aida::leads::v1::LeadSource::WebForm as i32,
        ..Lead::default()
    }
}

/// Captures `lead` for `tenant` without a request id; the captured lead.
pub async fn capture(app: &TestApp, tenant: &str, lead: Lead) -> Lead {
    app.client()
        .await
        .capture_lead(app.request(
            tenant,
            CaptureLeadRequest {
                lead: Some(lead),
                request_id: String::new(),
            },
        ))
        .await
        .expect("capture")
        .into_inner()
}
