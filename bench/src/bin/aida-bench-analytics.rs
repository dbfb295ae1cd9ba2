//! `aida-bench-analytics`: how fast events reach DuckDB, how late, and how fast the
//! reports answer over a large store, next to the raw JetStream publish rate measured in
//! the same run.
//!
//! 1. JetStream ceiling: async publish (256 in flight) of `--events` envelopes.
//! 2. Ingestion: the same envelopes, already on the stream, consumed by the analytics
//!    batch consumer into a fresh DuckDB file: events/s and ratio to the ceiling.
//! 3. End-to-end lag: LeadService (PostgreSQL + JetStream) captures leads at a steady
//!    `--rate` per second while analytics ingests; lag from the lead's commit to its
//!    analytics row, p50/p99.
//! 4. Reports over `--store-events` synthetic events: GetFunnel and GetPipeline, p50 of 5.
//!
//! Run: `cargo run --release -p aida-bench --bin aida-bench-analytics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aida_analytics::warehouse::{EventRow, Grouping, Range, Warehouse};
use aida_analytics::{Ingestor, Pseudonymizer};
use aida_core::bus::{ConsumerSpec, EventBus, NatsBus, OutgoingMessage};
use aida_core::consumer::{self, BatchOptions, ConsumerOptions};
use aida_core::{Settings, random_hex};
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::events::v1::{EventEnvelope, LeadCaptured};
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{CaptureLeadRequest, Lead, LeadSource};
use clap::Parser;
use prost::Message;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(about = "Benchmark analytics ingestion, lag and report queries")]
struct Args {
    /// Events for the ceiling and ingestion phases.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Captures per second in the lag phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of the lag phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events in the store for the report phase.
    #[arg(long, default_value_t = 10_000_000)]
    store_events: usize,
    #[command(flatten)]
    backends: aida_bench::Backends,
}

fn envelope(tenant: &str, index: usize) -> EventEnvelope {
    EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: "leads.captured".into(),
        tenant_id: tenant.into(),
        occurred_at: Some(aida_core::events::timestamp(chrono::Utc::now())),
        payload: Some(Payload::LeadCaptured(LeadCaptured {
            lead: Some(Lead {
                id: uuid::Uuid::now_v7().to_string(),
                email: format!("bench{index}@example.com"),
                source: LeadSource::WebForm as i32,
                owner_id: format!("rep-{}", index % 10),
                ..Lead::default()
            }),
        })),
        ..EventEnvelope::default()
    }
}

fn bus_settings(namespace: &str) -> aida_core::settings::BusSettings {
    aida_core::settings::BusSettings {
        namespace: namespace.to_owned(),
        ..Settings::embedded().bus
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let key = SecretString::from(format!("bench-key-{}", random_hex(16)));

    // 1. JetStream async publish ceiling.
    let ceiling_bus = NatsBus::connect(
        &args.backends.nats,
        &bus_settings(&format!("bc{}", random_hex(4))),
    )
    .await?;
    ceiling_bus.ensure_streams().await?;
    let messages: Vec<OutgoingMessage> = (0..args.events)
        .map(|index| {
            let event = envelope("bench", index);
            OutgoingMessage {
                event_type: event.event_type.clone(),
                message_id: event.event_id.clone(),
                payload: bytes::Bytes::from(event.encode_to_vec()),
                headers: vec![],
            }
        })
        .collect();
    let payload_bytes = messages
        .first()
        .map(|message| message.payload.len())
        .unwrap_or(0);
    let started = Instant::now();
    for chunk in messages.chunks(256) {
        for result in ceiling_bus.publish(chunk).await {
            result?;
        }
    }
    let ceiling = args.events as f64 / started.elapsed().as_secs_f64();

    // 2. Ingestion of the published events into a fresh DuckDB file.
    let warehouse = Warehouse::open(&dir.path().join("ingest.duckdb"))?;
    let ingested = Arc::new(AtomicU64::new(0));
    let ingestor = Arc::new(Ingestor {
        warehouse: warehouse.clone(),
        pseudonyms: Pseudonymizer::new(&key),
        ingested: ingested.clone(),
    });
    let shutdown = CancellationToken::new();
    let options = ConsumerOptions {
        spec: ConsumerSpec::durable(
            "bench-analytics",
            aida_core::bus::LEADS_STREAM,
            None,
            Duration::from_secs(30),
        ),
        max_deliver: 5,
    };
    let batch = BatchOptions {
        max_size: 1000,
        max_wait: Duration::from_millis(50),
    };
    let started = Instant::now();
    let consumer_task = tokio::spawn(consumer::run_batched(
        Arc::new(ceiling_bus.clone()),
        options,
        batch,
        ingestor,
        shutdown.clone(),
    ));
    while ingested.load(Ordering::Relaxed) < args.events as u64 {
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("ingestion stalled at {}", ingested.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ingest_rate = args.events as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = consumer_task.await;

    // 3. End-to-end lag at a steady capture rate through LeadService and the relay.
    let database =
        aida_bench::ScratchDatabase::create(&args.backends.postgres, "aida_bench").await?;
    let lag = steady_lag(&args, &database.url, &key, dir.path()).await;
    database.remove().await?;
    let (lag_events, lag_p50, lag_p99, sent) = lag?;

    // 4. Reports over a large store.
    let store = Warehouse::open(&dir.path().join("store.duckdb"))?;
    let fill_started = Instant::now();
    fill(&store, args.store_events).await?;
    let fill_seconds = fill_started.elapsed().as_secs_f64();
    let funnel = time_query(|| async {
        store
            .funnel("big", Range::ALL, Grouping::Source)
            .await
            .map(|_| ())
    })
    .await?;
    let pipeline = time_query(|| async {
        store
            .pipeline("big", Range::ALL, Grouping::Pipeline)
            .await
            .map(|_| ())
    })
    .await?;

    aida_bench::print_banner(
        "aida-bench-analytics",
        &format!("envelope {payload_bytes} bytes"),
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!("| JetStream async publish ceiling (window 256) | {ceiling:.0} events/s |");
    println!(
        "| DuckDB ingestion from JetStream ({} events) | {ingest_rate:.0} events/s (ratio {:.2}) |",
        args.events,
        ingest_rate / ceiling
    );
    println!(
        "| steady capture rate offered / achieved | {} /s / {:.0} /s |",
        args.rate,
        sent as f64 / args.seconds as f64
    );
    println!(
        "| end-to-end lag, lead commit → analytics row ({lag_events} events) | p50 {:.1} ms, p99 {:.1} ms |",
        lag_p50 / 1000.0,
        lag_p99 / 1000.0
    );
    println!(
        "| store of {} events built in | {fill_seconds:.1} s |",
        args.store_events
    );
    println!(
        "| GetFunnel (by source) over the store, p50 of 5 | {:.1} ms |",
        funnel * 1000.0
    );
    println!(
        "| GetPipeline (by pipeline) over the store, p50 of 5 | {:.1} ms |",
        pipeline * 1000.0
    );
    Ok(())
}

/// Runs LeadService and the analytics consumer in this process, captures leads at
/// `args.rate` for `args.seconds`, and reads the lag from DuckDB.
async fn steady_lag(
    args: &Args,
    database_url: &str,
    key: &SecretString,
    dir: &std::path::Path,
) -> anyhow::Result<(i64, f64, f64, u64)> {
    let namespace = format!("bl{}", random_hex(4));
    let mut settings = Settings::embedded();
    settings.data_dir = dir.join("lag");
    settings.database_url = Some(SecretString::from(database_url.to_owned()));
    settings.nats_url = Some(args.backends.nats.clone());
    settings.bus.namespace = namespace.clone();
    settings.auth.signing_key = Some(key.clone());
    let bus: Arc<dyn EventBus> =
        Arc::new(NatsBus::connect(&args.backends.nats, &settings.bus).await?);
    bus.ensure_streams().await?;
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let leads = tokio::spawn(aida::Service::Leads.run(
        settings.clone(),
        bus.clone(),
        listener,
        shutdown.clone(),
    ));

    let warehouse = Warehouse::open(&dir.join("lag.duckdb"))?;
    let ingestor = Arc::new(Ingestor {
        warehouse: warehouse.clone(),
        pseudonyms: Pseudonymizer::new(key),
        ingested: Arc::new(AtomicU64::new(0)),
    });
    let options = ConsumerOptions {
        spec: ConsumerSpec::durable(
            "bench-lag",
            aida_core::bus::LEADS_STREAM,
            None,
            Duration::from_secs(30),
        ),
        max_deliver: 5,
    };
    let batch = BatchOptions {
        max_size: 1000,
        max_wait: Duration::from_millis(20),
    };
    let consumer_task = tokio::spawn(consumer::run_batched(
        bus.clone(),
        options,
        batch,
        ingestor,
        shutdown.clone(),
    ));

    let token =
        aida_core::auth::TokenIssuer::hs256(key, &settings.auth.issuer, &settings.auth.audience)
            .mint("lag", "bench", &["admin"], Duration::from_secs(3600))?;
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))?
        .connect()
        .await?;
    let sent = Arc::new(AtomicU64::new(0));
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut calls = Vec::new();
    let mut index = 0u64;
    while Instant::now() < deadline {
        ticker.tick().await;
        index += 1;
        let mut client = LeadServiceClient::new(channel.clone());
        let mut request = tonic::Request::new(CaptureLeadRequest {
            lead: Some(Lead {
                email: format!("steady{index}@example.com"),
                ..Lead::default()
            }),
            request_id: String::new(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let sent = sent.clone();
        calls.push(tokio::spawn(async move {
            if client.capture_lead(request).await.is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for call in calls {
        let _ = call.await;
    }
    let captured = sent.load(Ordering::Relaxed);
    let started = Instant::now();
    loop {
        let (count, _, _) = warehouse.ingestion_lag("lag").await?;
        if count as u64 >= captured || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (count, p50, p99) = warehouse.ingestion_lag("lag").await?;
    shutdown.cancel();
    let _ = consumer_task.await;
    let _ = leads.await;
    Ok((count, p50, p99, captured))
}

/// Fills `store` with about `events` synthetic events of one tenant: per lead a capture,
/// and for 60 % a qualification, a deal, two moves and (for half of those) a close.
async fn fill(store: &Warehouse, events: usize) -> anyhow::Result<()> {
    let base = chrono::Utc::now().timestamp_micros() - 365 * 86_400_000_000;
    let mut batch = Vec::with_capacity(100_000);
    let mut written = 0usize;
    let mut lead = 0usize;
    while written < events {
        lead += 1;
        let time = base + (lead as i64) * 1_000_000;
        let lead_id = format!("l{lead}");
        let mut push = |row: EventRow| batch.push(row);
        let common = |kind: &str, offset: i64| EventRow {
            event_id: format!("{lead:012}-{kind}-{offset}"),
            tenant_id: "big".into(),
            event_type: kind.into(),
            occurred_at: time + offset,
            lead_id: Some(lead_id.clone()),
            ..EventRow::default()
        };
        push(EventRow {
            source: Some(["WEB_FORM", "REFERRAL", "EVENT", "OUTBOUND"][lead % 4].into()),
            owner: Some(format!("p_{}", lead % 25)),
            ..common("leads.captured", 0)
        });
        if lead % 10 < 6 {
            push(common("leads.qualified", 10));
            let deal =
                |kind: &str, offset: i64, stage_from: Option<&str>, stage_to: &str| EventRow {
                    deal_id: Some(format!("d{lead}")),
                    pipeline_id: Some(format!("p{}", lead % 3)),
                    stage_from: stage_from.map(str::to_owned),
                    stage_to: Some(stage_to.into()),
                    amount_minor: Some(((lead % 100) as i64 + 1) * 10_000),
                    currency: Some("EUR".into()),
                    probability: Some(match stage_to {
                        "Prospecting" => 10,
                        "Qualification" => 25,
                        "Proposal" => 50,
                        "Closed Won" => 100,
                        _ => 0,
                    }),
                    ..common(kind, offset)
                };
            push(deal("deals.created", 20, None, "Prospecting"));
            push(deal(
                "deals.progressed",
                30,
                Some("Prospecting"),
                "Qualification",
            ));
            push(deal(
                "deals.progressed",
                40,
                Some("Qualification"),
                "Proposal",
            ));
            if lead % 10 < 3 {
                let won = lead.is_multiple_of(2);
                push(deal(
                    if won { "deals.won" } else { "deals.lost" },
                    50,
                    Some("Proposal"),
                    if won { "Closed Won" } else { "Closed Lost" },
                ));
            }
        }
        if batch.len() >= 100_000 {
            written += batch.len();
            store.ingest(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        store.ingest(batch).await?;
    }
    Ok(())
}

/// Median seconds of five runs of `query`.
async fn time_query<F, Fut>(query: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), aida_core::Error>>,
{
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        query().await?;
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[2])
}
