//! Lead scoring through the pipeline, on both engine pairs: a captured lead is scored by
//! the prior, engagement events raise its score, won and lost deals train the tenant's model.

use crate::support;

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
    DeleteLeadRequest, GetLeadRequest, GetLeadScoreRequest, Lead, LeadScore, ListLeadsRequest, Tier,
};
use prost::Message;
use support::{Backend, TestApp, capture, violated_fields};
use tonic::Code;

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

    let listed = app
        .client()
        .await
        .list_leads(app.request("t1", ListLeadsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed.leads[0].score.as_ref().map(|s| s.score),
        Some(score.score),
        "listed leads carry their score"
    );

    // A deleted lead's score, engagement and outcome are erased.
    app.client()
        .await
        .delete_lead(app.request(
            "t1",
            DeleteLeadRequest {
                id: lead.id.clone(),
                etag: String::new(),
            },
        ))
        .await
        .expect("delete");
    let erased = eventually(Duration::from_secs(20), || async {
        app.count("lead_scores").await == 0
    })
    .await;
    assert!(erased, "the score is erased with the lead");
    let gone = score_of(&app, "t1", &lead.id).await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
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

/// A won or lost deal for each of `ids`, as DealService announces them.
async fn publish_outcomes(app: &TestApp, tenant: &str, ids: &[(String, bool)]) {
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
        publish(app, tenant, event_type, &new_event_id(), payload).await;
    }
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

    publish_outcomes(&app, "t1", &ids).await;

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

async fn below_the_configured_number_of_outcomes_the_prior_keeps_scoring(backend: Backend) {
    let app = TestApp::spawn_configured(backend, |env| {
        env.settings.ai.scoring_min_labelled = 41;
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let (lead, won) = labelled_lead(i);
        let lead = capture(&app, "t1", lead).await;
        ids.push((lead.id, won));
    }
    publish_outcomes(&app, "t1", &ids).await;
    let stored = eventually(Duration::from_secs(20), || async {
        app.count("lead_outcomes").await == 40
    })
    .await;
    assert!(stored, "every outcome is stored");
    let fresh = capture(&app, "t1", labelled_lead(100).0).await;
    let fresh = wait_for_score(&app, "t1", &fresh.id, "scored", |_| true).await;
    assert_eq!(fresh.model_version, "lead-score-prior-v1");
    assert_eq!(app.count("lead_score_models").await, 0);
}

/// A deterministic pseudo-random stream (splitmix64), so the population is the same on
/// every run and both engine pairs.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-12);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// One generated lead: what is captured, what it does with our outreach, and whether it
/// is won, decided by hidden rules on seniority, e-mail, source and interest.
struct Generated {
    lead: Lead,
    sent: usize,
    opens: usize,
    clicks: usize,
    replies: usize,
    won: bool,
}

fn population(size: usize) -> Vec<Generated> {
    use aida_proto::aida::leads::v1::LeadSource;
    const TITLES: [(&str, f64); 5] = [
        ("Software Engineer", 0.0),
        ("Sales Manager", 1.0),
        ("Director of Operations", 2.0),
        ("VP Marketing", 3.0),
        ("CEO", 4.0),
    ];
    const SOURCES: [(LeadSource, f64); 5] = [
        (LeadSource::Referral, 1.0),
        (LeadSource::WebForm, 0.3),
        (LeadSource::Event, 0.2),
        (LeadSource::Outbound, -0.8),
        (LeadSource::Other, 0.0),
    ];
    let mut rng = Rng(0x5EED_1EAD);
    (0..size)
        .map(|i| {
            let (title, level) = TITLES[rng.below(TITLES.len())];
            let (source, source_effect) = SOURCES[rng.below(SOURCES.len())];
            let business = rng.chance(0.6);
            let interest = rng.normal();
            let sent = 1 + rng.below(3);
            let opens = (2.0 + 1.5 * interest + 0.5 * rng.normal())
                .round()
                .clamp(0.0, 6.0) as usize;
            let clicks = usize::from(rng.chance(sigmoid(interest - 0.5)))
                + usize::from(rng.chance(sigmoid(interest - 1.5)));
            let replies = usize::from(interest > 0.4) + usize::from(interest > 1.2);
            let hidden = -1.2
                + 0.8 * (level - 2.0)
                + if business { 0.9 } else { -0.7 }
                + source_effect
                + 1.0 * interest
                + 0.5 * rng.normal();
            let won = rng.chance(sigmoid(hidden));
            let lead = Lead {
                email: if business {
                    format!("person{i}@company{}.example", i % 97)
                } else {
                    format!("person{i}@gmail.com")
                },
                first_name: format!("Person{i}"),
                last_name: "Generated".into(),
                company: if business {
                    format!("Company {}", i % 97)
                } else {
                    String::new()
                },
                title: title.into(),
                phone: if rng.chance(0.5) {
                    "+44 20 7946 0958".into()
                } else {
                    String::new()
                },
                source: source as i32,
                ..Lead::default()
            };
            Generated {
                lead,
                sent,
                opens,
                clicks,
                replies,
                won,
            }
        })
        .collect()
}

fn engagement_messages(tenant: &str, lead_id: &str, generated: &Generated) -> Vec<OutgoingMessage> {
    let mut payloads = Vec::new();
    for n in 0..generated.sent {
        payloads.push((
            "comms.sent",
            Payload::MessageSent(MessageSent {
                message_id: format!("{lead_id}-{n}"),
                lead_id: lead_id.to_owned(),
                ..MessageSent::default()
            }),
        ));
    }
    for _ in 0..generated.opens {
        payloads.push((
            "comms.opened",
            Payload::MessageOpened(MessageOpened {
                message_id: format!("{lead_id}-0"),
                lead_id: lead_id.to_owned(),
                machine: false,
                first: false,
            }),
        ));
    }
    for _ in 0..generated.clicks {
        payloads.push((
            "comms.clicked",
            Payload::MessageClicked(MessageClicked {
                message_id: format!("{lead_id}-0"),
                lead_id: lead_id.to_owned(),
                url: "https://example.com/pricing".into(),
                first: false,
            }),
        ));
    }
    for _ in 0..generated.replies {
        payloads.push((
            "comms.replied",
            Payload::MessageReplied(MessageReplied {
                message_id: format!("{lead_id}-0"),
                lead_id: lead_id.to_owned(),
            }),
        ));
    }
    payloads
        .into_iter()
        .map(|(event_type, payload)| outgoing(tenant, event_type, payload))
        .collect()
}

fn outgoing(tenant: &str, event_type: &str, payload: Payload) -> OutgoingMessage {
    let event_id = new_event_id();
    let envelope = EventEnvelope {
        event_id: event_id.clone(),
        event_type: event_type.to_owned(),
        tenant_id: tenant.to_owned(),
        subject: "test".into(),
        payload: Some(payload),
        ..EventEnvelope::default()
    };
    OutgoingMessage {
        event_type: event_type.to_owned(),
        message_id: event_id,
        payload: envelope.encode_to_vec().into(),
        headers: Vec::new(),
    }
}

fn outcome_message(tenant: &str, n: usize, lead_id: &str, won: bool) -> OutgoingMessage {
    let deal = Some(Deal {
        id: format!("deal-{n}"),
        lead_id: lead_id.to_owned(),
        ..Deal::default()
    });
    if won {
        outgoing(
            tenant,
            "deals.won",
            Payload::DealWon(DealWon {
                deal,
                from_stage: "negotiation".into(),
            }),
        )
    } else {
        outgoing(
            tenant,
            "deals.lost",
            Payload::DealLost(DealLost {
                deal,
                from_stage: "negotiation".into(),
                reason: "no budget".into(),
            }),
        )
    }
}

async fn publish_all(app: &TestApp, messages: &[OutgoingMessage]) {
    for chunk in messages.chunks(256) {
        for result in app.env.bus.shared().publish(chunk).await {
            result.expect("publish");
        }
    }
}

async fn sum_of(app: &TestApp, column: &str) -> i64 {
    let row: Count = app
        .db
        .fetch_one(Sql::new(format!(
            "SELECT CAST(COALESCE(SUM({column}), 0) AS BIGINT) AS count FROM lead_engagement"
        )))
        .await
        .expect("sum");
    row.count
}

async fn a_model_trained_through_the_pipeline_ranks_held_out_leads(backend: Backend) {
    const SIZE: usize = 300;
    const TRAINING: usize = 200;
    let started = std::time::Instant::now();
    let app = TestApp::spawn(backend).await;
    let generated = population(SIZE);
    let mut ids = Vec::with_capacity(SIZE);
    for g in &generated {
        ids.push(capture(&app, "t1", g.lead.clone()).await.id);
    }
    let mut messages = Vec::new();
    for (g, id) in generated.iter().zip(&ids) {
        messages.extend(engagement_messages("t1", id, g));
    }
    publish_all(&app, &messages).await;
    let (replies, opens, sent) = generated.iter().fold((0, 0, 0), |(r, o, s), g| {
        (r + g.replies as i64, o + g.opens as i64, s + g.sent as i64)
    });
    let counted = eventually(Duration::from_secs(120), || async {
        sum_of(&app, "replies").await == replies
            && sum_of(&app, "opens").await == opens
            && sum_of(&app, "messages_sent").await == sent
    })
    .await;
    assert!(counted, "every engagement event is counted");
    let engaged = started.elapsed();

    // Outcomes of the training part, then a marker outcome of another tenant: once it is
    // stored, the outcomes consumer has handled (and rescored after) every one before it.
    let mut outcomes: Vec<OutgoingMessage> = generated[..TRAINING]
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(n, (g, id))| outcome_message("t1", n, id, g.won))
        .collect();
    let marker = capture(&app, "t-marker", support::lead("marker@example.com")).await;
    outcomes.push(outcome_message("t-marker", 0, &marker.id, true));
    publish_all(&app, &outcomes).await;
    let trained = eventually(Duration::from_secs(300), || async {
        app.count("lead_outcomes").await == TRAINING as i64 + 1
    })
    .await;
    assert!(trained, "every outcome is stored");
    let learned = started.elapsed();

    let mut scores = Vec::new();
    let mut won = Vec::new();
    let mut tiers = Vec::new();
    for (g, id) in generated[TRAINING..].iter().zip(&ids[TRAINING..]) {
        let score = score_of(&app, "t1", id).await.expect("held-out score");
        assert!(
            score.model_version.starts_with("lead-score-lr-v1+n="),
            "{}",
            score.model_version
        );
        scores.push(f64::from(score.score));
        won.push(g.won);
        tiers.push((score.tier, g.won));
    }
    let auc = aida_ai::scoring::roc_auc(&scores, &won).expect("auc");
    let rate = |tier: Tier| {
        let members: Vec<bool> = tiers
            .iter()
            .filter(|(t, _)| *t == tier as i32)
            .map(|(_, won)| *won)
            .collect();
        let wins = members.iter().filter(|w| **w).count();
        (wins as f64 / members.len().max(1) as f64, members.len())
    };
    let (rate_a, in_a) = rate(Tier::A);
    let (rate_d, in_d) = rate(Tier::D);
    let base = won.iter().filter(|w| **w).count() as f64 / won.len() as f64;
    eprintln!(
        "population: held-out AUC {auc:.3}; tier A {rate_a:.2} of {in_a}, tier D {rate_d:.2} of {in_d}, base rate {base:.2}; engagement counted in {engaged:?}, outcomes learned by {learned:?}"
    );
    assert!(auc >= 0.75, "held-out AUC {auc:.3}");
    assert!(
        in_a > 0 && in_d > 0,
        "tiers A ({in_a}) and D ({in_d}) are used"
    );
    assert!(
        rate_a >= 3.0 * rate_d,
        "tier A converts {rate_a:.2}, tier D {rate_d:.2}"
    );
}

aida_core::backend_pair_suite!(on_postgres_and_jetstream, on_sqlite_and_in_process_bus:
    a_captured_lead_is_scored_published_and_served_to_its_tenant_only,
    engagement_raises_the_score_and_a_redelivered_event_counts_once,
    won_and_lost_deals_train_the_tenants_model,
    below_the_configured_number_of_outcomes_the_prior_keeps_scoring,
    a_model_trained_through_the_pipeline_ranks_held_out_leads
);
