//! Mutual TLS in the mesh: the services accept only clients with a certificate of the mesh
//! CA and a `spiffe://aida/…` identity, the edge and CommsService reach them over it, and a
//! re-issued certificate is served without a restart.

use std::time::Duration;

use aida::Mesh;
use aida_core::testing::{Backend, TestEnv, eventually};
use aida_core::tls::{MeshTls, generate, spiffe_id};
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{CaptureLeadRequest, Lead, ListLeadsRequest};
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn mesh_with_tls() -> (TestEnv, Mesh, CancellationToken) {
    let mut env = TestEnv::new(Backend::Embedded).await;
    let settings = &mut env.settings;
    settings.listen.leads_port = 0;
    settings.listen.deals_port = 0;
    settings.listen.comms_port = 0;
    settings.listen.analytics_port = 0;
    settings.edge.port = 0;
    settings.tls.enabled = Some(true);
    settings.tls.reload_secs = 1;
    // The edge reaches the services over the network (mTLS), as a separately deployed edge
    // does, not in process.
    settings.edge.in_process = false;
    let shutdown = CancellationToken::new();
    let mesh = Mesh::start(&env.settings, shutdown.clone())
        .await
        .expect("mesh");
    (env, mesh, shutdown)
}

/// The certificate a server presents to a client holding `identity` of the CA in `dir`.
async fn served_certificate(
    dir: &std::path::Path,
    identity: &str,
    address: std::net::SocketAddr,
) -> Result<Vec<u8>, std::io::Error> {
    let tls = MeshTls::load(dir, identity).map_err(std::io::Error::other)?;
    let connector =
        tokio_rustls::TlsConnector::from(tls.client_config(None).map_err(std::io::Error::other)?);
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let stream = connector
        .connect(
            ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?,
            tcp,
        )
        .await?;
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certificates| certificates.first())
        .cloned();
    certificate
        .map(|certificate| certificate.to_vec())
        .ok_or_else(|| std::io::Error::other("no certificate"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_runs_on_mutual_tls_and_refuses_strangers() {
    let (env, mesh, shutdown) = mesh_with_tls().await;
    let leads_address = mesh.address(aida::Service::Leads).expect("leads");
    let admin = env.token_with("acme", &["admin"]);
    let http = reqwest::Client::new();
    let base = format!("http://{}", mesh.edge_address);

    // Through the edge (mTLS to LeadService), and CommsService reading the lead from
    // LeadService (mTLS between services).
    let lead: serde_json::Value = http
        .post(format!("{base}/v1/leads"))
        .bearer_auth(&admin)
        .json(&json!({"email": "tls@example.com"}))
        .send()
        .await
        .expect("capture")
        .json()
        .await
        .expect("json");
    let lead_id = lead["id"]
        .as_str()
        .expect("id captured through the edge")
        .to_owned();
    let sent = http
        .post(format!("{base}/v1/messages"))
        .bearer_auth(&admin)
        .json(&json!({"leadId": lead_id, "channel": "CHANNEL_EMAIL", "subject": "Hi", "body": "Hello"}))
        .send()
        .await
        .expect("send");
    assert_eq!(
        sent.status(),
        reqwest::StatusCode::OK,
        "{}",
        sent.text().await.unwrap_or_default()
    );

    // The audit records name the peer by its certificate: the edge called LeadService,
    // and CommsService was called by the edge too.
    let identities = eventually(Duration::from_secs(15), || async {
        let records: serde_json::Value = http
            .get(format!("{base}/v1/audit"))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("audit")
            .json()
            .await
            .expect("json");
        let peer = |action: &str| {
            records["auditRecords"].as_array().is_some_and(|records| {
                records.iter().any(|record| {
                    record["action"] == action
                        && record["actor"]["clientIdentity"] == "spiffe://aida/edge"
                })
            })
        };
        peer("aida.leads.v1.LeadService/CaptureLead")
            && peer("aida.comms.v1.CommsService/SendMessage")
    })
    .await;
    assert!(identities, "the records name the mTLS peer");

    // A plain-text gRPC client gets nowhere.
    let plain = async {
        let mut client = LeadServiceClient::connect(format!("http://{leads_address}"))
            .await
            .ok()?;
        client
            .list_leads(aida_core::testing::with_token(
                &admin,
                ListLeadsRequest::default(),
            ))
            .await
            .ok()
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), plain)
            .await
            .ok()
            .flatten()
            .is_none(),
        "plain gRPC refused"
    );

    // A client certificate from another CA is refused in the handshake.
    let foreign = tempfile::tempdir().expect("dir");
    generate(foreign.path(), &["deals"], &[]).expect("foreign ca");
    let certs = env.settings.certs_dir();
    std::fs::copy(certs.join("ca.pem"), foreign.path().join("mesh-ca.pem")).expect("copy");
    let foreign_tls = MeshTls::load(foreign.path(), "deals").expect("load");
    let connector =
        tokio_rustls::TlsConnector::from(foreign_tls.client_config(None).expect("config"));
    let tcp = tokio::net::TcpStream::connect(leads_address)
        .await
        .expect("tcp");
    let handshake = connector
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await;
    let refused = match handshake {
        Err(_) => true,
        Ok(mut stream) => {
            // TLS 1.3 reports a refused client certificate on the first read.
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buffer = [0u8; 16];
            !matches!(stream.read(&mut buffer).await, Ok(read) if read > 0)
        }
    };
    assert!(refused, "a certificate of another CA is refused");

    // A mesh member calls LeadService directly, and sees who it is talking to.
    let member = MeshTls::load(&certs, "deals").expect("deals identity");
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{leads_address}")).expect("uri");
    let channel = aida_core::tls::channel(&member, endpoint, "leads").expect("channel");
    let page = LeadServiceClient::new(channel)
        .list_leads(aida_core::testing::with_token(
            &admin,
            ListLeadsRequest::default(),
        ))
        .await
        .expect("a mesh member is served")
        .into_inner();
    assert_eq!(page.leads.len(), 1);
    let wrong = aida_core::tls::channel(
        &member,
        tonic::transport::Endpoint::from_shared(format!("http://{leads_address}")).expect("uri"),
        "deals",
    )
    .expect("channel");
    let impostor = LeadServiceClient::new(wrong)
        .capture_lead(aida_core::testing::with_token(
            &admin,
            CaptureLeadRequest {
                lead: Some(Lead {
                    email: "x@example.com".into(),
                    ..Lead::default()
                }),
                request_id: String::new(),
            },
        ))
        .await;
    assert!(
        impostor.is_err(),
        "a client expecting deals does not accept leads' certificate"
    );

    // Re-issued certificates are served without a restart.
    let before = served_certificate(&certs, "edge", leads_address)
        .await
        .expect("certificate");
    assert_eq!(
        spiffe_id(&before.clone().into()).as_deref(),
        Some("spiffe://aida/leads")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    generate(&certs, &["leads"], &[]).expect("reissue");
    let reloaded = eventually(Duration::from_secs(10), || async {
        served_certificate(&certs, "edge", leads_address)
            .await
            .is_ok_and(|now| now != before)
    })
    .await;
    assert!(reloaded, "the new certificate is served");
    let still = http
        .get(format!("{base}/v1/leads"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("list");
    assert_eq!(still.status(), reqwest::StatusCode::OK);
    shutdown.cancel();
}
