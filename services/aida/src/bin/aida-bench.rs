//! `aida-bench`: how fast LeadService captures leads on PostgreSQL + NATS JetStream, next to
//! ceilings measured in the same run on the same machine.
//!
//! It starts `aida up` (the release binary next to this one) against a fresh PostgreSQL
//! database and a fresh JetStream namespace, then runs three phases with the same number of
//! concurrent clients:
//!
//! 1. gRPC ceiling: `grpc.health.v1.Health/Check` on the same server (the full tonic stack,
//!    no storage);
//! 2. storage ceiling: single-row `INSERT`s, one per transaction, straight into the same
//!    database (pgbench-style);
//! 3. CaptureLead: validation, duplicate check, insert and outbox row in one transaction,
//!    events relayed to JetStream.
//!
//! It prints rates, latency percentiles, ratios to the ceilings and the resident memory of
//! `aida up` idle and under load. Run: `cargo run --release -p aida --bin aida-bench`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{CaptureLeadRequest, Lead};
use anyhow::{Context, bail};
use clap::Parser;
use sqlx::Connection;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(about = "Benchmark LeadService capture against same-run ceilings")]
struct Args {
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// PostgreSQL admin URL (a fresh database is created and dropped).
    #[arg(
        long,
        env = "TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
    /// NATS URL (a fresh namespace of streams is used).
    #[arg(long, env = "TEST_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
}

/// Latencies of one phase.
struct Phase {
    name: &'static str,
    count: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, fraction: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let index = ((self.latencies.len() as f64 - 1.0) * fraction).round() as usize;
        self.latencies[index]
    }
}

/// Runs `clients` loops of `call` for `duration`; each loop gets its client index.
async fn run_phase<F, Fut>(name: &'static str, clients: usize, duration: Duration, call: F) -> Phase
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
fn rss_mib(pid: u32) -> f64 {
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

struct Mesh {
    child: Child,
    address: String,
    token: String,
}

fn start_mesh(
    database_url: &str,
    nats: &str,
    namespace: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<Mesh> {
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
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start aida up")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut address, mut token) = (None, None);
    for line in lines.by_ref() {
        let line = line?;
        if let Some(rest) = line.trim().strip_prefix("LeadService") {
            address = rest.trim().strip_prefix("grpc://").map(str::to_owned);
        }
        if let Some(rest) = line.trim().strip_prefix("export AIDA_TOKEN=") {
            token = Some(rest.to_owned());
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok(Mesh {
        child,
        address: address.context("no LeadService address in the banner")?,
        token: token.context("no token in the banner")?,
    })
}

fn print_row(phase: &Phase, ceiling: Option<&Phase>) {
    let ratio = ceiling
        .map(|ceiling| format!("{:.2}", phase.rate() / ceiling.rate()))
        .unwrap_or_else(|| "-".into());
    println!(
        "| {:<34} | {:>9.0} | {:>8.2} | {:>8.2} | {:>6} | {:>7} |",
        phase.name,
        phase.rate(),
        phase.percentile(0.50).as_secs_f64() * 1000.0,
        phase.percentile(0.99).as_secs_f64() * 1000.0,
        phase.errors,
        ratio
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.seconds);
    let suffix = aida_core::random_hex(6);
    let database = format!("aida_bench_{suffix}");
    let mut admin = sqlx::PgConnection::connect(&args.postgres)
        .await
        .context("connect to PostgreSQL")?;
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await?;
    let base = args
        .postgres
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or(&args.postgres);
    let database_url = format!("{base}/{database}");
    let data_dir = tempfile::tempdir()?;

    let outcome = benchmark(&args, duration, &database_url, &suffix, data_dir.path()).await;

    sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    outcome
}

async fn benchmark(
    args: &Args,
    duration: Duration,
    database_url: &str,
    suffix: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let namespace = format!("bench{suffix}");
    let mut mesh = start_mesh(database_url, &args.nats, &namespace, data_dir)?;
    let pid = mesh.child.id();
    let channel = Channel::from_shared(format!("http://{}", mesh.address))?
        .connect()
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_mib(pid);

    // 1. gRPC ceiling: the same server, the same clients, no storage.
    let health_channel = channel.clone();
    let grpc = run_phase(
        "gRPC ceiling (Health/Check)",
        args.clients,
        duration,
        move |_, _| {
            let mut client =
                tonic_health::pb::health_client::HealthClient::new(health_channel.clone());
            async move {
                client
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .is_ok()
            }
        },
    )
    .await;

    // 2. Storage ceiling: single-row inserts, one transaction each, in the same database.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(args.clients as u32)
        .connect(database_url)
        .await?;
    sqlx::query("CREATE TABLE bench_ceiling (id UUID PRIMARY KEY, tenant_id TEXT NOT NULL, email TEXT NOT NULL, payload JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL)")
        .execute(&pool)
        .await?;
    let insert_pool = pool.clone();
    let insert = run_phase("storage ceiling (1-row INSERT)", args.clients, duration, move |client, sequence| {
        let pool = insert_pool.clone();
        async move {
            sqlx::query("INSERT INTO bench_ceiling (id, tenant_id, email, payload, created_at) VALUES ($1, $2, $3, $4, now())")
                .bind(uuid::Uuid::now_v7())
                .bind("bench")
                .bind(format!("c{client}-{sequence}@example.com"))
                .bind(serde_json::json!({"first_name": "Ada", "company": "Bench"}))
                .execute(&pool)
                .await
                .is_ok()
        }
    })
    .await;

    // 3. CaptureLead, sampling the server's memory while it runs.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0.0f64;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {}", mesh.token).parse()?;
    let capture_channel = channel.clone();
    let capture = run_phase(
        "CaptureLead (PostgreSQL + JetStream)",
        args.clients,
        duration,
        move |client, sequence| {
            let mut leads = LeadServiceClient::new(capture_channel.clone());
            let token = token.clone();
            async move {
                let mut request = tonic::Request::new(CaptureLeadRequest {
                    lead: Some(Lead {
                        email: format!("lead{client}-{sequence}@example.com"),
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
        },
    )
    .await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let load_rss = sampler.await.unwrap_or(0.0);

    // The relay's backlog: how long until every captured lead's event is on JetStream.
    let drain_started = Instant::now();
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&pool)
                .await?;
        if pending == 0 || drain_started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain = drain_started.elapsed();
    let published: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL")
            .fetch_one(&pool)
            .await?;

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = mesh.child.wait();
    pool.close().await;

    println!();
    println!(
        "aida-bench: {} clients, {} s per phase, {} cores",
        args.clients,
        args.seconds,
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(0)
    );
    println!();
    println!(
        "| phase                              |   ops/s   | p50 (ms) | p99 (ms) | errors | ratio   |"
    );
    println!(
        "|------------------------------------|-----------|----------|----------|--------|---------|"
    );
    print_row(&grpc, None);
    print_row(&insert, None);
    print_row(&capture, Some(&insert));
    println!();
    println!(
        "CaptureLead / gRPC ceiling    = {:.3}",
        capture.rate() / grpc.rate()
    );
    println!(
        "CaptureLead / storage ceiling = {:.3}",
        capture.rate() / insert.rate()
    );
    println!(
        "events published to JetStream: {published} of {} captures; outbox drained {:.2} s after the load stopped",
        capture.count,
        drain.as_secs_f64()
    );
    println!("aida up resident memory: idle {idle_rss:.1} MiB, peak under load {load_rss:.1} MiB");
    Ok(())
}
