//! Starts LeadService on a loopback port against a fresh database and bus, like
//! production does, and gives tests an authenticated client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use aida_core::Settings;
use aida_core::auth::TokenIssuer;
use aida_core::db::{Count, Database, Sql};
use aida_core::runtime::ServiceContext;
use aida_core::testing::{TestBus, TestPostgres, eventually, shared_nats_url};
use aida_proto::aida::events::v1::EventEnvelope;
use aida_proto::aida::leads::v1::Lead;
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use prost::Message;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tonic::transport::Channel;

/// Which production-or-embedded pair a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL and NATS JetStream (the shared test servers).
    Production,
    /// SQLite and the in-process bus.
    Embedded,
}

pub struct TestApp {
    pub address: SocketAddr,
    pub settings: Settings,
    pub bus: TestBus,
    pub db: Database,
    pub issuer: TokenIssuer,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    _postgres: Option<TestPostgres>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        match backend {
            Backend::Production => Self::spawn_with_nats(&shared_nats_url()).await,
            Backend::Embedded => Self::start(None, TestBus::memory()).await,
        }
    }

    /// PostgreSQL plus the NATS server at `url`.
    pub async fn spawn_with_nats(url: &str) -> Self {
        let postgres = TestPostgres::create().await;
        Self::start(Some(postgres), TestBus::nats(url).await).await
    }

    async fn start(postgres: Option<TestPostgres>, bus: TestBus) -> Self {
        let dir = tempfile::tempdir().expect("data dir");
        let mut settings = Settings::embedded();
        settings.data_dir = dir.path().to_path_buf();
        settings.database_url = postgres.as_ref().map(TestPostgres::secret_url);
        settings.bus.namespace = bus.namespace();
        settings.auth.signing_key = Some(SecretString::from(format!(
            "test-key-{}",
            aida_core::random_hex(16)
        )));
        settings.outbox.poll_interval_ms = 50;
        let signing_key = settings.signing_key().expect("signing key");
        let issuer =
            TokenIssuer::hs256(&signing_key, &settings.auth.issuer, &settings.auth.audience);

        let context = ServiceContext::start(
            &settings,
            aida_leads::SERVICE,
            bus.shared(),
            aida_leads::migrations(),
        )
        .await
        .expect("start leads");
        let db = context.db.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let serving = shutdown.clone();
        let task = tokio::spawn(async move {
            aida_leads::serve(context, listener, serving)
                .await
                .expect("serve leads");
        });
        Self {
            address,
            settings,
            bus,
            db,
            issuer,
            shutdown,
            task: Some(task),
            _postgres: postgres,
            _dir: dir,
        }
    }

    pub async fn client(&self) -> LeadServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.address))
            .expect("uri")
            .connect()
            .await
            .expect("connect to leads");
        LeadServiceClient::new(channel)
    }

    /// A token for `tenant` with the admin role.
    pub fn token(&self, tenant: &str) -> String {
        self.issuer
            .mint(tenant, "tester", &["admin"], Duration::from_secs(600))
            .expect("mint")
    }

    /// `message` with a bearer token for `tenant`.
    pub fn request<T>(&self, tenant: &str, message: T) -> Request<T> {
        with_token(&self.token(tenant), message)
    }

    /// Stops the server gracefully and waits for it (relay flushed).
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub async fn count(&self, table: &str) -> i64 {
        let count: Count = self
            .db
            .fetch_one(Sql::new(format!("SELECT COUNT(*) AS count FROM {table}")))
            .await
            .expect("count");
        count.count
    }

    /// Every event in CRM_LEADS, decoded.
    pub async fn lead_events(&self) -> Vec<(String, String, EventEnvelope)> {
        self.bus
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

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn with_token<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
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

/// The field names of a status's BadRequest details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad_request| {
            bad_request
                .field_violations
                .into_iter()
                .map(|violation| violation.field)
                .collect()
        })
        .unwrap_or_default()
}
