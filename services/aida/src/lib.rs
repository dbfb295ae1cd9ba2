//! The `aida` command: run the whole mesh on embedded defaults (`aida up`), run one service
//! (`aida serve leads`), apply migrations (`aida migrate`), mint development tokens
//! (`aida token`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aida_core::auth::{ROLES, TokenIssuer};
use aida_core::bus::EventBus;
use aida_core::db::{Database, core_migrations};
use aida_core::runtime::{ServiceContext, connect_bus};
use aida_core::{Settings, server, telemetry};
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
    /// Runs one service.
    Serve {
        /// The service: leads.
        service: String,
    },
    /// Applies database migrations of every service and exits.
    Migrate,
    /// Prints a development token signed with the configured (or generated) key.
    Token {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Role (repeat for several): admin, manager, sales_rep, analyst, viewer, service.
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

/// The services `aida serve` knows.
pub const SERVICES: [&str; 1] = [aida_leads::SERVICE];

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Up => {
            telemetry::init(&settings.log);
            let shutdown = CancellationToken::new();
            server::cancel_on_signal(shutdown.clone());
            let mesh = Mesh::start(&settings, shutdown.clone()).await?;
            print_banner(&settings, &mesh)?;
            mesh.wait().await
        }
        Command::Serve { service } => {
            telemetry::init(&settings.log);
            if !SERVICES.contains(&service.as_str()) {
                bail!(
                    "unknown service '{service}'; known: {}",
                    SERVICES.join(", ")
                );
            }
            if settings.nats_url.is_none() {
                tracing::warn!(
                    "no nats_url: events stay in this process (set AIDA_NATS_URL for JetStream)"
                );
            }
            let shutdown = CancellationToken::new();
            server::cancel_on_signal(shutdown.clone());
            let bus = connect_bus(&settings).await?;
            let listener = TcpListener::bind(settings.listen.leads())
                .await
                .context("bind leads")?;
            tracing::info!(address = %listener.local_addr()?, "leads listening");
            let context = ServiceContext::start(
                &settings,
                aida_leads::SERVICE,
                bus,
                aida_leads::migrations(),
            )
            .await?;
            aida_leads::serve(context, listener, shutdown).await?;
            Ok(())
        }
        Command::Migrate => {
            telemetry::init(&settings.log);
            for service in SERVICES {
                let db = Database::connect(&settings.database_url_for(service)).await?;
                db.migrate(&mut core_migrations()).await?;
                db.migrate(&mut aida_leads::migrations()).await?;
                db.close().await;
                println!("{service}: migrations applied");
            }
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
    );
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    Ok(issuer.mint(tenant, subject, &roles, ttl)?)
}

/// Every service of the mesh running in this process.
pub struct Mesh {
    pub leads_address: SocketAddr,
    pub bus: Arc<dyn EventBus>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), aida_core::runtime::StartError>>>,
    shutdown: CancellationToken,
}

impl Mesh {
    /// Starts every service; returns once all of them listen.
    pub async fn start(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let bus = connect_bus(settings).await?;
        let leads_listener = TcpListener::bind(settings.listen.leads())
            .await
            .with_context(|| format!("bind leads on {}", settings.listen.leads()))?;
        let leads_address = leads_listener.local_addr()?;
        let leads = ServiceContext::start(
            settings,
            aida_leads::SERVICE,
            bus.clone(),
            aida_leads::migrations(),
        )
        .await?;
        let tasks = vec![tokio::spawn(aida_leads::serve(
            leads,
            leads_listener,
            shutdown.clone(),
        ))];
        Ok(Self {
            leads_address,
            bus,
            tasks,
            shutdown,
        })
    }

    /// Waits until every service stopped (after the shutdown signal, or a failure, which
    /// stops the others too).
    pub async fn wait(self) -> anyhow::Result<()> {
        let mut first_error = None;
        for task in self.tasks {
            let outcome = task.await;
            let failure = match outcome {
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
    use std::io::Write;
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
    let banner = format!(
        "AIDA-CRM is up ({storage} under {data}, {bus})\n\
         \x20 LeadService   grpc://{leads}\n\
         \x20 health        grpc.health.v1.Health on every address; reflection enabled\n\
         \n\
         Development token (tenant \"dev\", role admin, valid 24 h):\n\
         \x20 export AIDA_TOKEN={token}\n\
         Mint others with: aida token --tenant <tenant> --role <role>\n",
        data = settings.data_dir.display(),
        leads = mesh.leads_address,
    );
    // A closed stdout (a pipe whose reader left) must not stop the mesh.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes());
    let _ = stdout.flush();
    Ok(())
}
