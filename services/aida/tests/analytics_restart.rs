//! Fault test: the analytics service is killed (SIGKILL) while it ingests, and started
//! again. Its durable consumers resume, redelivered events are dropped by the DuckDB key,
//! and the final numbers are exact.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aida_core::bus::OutgoingMessage;
use aida_core::testing::{Backend, TestEnv, eventually, free_port, shared_nats_url};
use aida_proto::aida::analytics::v1::GetFunnelRequest;
use aida_proto::aida::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::events::v1::{EventEnvelope, LeadCaptured};
use aida_proto::aida::leads::v1::Lead;
use prost::Message;
use secrecy::ExposeSecret;

fn start_analytics(env: &TestEnv, port: u16) -> Child {
    let settings = &env.settings;
    Command::new(env!("CARGO_BIN_EXE_aida"))
        .args(["serve", "analytics"])
        .env(
            "AIDA_DATABASE_URL",
            settings
                .database_url
                .as_ref()
                .expect("postgres")
                .expose_secret(),
        )
        .env("AIDA_NATS_URL", shared_nats_url())
        .env("AIDA_BUS__NAMESPACE", &settings.bus.namespace)
        .env("AIDA_DATA_DIR", &settings.data_dir)
        .env(
            "AIDA_CRYPTO__MASTER_KEYS",
            "restart:2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e",
        )
        .env(
            "AIDA_ANALYTICS__PSEUDONYM_KEY",
            "restart-test-pseudonym-key-0123456789abcdef",
        )
        .env(
            "AIDA_AUTH__SIGNING_KEY",
            settings
                .auth
                .signing_key
                .as_ref()
                .expect("key")
                .expose_secret(),
        )
        .env("AIDA_LISTEN__ANALYTICS_PORT", port.to_string())
        .env("AIDA_ANALYTICS__BATCH_MAX_EVENTS", "50")
        // Messages the killed process held come back after the ack wait.
        .env("AIDA_BUS__ACK_WAIT_SECS", "3")
        .env("AIDA_LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start aida serve analytics")
}

fn captured(index: usize) -> OutgoingMessage {
    let event = EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: "leads.captured".into(),
        tenant_id: "acme".into(),
        occurred_at: Some(aida_core::events::timestamp(chrono::Utc::now())),
        payload: Some(Payload::LeadCaptured(LeadCaptured {
            lead: Some(Lead {
                id: format!("lead-{index}"),
                ..Lead::default()
            }),
        })),
        ..EventEnvelope::default()
    };
    OutgoingMessage {
        event_type: "leads.captured".into(),
        message_id: event.event_id.clone(),
        payload: bytes::Bytes::from(event.encode_to_vec()),
        headers: vec![],
    }
}

async fn captured_count(env: &TestEnv, port: u16) -> Option<i64> {
    let mut client = AnalyticsServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .ok()?;
    let response = client
        .get_funnel(env.request("acme", GetFunnelRequest::default()))
        .await
        .ok()?;
    response.into_inner().total.map(|total| total.captured)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_killed_mid_stream_and_restarted_ends_with_exact_numbers() {
    let env = TestEnv::new(Backend::Production).await;
    let bus = env.bus.shared();
    bus.ensure_streams().await.expect("streams");
    let first: Vec<OutgoingMessage> = (0..3000).map(captured).collect();
    for chunk in first.chunks(500) {
        for result in bus.publish(chunk).await {
            result.expect("publish");
        }
    }

    let port = free_port();
    let mut analytics = start_analytics(&env, port);
    assert!(
        eventually(Duration::from_secs(60), || async {
            captured_count(&env, port)
                .await
                .is_some_and(|count| count > 0)
        })
        .await,
        "ingestion started"
    );
    analytics.kill().expect("SIGKILL");
    analytics.wait().expect("reaped");
    let at_kill = captured_count(&env, port).await;
    assert!(at_kill.is_none(), "the service is down");

    let second: Vec<OutgoingMessage> = (3000..4000).map(captured).collect();
    for result in bus.publish(&second).await {
        result.expect("publish");
    }
    let mut restarted = start_analytics(&env, port);
    let exact = eventually(Duration::from_secs(90), || async {
        captured_count(&env, port).await == Some(4000)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = captured_count(&env, port).await;
    restarted.kill().expect("stop");
    let _ = restarted.wait();
    assert!(
        exact,
        "every event counted after the restart (got {settled:?})"
    );
    assert_eq!(settled, Some(4000), "and none twice");
}
