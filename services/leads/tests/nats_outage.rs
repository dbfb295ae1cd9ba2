//! Fault test: NATS goes away while leads keep arriving. Every capture must succeed, and
//! once NATS is back every event must be published exactly once. The test runs its own
//! nats-server on a free port so it never disturbs the shared one.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use aida_core::testing::{NatsServer, eventually};
use aida_proto::aida::leads::v1::CaptureLeadRequest;
use support::{TestApp, lead};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_succeed_while_nats_is_down_and_every_event_is_published_once_after() {
    let mut nats = NatsServer::start();
    let app = TestApp::spawn_with_nats(&nats.url()).await;
    let mut client = app.client().await;

    // One event while NATS is up, so the streams exist and the relay is connected.
    client
        .capture_lead(app.request(
            "acme",
            CaptureLeadRequest {
                lead: Some(lead("before@example.com")),
                request_id: String::new(),
            },
        ))
        .await
        .expect("capture before the outage");
    app.wait_for_lead_events(1).await;

    nats.kill();
    for index in 0..100 {
        client
            .capture_lead(app.request(
                "acme",
                CaptureLeadRequest {
                    lead: Some(lead(&format!("outage{index}@example.com"))),
                    request_id: String::new(),
                },
            ))
            .await
            .unwrap_or_else(|status| panic!("capture {index} during the outage: {status}"));
    }
    assert_eq!(app.count("leads").await, 101);
    assert!(
        app.count("outbox WHERE published_at IS NULL").await > 0,
        "events wait in the outbox"
    );

    nats.resume();
    let events = app.wait_for_lead_events(101).await;
    // Let any duplicate arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events_after = app.lead_events().await;
    assert_eq!(events_after.len(), 101, "no event published twice");
    let ids: BTreeSet<&str> = events.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 101, "every event id once");
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.count("outbox WHERE published_at IS NULL").await == 0
        })
        .await,
        "outbox drained"
    );
}
