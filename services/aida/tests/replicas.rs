//! Several deployments of the mesh as separate processes (`aida serve …`), as the Swarm
//! stack and a blue-green release run them: two LeadService replicas on one PostgreSQL
//! database, one JetStream and one Chroma find every lead through either (an embedded
//! vector index per container would not); the edge switches from a blue to a green mesh
//! under steady load without a failed request, and refuses while green is not healthy.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aida_core::testing::{TestPostgres, eventually, free_port, shared_nats_url, unique_namespace};
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{CaptureLeadRequest, Lead, SearchLeadsRequest};
use secrecy::{ExposeSecret, SecretString};
use tonic::transport::Channel;

/// The master keys every replica shares.
const REPLICA_MASTER_KEYS: &str =
    "replicas:1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f";

/// One `aida serve <role>` process, killed when dropped.
struct Process {
    child: Option<Child>,
    port: u16,
    _data: tempfile::TempDir,
}

/// What every process of one test shares: database, bus namespace, signing key.
struct Shared {
    database_url: String,
    namespace: String,
    signing_key: String,
}

impl Shared {
    async fn new() -> (Self, TestPostgres) {
        let postgres = TestPostgres::create().await;
        let shared = Self {
            database_url: postgres.secret_url().expose_secret().to_owned(),
            namespace: unique_namespace(),
            signing_key: format!("replica-key-{}", aida_core::random_hex(16)),
        };
        (shared, postgres)
    }

    fn token(&self, roles: &[&str]) -> String {
        aida_core::auth::TokenIssuer::hs256(
            &SecretString::from(self.signing_key.clone()),
            "aida-dev",
            "aida-crm",
        )
        .mint("acme", "ada", roles, Duration::from_secs(600))
        .expect("token")
    }

    /// Starts `aida serve <role>` listening on a port of its own, with `env` on top.
    fn start(&self, role: &str, env: &[(&str, String)]) -> Process {
        self.start_on(role, free_port(), env)
    }

    /// Like [`Shared::start`], on `port`.
    fn start_on(&self, role: &str, port: u16, env: &[(&str, String)]) -> Process {
        let data = tempfile::tempdir().expect("data dir");
        let port_key = match role {
            "edge" => "AIDA_EDGE__PORT".to_owned(),
            other => format!("AIDA_LISTEN__{}_PORT", other.to_uppercase()),
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_aida"));
        command
            .args(["serve", role])
            .current_dir(data.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("AIDA_DATA_DIR", data.path())
            .env("AIDA_DATABASE_URL", &self.database_url)
            .env("AIDA_NATS_URL", shared_nats_url())
            .env("AIDA_BUS__NAMESPACE", &self.namespace)
            .env("AIDA_AUTH__SIGNING_KEY", &self.signing_key)
            .env("AIDA_CRYPTO__MASTER_KEYS", REPLICA_MASTER_KEYS)
            .env(
                "AIDA_ANALYTICS__PSEUDONYM_KEY",
                "replicas-test-pseudonym-key-0123456789",
            )
            .env(port_key, port.to_string())
            .env("AIDA_TELEMETRY__METRICS_PORT", "0")
            .env("AIDA_LOG__FILTER", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("spawn aida serve");
        Process {
            child: Some(child),
            port,
            _data: data,
        }
    }
}

impl Process {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn channel(&self) -> Channel {
        for _ in 0..300 {
            if let Ok(channel) = Channel::from_shared(self.url())
                .expect("url")
                .connect()
                .await
            {
                return channel;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} did not start", self.url());
    }

    async fn client(&self) -> LeadServiceClient<Channel> {
        LeadServiceClient::new(self.channel().await)
    }

    /// SIGTERM (a graceful stop, as Swarm and compose stop tasks), and the exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        child.wait().expect("exit")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn authorized<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

async fn found(
    client: &mut LeadServiceClient<Channel>,
    token: &str,
    query: &str,
    id: &str,
) -> bool {
    client
        .search_leads(authorized(
            token,
            SearchLeadsRequest {
                query: query.into(),
                page_size: 10,
                filter: String::new(),
            },
        ))
        .await
        .is_ok_and(|response| {
            response
                .into_inner()
                .results
                .iter()
                .any(|result| result.lead.as_ref().is_some_and(|lead| lead.id == id))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lead_service_replicas_on_one_chroma_find_a_lead_through_either() {
    let chroma = aida_core::testing::chroma::url();
    let (shared, _postgres) = Shared::new().await;
    let env = [("AIDA_AI__CHROMA_URL", chroma)];
    let replicas = [shared.start("leads", &env), shared.start("leads", &env)];
    let token = shared.token(&["admin"]);
    let clients = [replicas[0].client().await, replicas[1].client().await];

    for (on, company, query) in [
        (0, "Zephyr Quantum Bakery", "quantum bakery"),
        (1, "Obsidian Harbour Freight", "harbour freight"),
    ] {
        let lead = clients[on]
            .clone()
            .capture_lead(authorized(
                &token,
                CaptureLeadRequest {
                    lead: Some(Lead {
                        email: format!("buyer-{on}@{}.example", company.replace(' ', "")),
                        company: company.into(),
                        title: "Head of Operations".into(),
                        ..Lead::default()
                    }),
                    request_id: String::new(),
                },
            ))
            .await
            .expect("capture")
            .into_inner();
        // Captured through one replica, found through the other, and through the first.
        let other = &clients[1 - on];
        assert!(
            eventually(Duration::from_secs(30), || {
                let mut other = other.clone();
                let (token, id) = (token.clone(), lead.id.clone());
                async move { found(&mut other, &token, query, &id).await }
            })
            .await,
            "{company}: captured on replica {on}, not found through the other"
        );
        assert!(found(&mut clients[on].clone(), &token, query, &lead.id).await);
    }
}

/// The four services of one colour, on the ports given (leads, deals, comms, analytics).
fn start_services(shared: &Shared, ports: [u16; 4], color: &str, only: &[&str]) -> Vec<Process> {
    let leads_url = format!("http://127.0.0.1:{}", ports[0]);
    ["leads", "deals", "comms", "analytics"]
        .into_iter()
        .zip(ports)
        .filter(|(role, _)| only.contains(role))
        .map(|(role, port)| {
            shared.start_on(
                role,
                port,
                &[
                    ("AIDA_SERVICES__LEADS_URL", leads_url.clone()),
                    // Each colour's analytics reads every event into its own DuckDB.
                    ("AIDA_ANALYTICS__INSTANCE", color.to_owned()),
                ],
            )
        })
        .collect()
}

fn upstreams(ports: [u16; 4]) -> Vec<(String, String)> {
    ["LEADS", "DEALS", "COMMS", "ANALYTICS"]
        .into_iter()
        .zip(ports)
        .map(|(service, port)| (service.to_owned(), format!("[\"http://127.0.0.1:{port}\"]")))
        .collect()
}

/// Steady load through the edge: clients capturing a lead and reading it back, again and
/// again, until stopped; every answer that is not 200 is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(edge: &str, token: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|client| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                let (edge, token) = (edge.to_owned(), token.to_owned());
                tokio::spawn(async move {
                    // A request that hangs is a failure too, not a stalled client.
                    let http = reqwest::Client::builder()
                        .timeout(Duration::from_secs(15))
                        .build()
                        .expect("client");
                    let mut round = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        round += 1;
                        let email = format!("load-{client}-{round}@bluegreen.example");
                        let captured = http
                            .post(format!("{edge}/v1/leads"))
                            .bearer_auth(&token)
                            .json(&serde_json::json!({"email": email, "company": "Blue Green Ltd"}))
                            .send()
                            .await;
                        let id = match captured {
                            Ok(response) if response.status() == reqwest::StatusCode::OK => {
                                let body: serde_json::Value =
                                    response.json().await.unwrap_or_default();
                                body["id"].as_str().unwrap_or_default().to_owned()
                            }
                            Ok(response) => {
                                let status = response.status();
                                let body = response.text().await.unwrap_or_default();
                                failures
                                    .lock()
                                    .expect("failures")
                                    .push(format!("capture: {status} {body}"));
                                continue;
                            }
                            Err(error) => {
                                failures
                                    .lock()
                                    .expect("failures")
                                    .push(format!("capture: {error}"));
                                continue;
                            }
                        };
                        match http
                            .get(format!("{edge}/v1/leads/{id}"))
                            .bearer_auth(&token)
                            .send()
                            .await
                        {
                            Ok(response) if response.status() == reqwest::StatusCode::OK => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(response) => failures
                                .lock()
                                .expect("failures")
                                .push(format!("get {id}: {}", response.status())),
                            Err(error) => failures
                                .lock()
                                .expect("failures")
                                .push(format!("get {id}: {error}")),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    fn completed(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Completed round trips and the first failures, for assertion messages.
    fn report(&self) -> String {
        let failures = self.failures.lock().expect("failures");
        format!(
            "{} completed, {} failed: {:?}",
            self.completed(),
            failures.len(),
            &failures[..failures.len().min(5)]
        )
    }

    /// Stops the clients; the failures seen.
    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load client");
        }
        let failures = self.failures.lock().expect("failures").clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// `aida release <args> --edge 127.0.0.1:<port>` with the shared signing key (off the
/// runtime's worker, so the load keeps running meanwhile).
fn release(shared: &Shared, edge_port: u16, args: &[&str]) -> std::process::Output {
    tokio::task::block_in_place(|| run_release(shared, edge_port, args))
}

fn run_release(shared: &Shared, edge_port: u16, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("dir");
    Command::new(env!("CARGO_BIN_EXE_aida"))
        .arg("release")
        .args(args)
        .args(["--edge", &format!("127.0.0.1:{edge_port}")])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AIDA_AUTH__SIGNING_KEY", &shared.signing_key)
        .output()
        .expect("run aida release")
}

async fn wait_until_serving(process: &Process) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(process.channel().await);
    for _ in 0..300 {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await;
        if answer.is_ok_and(|answer| {
            answer.get_ref().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        }) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never reported SERVING", process.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blue_green_switch_under_load_loses_no_request_and_is_refused_while_green_is_unhealthy() {
    let (shared, _postgres) = Shared::new().await;
    let blue_ports = [free_port(), free_port(), free_port(), free_port()];
    let green_ports = [free_port(), free_port(), free_port(), free_port()];
    let mut blue = start_services(
        &shared,
        blue_ports,
        "blue",
        &["leads", "deals", "comms", "analytics"],
    );
    // The load is one principal at full speed: above the default per-principal rate limit,
    // whose 429s would count as failures of the switch.
    let mut edge_env = vec![
        ("AIDA_EDGE__CORS_ORIGINS", r#"["*"]"#.to_owned()),
        ("AIDA_EDGE__RATE_LIMIT_PER_SECOND", "100000".to_owned()),
        ("AIDA_EDGE__RATE_LIMIT_BURST", "100000".to_owned()),
    ];
    let blue_upstreams = upstreams(blue_ports);
    let green_upstreams = upstreams(green_ports);
    let keys: Vec<(String, String)> = blue_upstreams
        .iter()
        .map(|(service, urls)| (format!("AIDA_EDGE__UPSTREAMS__{service}"), urls.clone()))
        .chain(green_upstreams.iter().map(|(service, urls)| {
            (
                format!("AIDA_EDGE__GREEN_UPSTREAMS__{service}"),
                urls.clone(),
            )
        }))
        .collect();
    for (key, value) in &keys {
        edge_env.push((key.as_str(), value.clone()));
    }
    let edge_port = free_port();
    let _edge = shared.start_on("edge", edge_port, &edge_env);
    let base = format!("http://127.0.0.1:{edge_port}");
    for process in &blue {
        wait_until_serving(process).await;
    }
    let http = reqwest::Client::new();
    assert!(
        eventually(Duration::from_secs(30), || async {
            http.get(format!("{base}/healthz"))
                .send()
                .await
                .is_ok_and(|response| response.status() == reqwest::StatusCode::OK)
        })
        .await,
        "the edge reports ready on blue"
    );
    let load = Load::start(&base, &shared.token(&["admin"]), 4);
    assert!(
        eventually(Duration::from_secs(60), || async { load.completed() >= 20 }).await,
        "load on blue: {}",
        load.report()
    );

    // Green without its analytics: the switch is refused, naming the instance.
    let mut green = start_services(&shared, green_ports, "green", &["leads", "deals", "comms"]);
    for process in &green {
        wait_until_serving(process).await;
    }
    let refused = release(&shared, edge_port, &["switch", "green"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "switched to an incomplete green");
    assert!(
        stderr.contains("analytics") && stderr.contains(&green_ports[3].to_string()),
        "the refusal names the instance: {stderr}"
    );
    let status = release(&shared, edge_port, &["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("active blue"));

    // Complete green: the switch goes through, then blue stops.
    green.extend(start_services(
        &shared,
        green_ports,
        "green",
        &["analytics"],
    ));
    wait_until_serving(&green[3]).await;
    let switched = release(&shared, edge_port, &["switch", "green"]);
    let stdout = String::from_utf8_lossy(&switched.stdout);
    assert!(
        switched.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&switched.stderr)
    );
    assert!(stdout.contains("active green"), "{stdout}");
    for process in &mut blue {
        let exit = tokio::task::block_in_place(|| process.terminate());
        assert!(exit.success(), "blue stopped cleanly: {exit}");
    }
    let after_blue = load.completed();
    assert!(
        eventually(Duration::from_secs(60), || async {
            load.completed() >= after_blue + 20
        })
        .await,
        "calls go on against green: {}",
        load.report()
    );
    // Back to blue is refused now that blue is gone, and changes nothing.
    let back = release(&shared, edge_port, &["switch", "blue"]);
    assert!(!back.status.success());
    assert!(String::from_utf8_lossy(&back.stderr).contains("is not SERVING"));
    let (completed, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        completed + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    assert!(completed >= 40, "{completed} round trips under load");
    println!(
        "blue-green under load: {completed} capture+read round trips, {} failed; switch output:\n{stdout}",
        failures.len()
    );
}
