//! Lead scoring through the pipeline, on both engine pairs: a captured lead is scored by
//! the prior, engagement events raise its score, won and lost deals train the tenant's model.

mod support;

use std::time::Duration;

use aida_core::bus::OutgoingMessage;
use aida_core::db::{Count, Sql};
use aida_core::testing::eventually;
use aida_proto::aida::deals::v1::Deal;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::events::v1::{
    DealLost, DealWon, EventEnvelope, MessageClicked, MessageOpened, MessageReplied, MessageSent,
};
use aida_proto::aida::leads::v1::{
    CaptureLeadRequest, GetLeadRequest, GetLeadScoreRequest, Lead, LeadScore, Tier,
};
use prost::Message;
use support::{Backend, TestApp, violated_fields};
use tonic::Code;

async fn capture(app: &TestApp, tenant: &str, lead: Lead) -> Lead {
    app.client()
        .await
        .capture_lead(app.request(
            tenant,
            CaptureLeadRequest {
                lead: Some(lead),
                request_id: String::new(),
            },
        ))
        .await
        .expect("capture")
        .into_inner()
}

async fn score_of(app: &TestApp, tenant: &str, lead_id: &str) -> Result<LeadScore, tonic::Status> {
    app.client()
        .await
        .get_lead_score(app.request(
            tenant,
            GetLeadScoreRequest {
                lead_id: lead_id.into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Waits until the lead's score satisfies `done`, then returns it.
async fn wait_for_score(
    app: &TestApp,
    tenant: &str,
    lead_id: &str,
    what: &str,
    done: impl Fn(&LeadScore) -> bool,
) -> LeadScore {
    let reached = eventually(Duration::from_secs(60), || async {
        score_of(app, tenant, lead_id)
            .await
            .is_ok_and(|score| done(&score))
    })
    .await;
    let score = score_of(app, tenant, lead_id).await;
    assert!(reached, "{what}: last score {score:?}");
    score.expect("score")
}

/// Publishes `payload` as an event of `tenant` on the bus, as another service would.
async fn publish(app: &TestApp, tenant: &str, event_type: &str, event_id: &str, payload: Payload) {
    let envelope = EventEnvelope {
        event_id: event_id.to_owned(),
        event_type: event_type.to_owned(),
        tenant_id: tenant.to_owned(),
        subject: "test".into(),
        payload: Some(payload),
        ..EventEnvelope::default()
    };
    let message = OutgoingMessage {
        event_type: event_type.to_owned(),
        // A fresh message id each time: a republished event id must be caught by the inbox.
        message_id: uuid::Uuid::now_v7().to_string(),
        payload: envelope.encode_to_vec().into(),
        headers: Vec::new(),
    };
    for result in app.env.bus.shared().publish(&[message]).await {
        result.expect("publish");
    }
}

fn new_event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn scored_events_for(app: &TestApp, lead_id: &str) -> usize {
    app.all_lead_events()
        .await
        .into_iter()
        .filter(|(event_type, _, envelope)| {
            event_type == "leads.scored"
                && matches!(&envelope.payload, Some(Payload::LeadScored(scored)) if scored.lead_id == lead_id)
        })
        .count()
}

async fn replies_of(app: &TestApp, lead_id: &str) -> i64 {
    let row: Option<Count> = app
        .db
        .fetch_optional(
            Sql::new("SELECT replies AS count FROM lead_engagement WHERE lead_id = $1")
                .bind(uuid::Uuid::parse_str(lead_id).expect("uuid")),
        )
        .await
        .expect("engagement");
    row.map(|row| row.count).unwrap_or(0)
}

async fn a_captured_lead_is_scored_published_and_served_to_its_tenant_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let lead = capture(&app, "t1", support::lead("ada@analytical.example")).await;

    let score = wait_for_score(&app, "t1", &lead.id, "scored by the prior", |_| true).await;
    assert!((0..=100).contains(&score.score), "score {}", score.score);
    assert_ne!(score.tier, Tier::Unspecified as i32);
    assert!(!score.factors.is_empty(), "the score explains itself");
    assert_eq!(score.model_version, "lead-score-prior-v1");
    assert!(score.scored_at.is_some());

    let published = eventually(Duration::from_secs(20), || async {
        scored_events_for(&app, &lead.id).await >= 1
    })
    .await;
    assert!(published, "leads.scored is published");

    let fetched = app
        .client()
        .await
        .get_lead(app.request(
            "t1",
            GetLeadRequest {
                id: lead.id.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(fetched.score.as_ref().map(|s| s.score), Some(score.score));

    let other = score_of(&app, "t2", &lead.id)
        .await
        .expect_err("other tenant");
    assert_eq!(other.code(), Code::NotFound);
    let bad = score_of(&app, "t1", "not-a-lead")
        .await
        .expect_err("bad id");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad), vec!["lead_id".to_owned()]);
    let missing = score_of(&app, "t1", "").await.expect_err("no id");
    assert_eq!(missing.code(), Code::InvalidArgument);
}

async fn engagement_raises_the_score_and_a_redelivered_event_counts_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let lead = capture(&app, "t1", support::lead("ada@analytical.example")).await;
    let before = wait_for_score(&app, "t1", &lead.id, "first score", |_| true).await;

    let message_id = "message-1".to_owned();
    publish(
        &app,
        "t1",
        "comms.sent",
        &new_event_id(),
        Payload::MessageSent(MessageSent {
            message_id: message_id.clone(),
            lead_id: lead.id.clone(),
            ..MessageSent::default()
        }),
    )
    .await;
    publish(
        &app,
        "t1",
        "comms.opened",
        &new_event_id(),
        Payload::MessageOpened(MessageOpened {
            message_id: message_id.clone(),
            lead_id: lead.id.clone(),
            machine: false,
            first: true,
        }),
    )
    .await;
    publish(
        &app,
        "t1",
        "comms.clicked",
        &new_event_id(),
        Payload::MessageClicked(MessageClicked {
            message_id: message_id.clone(),
            lead_id: lead.id.clone(),
            url: "https://example.com".into(),
            first: true,
        }),
    )
    .await;
    let replied_id = new_event_id();
    let replied = Payload::MessageReplied(MessageReplied {
        message_id: message_id.clone(),
        lead_id: lead.id.clone(),
    });
    publish(&app, "t1", "comms.replied", &replied_id, replied.clone()).await;

    let counted = eventually(Duration::from_secs(20), || async {
        replies_of(&app, &lead.id).await == 1
    })
    .await;
    assert!(counted, "the reply is counted");
    let after = wait_for_score(&app, "t1", &lead.id, "score after the reply", |score| {
        score.score > before.score
    })
    .await;
    assert!(
        after.score > before.score,
        "a reply raises the score: {} → {}",
        before.score,
        after.score
    );

    // The same event again (a redelivery): counted once, scored once. A marker event
    // behind it shows when the consumer has passed it.
    let marker = capture(&app, "t1", support::lead("grace@navy.example")).await;
    wait_for_score(&app, "t1", &marker.id, "marker scored", |_| true).await;
    pass_marker(&app, &marker.id, 1).await;
    let settled = score_of(&app, "t1", &lead.id).await.expect("score");
    let published_before = scored_events_for(&app, &lead.id).await;

    publish(&app, "t1", "comms.replied", &replied_id, replied).await;
    pass_marker(&app, &marker.id, 2).await;
    assert_eq!(
        replies_of(&app, &lead.id).await,
        1,
        "a redelivery counts once"
    );
    assert_eq!(
        scored_events_for(&app, &lead.id).await,
        published_before,
        "a redelivery publishes no new score"
    );
    assert_eq!(
        score_of(&app, "t1", &lead.id).await.expect("score").score,
        settled.score
    );
    assert!(settled.score >= after.score);
}

/// Sends the marker lead its `n`th reply and waits until the comms consumer has handled it
/// (so every event published before it too) and the relay has published every score.
async fn pass_marker(app: &TestApp, marker_id: &str, n: i64) {
    publish(
        app,
        "t1",
        "comms.replied",
        &new_event_id(),
        Payload::MessageReplied(MessageReplied {
            message_id: format!("marker-{n}"),
            lead_id: marker_id.to_owned(),
        }),
    )
    .await;
    let passed = eventually(Duration::from_secs(30), || async {
        replies_of(app, marker_id).await == n
    })
    .await;
    assert!(passed, "the marker event was handled");
    let drained = eventually(Duration::from_secs(30), || async {
        app.count("outbox WHERE published_at IS NULL").await == 0
    })
    .await;
    assert!(drained, "the outbox is drained");
}

/// A lead whose chances the title and e-mail decide, with a little noise.
fn labelled_lead(i: usize) -> (Lead, bool) {
    let senior = i.is_multiple_of(2);
    // Every fifth lead goes against its kind, so the classes overlap.
    let won = senior != i.is_multiple_of(5);
    let lead = Lead {
        email: if senior {
            format!("exec{i}@enterprise{i}.example")
        } else {
            format!("student{i}@gmail.com")
        },
        first_name: format!("Person{i}"),
        last_name: "Example".into(),
        company: if senior {
            format!("Enterprise {i}")
        } else {
            String::new()
        },
        title: if senior {
            "VP Sales".into()
        } else {
            "Intern".into()
        },
        phone: if senior {
            "+44 20 7946 0958".into()
        } else {
            String::new()
        },
        source: aida_proto::aida::leads::v1::LeadSource::WebForm as i32,
        ..Lead::default()
    };
    (lead, won)
}

async fn won_and_lost_deals_train_the_tenants_model(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let (lead, won) = labelled_lead(i);
        let lead = capture(&app, "t1", lead).await;
        ids.push((lead.id, won));
    }
    let (probe_id, _) = ids[0].clone();
    let prior = wait_for_score(&app, "t1", &probe_id, "prior score", |_| true).await;
    assert_eq!(prior.model_version, "lead-score-prior-v1");

    for (n, (lead_id, won)) in ids.iter().enumerate() {
        let deal = Some(Deal {
            id: format!("deal-{n}"),
            lead_id: lead_id.clone(),
            ..Deal::default()
        });
        let (event_type, payload) = if *won {
            (
                "deals.won",
                Payload::DealWon(DealWon {
                    deal,
                    from_stage: "negotiation".into(),
                }),
            )
        } else {
            (
                "deals.lost",
                Payload::DealLost(DealLost {
                    deal,
                    from_stage: "negotiation".into(),
                    reason: "no budget".into(),
                }),
            )
        };
        publish(&app, "t1", event_type, &new_event_id(), payload).await;
    }

    let trained = wait_for_score(&app, "t1", &probe_id, "trained model", |score| {
        score.model_version.starts_with("lead-score-lr-v1")
    })
    .await;
    assert!(trained.model_version.starts_with("lead-score-lr-v1+n="));
    let stored = eventually(Duration::from_secs(20), || async {
        app.count("lead_outcomes").await == 40 && app.count("lead_score_models").await == 1
    })
    .await;
    assert!(stored, "outcomes and the model are stored");

    // New leads are scored by the trained model, which learned what wins.
    let (senior, _) = labelled_lead(100);
    let (junior, _) = labelled_lead(101);
    let senior = capture(&app, "t1", senior).await;
    let junior = capture(&app, "t1", junior).await;
    let senior = wait_for_score(&app, "t1", &senior.id, "senior scored", |s| {
        s.model_version.starts_with("lead-score-lr-v1")
    })
    .await;
    let junior = wait_for_score(&app, "t1", &junior.id, "junior scored", |s| {
        s.model_version.starts_with("lead-score-lr-v1")
    })
    .await;
    assert!(
        senior.score > junior.score,
        "senior {} vs junior {}",
        senior.score,
        junior.score
    );
    assert!(
        !senior.similar_won.is_empty(),
        "similar won leads are listed"
    );
    // Another tenant still has the prior.
    let other = capture(&app, "t2", labelled_lead(102).0).await;
    let other = wait_for_score(&app, "t2", &other.id, "other tenant scored", |_| true).await;
    assert_eq!(other.model_version, "lead-score-prior-v1");
}

macro_rules! suite {
    ($backend:ident, $module:ident) => {
        mod $module {
            use super::*;

            suite!(@tests $backend,
                a_captured_lead_is_scored_published_and_served_to_its_tenant_only,
                engagement_raises_the_score_and_a_redelivered_event_counts_once,
                won_and_lost_deals_train_the_tenants_model
            );
        }
    };
    (@tests $backend:ident, $($name:ident),+) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(Backend::$backend).await;
            }
        )+
    };
}

suite!(Production, on_postgres_and_jetstream);
suite!(Embedded, on_sqlite_and_in_process_bus);
