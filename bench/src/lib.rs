//! Shared parts of the benchmark commands (`aida-bench`, `aida-bench-edge`): timed phases
//! of concurrent clients, resident memory, and a child `aida up` to measure.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Where the benchmarks find PostgreSQL and NATS (flattened into each command's arguments).
#[derive(Debug, clap::Args)]
pub struct Backends {
    /// PostgreSQL admin URL (a fresh database is created and dropped).
    #[arg(
        long,
        env = "TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres: String,
    /// NATS URL (a fresh namespace of streams is used).
    #[arg(long, env = "TEST_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
}

/// Latencies of one phase.
pub struct Phase {
    pub name: &'static str,
    pub count: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl Phase {
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    /// The two phases as one: counts, errors and time added, latencies pooled.
    pub fn merge(mut self, mut other: Phase) -> Phase {
        self.count += other.count;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latencies.append(&mut other.latencies);
        self.latencies.sort();
        self
    }

    pub fn percentile(&self, fraction: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * fraction).round() as usize;
        self.latencies[index]
    }
}

/// Runs `clients` loops of `call` for `duration`; each loop gets its client index.
pub async fn run_phase<F, Fut>(
    name: &'static str,
    clients: usize,
    duration: Duration,
    call: F,
) -> Phase
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut sequence = 0u64;
            while Instant::now() < deadline {
                let begun = Instant::now();
                if call(client, sequence).await {
                    latencies.push(begun.elapsed());
                } else {
                    errors += 1;
                }
                sequence += 1;
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((mut mine, failed)) = task.await {
            latencies.append(&mut mine);
            errors += failed;
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Phase {
        name,
        count: latencies.len(),
        errors,
        elapsed,
        latencies,
    }
}

/// Resident memory of `pid` in MiB, from /proc.
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// CPU time (user + system) `pid` has used so far, in seconds, from /proc (0 if unreadable).
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks_per_second)
        })
        .unwrap_or(0.0)
}

/// Waits until the processes `pids` are idle: less than `threshold` of one core over a
/// 500 ms window (their background work from the previous phase done: consumers, scoring,
/// the outreach agent), or `limit` has passed. Returns how long it waited and whether the
/// processes went idle (false: `limit` passed with them still busy).
pub async fn settle(pids: &[u32], threshold: f64, limit: Duration) -> (Duration, bool) {
    let window = Duration::from_millis(500);
    let started = Instant::now();
    let used = || pids.iter().map(|pid| cpu_seconds(*pid)).sum::<f64>();
    let mut before = used();
    while started.elapsed() < limit {
        tokio::time::sleep(window).await;
        let now = used();
        if (now - before) / window.as_secs_f64() < threshold {
            return (started.elapsed(), true);
        }
        before = now;
    }
    (started.elapsed(), false)
}

/// CaptureLead through `channel` as `token`'s tenant from `clients` loops for `duration`;
/// every lead is new (`prefix` keeps the addresses of several phases apart).
pub async fn capture_phase(
    name: &'static str,
    channel: tonic::transport::Channel,
    token: &str,
    clients: usize,
    duration: Duration,
    prefix: &'static str,
) -> anyhow::Result<Phase> {
    use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
    use aida_proto::aida::leads::v1::{CaptureLeadRequest, Lead};
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    Ok(run_phase(name, clients, duration, move |client, sequence| {
        let mut leads = LeadServiceClient::new(channel.clone());
        let token = token.clone();
        async move {
            let mut request = tonic::Request::new(CaptureLeadRequest {
                lead: Some(Lead {
                    email: format!("{prefix}{client}-{sequence}@example.com"),
                    first_name: "Ada".into(),
                    last_name: "Lovelace".into(),
                    company: "Analytical Engines".into(),
                    phone: "+44 20 7946 0958".into(),
                    ..Lead::default()
                }),
                request_id: String::new(),
            });
            request.metadata_mut().insert("authorization", token);
            leads.capture_lead(request).await.is_ok()
        }
    })
    .await)
}

/// A child `aida up` and what its banner says.
pub struct ChildMesh {
    pub child: Child,
    /// LeadService (host:port).
    pub leads: String,
    /// The edge (host:port).
    pub edge: String,
    pub token: String,
}

impl ChildMesh {
    /// Stops `aida up` as an operator would (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Starts the release `aida up` next to the running binary against PostgreSQL and NATS,
/// without mutual TLS (the services are measured, not the TLS hop).
pub fn start_mesh(
    database_url: &str,
    nats: &str,
    namespace: &str,
    data_dir: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> anyhow::Result<ChildMesh> {
    let binary: PathBuf = std::env::current_exe()?.with_file_name("aida");
    if !binary.exists() {
        bail!(
            "{} not found: build it with cargo build --release -p aida",
            binary.display()
        );
    }
    let mut child = Command::new(&binary)
        .arg("up")
        .env("AIDA_DATABASE_URL", database_url)
        .env("AIDA_NATS_URL", nats)
        .env("AIDA_BUS__NAMESPACE", namespace)
        .env("AIDA_DATA_DIR", data_dir)
        .env("AIDA_LISTEN__LEADS_PORT", "0")
        .env("AIDA_LISTEN__DEALS_PORT", "0")
        .env("AIDA_LISTEN__COMMS_PORT", "0")
        .env("AIDA_LISTEN__ANALYTICS_PORT", "0")
        .env("AIDA_EDGE__PORT", "0")
        // The service itself is measured, without the mTLS hop.
        .env("AIDA_TLS__ENABLED", "false")
        .env("AIDA_LOG__FILTER", "warn")
        .envs(extra_env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start aida up")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut address, mut edge, mut token) = (None, None, None);
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.trim().strip_prefix("LeadService") {
            address = rest.trim().strip_prefix("grpc://").map(str::to_owned);
        }
        if let Some(rest) = line.trim().strip_prefix("Edge") {
            edge = rest
                .trim()
                .strip_prefix("http://")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned);
        }
        if let Some(rest) = line.trim().strip_prefix("export AIDA_TOKEN=") {
            token = Some(rest.to_owned());
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok(ChildMesh {
        child,
        leads: address.context("no LeadService address in the banner")?,
        edge: edge.context("no edge address in the banner")?,
        token: token.context("no token in the banner")?,
    })
}

/// The cores this machine offers the benchmark (0 if unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(0)
}

/// Prints a benchmark's first line: its name, what it ran (`setup`) and the cores.
pub fn print_banner(name: &str, setup: &str) {
    println!();
    println!("{name}: {setup}, {} cores", cores());
    println!();
}

/// Prints one markdown table row: rate, p50, p99, errors and the ratio to `ceiling`.
pub fn print_row(phase: &Phase, ceiling: Option<&Phase>) {
    let ratio = ceiling
        .map(|ceiling| format!("{:.2}", phase.rate() / ceiling.rate()))
        .unwrap_or_else(|| "-".into());
    println!(
        "| {:<38} | {:>9.0} | {:>8.2} | {:>8.2} | {:>6} | {:>7} |",
        phase.name,
        phase.rate(),
        phase.percentile(0.50).as_secs_f64() * 1000.0,
        phase.percentile(0.99).as_secs_f64() * 1000.0,
        phase.errors,
        ratio
    );
}

/// Prints the header of the table [`print_row`] fills.
pub fn print_header() {
    println!(
        "| {:<38} |   ops/s   | p50 (ms) | p99 (ms) | errors | ratio   |",
        "phase"
    );
    println!(
        "|{}|-----------|----------|----------|--------|---------|",
        "-".repeat(40)
    );
}

/// A fresh PostgreSQL database for one benchmark run, dropped by [`ScratchDatabase::remove`].
pub struct ScratchDatabase {
    admin: sqlx::PgConnection,
    name: String,
    /// Its URL.
    pub url: String,
    /// The random part of its name, for stream namespaces of the same run.
    pub suffix: String,
}

impl ScratchDatabase {
    /// Creates `<prefix>_<random>` on the server of `admin_url`.
    pub async fn create(admin_url: &str, prefix: &str) -> anyhow::Result<Self> {
        use sqlx::Connection;

        let suffix = aida_core::random_hex(6);
        let name = format!("{prefix}_{suffix}");
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .context("connect to PostgreSQL")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(admin_url);
        Ok(Self {
            admin,
            url: format!("{base}/{name}"),
            name,
            suffix,
        })
    }

    /// Drops the database, closing whatever still uses it.
    pub async fn remove(mut self) -> anyhow::Result<()> {
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut self.admin)
        .await?;
        Ok(())
    }
}

/// Captures one lead (Ada Lovelace at `email`) over `channel` with `token`: the lead the
/// read phases then fetch.
pub async fn capture_one(
    channel: tonic::transport::Channel,
    token: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    email: String,
) -> anyhow::Result<aida_proto::aida::leads::v1::Lead> {
    use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
    use aida_proto::aida::leads::v1::{CaptureLeadRequest, Lead};
    let mut request = tonic::Request::new(CaptureLeadRequest {
        lead: Some(Lead {
            email,
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
            company: "Analytical Engines".into(),
            ..Lead::default()
        }),
        request_id: String::new(),
    });
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    Ok(LeadServiceClient::new(channel)
        .capture_lead(request)
        .await?
        .into_inner())
}
