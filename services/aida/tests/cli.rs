//! The `aida` binary as a user runs it: `aida up` in an empty directory, a real gRPC call
//! with the token it prints, a clean stop on SIGTERM; `aida token`; bad arguments.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{CaptureLeadRequest, Lead, ListLeadsRequest};

fn aida(dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aida"));
    command
        .current_dir(dir)
        .env("AIDA_LISTEN__LEADS_PORT", "0")
        .env("AIDA_LISTEN__DEALS_PORT", "0")
        .env("AIDA_LISTEN__COMMS_PORT", "0")
        .env("AIDA_LISTEN__ANALYTICS_PORT", "0")
        .env("AIDA_EDGE__PORT", "0")
        .env("AIDA_LOG__FILTER", "warn");
    command
}

struct Up {
    child: Option<Child>,
    address: String,
    token: String,
    /// `(gRPC service name, host:port)` of every service in the banner.
    services: Vec<(String, String)>,
}

/// Starts `aida up` and reads its banner.
fn start_up(dir: &std::path::Path) -> Up {
    start_up_with(dir, &[])
}

/// [`start_up`] with more settings in the environment.
fn start_up_with(dir: &std::path::Path, settings: &[(&str, &str)]) -> Up {
    let started = Instant::now();
    let mut child = aida(dir)
        .envs(settings.iter().copied())
        .arg("up")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn aida up");
    let stdout = child.stdout.take().expect("stdout");
    let mut address = None;
    let mut token = None;
    let mut services = Vec::new();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("banner line");
        // The services speak mutual TLS; clients come in through the edge (gRPC passthrough).
        if let Some(rest) = line.trim().strip_prefix("Edge") {
            address = rest
                .trim()
                .strip_prefix("http://")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned);
        }
        if let Some((name, address)) = line.trim().split_once(" grpc://") {
            services.push((name.trim().to_owned(), address.trim().to_owned()));
        }
        if let Some(rest) = line.trim().strip_prefix("export AIDA_TOKEN=") {
            token = Some(rest.to_owned());
            break;
        }
    }
    println!("aida up printed its banner after {:?}", started.elapsed());
    // Keep draining stdout so the child never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Up {
        child: Some(child),
        address: address.expect("edge address in the banner"),
        token: token.expect("token in the banner"),
        services,
    }
}

impl Up {
    /// The running `aida up`, to stop it.
    fn take(&mut self) -> Child {
        self.child.take().expect("running")
    }
}

impl Drop for Up {
    /// A failing test must not leave `aida up` running: it holds the harness's output.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn stop(mut child: Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "aida did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn aida_up_serves_leads_with_the_token_it_prints_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut up = start_up(dir.path());
    let mut client = LeadServiceClient::connect(format!("http://{}", up.address))
        .await
        .expect("connect");
    let mut request = tonic::Request::new(CaptureLeadRequest {
        lead: Some(Lead {
            email: "first@example.com".into(),
            ..Lead::default()
        }),
        request_id: String::new(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", up.token).parse().expect("header"),
    );
    let lead = client
        .capture_lead(request)
        .await
        .expect("capture")
        .into_inner();
    assert_eq!(lead.email, "first@example.com");

    let mut list = tonic::Request::new(ListLeadsRequest::default());
    list.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", up.token).parse().expect("header"),
    );
    let mut listed = client
        .list_leads(list)
        .await
        .expect("list")
        .into_inner()
        .leads;
    // The score arrives on its own, from the scoring consumer, whenever it is ready.
    for listed in &mut listed {
        listed.score = None;
    }
    assert_eq!(listed, vec![lead]);

    let status = stop(up.take()).await;
    assert!(status.success(), "exit status {status}");
    assert!(
        dir.path().join("data/leads.db").exists(),
        "embedded SQLite under ./data"
    );

    // The data survives a restart, and the development key too (the old token still works).
    let mut again = start_up(dir.path());
    let mut client = LeadServiceClient::connect(format!("http://{}", again.address))
        .await
        .expect("connect");
    let mut list = tonic::Request::new(ListLeadsRequest::default());
    list.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", up.token).parse().expect("header"),
    );
    assert_eq!(
        client
            .list_leads(list)
            .await
            .expect("list")
            .into_inner()
            .leads
            .len(),
        1
    );
    assert!(stop(again.take()).await.success());
}

fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    request
}

/// Captures leads through the edge from four clients until the mesh stops answering (or
/// `limit` leads were acknowledged): how many were acknowledged.
async fn capture_until_gone(address: String, token: String, first: u32, limit: u32) -> u32 {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(first));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (next, token) = (next.clone(), token.clone());
        let address = format!("http://{address}");
        clients.push(tokio::spawn(async move {
            let Ok(mut client) = LeadServiceClient::connect(address).await else {
                return 0;
            };
            let mut acknowledged = 0;
            loop {
                let number = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if number >= first + limit {
                    return acknowledged;
                }
                let capture = CaptureLeadRequest {
                    lead: Some(Lead {
                        email: format!("crash{number}@example.com"),
                        ..Lead::default()
                    }),
                    request_id: format!("crash-{number}"),
                };
                match client.capture_lead(bearer(&token, capture)).await {
                    Ok(_) => acknowledged += 1,
                    Err(_) => return acknowledged,
                }
            }
        }));
    }
    let mut acknowledged = 0;
    for client in clients {
        acknowledged += client.await.expect("client");
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aida_up_killed_under_load_loses_no_lead_and_no_event_on_its_way_to_analytics() {
    use aida_proto::aida::analytics::v1::GetFunnelRequest;
    use aida_proto::aida::analytics::v1::analytics_service_client::AnalyticsServiceClient;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut acknowledged = 0;
    // Twice: capture from four clients and SIGKILL the whole mesh in the middle of it.
    for round in 0..2 {
        let mut up = start_up(dir.path());
        let load = tokio::spawn(capture_until_gone(
            up.address.clone(),
            up.token.clone(),
            round * 100_000,
            100_000,
        ));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut child = up.take();
        child.kill().expect("SIGKILL aida up");
        child.wait().expect("reap");
        let round_acknowledged = load.await.expect("load");
        assert!(
            round_acknowledged > 20,
            "only {round_acknowledged} captures before the kill"
        );
        acknowledged += round_acknowledged;
    }

    // Started again: every committed lead is there and every capture event reaches
    // analytics, the ones accepted by the bus before the kill included.
    let mut up = start_up(dir.path());
    let address = format!("http://{}", up.address);
    let mut leads = LeadServiceClient::connect(address.clone())
        .await
        .expect("connect");
    let stored = leads
        .list_leads(bearer(&up.token, ListLeadsRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .total_size;
    let stored = u32::try_from(stored).expect("count");
    // A capture in flight at the kill may have committed without its answer arriving.
    assert!(
        (acknowledged..=acknowledged + 8).contains(&stored),
        "{stored} leads stored, {acknowledged} acknowledged"
    );
    let mut analytics = AnalyticsServiceClient::connect(address)
        .await
        .expect("connect analytics");
    let mut counted = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let funnel = analytics
            .get_funnel(bearer(&up.token, GetFunnelRequest::default()))
            .await
            .expect("funnel")
            .into_inner();
        counted = funnel.total.map_or(0, |total| total.captured);
        if counted >= i64::from(stored) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        counted,
        i64::from(stored),
        "analytics counted {counted} of {stored} captures ({acknowledged} acknowledged)"
    );
    assert!(stop(up.take()).await.success());
}

#[test]
fn aida_token_mints_a_token_and_refuses_unknown_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = aida(dir.path())
        .args(["token", "--tenant", "acme", "--role", "sales_rep"])
        .output()
        .expect("run");
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(token.trim().split('.').count(), 3, "a JWT");

    let bad = aida(dir.path())
        .args(["token", "--tenant", "acme", "--role", "overlord"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown role 'overlord'"));
}

#[test]
fn unknown_services_and_bad_settings_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unknown = aida(dir.path())
        .args(["serve", "billing"])
        .output()
        .expect("run");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown service 'billing'"));

    let bad = aida(dir.path())
        .env("AIDA_DATABASE_URL", "mysql://nope")
        .args(["migrate"])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("database_url"));
}

#[test]
fn a_deployed_analytics_service_needs_its_own_pseudonym_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |key: Option<&str>| {
        let mut command = aida(dir.path());
        command
            .args(["config", "check", "--service", "analytics"])
            .env("AIDA_DATABASE_URL", "postgres://aida@db:5432/aida");
        if let Some(key) = key {
            command.env("AIDA_ANALYTICS__PSEUDONYM_KEY", key).env(
                "AIDA_CRYPTO__MASTER_KEYS",
                "cli:4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d",
            );
        }
        command.output().expect("run")
    };
    let refused = check(None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("analytics.pseudonym_key"), "{stderr}");
    let accepted = check(Some(&"p".repeat(40)));
    let printed = String::from_utf8_lossy(&accepted.stdout);
    assert!(
        accepted.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(
        !printed.contains(&"p".repeat(40)) && !printed.contains("4d4d4d"),
        "the keys are redacted: {printed}"
    );
}

#[test]
fn a_deployed_service_needs_the_master_keys_and_refuses_malformed_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check = |keys: Option<&str>| {
        let mut command = aida(dir.path());
        command
            .args(["config", "check", "--service", "leads"])
            .env("AIDA_DATABASE_URL", "postgres://aida@db:5432/aida");
        if let Some(keys) = keys {
            command.env("AIDA_CRYPTO__MASTER_KEYS", keys);
        }
        command.output().expect("run")
    };
    for (keys, expected) in [
        (None, "crypto.master_keys must be set"),
        (
            Some("k1:0123"),
            "crypto.master_keys: key 'k1': 64 hex digits",
        ),
        (Some("k1"), "crypto.master_keys: each key is id:hex"),
    ] {
        let refused = check(keys);
        assert!(!refused.status.success(), "{keys:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(expected), "{keys:?}: {stderr}");
    }
    let accepted = check(Some(&format!(
        "k1:{},k2:{}",
        "ab".repeat(32),
        "cd".repeat(32)
    )));
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let printed = String::from_utf8_lossy(&accepted.stdout);
    assert!(
        printed.contains("master_keys = \"[redacted]\""),
        "{printed}"
    );
    assert!(!printed.contains("abab"), "{printed}");
}

#[test]
fn a_deployed_edge_refuses_to_start_without_cors_origins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = aida(dir.path())
        .args(["serve", "edge"])
        .output()
        .expect("run");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("edge.cors_origins"), "{stderr}");

    // With the origins named it starts and listens.
    let mut child = aida(dir.path())
        .args(["serve", "edge"])
        .env("AIDA_EDGE__CORS_ORIGINS", r#"["https://app.example.com"]"#)
        .env("AIDA_LOG__FILTER", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aida serve edge");
    let stderr = child.stderr.take().expect("stderr");
    let listening = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("edge listening"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "the edge started with its origins named");
}

#[test]
fn aida_config_check_prints_redacted_settings_and_names_a_bad_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "compose-signing-key-0123456789abcdef-xyz";
    // AIDA_TOKEN (the banner tells users to export it) and AIDA_PYTHON (`aida models
    // fetch` reads it) are not settings, and must not make the loader refuse.
    let output = aida(dir.path())
        .args(["config", "check"])
        .env("AIDA_TOKEN", "eyJ.a.b")
        .env("AIDA_PYTHON", "/usr/bin/python3")
        .env("AIDA_AUTH__SIGNING_KEY", key)
        .env(
            "AIDA_DATABASE_URL",
            "postgres://aida:pg-secret@db:5432/aida",
        )
        .env("AIDA_BUS__STREAM_REPLICAS", "3")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !stdout.contains(key) && !stdout.contains("pg-secret"),
        "{stdout}"
    );
    assert!(stdout.contains("signing_key = \"[redacted]\""), "{stdout}");
    assert!(stdout.contains("stream_replicas = 3"), "{stdout}");
    let effective: toml::Table = stdout.parse().expect("the output is TOML");
    assert_eq!(
        effective["database_url"].as_str(),
        Some("postgres://aida:[redacted]@db:5432/aida")
    );

    for (name, value, named) in [
        ("AIDA_TYPO", "1", "typo"),
        ("AIDA_BUS__STREAM_REPLICAS", "9", "bus.stream_replicas"),
        ("AIDA_AUTH__SIGNING_KEY", "short", "auth.signing_key"),
        (
            "AIDA_EDGE__TRUSTED_PROXIES",
            "[\"not-an-ip\"]",
            "edge.trusted_proxies",
        ),
    ] {
        let refused = aida(dir.path())
            .args(["config", "check"])
            .env(name, value)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{name}={value} accepted");
        assert!(stderr.contains(named), "{name}={value}: {stderr}");
    }
}

#[test]
fn aida_serve_help_names_every_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = aida(dir.path())
        .args(["serve", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("leads, deals, comms, analytics or edge"),
        "{help}"
    );
}

#[tokio::test]
async fn aida_health_reports_serving_over_mutual_tls_and_http_and_fails_on_a_dead_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut up = start_up(dir.path());
    let health = |args: &[&str]| {
        aida(dir.path())
            .env("AIDA_TLS__ENABLED", "true")
            .arg("health")
            .args(args)
            .output()
            .expect("run")
    };
    let (name, leads) = up
        .services
        .iter()
        .find(|(name, _)| name == "LeadService")
        .cloned()
        .expect("LeadService in the banner");
    assert_eq!(name, "LeadService");
    for args in [
        vec![leads.as_str(), "--identity", "edge", "--peer", "leads"],
        vec![
            leads.as_str(),
            "--identity",
            "edge",
            "--peer",
            "leads",
            "--service",
            "aida.leads.v1.LeadService",
        ],
    ] {
        let output = health(&args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("SERVING"), "{stdout}");
    }
    // The server must prove the identity asked for.
    let impostor = health(&[leads.as_str(), "--identity", "edge", "--peer", "deals"]);
    assert!(!impostor.status.success(), "leads passed as deals");
    // Without a certificate to present, mutual TLS cannot be spoken: said so.
    let anonymous = health(&[leads.as_str()]);
    assert!(!anonymous.status.success());
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("--identity"));

    let edge = format!("http://{}/healthz", up.address);
    let output = health(&[edge.as_str()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let status = stop(up.take()).await;
    assert!(status.success(), "exit status {status}");
    let dead = health(&[edge.as_str(), "--timeout", "1"]);
    assert!(!dead.status.success(), "a stopped edge is not healthy");
}

/// `aida audit verify` in `dir`: whether it succeeded, and what it printed.
fn audit_verify(dir: &std::path::Path) -> (bool, String) {
    let output = aida(dir)
        .args(["audit", "verify"])
        .output()
        .expect("run aida audit verify");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aida_audit_verify_passes_an_intact_chain_and_names_the_record_changed_behind_its_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut up = start_up(dir.path());
    let mut leads = LeadServiceClient::connect(format!("http://{}", up.address))
        .await
        .expect("connect");
    for n in 0..3 {
        leads
            .capture_lead(bearer(
                &up.token,
                CaptureLeadRequest {
                    lead: Some(Lead {
                        email: format!("audit-{n}@example.com"),
                        ..Lead::default()
                    }),
                    ..CaptureLeadRequest::default()
                },
            ))
            .await
            .expect("capture");
    }
    // The records reach the chain through the bus: a moment after the calls.
    let chained = |printed: &str| {
        printed
            .lines()
            .filter(|line| line.ends_with("records, chain intact"))
            .filter_map(|line| {
                line.split(": ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut intact, mut printed) = audit_verify(dir.path());
    while !(intact && chained(&printed) >= 3) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        (intact, printed) = audit_verify(dir.path());
    }
    assert!(intact && chained(&printed) >= 3, "{printed}");
    assert!(stop(up.take()).await.success());

    // Someone with the database file gets past the trigger and edits record 2.
    let url = secrecy::SecretString::from(format!(
        "sqlite://{}",
        dir.path().join("data/analytics.db").display()
    ));
    let db = aida_core::db::Database::connect(&url).await.expect("open");
    for statement in [
        "DROP TRIGGER audit_records_no_update",
        "UPDATE audit_records SET action = 'aida.leads.v1.LeadService/GetLead' WHERE seq = 2",
    ] {
        db.execute(aida_core::db::Sql::new(statement))
            .await
            .expect(statement);
    }
    db.close().await;
    let (intact, printed) = audit_verify(dir.path());
    assert!(!intact, "{printed}");
    assert!(
        printed.contains("BROKEN at record 2") && printed.contains("altered"),
        "{printed}"
    );
}

/// `aida keys <action>` in `dir`: whether it succeeded, and what it printed.
fn keys(dir: &std::path::Path, action: &str) -> (bool, String) {
    let output = aida(dir)
        .args(["keys", action])
        .output()
        .expect("run aida keys");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_key_rotation_under_load_fails_no_request_and_leaves_every_lead_readable() {
    use aida_proto::aida::leads::v1::GetLeadRequest;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    // Load, not the edge's rate limit, is what this measures.
    const UNLIMITED: &[(&str, &str)] = &[
        ("AIDA_EDGE__RATE_LIMIT_PER_SECOND", "100000"),
        ("AIDA_EDGE__RATE_LIMIT_BURST", "100000"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut up = start_up_with(dir.path(), UNLIMITED);
    let (ok, before) = keys(dir.path(), "status");
    assert!(ok, "{before}");
    let old = before
        .lines()
        .find_map(|line| line.strip_prefix("current master key: "))
        .expect("current key")
        .to_owned();

    // 8 clients capture and read back what they captured until the rotation is over.
    let stop_load = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..8 {
        let (address, token, stop_load) = (up.address.clone(), up.token.clone(), stop_load.clone());
        clients.push(tokio::spawn(async move {
            let mut leads = LeadServiceClient::connect(format!("http://{address}"))
                .await
                .expect("connect");
            let (mut captured, mut failures) = (Vec::new(), Vec::new());
            let mut n = 0;
            while !stop_load.load(Ordering::Relaxed) || n < 3 {
                let email = format!("rotation-{client}-{n}@example.com");
                n += 1;
                let request = CaptureLeadRequest {
                    lead: Some(Lead {
                        email: email.clone(),
                        first_name: format!("Client{client}"),
                        ..Lead::default()
                    }),
                    ..CaptureLeadRequest::default()
                };
                match leads.capture_lead(bearer(&token, request)).await {
                    Ok(lead) => {
                        let id = lead.into_inner().id;
                        match leads
                            .get_lead(bearer(&token, GetLeadRequest { id: id.clone() }))
                            .await
                        {
                            Ok(read) if read.get_ref().email == email => captured.push((id, email)),
                            Ok(read) => failures.push(format!("read {:?}", read.get_ref().email)),
                            Err(status) => failures.push(format!("get: {status}")),
                        }
                    }
                    Err(status) => failures.push(format!("capture: {status}")),
                }
            }
            (captured, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, rotated) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || keys(&dir, "rotate")
    })
    .await
    .expect("rotate");
    assert!(ok, "{rotated}");
    assert!(rotated.contains("tenant keys re-wrapped"), "{rotated}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_load.store(true, Ordering::Relaxed);
    let mut captured = Vec::new();
    for client in clients {
        let (leads, failures) = client.await.expect("client");
        assert_eq!(failures, Vec::<String>::new(), "no request fails");
        captured.extend(leads);
    }
    assert!(captured.len() >= 24, "{} leads", captured.len());

    let (ok, after) = keys(dir.path(), "status");
    assert!(ok, "{after}");
    let new = after
        .lines()
        .find_map(|line| line.strip_prefix("current master key: "))
        .expect("current key");
    assert_ne!(new, old, "{after}");
    assert!(
        !after.contains(&format!("  {old}:")),
        "no tenant key is left under the old master key: {after}"
    );

    // A fresh process unwraps every tenant key under the new master key.
    let status = stop(up.take()).await;
    assert!(status.success(), "aida up exited with {status}");
    let up = start_up_with(dir.path(), UNLIMITED);
    let mut leads = LeadServiceClient::connect(format!("http://{}", up.address))
        .await
        .expect("connect");
    for (id, email) in &captured {
        let read = leads
            .get_lead(bearer(&up.token, GetLeadRequest { id: id.clone() }))
            .await
            .expect("readable after rotation");
        assert_eq!(&read.get_ref().email, email);
    }
}
