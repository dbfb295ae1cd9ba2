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
//! `aida up` idle and under load. Run: `cargo run --release -p aida-bench --bin aida-bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aida_bench::{
    ScratchDatabase, capture_phase, print_header, print_row, rss_mib, run_phase, start_mesh,
};
use clap::Parser;
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
    #[command(flatten)]
    backends: aida_bench::Backends,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.seconds);
    let database = ScratchDatabase::create(&args.backends.postgres, "aida_bench").await?;
    let data_dir = tempfile::tempdir()?;
    let outcome = benchmark(
        &args,
        duration,
        &database.url,
        &database.suffix,
        data_dir.path(),
    )
    .await;
    database.remove().await?;
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
    let mut mesh = start_mesh(database_url, &args.backends.nats, &namespace, data_dir, &[])?;
    let pid = mesh.child.id();
    let channel = Channel::from_shared(format!("http://{}", mesh.leads))?
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
    let capture = capture_phase(
        "CaptureLead (PostgreSQL + JetStream)",
        channel.clone(),
        &mesh.token,
        args.clients,
        duration,
        "lead",
    )
    .await?;
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

    mesh.stop();
    pool.close().await;

    let setup = format!("{} clients, {} s per phase", args.clients, args.seconds);
    aida_bench::print_banner("aida-bench", &setup);
    print_header();
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
