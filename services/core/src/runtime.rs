//! Starting a service: the database (migrated), the bus, the outbox relay, token
//! verification and page tokens, from one [`Settings`].

use std::sync::Arc;
use std::time::Duration;

use crate::auth::TokenVerifier;
use crate::bus::{BusError, EventBus, MemoryBus, NatsBus};
use crate::db::{Database, Migrations, core_migrations};
use crate::outbox::Relay;
use crate::pagination::PageTokens;
use crate::settings::{Settings, SettingsError};

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("listen: {0}")]
    Listen(#[from] std::io::Error),
    #[error("server: {0}")]
    Server(String),
}

/// The bus the settings ask for: JetStream when `nats_url` is set, else in-process (in
/// memory: one service alone has nobody to share its events with).
pub async fn connect_bus(settings: &Settings) -> Result<Arc<dyn EventBus>, BusError> {
    Ok(match &settings.nats_url {
        Some(url) => Arc::new(NatsBus::connect_with(url, &settings.bus, &settings.nats).await?),
        None => Arc::new(MemoryBus::new(&settings.bus)),
    })
}

/// The bus of a whole mesh in one process (`aida up`): JetStream when `nats_url` is set,
/// else the in-process bus with its journal under `data_dir/bus`, so that every event a
/// service committed reaches its consumers even when the process is killed and started
/// again.
pub async fn connect_mesh_bus(settings: &Settings) -> Result<Arc<dyn EventBus>, BusError> {
    if settings.nats_url.is_some() {
        return connect_bus(settings).await;
    }
    let bus = MemoryBus::open(&settings.bus, &settings.data_dir.join("bus"))?;
    Ok(Arc::new(bus))
}

/// The token verifier the settings ask for: HS256 with the signing key, and the JWKS of
/// the identity provider when one is configured (fetched now, refreshed when an unknown
/// key id appears).
pub async fn verifier(settings: &Settings, signing_key: &secrecy::SecretString) -> TokenVerifier {
    let auth = &settings.auth;
    let verifier = TokenVerifier::hs256(
        signing_key,
        &auth.issuer,
        &auth.audience,
        Duration::from_secs(auth.leeway_secs),
    )
    .with_claims(crate::auth::ClaimPaths::new(
        &auth.tenant_claim,
        &auth.roles_claim,
    ));
    match &settings.auth.jwks_url {
        Some(url) => {
            let jwks = Arc::new(crate::auth::Jwks::new(
                url,
                Duration::from_secs(settings.auth.jwks_refresh_secs),
            ));
            if !jwks.refresh_if_due().await {
                tracing::warn!(%url, "jwks not reachable at start; tokens it signs wait for a refresh");
            }
            verifier.with_jwks(
                jwks,
                auth.jwks_issuer.as_deref().unwrap_or(&auth.issuer),
                auth.jwks_audience.as_deref().unwrap_or(&auth.audience),
            )
        }
        None => verifier,
    }
}

/// Everything a running service holds.
#[derive(Clone)]
pub struct ServiceContext {
    pub settings: Settings,
    pub db: Database,
    pub bus: Arc<dyn EventBus>,
    pub relay: Relay,
    pub verifier: Arc<TokenVerifier>,
    pub page_tokens: PageTokens,
    /// The keys of encryption at rest.
    pub keys: Arc<crate::crypto::Keyring>,
    /// This service's mesh identity, when mutual TLS is on.
    pub tls: Option<Arc<crate::tls::MeshTls>>,
    /// The process's services, when the service runs beside others (`aida up`): it
    /// registers itself there for in-process callers.
    pub local: Option<crate::server::LocalMesh>,
}

impl ServiceContext {
    /// The options of this service's durable consumer `name` of `stream` (only `filter`'s
    /// subjects when given), with the bus settings' ack wait and delivery limit.
    pub fn durable(
        &self,
        name: &str,
        stream: &str,
        filter: Option<&str>,
    ) -> crate::consumer::ConsumerOptions {
        crate::consumer::ConsumerOptions {
            spec: crate::bus::ConsumerSpec::durable(
                name,
                stream,
                filter,
                Duration::from_secs(self.settings.bus.ack_wait_secs),
            ),
            max_deliver: self.settings.bus.max_deliver,
        }
    }

    /// A lazily connected channel to another service of the mesh at `url` (the setting
    /// named `field`); with mutual TLS the peer must prove it is `spiffe://aida/<identity>`.
    pub fn peer_channel(
        &self,
        field: &str,
        url: &str,
        identity: &str,
    ) -> Result<tonic::transport::Channel, StartError> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|error| StartError::Server(format!("{field}: {error}")))?;
        match &self.tls {
            Some(tls) => crate::tls::channel(tls, endpoint, identity)
                .map_err(|error| StartError::Server(error.to_string())),
            None => Ok(endpoint.connect_lazy()),
        }
    }

    /// Connects the database of `service`, applies core's and the service's migrations and
    /// prepares the relay (not yet running).
    pub async fn start(
        settings: &Settings,
        service: &str,
        bus: Arc<dyn EventBus>,
        mut migrations: Migrations,
    ) -> Result<Self, StartError> {
        if let Some(parent) = settings
            .data_dir
            .to_str()
            .filter(|_| settings.database_url.is_none())
        {
            std::fs::create_dir_all(parent)?;
        }
        let db =
            Database::connect_with(&settings.database_url_for(service), &settings.database).await?;
        db.migrate(&mut core_migrations()).await?;
        db.migrate(&mut migrations).await?;
        let signing_key = settings.signing_key()?;
        let verifier = Arc::new(verifier(settings, &signing_key).await);
        let relay = Relay::new(db.clone(), bus.clone(), settings.outbox.clone());
        let keys = Arc::new(
            crate::crypto::Keyring::open(settings, &db)
                .await
                .map_err(|error| StartError::Server(format!("keyring: {error}")))?,
        );
        let tls = if settings.tls.enabled == Some(true) {
            let tls = crate::tls::MeshTls::load(&settings.certs_dir(), service)
                .map_err(|error| StartError::Server(error.to_string()))?;
            tls.watch(
                Duration::from_secs(settings.tls.reload_secs.max(1)),
                tokio_util::sync::CancellationToken::new(),
            );
            Some(tls)
        } else {
            None
        };
        Ok(Self {
            settings: settings.clone(),
            db,
            bus,
            relay,
            verifier,
            page_tokens: PageTokens::new(&signing_key),
            keys,
            tls,
            local: None,
        })
    }
}
