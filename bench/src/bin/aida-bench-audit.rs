//! `aida-bench-audit`: how fast the audit log is chained and checked, next to ceilings
//! measured in the same run on the same database.
//!
//! 1. Chaining: `audit.recorded` events through the `audit-chain` consumer's handler, in
//!    its batches, spread over tenants (each record locks its tenant's head).
//! 2. `aida audit verify`'s check (`aida_analytics::audit::verify`) of every chain, beside
//!    two ceilings: reading the same rows in the same pages without checking them, and
//!    hashing their canonical bytes in memory.
//!
//! 3. What trust costs a capture: CaptureLead on `aida up` (the release binary next to this
//!    one) with the audit log and encryption at rest on, then with both off
//!    (`audit.enabled`, `crypto.enabled`), in alternating rounds on one database; the goal
//!    is on ≥ 0.8 × off.
//!
//! It prints each rate and the check's time per million records. Run:
//! `cargo build --release -p aida && cargo run --release -p aida-bench --bin aida-bench-audit -- --records 1000000`.

use std::time::Instant;

use aida_analytics::audit::{COLUMNS, Chain, Row, verify};
use aida_bench::ScratchDatabase;
use aida_core::consumer::BatchHandler as _;
use aida_core::db::{Database, Sql, core_migrations};
use aida_proto::aida::audit::v1::{AuditActor, AuditRecord};
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::events::v1::{AuditRecorded, EventEnvelope};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Benchmark the audit chain's append and verify against same-run ceilings")]
struct Args {
    /// Records to chain and check.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Tenants (one chain each) the records are spread over.
    #[arg(long, default_value_t = 10)]
    tenants: usize,
    /// Records per batch of the chain's consumer.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Seconds per CaptureLead round (0: skip the on/off comparison).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// On/off rounds of CaptureLead.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Concurrent CaptureLead clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[command(flatten)]
    backends: aida_bench::Backends,
}

fn record(n: usize, tenants: usize) -> EventEnvelope {
    let id = uuid::Uuid::now_v7().to_string();
    let tenant = format!("tenant-{}", n % tenants.max(1));
    let now = aida_core::events::timestamp(aida_core::events::now_micros());
    EventEnvelope {
        event_id: id.clone(),
        event_type: aida_core::audit::RECORDED.into(),
        tenant_id: tenant.clone(),
        occurred_at: Some(now),
        payload: Some(Payload::AuditRecorded(AuditRecorded {
            record: Some(AuditRecord {
                id,
                occur_time: Some(now),
                tenant_id: tenant,
                actor: Some(AuditActor {
                    subject: format!("rep-{}", n % 50),
                    roles: vec!["sales_rep".into()],
                    client_identity: "spiffe://aida/edge".into(),
                }),
                action: "aida.leads.v1.LeadService/CaptureLead".into(),
                resource: format!("leads/{}", uuid::Uuid::now_v7()),
                outcome: "OK".into(),
                request_id: uuid::Uuid::now_v7().to_string(),
                trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
                recorded_by: "leads".into(),
                ..AuditRecord::default()
            }),
        })),
        ..EventEnvelope::default()
    }
}

/// Every tenant's rows, in the pages `verify` reads, unchecked.
async fn read_all(db: &Database, tenants: usize) -> anyhow::Result<Vec<Row>> {
    let mut all = Vec::new();
    for tenant in 0..tenants {
        let tenant = format!("tenant-{tenant}");
        let mut last = 0_i64;
        loop {
            let rows: Vec<Row> = db
                .fetch_all(
                    Sql::new(format!(
                        "SELECT {COLUMNS} FROM audit_records WHERE tenant_id = $1 AND seq > $2 \
                         ORDER BY seq LIMIT 5000"
                    ))
                    .bind(tenant.as_str())
                    .bind(last),
                )
                .await?;
            let Some(tail) = rows.last() else {
                break;
            };
            last = tail.seq;
            all.extend(rows);
        }
    }
    Ok(all)
}

fn per_million(seconds: f64, records: usize) -> f64 {
    seconds * 1_000_000.0 / records.max(1) as f64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    aida_bench::print_banner(
        "aida-bench-audit",
        &format!(
            "PostgreSQL, {} records over {} tenants, batches of {}",
            args.records, args.tenants, args.batch
        ),
    );
    let database = ScratchDatabase::create(&args.backends.postgres, "aida_bench_audit").await?;
    let mut outcome = run(&args, &database.url).await;
    if outcome.is_ok() && args.seconds > 0 {
        outcome = capture_on_off(&args, &database.url, &database.suffix).await;
    }
    database.remove().await?;
    outcome
}

/// CaptureLead with trust (audit + encryption) on and off, alternating, on one database.
async fn capture_on_off(args: &Args, url: &str, suffix: &str) -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir()?;
    let duration = std::time::Duration::from_secs(args.seconds);
    let off_env = [
        ("AIDA_AUDIT__ENABLED", "false"),
        ("AIDA_CRYPTO__ENABLED", "false"),
    ];
    let (mut on, mut off): (Option<aida_bench::Phase>, Option<aida_bench::Phase>) = (None, None);
    for round in 0..args.rounds.max(1) {
        for trusted in [true, false] {
            let env: &[(&str, &str)] = if trusted { &[] } else { &off_env };
            let namespace = format!("benchtrust{suffix}r{round}{}", u8::from(trusted));
            let mut mesh =
                aida_bench::start_mesh(url, &args.backends.nats, &namespace, data_dir.path(), env)?;
            let channel = tonic::transport::Channel::from_shared(format!("http://{}", mesh.leads))?
                .connect()
                .await?;
            let (name, prefix) = if trusted {
                ("CaptureLead, audit + encryption on", "on")
            } else {
                ("CaptureLead, audit + encryption off", "off")
            };
            let phase = aida_bench::capture_phase(
                name,
                channel,
                &mesh.token,
                args.clients,
                duration,
                prefix,
            )
            .await;
            mesh.stop();
            let phase = phase?;
            let slot = if trusted { &mut on } else { &mut off };
            *slot = Some(match slot.take() {
                Some(earlier) => earlier.merge(phase),
                None => phase,
            });
        }
    }
    let (Some(on), Some(off)) = (on, off) else {
        anyhow::bail!("no rounds ran");
    };
    println!();
    aida_bench::print_header();
    aida_bench::print_row(&off, None);
    aida_bench::print_row(&on, Some(&off));
    println!(
        "trust on / off = {:.2} (goal >= 0.80), {} rounds of {} s, {} clients",
        on.rate() / off.rate(),
        args.rounds.max(1),
        args.seconds,
        args.clients
    );
    Ok(())
}

async fn run(args: &Args, url: &str) -> anyhow::Result<()> {
    let db = Database::connect(&secrecy::SecretString::from(url.to_owned())).await?;
    db.migrate(&mut core_migrations()).await?;
    db.migrate(&mut aida_analytics::migrations()).await?;
    let chain = Chain { db: db.clone() };

    let started = Instant::now();
    let mut n = 0;
    while n < args.records {
        let size = args.batch.max(1).min(args.records - n);
        let events: Vec<EventEnvelope> = (n..n + size).map(|i| record(i, args.tenants)).collect();
        chain
            .handle_batch(&events)
            .await
            .map_err(|error| anyhow::anyhow!("chain: {error}"))?;
        n += size;
    }
    let append = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let reports = verify(&db, None).await?;
    let check = started.elapsed().as_secs_f64();
    let checked: u64 = reports.iter().map(|report| report.records).sum();
    if let Some(broken) = reports.iter().find(|report| report.broken.is_some()) {
        anyhow::bail!("chain {} broken: {:?}", broken.tenant_id, broken.broken);
    }

    let started = Instant::now();
    let rows = read_all(&db, args.tenants).await?;
    let read = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let hashed = rows
        .iter()
        .filter(|row| row.digest(&row.prev_hash) == row.hash)
        .count();
    let hash = started.elapsed().as_secs_f64();
    db.close().await;

    let records = args.records;
    println!(
        "{:<34} {:>12} {:>14}",
        "phase", "records/s", "s per million"
    );
    let line = |name: &str, seconds: f64, count: usize| {
        println!(
            "{name:<34} {:>12.0} {:>14.2}",
            count as f64 / seconds.max(f64::EPSILON),
            per_million(seconds, count)
        );
    };
    line("chain (audit-chain handler)", append, records);
    line("verify (aida audit verify)", check, checked as usize);
    line("ceiling: read the rows", read, rows.len());
    line("ceiling: hash in memory", hash, hashed);
    println!(
        "verify / (read + hash) = {:.2}",
        check / (read + hash).max(f64::EPSILON)
    );
    Ok(())
}
