//! `aida-bench-telemetry`: what watching the mesh costs. Two `aida up` meshes run side by
//! side in the same run (release build, PostgreSQL + NATS JetStream, no mutual TLS):
//!
//! - *off*: `telemetry.metrics = false`, no traces;
//! - *on*: Prometheus metrics, and every span exported over OTLP gRPC to a collector in
//!   this process (a tonic `TraceService` that counts what it receives).
//!
//! `GetLead` and `CaptureLead` (direct gRPC to LeadService) take turns on both meshes, round
//! after round (the mesh that goes first alternates, and every phase waits for both meshes
//! to go idle), and each figure of *on* is printed beside *off* (the ceiling). Then 10,000
//! autonomy keys give the watched mesh 10,000 more series, and its `/metrics` is scraped
//! beside `/healthz` of the same edge (the ceiling: the same HTTP path without rendering).
//! Run: `cargo run --release -p aida-bench --bin aida-bench-telemetry`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aida_bench::{
    ChildMesh, Phase, ScratchDatabase, capture_one, print_header, print_row, run_phase, settle,
    start_mesh,
};
use aida_proto::aida::ai::v1::KillAutonomyRequest;
use aida_proto::aida::ai::v1::autonomy_service_client::AutonomyServiceClient;
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{CaptureLeadRequest, GetLeadRequest, Lead};
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(about = "Benchmark metrics and tracing on against off in the same run")]
struct Args {
    /// Seconds per phase and round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds; each measures every phase on both meshes, in turn.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Extra series given to the watched mesh before its `/metrics` is scraped.
    #[arg(long, default_value_t = 10_000)]
    series: usize,
    /// Scrapes timed.
    #[arg(long, default_value_t = 30)]
    scrapes: usize,
    #[command(flatten)]
    backends: aida_bench::Backends,
}

/// Counts the spans exported to it.
#[derive(Clone, Default)]
struct Collector(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

struct Target {
    label: &'static str,
    mesh: ChildMesh,
    leads: Channel,
    token: MetadataValue<tonic::metadata::Ascii>,
    id: String,
    database: ScratchDatabase,
    _data_dir: tempfile::TempDir,
}

impl Target {
    async fn start(
        args: &Args,
        label: &'static str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let database =
            ScratchDatabase::create(&args.backends.postgres, "aida_bench_telemetry").await?;
        let data_dir = tempfile::tempdir()?;
        let namespace = format!("benchtelemetry{label}{}", database.suffix);
        let mut env = vec![
            ("AIDA_EDGE__RATE_LIMIT_PER_SECOND", "1000000"),
            ("AIDA_EDGE__RATE_LIMIT_BURST", "1000000"),
        ];
        env.extend_from_slice(extra_env);
        let mesh = start_mesh(
            &database.url,
            &args.backends.nats,
            &namespace,
            data_dir.path(),
            &env,
        )?;
        let token: MetadataValue<_> = format!("Bearer {}", mesh.token).parse()?;
        let leads = Channel::from_shared(format!("http://{}", mesh.leads))?
            .connect()
            .await?;
        let id = capture_one(leads.clone(), &token, format!("read-{label}@example.com"))
            .await?
            .id;
        Ok(Self {
            label,
            mesh,
            leads,
            token,
            id,
            database,
            _data_dir: data_dir,
        })
    }

    async fn get_lead(&self, clients: usize, duration: Duration) -> Phase {
        let (channel, token, id) = (self.leads.clone(), self.token.clone(), self.id.clone());
        let name = if self.label == "on" {
            "GetLead, metrics + traces on"
        } else {
            "GetLead, off (ceiling)"
        };
        run_phase(name, clients, duration, move |_, _| {
            let mut leads = LeadServiceClient::new(channel.clone());
            let mut request = tonic::Request::new(GetLeadRequest { id: id.clone() });
            request
                .metadata_mut()
                .insert("authorization", token.clone());
            async move { leads.get_lead(request).await.is_ok() }
        })
        .await
    }

    async fn capture_lead(&self, clients: usize, duration: Duration, round: u32) -> Phase {
        let (channel, token, label) = (self.leads.clone(), self.token.clone(), self.label);
        let name = if label == "on" {
            "CaptureLead, metrics + traces on"
        } else {
            "CaptureLead, off (ceiling)"
        };
        run_phase(name, clients, duration, move |client, sequence| {
            let mut leads = LeadServiceClient::new(channel.clone());
            let mut request = tonic::Request::new(CaptureLeadRequest {
                lead: Some(Lead {
                    email: format!("bench-{label}-{round}-{client}-{sequence}@example.com"),
                    first_name: "Grace".into(),
                    company: "Compilers Inc".into(),
                    ..Lead::default()
                }),
                request_id: String::new(),
            });
            request
                .metadata_mut()
                .insert("authorization", token.clone());
            async move { leads.capture_lead(request).await.is_ok() }
        })
        .await
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.mesh.stop();
        self.database.remove().await
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.seconds);
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let collector_url = format!("http://{}", listener.local_addr()?);
    let serving = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(serving)
            .serve_with_incoming(incoming)
            .await;
    });

    let off = Target::start(&args, "off", &[("AIDA_TELEMETRY__METRICS", "false")]).await?;
    let on = Target::start(
        &args,
        "on",
        &[("AIDA_TELEMETRY__OTLP_ENDPOINT", collector_url.as_str())],
    )
    .await?;
    // Let both meshes finish starting (consumers, first batches) before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Each phase starts on an idle machine: a capture phase leaves a mesh with background
    // work (scoring, the outreach agent, analytics batches) that would otherwise run during
    // the next phase of the other mesh. And the meshes take turns at going first, so neither
    // is always measured right after the other.
    let pids = [off.mesh.child.id(), on.mesh.child.id()];
    let mut settling = Duration::ZERO;
    let mut still_busy = 0;
    let mut idle = async || {
        let (waited, went_idle) = settle(&pids, 0.05, Duration::from_secs(60)).await;
        settling += waited;
        still_busy += usize::from(!went_idle);
    };
    let mut totals: Vec<Option<Phase>> = vec![None, None, None, None];
    for round in 0..args.rounds {
        let (first, second) = if round % 2 == 0 {
            (&off, &on)
        } else {
            (&on, &off)
        };
        idle().await;
        let get_first = first.get_lead(args.clients, duration).await;
        idle().await;
        let get_second = second.get_lead(args.clients, duration).await;
        idle().await;
        let capture_first = first.capture_lead(args.clients, duration, round).await;
        idle().await;
        let capture_second = second.capture_lead(args.clients, duration, round).await;
        let phases = if round % 2 == 0 {
            [get_first, get_second, capture_first, capture_second]
        } else {
            [get_second, get_first, capture_second, capture_first]
        };
        for (total, phase) in totals.iter_mut().zip(phases) {
            *total = Some(match total.take() {
                Some(total) => total.merge(phase),
                None => phase,
            });
        }
    }
    let [
        Some(get_off),
        Some(get_on),
        Some(capture_off),
        Some(capture_on),
    ] = <[Option<Phase>; 4]>::try_from(totals).map_err(|_| anyhow::anyhow!("four phases"))?
    else {
        anyhow::bail!("no rounds were run (--rounds 0)");
    };

    // Scrape cost at scale: one autonomy-level series per key.
    let edge = Channel::from_shared(format!("http://{}", on.mesh.edge))?
        .connect()
        .await?;
    let made = Arc::new(AtomicU64::new(0));
    let total = args.series as u64;
    let series_started = Instant::now();
    let workers: Vec<_> = (0..args.clients.max(1))
        .map(|worker| {
            let (edge, token, made) = (edge.clone(), on.token.clone(), made.clone());
            let stride = args.clients.max(1) as u64;
            tokio::spawn(async move {
                let mut key = worker as u64;
                while key < total {
                    let mut request = tonic::Request::new(KillAutonomyRequest {
                        agent: "bench".into(),
                        action: "scrape".into(),
                        segment: format!("s{key}"),
                        reason: "the scrape benchmark".into(),
                    });
                    request
                        .metadata_mut()
                        .insert("authorization", token.clone());
                    if AutonomyServiceClient::new(edge.clone())
                        .kill_autonomy(request)
                        .await
                        .is_ok()
                    {
                        made.fetch_add(1, Ordering::Relaxed);
                    }
                    key += stride;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await?;
    }
    let series_made = made.load(Ordering::Relaxed);
    let series_time = series_started.elapsed();
    let http = reqwest::Client::new();
    let metrics_url = format!("http://{}/metrics", on.mesh.edge);
    let health_url = format!("http://{}/healthz", on.mesh.edge);
    let mut scrape = Vec::new();
    let mut health = Vec::new();
    let mut lines = 0;
    let mut bytes = 0;
    for _ in 0..args.scrapes {
        let begun = Instant::now();
        let body = http.get(&metrics_url).send().await?.text().await?;
        scrape.push(begun.elapsed());
        lines = body.lines().filter(|line| !line.starts_with('#')).count();
        bytes = body.len();
        let begun = Instant::now();
        http.get(&health_url).send().await?.bytes().await?;
        health.push(begun.elapsed());
    }
    let spans = collector.0.load(Ordering::Relaxed);
    off.stop().await?;
    on.stop().await?;

    let setup = format!(
        "{} clients, {} rounds of {} s per phase",
        args.clients, args.rounds, args.seconds
    );
    aida_bench::print_banner("aida-bench-telemetry", &setup);
    print_header();
    print_row(&get_off, None);
    print_row(&get_on, Some(&get_off));
    print_row(&capture_off, None);
    print_row(&capture_on, Some(&capture_off));
    println!();
    println!(
        "GetLead on / off = {:.3}; CaptureLead on / off = {:.3}; spans the collector received: {spans}",
        get_on.rate() / get_off.rate(),
        capture_on.rate() / capture_off.rate()
    );
    println!(
        "waited {:.1} s in all for both meshes to go idle before the phases; {still_busy} of {} phases started with them still busy after 60 s",
        settling.as_secs_f64(),
        4 * args.rounds
    );
    // The scrapes as phases: the bench's own percentiles and table, /healthz the ceiling.
    let timed = |name: &'static str, mut latencies: Vec<Duration>| Phase {
        name,
        count: latencies.len(),
        errors: 0,
        elapsed: latencies.iter().sum(),
        latencies: {
            latencies.sort();
            latencies
        },
    };
    let scrape = timed("GET /metrics", scrape);
    let health = timed("GET /healthz (ceiling)", health);
    println!();
    println!(
        "{series_made} extra series made in {:.1} s; /metrics: {lines} series, {} KiB",
        series_time.as_secs_f64(),
        bytes / 1024
    );
    print_header();
    print_row(&health, None);
    print_row(&scrape, Some(&health));
    Ok(())
}
