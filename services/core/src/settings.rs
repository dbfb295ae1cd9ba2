//! Typed settings, layered: built-in defaults, then an optional TOML file (`--config` or
//! `AIDA_CONFIG`), then `AIDA_*` environment variables (`__` separates sections, so
//! `AIDA_AUTH__ISSUER` sets `auth.issuer`). Unknown keys are rejected, and secrets are wrapped
//! so that they never appear in logs or `Debug` output.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Everything a service needs to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where embedded defaults keep their files (SQLite, DuckDB, keys).
    pub data_dir: PathBuf,
    /// `postgres://…` for production; `sqlite://…` or unset for the embedded default (a
    /// SQLite file per service under `data_dir`).
    #[serde(skip_serializing)]
    pub database_url: Option<SecretString>,
    /// PostgreSQL pool and statement limits (`database_url` names the server).
    pub database: DatabaseSettings,
    /// `nats://…` for JetStream; unset for the in-process bus.
    pub nats_url: Option<String>,
    /// Credentials and TLS of the NATS connection (`nats_url` names the server).
    pub nats: NatsSettings,
    pub bus: BusSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
    pub listen: ListenSettings,
    pub outbox: OutboxSettings,
    pub services: ServicesSettings,
    pub deals: DealsSettings,
    pub comms: CommsSettings,
    pub analytics: AnalyticsSettings,
    pub ai: AiSettings,
    pub edge: EdgeSettings,
    pub tls: TlsSettings,
    pub telemetry: TelemetrySettings,
    pub audit: AuditSettings,
    pub crypto: CryptoSettings,
}

/// Encryption at rest ([`crate::crypto`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CryptoSettings {
    /// Whether personal data is sealed when written (on by default; off only to measure
    /// what encryption costs, as `aida-bench-audit` does). Sealed data stays readable either
    /// way.
    pub enabled: bool,
    /// The master keys, `id:hex` entries (32 bytes as 64 hex digits) separated by commas;
    /// the last is current. Unset: a key file `data_dir/master.keys` is created on first
    /// use (`aida up`); a deployed service (`database_url` set) refuses to start without it,
    /// so that every service and replica unwraps the same tenant keys. To rotate: deploy a
    /// new last key everywhere, then run `aida keys rotate`.
    #[serde(skip_serializing)]
    pub master_keys: Option<SecretString>,
}

/// The audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Whether calls are audited (on by default; off only to measure what the audit log
    /// costs, as `aida-bench-audit` does).
    pub enabled: bool,
}

/// Metrics, traces and error reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Whether the process records Prometheus metrics at all (on by default; off only to
    /// measure what they cost).
    pub metrics: bool,
    /// The port of the `/metrics` listener of `aida serve <service>` (on `listen.host`);
    /// unset: the service's default from the mesh registry (9451 leads, 9452 deals, 9453
    /// comms, 9454 analytics); 0 picks a free one. The edge serves `/metrics` on its own
    /// port, and in `aida up` that is the whole mesh's.
    pub metrics_port: Option<u16>,
    /// An OpenTelemetry collector (OTLP over gRPC, `http://collector:4317`): every span
    /// is exported there as the service `aida-<service>` (`aida` for `aida up`). Unset:
    /// no traces leave the process (log lines still carry a caller's trace id).
    pub otlp_endpoint: Option<String>,
    /// A Sentry DSN: panics and every INTERNAL (gRPC) or 5xx (edge) answer are reported
    /// there with the request id and trace id, never with a person's data.
    #[serde(skip_serializing)]
    pub sentry_dsn: Option<SecretString>,
}

/// The PostgreSQL pool (SQLite keeps its own small pool). TLS is asked for in the URL:
/// `?sslmode=verify-full&sslrootcert=/run/secrets/pg-ca.pem` checks the server's
/// certificate against that CA and its host name.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Connections each service keeps open at most.
    pub max_connections: u32,
    /// How long a request waits for a free connection before it fails (UNAVAILABLE).
    pub acquire_timeout_ms: u64,
    /// PostgreSQL's `statement_timeout` for every connection; 0: none.
    pub statement_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            max_connections: 32,
            acquire_timeout_ms: 10_000,
            statement_timeout_ms: 0,
        }
    }
}

/// How the services authenticate to NATS and verify it. At most one of `creds_file`,
/// `user` (with `password`) and `token`; TLS is used with `tls://` URLs or when `ca_file`
/// is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// A `.creds` file (user JWT and NKey seed), as `nsc` writes it.
    pub creds_file: Option<PathBuf>,
    pub user: Option<String>,
    #[serde(skip_serializing)]
    pub password: Option<SecretString>,
    #[serde(skip_serializing)]
    pub token: Option<SecretString>,
    /// PEM CA that signed the server's certificate (turns TLS on).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key, for servers that verify clients.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Settings {
    /// Where `aida serve <service>` serves `/metrics`.
    pub fn metrics_address(&self, service: &crate::mesh::MeshService) -> SocketAddr {
        SocketAddr::new(
            self.listen.host,
            self.telemetry.metrics_port.unwrap_or(service.metrics_port),
        )
    }
}

impl AiSettings {
    pub fn model_dir(&self, data_dir: &Path) -> PathBuf {
        self.model_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("models").join("all-MiniLM-L6-v2"))
    }

    pub fn vector_dir(&self, data_dir: &Path) -> PathBuf {
        self.vector_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("vectors"))
    }
}

/// The AI writer, embeddings and the vector store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiSettings {
    /// OpenRouter API key; unset: drafts come from the offline template writer.
    #[serde(skip_serializing)]
    pub openrouter_api_key: Option<SecretString>,
    /// OpenRouter's API base.
    pub openrouter_base_url: String,
    /// The chat model that writes drafts.
    pub model: String,
    /// Seconds one model call may take.
    pub timeout_secs: u64,
    /// The embedding model directory (default `<data_dir>/models/all-MiniLM-L6-v2`, filled
    /// by `aida models fetch`); without it a lexical fallback embeds, labelled as such.
    pub model_dir: Option<PathBuf>,
    /// A Chroma server (`http://host:8000`); unset: the embedded vector index in
    /// `vector_dir`.
    pub chroma_url: Option<String>,
    /// The embedded vector index (default `<data_dir>/vectors`).
    pub vector_dir: Option<PathBuf>,
    /// The sender named in drafts.
    pub sender_name: String,
    /// The sender's company named in drafts.
    pub sender_company: String,
    /// How often LeadService re-indexes leads whose indexed version is stale.
    pub reindex_interval_secs: u64,
    /// Lead scoring learns from outcomes once the tenant has this many won or lost leads
    /// (and `scoring_min_per_class` of each); until then the documented prior scores.
    pub scoring_min_labelled: usize,
    pub scoring_min_per_class: usize,
}

/// Mutual TLS between the services and from the edge to them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// On or off; unset means on for `aida up` (which makes its own certificates) and off
    /// for `aida serve`.
    pub enabled: Option<bool>,
    /// Certificate directory (`ca.pem`, `<service>.pem`, `<service>.key`); default
    /// `<data_dir>/certs`.
    pub dir: Option<PathBuf>,
    /// How often certificate files are checked for changes.
    pub reload_secs: u64,
}

impl Settings {
    /// The certificate directory.
    pub fn certs_dir(&self) -> PathBuf {
        self.tls
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("certs"))
    }
}

/// The edge gateway: REST/JSON, grpc-web and gRPC in; gRPC to the services out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSettings {
    /// Listen port (HTTP/1.1 and HTTP/2).
    pub port: u16,
    /// Request bodies larger than this are 413.
    pub max_body_bytes: usize,
    /// Deadline of a call to a service when the client sets none (`grpc-timeout`).
    pub request_timeout_ms: u64,
    /// Sustained requests per second per tenant and principal.
    pub rate_limit_per_second: u32,
    /// Requests a principal may burst above the sustained rate.
    pub rate_limit_burst: u32,
    /// How long a cached GET response (analytics reports) stays fresh.
    pub cache_ttl_secs: u64,
    /// Origins allowed by CORS (`*` for any). Empty by default: `aida up` allows any
    /// origin, a deployed edge (`aida serve edge`) refuses to start until it is set.
    pub cors_origins: Vec<String>,
    /// Request headers larger than this in total are 431 (RFC 6585).
    pub max_header_bytes: usize,
    /// Sustained requests per minute per client address that carry no valid token (or
    /// call a public tracking link): counted before any token is verified, so a token
    /// flood costs nothing; authenticated calls count against their principal instead.
    pub anonymous_rate_limit_per_minute: u32,
    /// Requests a client address may burst above the anonymous rate.
    pub anonymous_rate_limit_burst: u32,
    /// Replicas of each service, as gRPC URLs; calls are balanced over the healthy ones.
    /// These are the blue deployment.
    pub upstreams: Upstreams,
    /// The green deployment's replicas, for blue-green releases (empty: none). `aida
    /// release switch green` routes every service there once all of them serve.
    pub green_upstreams: Upstreams,
    /// The colour the edge routes to when it starts: `blue` or `green`.
    pub color: Color,
    /// In `aida up`, call the services of the same process in process (no socket, no
    /// TLS: nothing leaves the process) instead of over loopback.
    pub in_process: bool,
    /// Proxies in front of the edge (addresses or CIDR ranges, such as Fly's
    /// `172.16.0.0/12` or `fdaa::/16`). Only when the TCP peer is one of them does the edge
    /// take the client address from `Fly-Client-IP` or `X-Forwarded-For`; rate limits of
    /// anonymous and public calls count per client address.
    pub trusted_proxies: Vec<String>,
    /// Which header a trusted proxy names the client in: `x-forwarded-for` (the right-most
    /// entry that is not itself a trusted proxy) or `fly-client-ip` (Fly.io's proxy). Only
    /// that one is read, so a client cannot pass its own copy of the other through.
    pub client_ip_header: String,
}

impl EdgeSettings {
    /// The trusted proxies as networks (a bare address is a network of one).
    pub fn trusted_proxies(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("'{entry}' is neither an address nor a CIDR range"))
            })
            .collect()
    }
}

/// One of the two deployments of a blue-green release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// The replicas of `edge.upstreams`.
    Blue,
    /// The replicas of `edge.green_upstreams`.
    Green,
}

impl Color {
    pub fn name(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

/// gRPC URLs of the replicas of each service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstreams {
    pub leads: Vec<String>,
    pub deals: Vec<String>,
    pub comms: Vec<String>,
    pub analytics: Vec<String>,
}

impl Upstreams {
    /// The replicas of the mesh service `name` (empty for a name the mesh does not know).
    pub fn of(&self, name: &str) -> &[String] {
        match name {
            "leads" => &self.leads,
            "deals" => &self.deals,
            "comms" => &self.comms,
            "analytics" => &self.analytics,
            _ => &[],
        }
    }

    /// The replicas of `name`, to replace (`None` for a name the mesh does not know).
    pub fn of_mut(&mut self, name: &str) -> Option<&mut Vec<String>> {
        match name {
            "leads" => Some(&mut self.leads),
            "deals" => Some(&mut self.deals),
            "comms" => Some(&mut self.comms),
            "analytics" => Some(&mut self.analytics),
            _ => None,
        }
    }
}

/// Where a service reaches the others (gRPC URLs). `aida up` fills these in itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicesSettings {
    pub leads_url: String,
}

/// DealService behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DealsSettings {
    /// Currency of deals created from qualified leads (ISO 4217).
    pub default_currency: String,
}

/// CommsService behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommsSettings {
    /// `smtp://user:pass@host:587?tls=required`, `smtps://host:465` or `smtp://host:25`
    /// (no TLS). Unset: every e-mail is written as an `.eml` file to `mail_dir`.
    #[serde(skip_serializing)]
    pub smtp_url: Option<SecretString>,
    /// Where e-mails go without SMTP (default `<data_dir>/mail`).
    pub mail_dir: Option<PathBuf>,
    /// The From header of every e-mail.
    pub from_address: String,
    /// HTTP endpoint of the SMS provider (JSON POST). Unset: SMS are written as `.json`
    /// files to `sms_dir`.
    pub sms_url: Option<String>,
    /// Bearer key for the SMS provider.
    #[serde(skip_serializing)]
    pub sms_api_key: Option<SecretString>,
    /// Where SMS go without a provider (default `<data_dir>/sms`).
    pub sms_dir: Option<PathBuf>,
    /// Sender id or number of SMS.
    pub sms_from: String,
    /// Base URL of the public tracking links (the edge): `<base>/t/o/<token>` and so on.
    pub public_base_url: String,
    /// Messages a lead may receive per rolling 24 hours.
    pub max_messages_per_lead_per_day: u32,
    /// Opens within this many seconds of sending are counted as machine opens (prefetch).
    pub machine_open_window_secs: u64,
    /// Earned autonomy: counted reviews an AI agent needs at L0, L1, L2, L3 before a
    /// promotion from that level is proposed.
    pub autonomy_min_decisions: Vec<u32>,
    /// Earned autonomy: hours an AI agent must spend at L0, L1, L2, L3 before a promotion
    /// from that level is proposed.
    pub autonomy_min_hours_at_level: Vec<u32>,
    /// The outreach agent: drafts a first touch for every scored lead never contacted, and
    /// sends it on its own as far as its earned autonomy allows.
    pub outreach_agent: bool,
    /// L3: how long a person has to veto the agent's scheduled draft before it is sent.
    pub outreach_veto_window_secs: u64,
    /// L4: first touches the agent may send on its own per UTC day (all segments).
    pub outreach_daily_volume: u32,
    /// L4: the UTC hours `[start, end)` in which the agent never sends on its own (wraps
    /// past midnight when start > end; equal hours: no quiet hours).
    pub outreach_quiet_hours: Vec<u32>,
    /// How often the agent looks for scheduled drafts that are due.
    pub outreach_tick_secs: u64,
    /// How long an unsubscribe link keeps working after the message is sent.
    pub unsubscribe_link_ttl_days: u32,
    /// How long open-pixel and click links keep counting after the message is sent.
    pub tracking_link_ttl_days: u32,
}

/// AnalyticsService behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsSettings {
    /// The DuckDB file (default `<data_dir>/analytics.duckdb`).
    pub duckdb_path: Option<PathBuf>,
    /// How often `analytics.computed` snapshots and alert rules are evaluated.
    pub snapshot_interval_secs: u64,
    /// Events written to DuckDB per batch at most.
    pub batch_max_events: usize,
    /// How long a batch waits for more events.
    pub batch_max_wait_ms: u64,
    /// This instance's name among several analytics replicas (`r1`, `r2`, … or Swarm's
    /// `{{.Task.Slot}}`): each replica keeps its own DuckDB and must read every event, so
    /// each gets durable consumers of its own (`analytics-<instance>-leads`, …). Unset:
    /// the single instance's `analytics-leads`, …
    pub instance: Option<String>,
    /// Whether this instance publishes `analytics.computed` snapshots and evaluates alert
    /// rules. Exactly one instance should (read replicas turn it off), or alerts open twice.
    pub monitor: bool,
    /// The key of the owners' pseudonyms in DuckDB (HMAC-SHA256), a secret of its own:
    /// rotating the JWT key must not change every pseudonym. Unset: a random key is
    /// created in `data_dir/analytics-pseudonym.key` on first use (`aida up`); a deployed
    /// analytics service (`database_url` set) refuses to start without it, so that every
    /// replica writes the same pseudonyms.
    #[serde(skip_serializing)]
    pub pseudonym_key: Option<SecretString>,
}

impl AnalyticsSettings {
    /// The durable consumer of `stream` named `base` (`analytics-leads`) for this instance.
    pub fn consumer_name(&self, base: &str) -> String {
        match &self.instance {
            Some(instance) => match base.strip_prefix("analytics-") {
                Some(rest) => format!("analytics-{instance}-{rest}"),
                None => format!("{base}-{instance}"),
            },
            None => base.to_owned(),
        }
    }
}

/// Event bus behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSettings {
    /// Prefix for stream names and subjects; empty in production. Tests set a unique one
    /// so that they can share one NATS server (`t1` gives stream `T1_CRM_LEADS` with
    /// subjects `t1.leads.>`).
    pub namespace: String,
    /// A message that failed this many deliveries goes to the dead-letter stream.
    pub max_deliver: u32,
    /// How long a consumer may hold a message before it is redelivered.
    pub ack_wait_secs: u64,
    /// JetStream duplicate window: a republished event id within it is dropped.
    pub duplicate_window_secs: u64,
    /// Copies JetStream keeps of each stream: 1 on a single server, 3 on a cluster of
    /// three (an existing stream is updated to it at start).
    pub stream_replicas: usize,
}

/// Bearer-token verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Required `iss` claim.
    pub issuer: String,
    /// Required `aud` claim.
    pub audience: String,
    /// HS256 signing key. Unset: a random key is created in `data_dir/dev-signing.key`
    /// on first use, which suits `aida up` and `aida token`.
    #[serde(skip_serializing)]
    pub signing_key: Option<SecretString>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// JWKS URL of the identity provider (Supabase: `<project>/auth/v1/.well-known/jwks.json`):
    /// RS256 and ES256 tokens are verified with its keys, cached, and refreshed when an
    /// unknown `kid` appears (at most once per `jwks_refresh_secs`).
    pub jwks_url: Option<String>,
    pub jwks_refresh_secs: u64,
    /// Required `iss` of tokens signed by a JWKS key (Supabase:
    /// `https://<project>.supabase.co/auth/v1`); unset: `issuer`.
    pub jwks_issuer: Option<String>,
    /// Required `aud` of tokens signed by a JWKS key (Supabase: `authenticated`); unset:
    /// `audience`.
    pub jwks_audience: Option<String>,
    /// Where a token carries its tenant: a claim name or a dotted path into nested
    /// objects (Supabase: `app_metadata.tenant_id`). `aida token` writes it there too.
    pub tenant_claim: String,
    /// Where a token carries its roles: a string or an array of strings, by name or
    /// dotted path (Supabase: `app_metadata.roles`).
    pub roles_claim: String,
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info,aida_leads=debug`; `RUST_LOG` overrides it.
    pub filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Listen addresses. Port 0 picks a free port (tests).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSettings {
    pub host: IpAddr,
    pub leads_port: u16,
    pub deals_port: u16,
    pub comms_port: u16,
    pub analytics_port: u16,
}

impl ListenSettings {
    /// Where the mesh service `name` listens (`None` for a name the mesh does not know).
    pub fn address_of(&self, name: &str) -> Option<SocketAddr> {
        let port = match name {
            "leads" => self.leads_port,
            "deals" => self.deals_port,
            "comms" => self.comms_port,
            "analytics" => self.analytics_port,
            _ => return None,
        };
        Some(SocketAddr::new(self.host, port))
    }

    pub fn leads(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.leads_port)
    }

    pub fn deals(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.deals_port)
    }

    pub fn comms(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.comms_port)
    }

    pub fn analytics(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.analytics_port)
    }
}

/// The transactional outbox relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// How often the relay looks for events when nobody woke it.
    pub poll_interval_ms: u64,
    /// Events published per round.
    pub batch_size: u32,
    /// Published events are deleted from the outbox after this long.
    pub retention_hours: u64,
}

/// The serializable part of the defaults (secrets have no defaults).
#[derive(Serialize)]
struct Defaults {
    data_dir: PathBuf,
    database: DatabaseSettings,
    nats: NatsSettings,
    bus: BusSettings,
    auth: AuthSettings,
    log: LogSettings,
    listen: ListenSettings,
    outbox: OutboxSettings,
    services: ServicesSettings,
    deals: DealsSettings,
    comms: CommsSettings,
    analytics: AnalyticsSettings,
    ai: AiSettings,
    edge: EdgeSettings,
    tls: TlsSettings,
    telemetry: TelemetrySettings,
    audit: AuditSettings,
    crypto: CryptoSettings,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            database: DatabaseSettings::default(),
            nats: NatsSettings::default(),
            bus: BusSettings {
                namespace: String::new(),
                max_deliver: 5,
                ack_wait_secs: 30,
                duplicate_window_secs: 120,
                stream_replicas: 1,
            },
            auth: AuthSettings {
                issuer: "aida-dev".into(),
                audience: "aida-crm".into(),
                signing_key: None,
                leeway_secs: 30,
                jwks_url: None,
                jwks_refresh_secs: 60,
                jwks_issuer: None,
                jwks_audience: None,
                tenant_claim: "tenant_id".into(),
                roles_claim: "roles".into(),
            },
            log: LogSettings {
                format: LogFormat::Text,
                filter: "info".into(),
            },
            listen: ListenSettings {
                host: IpAddr::V4(Ipv4Addr::LOCALHOST),
                leads_port: crate::mesh::LEADS.default_port,
                deals_port: crate::mesh::DEALS.default_port,
                comms_port: crate::mesh::COMMS.default_port,
                analytics_port: crate::mesh::ANALYTICS.default_port,
            },
            outbox: OutboxSettings {
                poll_interval_ms: 500,
                batch_size: 256,
                retention_hours: 24,
            },
            services: ServicesSettings {
                leads_url: loopback(&crate::mesh::LEADS),
            },
            deals: DealsSettings {
                default_currency: "EUR".into(),
            },
            comms: CommsSettings {
                smtp_url: None,
                mail_dir: None,
                from_address: "AIDA CRM <no-reply@aida.localhost>".into(),
                sms_url: None,
                sms_api_key: None,
                sms_dir: None,
                sms_from: "AIDA".into(),
                public_base_url: "http://127.0.0.1:8080".into(),
                max_messages_per_lead_per_day: 3,
                machine_open_window_secs: 2,
                autonomy_min_decisions: vec![50, 100, 200, 500],
                autonomy_min_hours_at_level: vec![72, 168, 336, 720],
                outreach_agent: true,
                outreach_veto_window_secs: 4 * 3600,
                outreach_daily_volume: 100,
                outreach_quiet_hours: vec![20, 7],
                outreach_tick_secs: 15,
                unsubscribe_link_ttl_days: 365,
                tracking_link_ttl_days: 90,
            },
            analytics: AnalyticsSettings {
                duckdb_path: None,
                snapshot_interval_secs: 60,
                batch_max_events: 1000,
                batch_max_wait_ms: 200,
                instance: None,
                monitor: true,
                pseudonym_key: None,
            },
            ai: AiSettings {
                openrouter_api_key: None,
                openrouter_base_url: "https://openrouter.ai/api/v1".into(),
                model: "moonshotai/kimi-k2".into(),
                timeout_secs: 30,
                model_dir: None,
                chroma_url: None,
                vector_dir: None,
                sender_name: "The AIDA team".into(),
                sender_company: String::new(),
                reindex_interval_secs: 60,
                scoring_min_labelled: 30,
                scoring_min_per_class: 5,
            },
            edge: EdgeSettings {
                port: 8080,
                max_body_bytes: 1024 * 1024,
                request_timeout_ms: 30_000,
                rate_limit_per_second: 50,
                rate_limit_burst: 100,
                cache_ttl_secs: 30,
                cors_origins: Vec::new(),
                max_header_bytes: 32 * 1024,
                anonymous_rate_limit_per_minute: 6000,
                anonymous_rate_limit_burst: 200,
                upstreams: Upstreams {
                    leads: vec![loopback(&crate::mesh::LEADS)],
                    deals: vec![loopback(&crate::mesh::DEALS)],
                    comms: vec![loopback(&crate::mesh::COMMS)],
                    analytics: vec![loopback(&crate::mesh::ANALYTICS)],
                },
                green_upstreams: Upstreams {
                    leads: Vec::new(),
                    deals: Vec::new(),
                    comms: Vec::new(),
                    analytics: Vec::new(),
                },
                color: Color::Blue,
                in_process: true,
                trusted_proxies: Vec::new(),
                client_ip_header: "x-forwarded-for".into(),
            },
            tls: TlsSettings {
                enabled: None,
                dir: None,
                reload_secs: 10,
            },
            telemetry: TelemetrySettings {
                metrics: true,
                metrics_port: None,
                otlp_endpoint: None,
                sentry_dsn: None,
            },
            audit: AuditSettings { enabled: true },
            crypto: CryptoSettings {
                enabled: true,
                master_keys: None,
            },
        }
    }
}

/// The default URL of a mesh service: its default port on loopback.
fn loopback(service: &crate::mesh::MeshService) -> String {
    format!("http://127.0.0.1:{}", service.default_port)
}

/// `AIDA_*` variables that are not settings: the settings file itself, the Python that
/// `aida models fetch` runs, the token the `aida up` banner tells users to export, and the
/// model directory of `aida-bench-ai`.
pub const NOT_SETTINGS: [&str; 4] = ["CONFIG", "PYTHON", "TOKEN", "EMBED_MODEL_DIR"];

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings: {0}")]
    Invalid(Box<figment::Error>),
    #[error("settings: {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("settings: {0}")]
    Io(#[from] std::io::Error),
}

impl From<figment::Error> for SettingsError {
    fn from(error: figment::Error) -> Self {
        Self::Invalid(Box::new(error))
    }
}

impl Settings {
    /// Defaults, then `file` (when given), then `AIDA_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Defaults::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(SettingsError::Field {
                    field: "config",
                    message: format!("{} does not exist", file.display()),
                });
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("AIDA_").ignore(&NOT_SETTINGS).split("__"));
        let settings: Settings = figment.extract()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Built-in defaults only (no file, no environment): the embedded configuration.
    pub fn embedded() -> Self {
        let settings: Settings = Figment::from(Serialized::defaults(Defaults::default()))
            .extract()
            .expect("built-in defaults are valid");
        settings
    }

    /// Checks what serde cannot: URL schemes and ranges.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if let Some(url) = &self.database_url {
            let url = url.expose_secret();
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                return Err(SettingsError::Field {
                    field: "database_url",
                    message: "must start with postgres://, postgresql:// or sqlite:".into(),
                });
            }
        }
        // Each server of a cluster list: nats:// or tls://, user info allowed, a numeric
        // port when one is given.
        let bad_server = |server: &str| {
            let Some(rest) = server
                .strip_prefix("nats://")
                .or_else(|| server.strip_prefix("tls://"))
            else {
                return true;
            };
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            match host.rsplit_once(':') {
                Some((_, port)) if !host.ends_with(']') => port.parse::<u16>().is_err(),
                _ => host.is_empty(),
            }
        };
        if let Some(url) = &self.nats_url
            && url.split(',').map(str::trim).any(bad_server)
        {
            return Err(SettingsError::Field {
                field: "nats_url",
                message: "nats://host:port or tls://host:port, several separated by commas".into(),
            });
        }
        if let Some(url) = &self.telemetry.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(SettingsError::Field {
                field: "telemetry.otlp_endpoint",
                message: "an OTLP gRPC endpoint such as http://collector:4317".into(),
            });
        }
        if let Some(dsn) = &self.telemetry.sentry_dsn
            && dsn.expose_secret().parse::<sentry::types::Dsn>().is_err()
        {
            return Err(SettingsError::Field {
                field: "telemetry.sentry_dsn",
                message: "a Sentry DSN such as https://key@o0.ingest.sentry.io/0".into(),
            });
        }
        let currency = &self.deals.default_currency;
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(SettingsError::Field {
                field: "deals.default_currency",
                message: "an ISO 4217 code such as EUR".into(),
            });
        }
        for (field, values) in [
            (
                "comms.autonomy_min_decisions",
                &self.comms.autonomy_min_decisions,
            ),
            (
                "comms.autonomy_min_hours_at_level",
                &self.comms.autonomy_min_hours_at_level,
            ),
        ] {
            if values.len() != 4 {
                return Err(SettingsError::Field {
                    field,
                    message: format!("four values (for L0, L1, L2, L3), not {}", values.len()),
                });
            }
        }
        let quiet = &self.comms.outreach_quiet_hours;
        if quiet.len() != 2 || quiet.iter().any(|hour| *hour > 23) {
            return Err(SettingsError::Field {
                field: "comms.outreach_quiet_hours",
                message: "two UTC hours from 0 to 23: [start, end)".into(),
            });
        }
        if self.comms.outreach_veto_window_secs > 30 * 24 * 3600 {
            return Err(SettingsError::Field {
                field: "comms.outreach_veto_window_secs",
                message: "at most 30 days (2592000)".into(),
            });
        }
        if self.comms.outreach_tick_secs == 0 {
            return Err(SettingsError::Field {
                field: "comms.outreach_tick_secs",
                message: "at least 1".into(),
            });
        }
        if let Some(url) = &self.comms.smtp_url {
            let url = url.expose_secret();
            if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                return Err(SettingsError::Field {
                    field: "comms.smtp_url",
                    message: "must start with smtp:// or smtps://".into(),
                });
            }
        }
        if !(self.comms.public_base_url.starts_with("http://")
            || self.comms.public_base_url.starts_with("https://"))
        {
            return Err(SettingsError::Field {
                field: "comms.public_base_url",
                message: "must start with http:// or https://".into(),
            });
        }
        for (field, days) in [
            (
                "comms.unsubscribe_link_ttl_days",
                self.comms.unsubscribe_link_ttl_days,
            ),
            (
                "comms.tracking_link_ttl_days",
                self.comms.tracking_link_ttl_days,
            ),
        ] {
            if !(1..=3650).contains(&days) {
                return Err(SettingsError::Field {
                    field,
                    message: "must be between 1 and 3650 days".into(),
                });
            }
        }
        if self.edge.max_header_bytes < 1024 {
            return Err(SettingsError::Field {
                field: "edge.max_header_bytes",
                message: "must be at least 1024".into(),
            });
        }
        if self.edge.anonymous_rate_limit_per_minute == 0 {
            return Err(SettingsError::Field {
                field: "edge.anonymous_rate_limit_per_minute",
                message: "must be at least 1".into(),
            });
        }
        if !(1..=5).contains(&self.bus.stream_replicas) {
            return Err(SettingsError::Field {
                field: "bus.stream_replicas",
                message: "between 1 and 5 (JetStream's limit); 3 on a cluster of three".into(),
            });
        }
        if self.database.max_connections == 0 {
            return Err(SettingsError::Field {
                field: "database.max_connections",
                message: "must be at least 1".into(),
            });
        }
        let nats = &self.nats;
        let methods = [
            nats.creds_file.is_some(),
            nats.user.is_some(),
            nats.token.is_some(),
        ];
        if methods.iter().filter(|set| **set).count() > 1 {
            return Err(SettingsError::Field {
                field: "nats",
                message: "at most one of creds_file, user (with password) and token".into(),
            });
        }
        if nats.user.is_some() != nats.password.is_some() {
            return Err(SettingsError::Field {
                field: "nats.password",
                message: "nats.user and nats.password go together".into(),
            });
        }
        if nats.cert_file.is_some() != nats.key_file.is_some() {
            return Err(SettingsError::Field {
                field: "nats.key_file",
                message: "nats.cert_file and nats.key_file go together".into(),
            });
        }
        for (field, file) in [
            ("nats.creds_file", &nats.creds_file),
            ("nats.ca_file", &nats.ca_file),
            ("nats.cert_file", &nats.cert_file),
            ("nats.key_file", &nats.key_file),
        ] {
            if let Some(file) = file
                && !file.is_file()
            {
                return Err(SettingsError::Field {
                    field,
                    message: format!("{} is not a readable file", file.display()),
                });
            }
        }
        const REGISTERED: [&str; 7] = ["sub", "exp", "nbf", "iat", "iss", "aud", "jti"];
        for (field, path) in [
            ("auth.tenant_claim", &self.auth.tenant_claim),
            ("auth.roles_claim", &self.auth.roles_claim),
        ] {
            let first = path.split('.').next().unwrap_or_default();
            if path.split('.').any(str::is_empty) || REGISTERED.contains(&first) {
                return Err(SettingsError::Field {
                    field,
                    message: "a claim name or dotted path such as app_metadata.tenant_id, not a \
                              registered claim"
                        .into(),
                });
            }
        }
        let (tenant, roles) = (&self.auth.tenant_claim, &self.auth.roles_claim);
        if tenant == roles
            || tenant.starts_with(&format!("{roles}."))
            || roles.starts_with(&format!("{tenant}."))
        {
            return Err(SettingsError::Field {
                field: "auth.roles_claim",
                message: "tenant and roles need claims of their own, neither inside the other"
                    .into(),
            });
        }
        let green = &self.edge.green_upstreams;
        let named = [&green.leads, &green.deals, &green.comms, &green.analytics]
            .iter()
            .filter(|replicas| !replicas.is_empty())
            .count();
        if named != 0 && named != 4 {
            return Err(SettingsError::Field {
                field: "edge.green_upstreams",
                message: "a green deployment names replicas of all four services, or of none"
                    .into(),
            });
        }
        if self.edge.color == Color::Green && named == 0 {
            return Err(SettingsError::Field {
                field: "edge.color",
                message: "green, but edge.green_upstreams names no replica".into(),
            });
        }
        match self.edge.client_ip_header.as_str() {
            "x-forwarded-for" | "fly-client-ip" => {}
            _ => {
                return Err(SettingsError::Field {
                    field: "edge.client_ip_header",
                    message: "x-forwarded-for or fly-client-ip".into(),
                });
            }
        }
        if let Err(message) = self.edge.trusted_proxies() {
            return Err(SettingsError::Field {
                field: "edge.trusted_proxies",
                message,
            });
        }
        if let Some(instance) = &self.analytics.instance
            && (instance.is_empty()
                || instance.len() > 32
                || !instance
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(SettingsError::Field {
                field: "analytics.instance",
                message: "1 to 32 letters, digits, '-' or '_'".into(),
            });
        }
        if let Some(key) = &self.auth.signing_key
            && key.expose_secret().len() < 32
        {
            return Err(SettingsError::Field {
                field: "auth.signing_key",
                message: "must be at least 32 characters".into(),
            });
        }
        if let Some(key) = &self.analytics.pseudonym_key
            && key.expose_secret().len() < 32
        {
            return Err(SettingsError::Field {
                field: "analytics.pseudonym_key",
                message: "must be at least 32 characters".into(),
            });
        }
        if let Some(keys) = &self.crypto.master_keys
            && let Err(crate::crypto::CryptoError::Config { field, message }) =
                crate::crypto::LocalKeys::parse(keys.expose_secret(), "crypto.master_keys")
        {
            return Err(SettingsError::Field { field, message });
        }
        if self.bus.max_deliver == 0 {
            return Err(SettingsError::Field {
                field: "bus.max_deliver",
                message: "must be at least 1".into(),
            });
        }
        if self.outbox.batch_size == 0 {
            return Err(SettingsError::Field {
                field: "outbox.batch_size",
                message: "must be at least 1".into(),
            });
        }
        if !self
            .bus
            .namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(SettingsError::Field {
                field: "bus.namespace",
                message: "only letters, digits and underscores".into(),
            });
        }
        Ok(())
    }

    /// The settings in effect, as TOML (what `aida config check` prints): every secret
    /// that is set shows as `[redacted]`, and the database URL keeps everything but its
    /// password.
    pub fn effective_toml(&self) -> String {
        const REDACTED: &str = "[redacted]";
        let mut table = match toml::Table::try_from(self) {
            Ok(table) => table,
            Err(error) => return format!("# settings cannot be shown: {error}\n"),
        };
        if let Some(url) = &self.database_url {
            table.insert(
                "database_url".into(),
                toml::Value::String(redact_password(url.expose_secret())),
            );
        }
        if let Some(url) = &self.nats_url {
            let servers: Vec<String> = url.split(',').map(redact_password).collect();
            table.insert("nats_url".into(), toml::Value::String(servers.join(",")));
        }
        let secrets = [
            ("auth", "signing_key", self.auth.signing_key.is_some()),
            (
                "analytics",
                "pseudonym_key",
                self.analytics.pseudonym_key.is_some(),
            ),
            (
                "ai",
                "openrouter_api_key",
                self.ai.openrouter_api_key.is_some(),
            ),
            ("comms", "smtp_url", self.comms.smtp_url.is_some()),
            ("comms", "sms_api_key", self.comms.sms_api_key.is_some()),
            ("crypto", "master_keys", self.crypto.master_keys.is_some()),
            ("nats", "password", self.nats.password.is_some()),
            ("nats", "token", self.nats.token.is_some()),
            (
                "telemetry",
                "sentry_dsn",
                self.telemetry.sentry_dsn.is_some(),
            ),
        ];
        for (section, key, set) in secrets {
            if let (true, Some(toml::Value::Table(section))) = (set, table.get_mut(section)) {
                section.insert(key.into(), toml::Value::String(REDACTED.into()));
            }
        }
        // Scalars first, then the sections: TOML wants keys of the root table before any
        // `[section]` header.
        let (scalars, sections): (toml::Table, toml::Table) =
            table.into_iter().partition(|(_, value)| !value.is_table());
        let mut text = toml::to_string(&scalars).unwrap_or_default();
        text.push_str(&toml::to_string(&sections).unwrap_or_default());
        text
    }

    /// The database URL for `service`: the configured one, or a SQLite file under `data_dir`.
    pub fn database_url_for(&self, service: &str) -> SecretString {
        match &self.database_url {
            Some(url) => url.clone(),
            None => SecretString::from(format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join(format!("{service}.db")).display()
            )),
        }
    }

    /// The HS256 signing key: configured, or read from (created in) `data_dir`.
    pub fn signing_key(&self) -> Result<SecretString, SettingsError> {
        self.secret_or_file(
            self.auth.signing_key.as_ref(),
            "auth.signing_key",
            "dev-signing.key",
        )
    }

    /// The analytics pseudonym key: configured, or read from (created in) `data_dir`.
    pub fn pseudonym_key(&self) -> Result<SecretString, SettingsError> {
        self.secret_or_file(
            self.analytics.pseudonym_key.as_ref(),
            "analytics.pseudonym_key",
            "analytics-pseudonym.key",
        )
    }

    /// `configured` (`field`, at least 32 characters), else the key in `data_dir/file`,
    /// created at random the first time.
    fn secret_or_file(
        &self,
        configured: Option<&SecretString>,
        field: &'static str,
        file: &str,
    ) -> Result<SecretString, SettingsError> {
        if let Some(key) = configured {
            if key.expose_secret().len() < 32 {
                return Err(SettingsError::Field {
                    field,
                    message: "must be at least 32 characters".into(),
                });
            }
            return Ok(key.clone());
        }
        let path = self.data_dir.join(file);
        match std::fs::read_to_string(&path) {
            Ok(key) => Ok(SecretString::from(key.trim().to_owned())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.data_dir)?;
                let key = crate::random_hex(32);
                write_private_file(&path, &key)?;
                Ok(SecretString::from(key))
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// `url` with its credentials `[redacted]`: the password (or a lone token) of its user
/// info, and query parameters that carry secrets (`password`, `sslpassword`, `token`).
fn redact_password(url: &str) -> String {
    const REDACTED: &str = "[redacted]";
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let rest = match rest.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            None => format!("{REDACTED}@{host}"),
        },
        None => rest.to_owned(),
    };
    let mut redacted = format!("{scheme}://{rest}");
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _))
                    if ["password", "sslpassword", "token", "pass"]
                        .contains(&key.to_ascii_lowercase().as_str()) =>
                {
                    format!("{key}={REDACTED}")
                }
                _ => pair.to_owned(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&pairs.join("&"));
    }
    redacted
}

/// Writes a file readable only by its owner.
pub(crate) fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_settings_use_sqlite_under_the_data_dir_and_the_in_process_bus() {
        let settings = Settings::embedded();
        assert!(settings.nats_url.is_none());
        assert!(
            settings
                .database_url_for("leads")
                .expose_secret()
                .starts_with("sqlite://data/leads.db")
        );
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let mut settings = Settings::embedded();
        settings.database_url = Some(SecretString::from(
            "postgres://u:hunter2@db/aida".to_owned(),
        ));
        settings.auth.signing_key = Some(SecretString::from("k".repeat(40)));
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains(&"k".repeat(40)));
    }

    #[test]
    fn a_file_overrides_defaults_and_unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.toml");
        std::fs::write(
            &good,
            "nats_url = \"nats://127.0.0.1:4222\"\n[auth]\nissuer = \"me\"\n",
        )
        .expect("write");
        let settings = Settings::load(Some(&good)).expect("load");
        assert_eq!(settings.auth.issuer, "me");
        assert_eq!(settings.nats_url.as_deref(), Some("nats://127.0.0.1:4222"));

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[auth]\nisuer = \"typo\"\n").expect("write");
        let error = Settings::load(Some(&bad)).expect_err("unknown key");
        assert!(error.to_string().contains("isuer"), "{error}");
    }

    #[test]
    fn a_bad_database_url_names_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "database_url = \"mysql://x\"\n").expect("write");
        let error = Settings::load(Some(&file)).expect_err("bad url");
        assert!(error.to_string().contains("database_url"), "{error}");
    }

    #[test]
    fn telemetry_settings_load_and_a_bad_otlp_endpoint_names_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.toml");
        std::fs::write(
            &good,
            "[telemetry]\nmetrics_port = 9999\notlp_endpoint = \"http://collector:4317\"\n",
        )
        .expect("write");
        let settings = Settings::load(Some(&good)).expect("load");
        assert_eq!(settings.telemetry.metrics_port, Some(9999));
        assert!(
            settings.telemetry.metrics,
            "metrics are on unless turned off"
        );
        assert_eq!(
            settings.metrics_address(&crate::mesh::DEALS).port(),
            9999,
            "the override wins over the registry's port"
        );
        let off = dir.path().join("off.toml");
        std::fs::write(&off, "[telemetry]\nmetrics = false\n").expect("write");
        assert!(!Settings::load(Some(&off)).expect("load").telemetry.metrics);
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[telemetry]\notlp_endpoint = \"collector:4317\"\n").expect("write");
        let error = Settings::load(Some(&bad)).expect_err("bad endpoint");
        assert!(
            error.to_string().contains("telemetry.otlp_endpoint"),
            "{error}"
        );
        assert_eq!(
            Settings::embedded()
                .metrics_address(&crate::mesh::DEALS)
                .port(),
            crate::mesh::DEALS.metrics_port
        );
    }

    #[test]
    fn bad_outreach_settings_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (contents, field) in [
            (
                "[comms]\noutreach_quiet_hours = [20]\n",
                "comms.outreach_quiet_hours",
            ),
            (
                "[comms]\noutreach_quiet_hours = [20, 24]\n",
                "comms.outreach_quiet_hours",
            ),
            (
                "[comms]\noutreach_veto_window_secs = 99999999999\n",
                "comms.outreach_veto_window_secs",
            ),
            (
                "[comms]\noutreach_tick_secs = 0\n",
                "comms.outreach_tick_secs",
            ),
        ] {
            let file = dir.path().join("s.toml");
            std::fs::write(&file, contents).expect("write");
            let error = Settings::load(Some(&file)).expect_err(contents);
            assert!(error.to_string().contains(field), "{contents}: {error}");
        }
    }

    #[test]
    fn effective_settings_redact_every_secret_and_parse_back() {
        let mut settings = Settings::embedded();
        settings.database_url = Some(SecretString::from(
            "postgres://aida:hunter2@db:5432/aida?sslmode=verify-full".to_owned(),
        ));
        settings.auth.signing_key = Some(SecretString::from("k".repeat(40)));
        settings.nats.password = Some(SecretString::from("natspass".to_owned()));
        settings.nats.user = Some("svc".into());
        settings.nats_url = Some("nats://svc:natsurlpass@n1:4222,nats://tok3n@n2:4222".into());
        let text = settings.effective_toml();
        for secret in [
            "hunter2",
            &"k".repeat(40),
            "natspass",
            "natsurlpass",
            "tok3n",
        ] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        assert!(
            text.contains(
                "database_url = \"postgres://aida:[redacted]@db:5432/aida?sslmode=verify-full\""
            ),
            "{text}"
        );
        let parsed: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(parsed["auth"]["signing_key"].as_str(), Some("[redacted]"));
        assert_eq!(parsed["auth"]["tenant_claim"].as_str(), Some("tenant_id"));
        assert_eq!(parsed["bus"]["stream_replicas"].as_integer(), Some(1));
    }

    #[test]
    fn bad_deployment_settings_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (contents, field) in [
            ("[bus]\nstream_replicas = 0\n", "bus.stream_replicas"),
            ("[bus]\nstream_replicas = 7\n", "bus.stream_replicas"),
            (
                "[database]\nmax_connections = 0\n",
                "database.max_connections",
            ),
            ("[nats]\nuser = \"svc\"\n", "nats.password"),
            (
                "[nats]\nuser = \"svc\"\npassword = \"p\"\ntoken = \"t\"\n",
                "nats",
            ),
            (
                "[nats]\ncreds_file = \"/nonexistent.creds\"\n",
                "nats.creds_file",
            ),
            ("[nats]\ncert_file = \"/etc/hostname\"\n", "nats.key_file"),
            (
                "[auth]\ntenant_claim = \"app_metadata.\"\n",
                "auth.tenant_claim",
            ),
            ("[auth]\nroles_claim = \"\"\n", "auth.roles_claim"),
            (
                "[edge]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
                "edge.trusted_proxies",
            ),
            (
                "[edge]\ntrusted_proxies = [\"fly\"]\n",
                "edge.trusted_proxies",
            ),
        ] {
            let file = dir.path().join("s.toml");
            std::fs::write(&file, contents).expect("write");
            let error = Settings::load(Some(&file)).expect_err(contents);
            assert!(error.to_string().contains(field), "{contents}: {error}");
        }
        let file = dir.path().join("good.toml");
        std::fs::write(
            &file,
            "[edge]\ntrusted_proxies = [\"172.16.0.0/12\", \"fdaa::/16\", \"10.1.2.3\"]\n",
        )
        .expect("write");
        let settings = Settings::load(Some(&file)).expect("load");
        assert_eq!(settings.edge.trusted_proxies().expect("parsed").len(), 3);
    }

    #[test]
    fn the_development_signing_key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = Settings::embedded();
        settings.data_dir = dir.path().to_path_buf();
        let first = settings.signing_key().expect("key");
        let second = settings.signing_key().expect("key");
        assert_eq!(first.expose_secret(), second.expose_secret());
        assert_eq!(first.expose_secret().len(), 64);
    }

    #[test]
    fn the_pseudonym_key_is_a_secret_of_its_own_that_the_signing_key_does_not_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = Settings::embedded();
        settings.data_dir = dir.path().to_path_buf();
        let first = settings.pseudonym_key().expect("key");
        settings.auth.signing_key = Some(SecretString::from("r".repeat(40)));
        let after_rotation = settings.pseudonym_key().expect("key");
        assert_eq!(first.expose_secret(), after_rotation.expose_secret());
        assert_ne!(
            first.expose_secret(),
            settings.signing_key().expect("signing").expose_secret()
        );
        settings.analytics.pseudonym_key = Some(SecretString::from("short".to_owned()));
        let refused = settings.validate().expect_err("too short");
        assert!(
            refused.to_string().contains("analytics.pseudonym_key"),
            "{refused}"
        );
        assert!(settings.pseudonym_key().is_err());
    }
}
