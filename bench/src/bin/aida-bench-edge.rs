//! `aida-bench-edge`: what the edge gateway costs. The same `GetLead` is read four ways
//! with the same number of concurrent clients, against one `aida up` (release build,
//! PostgreSQL + NATS JetStream, no mutual TLS so only the edge hop is measured):
//!
//! 1. direct gRPC to LeadService (the ceiling);
//! 2. native gRPC through the edge (JWT check, RBAC, rate limiter, proxy);
//! 3. grpc-web (binary) through the edge, as a browser sends it;
//! 4. REST `GET /v1/leads/{id}` through the edge (transcoding to gRPC and back to JSON).
//!
//! The paths take turns (default: 3 rounds of 5 s each) and each path's figures pool its
//! rounds. It prints rates, latency percentiles and each edge path's ratio to the direct
//! ceiling.
//! Run: `cargo run --release -p aida-bench --bin aida-bench-edge`.

use std::time::Duration;

use aida_bench::{
    Phase, ScratchDatabase, capture_one, cpu_seconds, print_header, print_row, run_phase,
    start_mesh,
};
use aida_proto::aida::leads::v1::GetLeadRequest;
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use clap::Parser;
use prost::Message;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(about = "Benchmark the edge gateway against direct gRPC in the same run")]
struct Args {
    /// Seconds per path and round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds; each measures every path once, in turn.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[command(flatten)]
    backends: aida_bench::Backends,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let database = ScratchDatabase::create(&args.backends.postgres, "aida_bench_edge").await?;
    let data_dir = tempfile::tempdir()?;
    let outcome = benchmark(&args, &database.url, &database.suffix, data_dir.path()).await;
    database.remove().await?;
    outcome
}

async fn benchmark(
    args: &Args,
    database_url: &str,
    suffix: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let duration = Duration::from_secs(args.seconds);
    let namespace = format!("benchedge{suffix}");
    // The limiter stays in the path (it is measured) but must not refuse the load.
    let mut mesh = start_mesh(
        database_url,
        &args.backends.nats,
        &namespace,
        data_dir,
        &[
            ("AIDA_EDGE__RATE_LIMIT_PER_SECOND", "1000000"),
            ("AIDA_EDGE__RATE_LIMIT_BURST", "1000000"),
        ],
    )?;
    let bearer = format!("Bearer {}", mesh.token);
    let token: tonic::metadata::MetadataValue<_> = bearer.parse()?;

    let direct = Channel::from_shared(format!("http://{}", mesh.leads))?
        .connect()
        .await?;
    let lead = capture_one(direct.clone(), &token, "edge-bench@example.com".into()).await?;
    let id = lead.id.clone();
    // Let the mesh finish starting (consumers, the first analytics batch) before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let through_edge = Channel::from_shared(format!("http://{}", mesh.edge))?
        .connect()
        .await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .build()?;
    let target = Target {
        direct,
        through_edge,
        http,
        edge: mesh.edge.clone(),
        token,
        bearer,
        id,
    };

    // The four paths take turns, round after round, so that drift (caches warming, the
    // machine's other work) spreads over all of them instead of favouring one.
    let mut totals: Vec<Option<Phase>> = vec![None, None, None, None];
    // CPU seconds used per path by `aida up` (services and edge) and by this load generator:
    // on a machine they share, the cost per request is the figure that travels.
    let mut cpu = [(0.0f64, 0.0f64); 4];
    let server = mesh.child.id();
    for _ in 0..args.rounds {
        for (index, path) in PATHS.iter().enumerate() {
            let before = (cpu_seconds(server), cpu_seconds(std::process::id()));
            let phase = target.measure(*path, args.clients, duration).await;
            cpu[index].0 += cpu_seconds(server) - before.0;
            cpu[index].1 += cpu_seconds(std::process::id()) - before.1;
            totals[index] = Some(match totals[index].take() {
                Some(total) => total.merge(phase),
                None => phase,
            });
        }
    }
    let [
        Some(grpc_direct),
        Some(grpc_edge),
        Some(grpc_web),
        Some(rest),
    ] = <[Option<Phase>; 4]>::try_from(totals).map_err(|_| anyhow::anyhow!("four paths"))?
    else {
        anyhow::bail!("no rounds were run (--rounds 0)");
    };

    mesh.stop();

    let setup = format!(
        "{} clients, {} rounds of {} s per path",
        args.clients, args.rounds, args.seconds
    );
    aida_bench::print_banner("aida-bench-edge", &setup);
    print_header();
    print_row(&grpc_direct, None);
    print_row(&grpc_edge, Some(&grpc_direct));
    print_row(&grpc_web, Some(&grpc_direct));
    print_row(&rest, Some(&grpc_direct));
    println!();
    for phase in [&grpc_edge, &grpc_web, &rest] {
        println!(
            "{:<38} / direct gRPC = {:.3}",
            phase.name,
            phase.rate() / grpc_direct.rate()
        );
    }
    println!();
    println!(
        "| {:<38} | server CPU µs/req | client CPU µs/req | edge's share of server CPU |",
        "path"
    );
    println!(
        "|{}|-------------------|-------------------|----------------------------|",
        "-".repeat(40)
    );
    let per_request = |seconds: f64, phase: &Phase| seconds * 1e6 / phase.count.max(1) as f64;
    let direct_server = per_request(cpu[0].0, &grpc_direct);
    for (index, phase) in [&grpc_direct, &grpc_edge, &grpc_web, &rest]
        .into_iter()
        .enumerate()
    {
        let server = per_request(cpu[index].0, phase);
        let share = if index == 0 {
            "-".to_owned()
        } else {
            format!("{:.0} %", (server - direct_server) / server * 100.0)
        };
        println!(
            "| {:<38} | {:>17.0} | {:>17.0} | {:>26} |",
            phase.name,
            server,
            per_request(cpu[index].1, phase),
            share
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Path {
    Direct,
    GrpcEdge,
    GrpcWeb,
    Rest,
}

const PATHS: [Path; 4] = [Path::Direct, Path::GrpcEdge, Path::GrpcWeb, Path::Rest];

/// What every path needs: the two gRPC channels, the HTTP client, the lead and the token.
struct Target {
    direct: Channel,
    through_edge: Channel,
    http: reqwest::Client,
    edge: String,
    token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    bearer: String,
    id: String,
}

impl Target {
    async fn measure(&self, path: Path, clients: usize, duration: Duration) -> Phase {
        let (token, bearer, id) = (self.token.clone(), self.bearer.clone(), self.id.clone());
        match path {
            Path::Direct | Path::GrpcEdge => {
                let (name, channel) = match path {
                    Path::Direct => ("GetLead, direct gRPC (ceiling)", self.direct.clone()),
                    _ => ("GetLead, gRPC via edge", self.through_edge.clone()),
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
            Path::GrpcWeb => {
                let http = self.http.clone();
                let url = format!("http://{}/aida.leads.v1.LeadService/GetLead", self.edge);
                let message = GetLeadRequest { id }.encode_to_vec();
                let mut frame = vec![0u8];
                frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
                frame.extend_from_slice(&message);
                run_phase(
                    "GetLead, grpc-web via edge",
                    clients,
                    duration,
                    move |_, _| {
                        let request = http
                            .post(&url)
                            .header("content-type", "application/grpc-web+proto")
                            .header("x-grpc-web", "1")
                            .header("authorization", &bearer)
                            .body(frame.clone());
                        async move {
                            match request.send().await {
                                Ok(response) if response.status().is_success() => {
                                    response.bytes().await.is_ok_and(|body| grpc_web_ok(&body))
                                }
                                _ => false,
                            }
                        }
                    },
                )
                .await
            }
            Path::Rest => {
                let http = self.http.clone();
                let url = format!("http://{}/v1/leads/{id}", self.edge);
                run_phase(
                    "GET /v1/leads/{id}, REST via edge",
                    clients,
                    duration,
                    move |_, _| {
                        let request = http.get(&url).header("authorization", &bearer);
                        async move {
                            match request.send().await {
                                Ok(response) if response.status().is_success() => response
                                    .json::<serde_json::Value>()
                                    .await
                                    .is_ok_and(|lead| lead["id"].is_string()),
                                _ => false,
                            }
                        }
                    },
                )
                .await
            }
        }
    }
}

/// Whether a grpc-web response body is one message followed by trailers with status 0.
fn grpc_web_ok(body: &[u8]) -> bool {
    let Some(length) = body
        .get(1..5)
        .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
        .map(|bytes| u32::from_be_bytes(bytes) as usize)
    else {
        return false;
    };
    body.get(5 + length + 5..)
        .is_some_and(|trailers| String::from_utf8_lossy(trailers).contains("grpc-status:0"))
}
