//! GenerateMessage and the life of a draft, over real gRPC with LeadService beside
//! CommsService: on PostgreSQL + JetStream and on SQLite + the in-process bus, with the
//! offline writer, and with OpenRouter's wire format served by a local HTTP server.

use aida_core::testing::violated_fields;
use std::sync::{Arc, Mutex};

use aida_core::testing::{Backend, TestEnv};
use aida_proto::aida::ai::v1::{
    AutonomyLevel, Decision, GetAutonomyRequest, KillAutonomyRequest, ListTransitionsRequest,
    Outcome, Review, ReviveAutonomyRequest,
};
use aida_proto::aida::comms::v1::{
    AddSuppressionRequest, Channel, DiscardDraftRequest, Draft, DraftState, GenerateMessageRequest,
    GetDraftRequest, Purpose, RecordReplyRequest, SendMessageRequest, Suppression, Tone,
};
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{CaptureLeadRequest, Lead, LeadSource};
use tonic::Code;

const TENANT: &str = "acme";

use crate::support;

use support::Services as App;

/// These tests are about drafts people ask for: the outreach agent, which drafts on its own
/// for every scored lead (and would call the model too), stays off.
fn without_agent(env: &mut TestEnv) {
    env.settings.comms.outreach_agent = false;
}

impl App {
    async fn lead(
        &self,
        email: &str,
        first: &str,
        title: &str,
        company: &str,
        notes: &str,
    ) -> Lead {
        LeadServiceClient::new(self.leads.channel().await)
            .capture_lead(self.env.request(
                TENANT,
                CaptureLeadRequest {
                    lead: Some(Lead {
                        email: email.into(),
                        first_name: first.into(),
                        last_name: "Doe".into(),
                        title: title.into(),
                        company: company.into(),
                        source: LeadSource::Referral as i32,
                        attributes: [("notes".to_owned(), notes.to_owned())].into(),
                        ..Lead::default()
                    }),
                    request_id: String::new(),
                },
            ))
            .await
            .expect("capture")
            .into_inner()
    }

    async fn generate(&self, lead: &Lead, purpose: Purpose) -> Result<Draft, tonic::Status> {
        self.comms()
            .await
            .generate_message(self.env.request(
                TENANT,
                GenerateMessageRequest {
                    lead_id: lead.id.clone(),
                    purpose: purpose as i32,
                    tone: Tone::Friendly as i32,
                    request_id: String::new(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn send_draft(
        &self,
        lead: &Lead,
        draft: &Draft,
        body: &str,
    ) -> Result<aida_proto::aida::comms::v1::Message, tonic::Status> {
        self.comms()
            .await
            .send_message(self.env.request(
                TENANT,
                SendMessageRequest {
                    lead_id: lead.id.clone(),
                    draft_id: draft.id.clone(),
                    body: body.into(),
                    ..SendMessageRequest::default()
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn draft(&self, id: &str) -> Draft {
        self.comms()
            .await
            .get_draft(self.env.request(TENANT, GetDraftRequest { id: id.into() }))
            .await
            .expect("get draft")
            .into_inner()
    }

    /// The ledger of `action` in the segments of `drafts` (a lead's tier, and so its
    /// segment, can change between two drafts), newest first.
    async fn decisions(&self, action: &str, drafts: &[&Draft]) -> Vec<Decision> {
        let mut segments: Vec<&str> = drafts.iter().map(|draft| draft.segment.as_str()).collect();
        segments.sort_unstable();
        segments.dedup();
        self.decisions_in(TENANT, action, &segments).await
    }
}

async fn a_draft_sent_as_written_is_an_approval_and_its_reply_an_outcome_and_an_example(
    backend: Backend,
) {
    let app = App::spawn(backend, without_agent).await;
    let ada = app
        .lead(
            "ada@globex.example",
            "Ada",
            "VP Logistics",
            "Globex Freight",
            "asked about route planning for a trucking fleet",
        )
        .await;
    let draft = app
        .generate(&ada, Purpose::FirstTouch)
        .await
        .expect("generate");
    assert_eq!(draft.state, DraftState::Pending as i32);
    assert_eq!(draft.lead_id, ada.id);
    assert!(draft.body.contains("Ada"), "{}", draft.body);
    assert!(
        draft.body.contains("Globex Freight") || draft.subject.contains("Globex Freight"),
        "{} / {}",
        draft.subject,
        draft.body
    );
    let provenance = draft.provenance.clone().expect("provenance");
    assert_eq!(provenance.generator, "offline");
    assert_eq!(provenance.prompt_hash.len(), 64);
    assert!(
        provenance.embedding_model.contains("fallback"),
        "no model in the test's data dir: {}",
        provenance.embedding_model
    );
    assert!(provenance.examples.is_empty(), "nothing replied yet");
    assert_eq!(draft.autonomy_level, AutonomyLevel::Suggest as i32);

    let message = app.send_draft(&ada, &draft, "").await.expect("send");
    assert_eq!(message.body, draft.body);
    assert_eq!(message.subject, draft.subject);
    let sent = app.draft(&draft.id).await;
    assert_eq!(sent.state, DraftState::Sent as i32);
    assert_eq!(sent.message_id, message.id);
    assert!(!sent.edited);
    assert_eq!(sent.approver, "tester");
    let again = app
        .send_draft(&ada, &draft, "")
        .await
        .expect_err("sent once");
    assert_eq!(again.code(), Code::FailedPrecondition);

    let decisions = app.decisions("send_first_touch", &[&draft]).await;
    assert_eq!(decisions.len(), 1);
    let decision = &decisions[0];
    assert_eq!(decision.review, Review::ApprovedUnchanged as i32);
    assert!(decision.sent);
    assert_eq!(decision.subject, format!("messages/{}", message.id));
    assert_eq!(decision.model_version, "offline-templates-v1");
    // Sent within a second of being written: a rubber stamp, not evidence.
    assert!(!decision.counted);

    app.comms()
        .await
        .record_reply(app.env.request(
            TENANT,
            RecordReplyRequest {
                id: message.id.clone(),
                body: "Sounds interesting, tell me more".into(),
            },
        ))
        .await
        .expect("reply");
    let decisions = app.decisions("send_first_touch", &[&draft]).await;
    assert_eq!(decisions[0].outcome, Outcome::Replied as i32);

    // The replied message is now an example for a similar lead, not for an unrelated one
    // first.
    let grace = app
        .lead(
            "grace@initech.example",
            "Grace",
            "VP Logistics",
            "Initech Haulage",
            "asked about route planning for delivery vans",
        )
        .await;
    let second = app
        .generate(&grace, Purpose::FirstTouch)
        .await
        .expect("generate");
    let examples = second.provenance.expect("provenance").examples;
    assert_eq!(examples.len(), 1, "{examples:?}");
    assert_eq!(examples[0].message_id, message.id);
    assert!(examples[0].similarity > 0.3, "{examples:?}");
}

async fn edited_drafts_count_as_edited_and_discarded_ones_as_rejected(backend: Backend) {
    let app = App::spawn(backend, without_agent).await;
    let lead = app
        .lead(
            "lin@hooli.example",
            "Lin",
            "CTO",
            "Hooli",
            "evaluating CRMs",
        )
        .await;
    let draft = app
        .generate(&lead, Purpose::FollowUp)
        .await
        .expect("generate");
    let message = app
        .send_draft(&lead, &draft, "Hi Lin, a shorter note from me.")
        .await
        .expect("send edited");
    assert_eq!(message.body, "Hi Lin, a shorter note from me.");
    assert!(app.draft(&draft.id).await.edited);

    // Switched off, the writer's drafts are logged and never sent; revived, they go again.
    let held = app
        .generate(&lead, Purpose::FollowUp)
        .await
        .expect("generate");
    app.autonomy()
        .await
        .kill_autonomy(app.env.request(
            TENANT,
            KillAutonomyRequest {
                agent: "outreach".into(),
                action: "send_follow_up".into(),
                segment: held.segment.clone(),
                reason: "checking the wording".into(),
            },
        ))
        .await
        .expect("kill");
    let refused = app.send_draft(&lead, &held, "").await.expect_err("killed");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("L0"), "{}", refused.message());
    app.autonomy()
        .await
        .revive_autonomy(app.env.request(
            TENANT,
            ReviveAutonomyRequest {
                agent: "outreach".into(),
                action: "send_follow_up".into(),
                segment: held.segment.clone(),
            },
        ))
        .await
        .expect("revive");
    app.send_draft(&lead, &held, "")
        .await
        .expect("sent after revival");

    let other = app
        .generate(&lead, Purpose::MeetingRequest)
        .await
        .expect("generate");
    let discarded = app
        .comms()
        .await
        .discard_draft(app.env.request(
            TENANT,
            DiscardDraftRequest {
                id: other.id.clone(),
            },
        ))
        .await
        .expect("discard")
        .into_inner();
    assert_eq!(discarded.state, DraftState::Discarded as i32);
    let status = app
        .send_draft(&lead, &other, "")
        .await
        .expect_err("discarded");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let follow_up = app.decisions("send_follow_up", &[&draft, &held]).await;
    assert_eq!(follow_up.len(), 2);
    // Newest first: the revived writer's draft, then the edited one.
    assert_eq!(follow_up[0].review, Review::ApprovedUnchanged as i32);
    assert_eq!(follow_up[1].review, Review::Edited as i32);
    assert!(follow_up[1].counted, "an edit counts even when fast");
    let meeting = app.decisions("send_meeting_request", &[&other]).await;
    assert_eq!(meeting.len(), 1);
    assert_eq!(meeting[0].review, Review::Rejected as i32);
    assert!(!meeting[0].sent);
    let autonomy = app
        .autonomy()
        .await
        .get_autonomy(app.env.request(
            TENANT,
            GetAutonomyRequest {
                agent: "outreach".into(),
                action: "send_meeting_request".into(),
                segment: other.segment.clone(),
            },
        ))
        .await
        .expect("autonomy")
        .into_inner();
    assert_eq!(autonomy.evidence.expect("evidence").rejected, 1);
}

async fn a_draft_to_a_suppressed_address_is_refused_as_a_critical_incident(backend: Backend) {
    let app = App::spawn(backend, without_agent).await;
    let lead = app
        .lead("max@umbrella.example", "Max", "Buyer", "Umbrella", "")
        .await;
    let draft = app
        .generate(&lead, Purpose::ReEngage)
        .await
        .expect("generate");
    app.comms()
        .await
        .add_suppression(app.env.request(
            TENANT,
            AddSuppressionRequest {
                suppression: Some(Suppression {
                    address: "max@umbrella.example".into(),
                    reason: "asked by phone".into(),
                    ..Suppression::default()
                }),
            },
        ))
        .await
        .expect("suppress");
    let status = app
        .send_draft(&lead, &draft, "")
        .await
        .expect_err("suppressed");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let transitions = app
        .autonomy()
        .await
        .list_transitions(app.env.request(
            TENANT,
            ListTransitionsRequest {
                agent: "outreach".into(),
                action: "send_re_engage".into(),
                segment: draft.segment.clone(),
                page_size: 10,
                page_token: String::new(),
            },
        ))
        .await
        .expect("transitions")
        .into_inner()
        .transitions;
    assert_eq!(transitions.len(), 1);
    assert_eq!(transitions[0].cause, "CRITICAL_INCIDENT");
    assert!(transitions[0].detail.contains(&draft.id));
    assert_eq!(app.draft(&draft.id).await.state, DraftState::Pending as i32);
}

async fn bad_generate_and_draft_requests_name_the_field(backend: Backend) {
    let app = App::spawn(backend, without_agent).await;
    let status = app
        .comms()
        .await
        .generate_message(app.env.request(
            TENANT,
            GenerateMessageRequest {
                lead_id: "nope".into(),
                purpose: 0,
                tone: 42,
                request_id: String::new(),
            },
        ))
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["lead_id", "purpose", "tone"]);

    let first = app.lead("a@a.example", "An", "CEO", "A Corp", "").await;
    let second = app.lead("b@b.example", "Bo", "CEO", "B Corp", "").await;
    let draft = app
        .generate(&first, Purpose::FirstTouch)
        .await
        .expect("generate");
    let status = app
        .send_draft(&second, &draft, "")
        .await
        .expect_err("other lead");
    assert_eq!(violated_fields(&status), ["draft_id"]);
    let status = app
        .comms()
        .await
        .send_message(app.env.request(
            TENANT,
            SendMessageRequest {
                lead_id: first.id.clone(),
                channel: Channel::Sms as i32,
                draft_id: draft.id.clone(),
                ..SendMessageRequest::default()
            },
        ))
        .await
        .expect_err("sms");
    assert_eq!(violated_fields(&status), ["channel"]);
    assert_eq!(app.draft(&draft.id).await.state, DraftState::Pending as i32);
    let status = app
        .comms()
        .await
        .get_draft(app.env.request(
            "globex",
            GetDraftRequest {
                id: draft.id.clone(),
            },
        ))
        .await
        .expect_err("other tenant");
    assert_eq!(status.code(), Code::NotFound);
}

/// A local server speaking OpenAI's chat-completions format, recording what it was sent.
async fn chat_completions(log: Arc<Mutex<Vec<(String, serde_json::Value)>>>) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/api/v1/chat/completions",
        post(
            move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<serde_json::Value>| {
                let log = log.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    log.lock().expect("log").push((auth, body));
                    axum::Json(serde_json::json!({
                        "id": "gen-1",
                        "model": "moonshotai/kimi-k2",
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant",
                            "content": "{\"subject\": \"Route planning at Globex\", \"body\": \"Hi Ada,\\n\\nYou asked about route planning. Could we talk?\\n\\nThe AIDA team\"}"
                        }}],
                        "usage": {"prompt_tokens": 412, "completion_tokens": 57, "total_tokens": 469}
                    }))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/api/v1")
}

async fn with_an_openrouter_key_the_model_writes_the_draft(backend: Backend) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let base = chat_completions(log.clone()).await;
    let app = App::spawn(backend, |env| {
        env.settings.ai.openrouter_api_key = Some(secrecy::SecretString::from("sk-or-v1-test"));
        env.settings.ai.openrouter_base_url = base;
        without_agent(env);
    })
    .await;
    let lead = app
        .lead(
            "ada@globex.example",
            "Ada",
            "VP Logistics",
            "Globex Freight",
            "route planning",
        )
        .await;
    let draft = app
        .generate(&lead, Purpose::FirstTouch)
        .await
        .expect("generate");
    assert_eq!(draft.subject, "Route planning at Globex");
    assert!(draft.body.starts_with("Hi Ada,"));
    let provenance = draft.provenance.expect("provenance");
    assert_eq!(provenance.generator, "openrouter");
    assert_eq!(provenance.model, "moonshotai/kimi-k2");
    assert_eq!(
        (provenance.prompt_tokens, provenance.completion_tokens),
        (412, 57)
    );
    assert!(provenance.template.is_empty());
    let log = log.lock().expect("log");
    assert_eq!(log.len(), 1);
    let (auth, body) = &log[0];
    assert_eq!(auth, "Bearer sk-or-v1-test");
    assert_eq!(body["model"], "moonshotai/kimi-k2");
    let user = body["messages"][1]["content"]
        .as_str()
        .expect("user message");
    assert!(user.contains("Globex Freight"), "{user}");
}

async fn a_drafts_text_is_ciphertext_in_the_database_and_plain_to_its_readers(backend: Backend) {
    let app = App::spawn(backend, without_agent).await;
    let lead = app
        .lead(
            "zelda.quist@example.com",
            "Zelda",
            "CTO",
            "Hyrule Systems",
            "wants faster builds",
        )
        .await;
    let draft = app
        .generate(&lead, Purpose::FirstTouch)
        .await
        .expect("draft");
    let read = app.draft(&draft.id).await;
    assert_eq!(
        (read.subject.as_str(), read.body.as_str()),
        (draft.subject.as_str(), draft.body.as_str())
    );
    assert!(
        !read.body.is_empty() && !read.body.starts_with("aes1."),
        "{}",
        read.body
    );

    let db =
        aida_core::db::Database::connect(&app.env.settings.database_url_for(aida_comms::SERVICE))
            .await
            .expect("comms database");
    #[derive(sqlx::FromRow)]
    struct Stored {
        subject: String,
        body: String,
    }
    let stored: Stored = db
        .fetch_one(
            aida_core::db::Sql::new("SELECT subject, body FROM drafts WHERE id = $1")
                .bind(uuid::Uuid::parse_str(&draft.id).expect("id")),
        )
        .await
        .expect("row");
    for value in [&stored.subject, &stored.body] {
        assert!(value.starts_with("aes1."), "sealed: {value}");
        assert!(!value.to_lowercase().contains("zelda"), "{value}");
    }
}

aida_core::backend_pair_suite!(on_postgres_and_jetstream, on_sqlite_and_in_process_bus:
    a_drafts_text_is_ciphertext_in_the_database_and_plain_to_its_readers,
    a_draft_sent_as_written_is_an_approval_and_its_reply_an_outcome_and_an_example,
    edited_drafts_count_as_edited_and_discarded_ones_as_rejected,
    a_draft_to_a_suppressed_address_is_refused_as_a_critical_incident,
    bad_generate_and_draft_requests_name_the_field,
    with_an_openrouter_key_the_model_writes_the_draft
);
