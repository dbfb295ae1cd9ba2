//! Watching a running mesh as an operator does: a real Prometheus, configured by
//! `deploy/prometheus/prometheus.yml`, scrapes every service process and the edge; health
//! turns NOT_SERVING while a service's database or bus is away and SERVING again after.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aida_core::auth::TokenIssuer;
use aida_core::testing::{NatsServer, TestEnv, eventually, free_port, shared_nats_url};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const SIGNING_KEY: &str = "observability-test-signing-key-0123456789";
/// The trace the test's capture belongs to, and the client's span in it.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// The Prometheus server binary (`TEST_PROMETHEUS`, else Debian's, which the test command
/// installs).
fn prometheus_binary() -> PathBuf {
    std::env::var("TEST_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/bin/prometheus"))
}

/// Child processes killed when the test ends, however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Ports {
    grpc: u16,
    metrics: u16,
}

fn aida(dir: &Path, namespace: &str, collector: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aida"));
    command
        .current_dir(dir)
        .env("AIDA_DATA_DIR", dir.join("data"))
        .env("AIDA_NATS_URL", shared_nats_url())
        .env("AIDA_BUS__NAMESPACE", namespace)
        .env("AIDA_AUTH__SIGNING_KEY", SIGNING_KEY)
        .env("AIDA_TELEMETRY__OTLP_ENDPOINT", collector)
        .env("AIDA_LOG__FILTER", "warn")
        // Spans leave in batches every 100 ms (the OpenTelemetry SDK's variable).
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

async fn get(client: &reqwest::Client, url: &str) -> Option<(u16, String)> {
    let response = client.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

async fn json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    match get(client, url).await {
        Some((200, body)) => serde_json::from_str(&body).unwrap_or_default(),
        _ => serde_json::Value::Null,
    }
}

/// The first sample value of a Prometheus instant query (0 when there is none).
async fn query(client: &reqwest::Client, prometheus: &str, promql: &str) -> f64 {
    let url = format!("{prometheus}/api/v1/query?query={}", urlencode(promql));
    let answer = json(client, &url).await;
    answer["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_service_and_the_edge_and_sees_a_capture_counted() {
    let prometheus = prometheus_binary();
    assert!(
        prometheus.exists(),
        "{} is missing: install Debian's prometheus (scripts/test does) or set TEST_PROMETHEUS",
        prometheus.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let namespace = aida_core::testing::unique_namespace();
    let services = ["leads", "deals", "comms", "analytics"];
    let ports: Vec<Ports> = services
        .iter()
        .map(|_| Ports {
            grpc: free_port(),
            metrics: free_port(),
        })
        .collect();
    let edge_port = free_port();
    let collector = Collector::start().await;
    let mut processes = Processes(Vec::new());
    for (service, port) in services.iter().zip(&ports) {
        let mut command = aida(dir.path(), &namespace, &collector.url());
        for (other, other_port) in services.iter().zip(&ports) {
            command.env(
                format!("AIDA_LISTEN__{}_PORT", other.to_uppercase()),
                other_port.grpc.to_string(),
            );
        }
        command
            .env("AIDA_TELEMETRY__METRICS_PORT", port.metrics.to_string())
            .env("AIDA_ANALYTICS__SNAPSHOT_INTERVAL_SECS", "1")
            .env(
                "AIDA_SERVICES__LEADS_URL",
                format!("http://127.0.0.1:{}", ports[0].grpc),
            )
            .args(["serve", service]);
        processes.0.push(
            command
                .spawn()
                .unwrap_or_else(|error| panic!("spawn {service}: {error}")),
        );
    }
    let mut edge = aida(dir.path(), &namespace, &collector.url());
    edge.env("AIDA_EDGE__PORT", edge_port.to_string())
        .env("AIDA_EDGE__CORS_ORIGINS", "[\"*\"]");
    for (service, port) in services.iter().zip(&ports) {
        edge.env(
            format!("AIDA_EDGE__UPSTREAMS__{}", service.to_uppercase()),
            format!("[\"http://127.0.0.1:{}\"]", port.grpc),
        );
    }
    processes
        .0
        .push(edge.args(["serve", "edge"]).spawn().expect("spawn edge"));

    let client = reqwest::Client::new();
    let edge_url = format!("http://127.0.0.1:{edge_port}");
    // The edge is ready once every service answers its health probe.
    assert!(
        eventually(Duration::from_secs(60), || {
            let client = client.clone();
            let url = format!("{edge_url}/readyz");
            async move { matches!(get(&client, &url).await, Some((200, _))) }
        })
        .await,
        "the edge never became ready: {:?}",
        get(&client, &format!("{edge_url}/readyz")).await
    );

    // The shipped configuration, pointed at this mesh and scraping every second.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus/prometheus.yml"),
    )
    .expect("deploy/prometheus/prometheus.yml");
    let mut config = shipped
        .replace("15s", "1s")
        .replace("timeout: 5s", "timeout: 1s");
    for (service, port) in services.iter().zip(&ports) {
        let target = format!("\"{service}:");
        let start = config
            .find(&target)
            .unwrap_or_else(|| panic!("prometheus.yml has no target for {service}"));
        let end = start + config[start + 1..].find('"').expect("closing quote") + 2;
        config.replace_range(start..end, &format!("\"127.0.0.1:{}\"", port.metrics));
    }
    assert!(
        config.contains("\"edge:8080\""),
        "prometheus.yml scrapes the edge"
    );
    config = config.replace("\"edge:8080\"", &format!("\"127.0.0.1:{edge_port}\""));
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write config");
    let prometheus_port = free_port();
    processes.0.push(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let prometheus_url = format!("http://127.0.0.1:{prometheus_port}");

    let jobs = ["leads", "deals", "comms", "analytics", "edge"];
    let all_up = eventually(Duration::from_secs(60), || {
        let client = client.clone();
        let url = format!("{prometheus_url}/api/v1/targets");
        async move {
            let targets = json(&client, &url).await;
            let Some(active) = targets["data"]["activeTargets"].as_array() else {
                return false;
            };
            jobs.iter().all(|job| {
                active
                    .iter()
                    .any(|target| target["labels"]["job"] == *job && target["health"] == "up")
            })
        }
    })
    .await;
    assert!(
        all_up,
        "every target up: {}",
        json(&client, &format!("{prometheus_url}/api/v1/targets")).await
    );

    let captured =
        "grpc_server_handled_total{job=\"leads\",grpc_method=\"CaptureLead\",grpc_code=\"OK\"}";
    let before = query(&client, &prometheus_url, captured).await;
    let issuer = TokenIssuer::hs256(
        &secrecy::SecretString::from(SIGNING_KEY),
        "aida-dev",
        "aida-crm",
    );
    let token = issuer
        .mint("acme", "operator", &["admin"], Duration::from_secs(600))
        .expect("token");
    let response = client
        .post(format!("{edge_url}/v1/leads"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .json(&serde_json::json!({"email": "watched@example.com"}))
        .send()
        .await
        .expect("capture through the edge");
    assert_eq!(response.status().as_u16(), 200);
    let lead: serde_json::Value = response.json().await.expect("lead json");
    // The rest of the loop, so the bus, deals, autonomy and business series exist too.
    let post = |path: String, body: serde_json::Value| {
        let request = client
            .post(format!("{edge_url}{path}"))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let response = request.send().await.expect("call through the edge");
            let status = response.status().as_u16();
            assert_eq!(status, 200, "{path}: {:?}", response.text().await);
        }
    };
    let id = lead["id"].as_str().expect("lead id");
    post(format!("/v1/leads/{id}:qualify"), serde_json::json!({})).await;
    post(
        "/v1/autonomy/outreach/draft/observability:kill".into(),
        serde_json::json!({"reason": "the observability test"}),
    )
    .await;

    let counted = eventually(Duration::from_secs(30), || {
        let client = client.clone();
        let url = prometheus_url.clone();
        async move { query(&client, &url, captured).await >= before + 1.0 }
    })
    .await;
    assert!(counted, "CaptureLead's OK counter rose in Prometheus");
    let edge_requests = "sum(aida_edge_http_requests_total{job=\"edge\",handler=\"aida.leads.v1.LeadService/CaptureLead\",status=\"200\"})";
    assert!(
        eventually(Duration::from_secs(30), || {
            let client = client.clone();
            let url = prometheus_url.clone();
            async move { query(&client, &url, edge_requests).await >= 1.0 }
        })
        .await,
        "the edge counted the REST call"
    );

    // Every metric a shipped dashboard panel queries is one Prometheus scraped from this
    // mesh (its list of metric names), once the loop above has run through.
    let dashboards = dashboard_queries();
    assert!(
        dashboards.len() >= 4,
        "dashboards under deploy/grafana: {dashboards:?}"
    );
    let wanted: std::collections::BTreeSet<String> = dashboards
        .iter()
        .flat_map(|(_, _, expr)| metric_names(expr))
        .collect();
    assert!(
        wanted.len() >= 20,
        "the dashboards query the mesh's metrics: {wanted:?}"
    );
    let names_url = format!("{prometheus_url}/api/v1/label/__name__/values");
    let scraped = |names: &serde_json::Value| -> Vec<String> {
        names["data"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|name| name.as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let complete = eventually(Duration::from_secs(60), || {
        let client = client.clone();
        let url = names_url.clone();
        let wanted = wanted.clone();
        async move {
            let names = scraped(&json(&client, &url).await);
            wanted.iter().all(|name| names.contains(name))
        }
    })
    .await;
    let names = scraped(&json(&client, &names_url).await);
    let missing: Vec<String> = dashboards
        .iter()
        .flat_map(|(file, panel, expr)| {
            metric_names(expr)
                .into_iter()
                .filter(|name| !names.contains(name))
                .map(move |name| format!("{file} / {panel}: {name}"))
        })
        .collect();
    one_capture_is_one_trace(&collector).await;
    assert!(
        complete && missing.is_empty(),
        "panels query metrics nobody exports: {missing:#?}"
    );
}

/// A TCP forwarder to PostgreSQL that can be cut (every connection closed, new ones
/// refused) and restored on the same port: the database "goes away" for one service
/// without stopping the shared server.
struct CutProxy {
    port: u16,
    target: SocketAddr,
    running: Option<CancellationToken>,
}

impl CutProxy {
    async fn start(target: SocketAddr) -> Self {
        let mut proxy = Self {
            port: free_port(),
            target,
            running: None,
        };
        proxy.restore().await;
        proxy
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the proxy port again");
        let cut = CancellationToken::new();
        self.running = Some(cut.clone());
        let target = self.target;
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = cut.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let cut = cut.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        () = cut.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
    }

    fn cut(&mut self) {
        if let Some(running) = self.running.take() {
            running.cancel();
        }
    }
}

/// `url` (`postgres://user@host:port/db`) with its host and port replaced by `address`.
fn through(url: &str, address: &str) -> (String, SocketAddr) {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let (user, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
    let (host, database) = rest.split_once('/').expect("database");
    let target = host.parse().unwrap_or_else(|_| {
        std::net::ToSocketAddrs::to_socket_addrs(host)
            .ok()
            .and_then(|mut addresses| addresses.next())
            .expect("resolve the database host")
    });
    let user = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    (format!("{scheme}://{user}{address}/{database}"), target)
}

async fn status_of(channel: &tonic::transport::Channel, service: &str) -> Option<i32> {
    let mut client = HealthClient::new(channel.clone());
    let check = client.check(HealthCheckRequest {
        service: service.to_owned(),
    });
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(response)) => Some(response.get_ref().status),
        _ => None,
    }
}

/// Waits until both the overall `""` status and the named service's report `wanted`.
async fn becomes(
    channel: &tonic::transport::Channel,
    wanted: ServingStatus,
    within: Duration,
) -> bool {
    eventually(within, || async {
        status_of(channel, "").await == Some(wanted as i32)
            && status_of(channel, "aida.leads.v1.LeadService").await == Some(wanted as i32)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_not_serving_while_the_database_or_the_bus_is_away_and_back_after() {
    use secrecy::ExposeSecret as _;
    let mut nats = NatsServer::start();
    let mut env = TestEnv::with_nats(&nats.url()).await;
    let direct = env
        .settings
        .database_url
        .as_ref()
        .expect("a PostgreSQL test database")
        .expose_secret()
        .to_owned();
    let (_, target) = through(&direct, "127.0.0.1:1");
    let mut proxy = CutProxy::start(target).await;
    let (proxied, _) = through(&direct, &format!("127.0.0.1:{}", proxy.port));
    env.settings.database_url = Some(secrecy::SecretString::from(proxied));
    env.settings.nats_url = Some(nats.url());
    let bus = aida_core::runtime::connect_bus(&env.settings)
        .await
        .expect("bus");
    let settings = env.settings.clone();
    let server = aida_core::testing::RunningServer::start(move |listener, shutdown| {
        aida::Service::Leads.run(settings, bus, listener, shutdown)
    })
    .await;
    let channel = server.channel().await;
    let window = Duration::from_secs(20);
    assert!(
        becomes(&channel, ServingStatus::Serving, window).await,
        "serving at start"
    );

    nats.kill();
    assert!(
        becomes(&channel, ServingStatus::NotServing, window).await,
        "NOT_SERVING while NATS is down"
    );
    nats.resume();
    assert!(
        becomes(&channel, ServingStatus::Serving, Duration::from_secs(40)).await,
        "SERVING again by itself once NATS is back"
    );

    proxy.cut();
    assert!(
        becomes(&channel, ServingStatus::NotServing, window).await,
        "NOT_SERVING while the database is unreachable"
    );
    proxy.restore().await;
    assert!(
        becomes(&channel, ServingStatus::Serving, Duration::from_secs(40)).await,
        "SERVING again by itself once the database is back"
    );
}

/// (file, panel title, expr) of every panel target of `deploy/grafana/dashboards`.
fn dashboard_queries() -> Vec<(String, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/dashboards");
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/grafana/dashboards") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("dashboard");
        let dashboard: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let file = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        for panel in dashboard["panels"].as_array().expect("panels") {
            let targets = panel["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{file}: a panel without a query");
            for target in targets {
                queries.push((
                    file.clone(),
                    panel["title"].as_str().unwrap_or_default().to_owned(),
                    target["expr"].as_str().expect("expr").to_owned(),
                ));
            }
        }
    }
    queries
}

/// The metric names a PromQL expression selects: identifiers outside label matchers,
/// strings and ranges that are neither functions, keywords, aggregations nor the label lists of
/// `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`.
fn metric_names(expr: &str) -> Vec<String> {
    // Keywords, and the aggregation operators (which may be followed by `by (…)` first).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let word_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        let close = match c {
            '{' => Some('}'),
            '[' => Some(']'),
            '"' => Some('"'),
            _ => None,
        };
        if let Some(close) = close {
            index += 1;
            while index < chars.len() && chars[index] != close {
                index += 1;
            }
            index += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = index;
            while index < chars.len() && word_char(chars[index]) {
                index += 1;
            }
            let word: String = chars[start..index].iter().collect();
            let mut next = index;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) {
                if called {
                    while next < chars.len() && chars[next] != ')' {
                        next += 1;
                    }
                    index = next + 1;
                }
            } else if !called && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.push(word);
            }
        } else if c.is_ascii_digit() {
            while index < chars.len()
                && (chars[index].is_ascii_alphanumeric() || chars[index] == '.')
            {
                index += 1;
            }
        } else {
            index += 1;
        }
    }
    names
}

#[test]
fn promql_metric_names_skip_functions_labels_and_ranges() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket{a=\"b\"}[5m])))"
        ),
        vec!["grpc_server_handling_seconds_bucket"]
    );
    assert_eq!(
        metric_names("sum(x_total) / ignoring(kind) group_left sum(y{kind=\"z\"}) > 0.5"),
        vec!["x_total", "y"]
    );
}

/// An OpenTelemetry collector as far as the mesh can tell: the OTLP `TraceService` over
/// gRPC (tonic, the generated server of `opentelemetry-proto`), keeping every span with
/// the `service.name` of its resource.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, otlp::trace::v1::Span)>>>,
    address: Option<SocketAddr>,
}

use opentelemetry_proto::tonic as otlp;
use otlp::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use otlp::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use std::sync::{Arc, Mutex};

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.spans.lock().expect("spans");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| attribute.value.as_ref())
                .and_then(|value| match &value.value {
                    Some(otlp::common::v1::any_value::Value::StringValue(name)) => {
                        Some(name.clone())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    kept.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let collector = Collector {
            address: Some(listener.local_addr().expect("address")),
            ..Collector::default()
        };
        let server = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(incoming)
                .await;
        });
        collector
    }

    fn url(&self) -> String {
        format!("http://{}", self.address.expect("bound"))
    }

    /// (service, span) of the trace `trace_id` (hex).
    fn trace(&self, trace_id: &str) -> Vec<(String, otlp::trace::v1::Span)> {
        self.spans
            .lock()
            .expect("spans")
            .iter()
            .filter(|(_, span)| hex(&span.trace_id) == trace_id)
            .cloned()
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The capture sent with `traceparent` 00-[`TRACE_ID`]-[`CLIENT_SPAN`]: one trace from the
/// edge through LeadService, the relay and NATS into the analytics consumer and DuckDB, and
/// into the scoring and outreach consumers, each span the child of the hop before.
async fn one_capture_is_one_trace(collector: &Collector) {
    let find = |spans: &[(String, otlp::trace::v1::Span)], service: &str, name: &str| {
        spans
            .iter()
            .find(|(of, span)| of == service && span.name.contains(name))
            .map(|(_, span)| span.clone())
    };
    let wanted = [
        ("aida-edge", "POST"),
        ("aida-leads", "aida.leads.v1.LeadService/CaptureLead"),
        ("aida-leads", "publish leads.captured"),
        ("aida-analytics", "leads.captured"),
        ("aida-analytics", "duckdb append"),
        ("aida-leads", "leads-scoring-leads leads.captured"),
        ("aida-comms", "comms-outreach leads.captured"),
    ];
    let arrived = eventually(Duration::from_secs(30), || async {
        let spans = collector.trace(TRACE_ID);
        wanted
            .iter()
            .all(|(service, name)| find(&spans, service, name).is_some())
    })
    .await;
    let spans = collector.trace(TRACE_ID);
    let seen: Vec<(String, String)> = spans
        .iter()
        .map(|(service, span)| (service.clone(), span.name.clone()))
        .collect();
    assert!(
        arrived,
        "every hop of the capture in trace {TRACE_ID}: {seen:#?}"
    );
    println!("trace {TRACE_ID}: {} spans: {seen:?}", seen.len());
    let span = |service: &str, name: &str| find(&spans, service, name).expect("span");
    let edge = span("aida-edge", "POST");
    let call = span("aida-leads", "aida.leads.v1.LeadService/CaptureLead");
    let publish = span("aida-leads", "publish leads.captured");
    let ingest = span("aida-analytics", "duckdb append");
    assert_eq!(
        hex(&edge.parent_span_id),
        CLIENT_SPAN,
        "the edge continues the caller's trace"
    );
    assert_eq!(
        call.parent_span_id, edge.span_id,
        "LeadService is the edge's child"
    );
    let ids: std::collections::HashMap<Vec<u8>, (String, String)> = spans
        .iter()
        .map(|(service, span)| (span.span_id.clone(), (service.clone(), span.name.clone())))
        .collect();
    // The relay publishes inside the trace of the call that committed the event.
    let mut ancestor = publish.parent_span_id.clone();
    while ancestor != call.span_id {
        let parent = spans
            .iter()
            .find(|(_, span)| span.span_id == ancestor)
            .unwrap_or_else(|| {
                panic!("the publish span descends from the capture call: {seen:#?}")
            });
        ancestor = parent.1.parent_span_id.clone();
    }
    for (service, name) in [
        ("aida-analytics", "leads.captured"),
        ("aida-leads", "leads-scoring-leads leads.captured"),
        ("aida-comms", "comms-outreach leads.captured"),
    ] {
        let consumed = span(service, name);
        assert_eq!(
            consumed.parent_span_id, publish.span_id,
            "{service} {name} continues from the relay's span over NATS"
        );
    }
    assert!(
        ids.contains_key(&ingest.parent_span_id),
        "the DuckDB append has its parent in the trace: {seen:#?}"
    );
}
