//! The outreach agent over real gRPC, with LeadService (and its scoring) beside
//! CommsService: on PostgreSQL + JetStream and on SQLite + the in-process bus. It drafts a
//! first touch for every scored lead and acts on it only as far as its earned autonomy
//! allows at the moment of acting: left for a person below L3, sent after the veto window
//! unless vetoed at L3, sent at once within its budget at L4.

use std::time::Duration;

use aida_ai::generate::{OFFLINE_MODEL, PROMPT_VERSION};
use aida_core::testing::{Backend, TestEnv};
use aida_proto::aida::ai::v1::{
    AutonomyLevel, DemoteAutonomyRequest, GetAutonomyRequest, RecordReviewRequest, Review,
    SignOffPromotionRequest,
};
use aida_proto::aida::comms::v1::{
    Draft, DraftState, ListDraftsRequest, ListMessagesRequest, Message, MessageStatus, Purpose,
    VetoDraftRequest,
};
use aida_proto::aida::leads::v1::lead_service_client::LeadServiceClient;
use aida_proto::aida::leads::v1::{CaptureLeadRequest, Lead, LeadSource, RejectLeadRequest};
use chrono::Timelike;
use tonic::Code;

const TENANT: &str = "acme";
const ACTION: &str = "send_first_touch";
const AGENT: &str = "agent:outreach";
/// Every segment a lead can fall in.
const SEGMENTS: [&str; 5] = ["tier_a", "tier_b", "tier_c", "tier_d", "unscored"];
const VETO_WINDOW_SECS: u64 = 4;
const WAIT: Duration = Duration::from_secs(60);

use crate::support;

use support::Services as App;

impl App {
    /// LeadService and CommsService; one counted review per level earns a promotion, the
    /// veto window is a few seconds and the scheduler looks every second.
    async fn with_agent(backend: Backend, configure: impl FnOnce(&mut TestEnv)) -> Self {
        Self::spawn(backend, |env| {
            env.settings.comms.autonomy_min_hours_at_level = vec![0, 0, 0, 0];
            env.settings.comms.autonomy_min_decisions = vec![1, 1, 1, 1];
            env.settings.comms.outreach_veto_window_secs = VETO_WINDOW_SECS;
            env.settings.comms.outreach_tick_secs = 1;
            env.settings.comms.outreach_quiet_hours = vec![0, 0];
            configure(env);
        })
        .await
    }

    async fn capture(&self, email: &str, phone: &str, first: &str) -> Lead {
        LeadServiceClient::new(self.leads.channel().await)
            .capture_lead(self.env.request(
                TENANT,
                CaptureLeadRequest {
                    lead: Some(Lead {
                        email: email.into(),
                        phone: phone.into(),
                        first_name: first.into(),
                        last_name: "Doe".into(),
                        title: "VP Sales".into(),
                        company: "Initech".into(),
                        source: LeadSource::Referral as i32,
                        ..Lead::default()
                    }),
                    request_id: String::new(),
                },
            ))
            .await
            .expect("capture")
            .into_inner()
    }

    /// The agent's drafts, newest first.
    async fn agent_drafts(&self) -> Vec<Draft> {
        self.comms()
            .await
            .list_drafts(self.env.request(
                TENANT,
                ListDraftsRequest {
                    page_size: 100,
                    page_token: String::new(),
                    filter: format!("requester = \"{AGENT}\""),
                },
            ))
            .await
            .expect("list drafts")
            .into_inner()
            .drafts
    }

    /// The agent's draft for `lead` once it is in `state`.
    async fn draft_in(&self, lead: &Lead, state: DraftState) -> Draft {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let drafts = self.agent_drafts().await;
            if let Some(draft) = drafts
                .iter()
                .find(|draft| draft.lead_id == lead.id && draft.state == state as i32)
            {
                return draft.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {state:?} draft for {}: {drafts:?}",
                lead.email
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn messages(&self, lead: &Lead) -> Vec<Message> {
        self.comms()
            .await
            .list_messages(self.env.request(
                TENANT,
                ListMessagesRequest {
                    filter: format!("lead_id = \"{}\"", lead.id),
                    page_size: 10,
                    ..ListMessagesRequest::default()
                },
            ))
            .await
            .expect("list messages")
            .into_inner()
            .messages
    }

    async fn level(&self, segment: &str) -> AutonomyLevel {
        let autonomy = self
            .autonomy()
            .await
            .get_autonomy(self.env.request(
                TENANT,
                GetAutonomyRequest {
                    agent: "outreach".into(),
                    action: ACTION.into(),
                    segment: segment.into(),
                },
            ))
            .await
            .expect("autonomy")
            .into_inner();
        AutonomyLevel::try_from(autonomy.effective_level).expect("level")
    }

    /// Earns `segment` the level `to`: one careful approval and a manager's sign-off per
    /// level, by the offline writer's model and prompt (so the agent's own drafts are no
    /// version change).
    async fn promote(&self, segment: &str, to: AutonomyLevel) {
        let mut client = self.autonomy().await;
        let mut round = 0;
        while self.level(segment).await < to {
            round += 1;
            client
                .record_review(self.env.request_as(
                    TENANT,
                    "reviewer-1",
                    &["sales_rep"],
                    RecordReviewRequest {
                        agent: "outreach".into(),
                        action: ACTION.into(),
                        segment: segment.into(),
                        subject: format!("drafts/earned-{segment}-{round}"),
                        review: Review::ApprovedUnchanged as i32,
                        review_duration: Some(prost_types::Duration {
                            seconds: 30,
                            nanos: 0,
                        }),
                        model_version: OFFLINE_MODEL.into(),
                        prompt_version: PROMPT_VERSION.into(),
                        sent: true,
                        request_id: String::new(),
                    },
                ))
                .await
                .expect("review");
            client
                .sign_off_promotion(self.env.request_as(
                    TENANT,
                    "manager-1",
                    &["manager"],
                    SignOffPromotionRequest {
                        agent: "outreach".into(),
                        action: ACTION.into(),
                        segment: segment.into(),
                    },
                ))
                .await
                .expect("sign-off");
            assert!(round <= 4, "{segment} did not reach {to:?}");
        }
    }

    async fn promote_all(&self, to: AutonomyLevel) {
        for segment in SEGMENTS {
            self.promote(segment, to).await;
        }
    }
}

async fn below_l3_the_agent_drafts_a_first_touch_for_a_person_and_sends_nothing(backend: Backend) {
    let app = App::with_agent(backend, |_| {}).await;
    let no_email = app.capture("", "+14155550100", "Sam").await;
    let lead = app.capture("ada@initech.example", "", "Ada").await;

    let draft = app.draft_in(&lead, DraftState::Pending).await;
    assert_eq!(draft.purpose, Purpose::FirstTouch as i32);
    assert_eq!(draft.autonomy_level, AutonomyLevel::Suggest as i32);
    assert!(
        SEGMENTS.contains(&draft.segment.as_str()),
        "{}",
        draft.segment
    );
    assert_eq!(draft.requester, AGENT);
    assert!(draft.scheduled_send_time.is_none());
    assert!(draft.body.contains("Ada"), "{}", draft.body);
    // Scored before the lead with an address (one ordered stream): no draft for it.
    assert!(
        app.agent_drafts()
            .await
            .iter()
            .all(|draft| draft.lead_id != no_email.id)
    );
    tokio::time::sleep(Duration::from_secs(VETO_WINDOW_SECS + 2)).await;
    assert!(app.messages(&lead).await.is_empty());
    let drafts = app.agent_drafts().await;
    assert_eq!(drafts.len(), 1, "one first touch per lead: {drafts:?}");
    assert_eq!(drafts[0].state, DraftState::Pending as i32);
}

async fn at_l3_the_agent_sends_after_the_veto_window_unless_vetoed_or_the_lead_is_rejected(
    backend: Backend,
) {
    let app = App::with_agent(backend, |_| {}).await;
    app.promote_all(AutonomyLevel::VetoWindow).await;
    let sent = app.capture("grace@initech.example", "", "Grace").await;
    let vetoed = app.capture("linus@initech.example", "", "Linus").await;
    let rejected = app.capture("ken@initech.example", "", "Ken").await;

    let scheduled = app.draft_in(&sent, DraftState::Scheduled).await;
    assert_eq!(scheduled.autonomy_level, AutonomyLevel::VetoWindow as i32);
    let send_at = scheduled.scheduled_send_time.expect("scheduled time");
    let created = scheduled.create_time.expect("create time");
    assert_eq!(send_at.seconds - created.seconds, VETO_WINDOW_SECS as i64);
    let to_veto = app.draft_in(&vetoed, DraftState::Scheduled).await;
    let veto = app
        .comms()
        .await
        .veto_draft(app.env.request_as(
            TENANT,
            "rep-1",
            &["sales_rep"],
            VetoDraftRequest {
                id: to_veto.id.clone(),
            },
        ))
        .await
        .expect("veto")
        .into_inner();
    assert_eq!(veto.state, DraftState::Vetoed as i32);
    assert_eq!(veto.approver, "rep-1");
    app.draft_in(&rejected, DraftState::Scheduled).await;
    LeadServiceClient::new(app.leads.channel().await)
        .reject_lead(app.env.request(
            TENANT,
            RejectLeadRequest {
                id: rejected.id.clone(),
                reason: "not a buyer".into(),
                ..RejectLeadRequest::default()
            },
        ))
        .await
        .expect("reject");

    let done = app.draft_in(&sent, DraftState::Sent).await;
    let messages = app.messages(&sent).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].id, done.message_id);
    assert_eq!(messages[0].status, MessageStatus::Sent as i32);
    assert_eq!(messages[0].subject, scheduled.subject);
    assert_eq!(done.approver, AGENT);
    app.draft_in(&rejected, DraftState::Discarded).await;
    assert!(app.messages(&rejected).await.is_empty());
    assert!(app.messages(&vetoed).await.is_empty());
    assert_eq!(
        app.draft_in(&vetoed, DraftState::Vetoed).await.message_id,
        ""
    );
    let again = app
        .comms()
        .await
        .veto_draft(app.env.request(TENANT, VetoDraftRequest { id: done.id }))
        .await
        .expect_err("a sent draft cannot be vetoed");
    assert_eq!(again.code(), Code::FailedPrecondition);

    // The ledger: the window that passed is an approval by the agent, the veto a person's.
    let decisions = app.decisions_in(TENANT, ACTION, &SEGMENTS).await;
    let by_agent = decisions
        .iter()
        .find(|decision| decision.subject == format!("messages/{}", messages[0].id))
        .expect("the agent's send is in the ledger");
    assert_eq!(by_agent.review, Review::ApprovedUnchanged as i32);
    assert_eq!(by_agent.reviewer, AGENT);
    assert!(by_agent.counted && by_agent.sent);
    assert_eq!(by_agent.level, AutonomyLevel::VetoWindow as i32);
    let by_person = decisions
        .iter()
        .find(|decision| decision.subject == format!("drafts/{}", to_veto.id))
        .expect("the veto is in the ledger");
    assert_eq!(by_person.review, Review::Vetoed as i32);
    assert_eq!(by_person.reviewer, "rep-1");
    assert!(!by_person.sent);

    // Demoted while a draft waits: at the moment of acting the agent hands it to a person.
    let late = app.capture("barbara@initech.example", "", "Barbara").await;
    app.draft_in(&late, DraftState::Scheduled).await;
    for segment in SEGMENTS {
        app.autonomy()
            .await
            .demote_autonomy(app.env.request_as(
                TENANT,
                "manager-1",
                &["manager"],
                DemoteAutonomyRequest {
                    agent: "outreach".into(),
                    action: ACTION.into(),
                    segment: segment.into(),
                    reason: "pause sends for the launch".into(),
                },
            ))
            .await
            .expect("demote");
    }
    let held = app.draft_in(&late, DraftState::Pending).await;
    assert!(held.scheduled_send_time.is_none());
    assert!(app.messages(&late).await.is_empty());
}

async fn at_l4_the_agent_sends_at_once_within_its_daily_volume(backend: Backend) {
    let app = App::with_agent(backend, |env| {
        env.settings.comms.outreach_daily_volume = 1;
    })
    .await;
    app.promote_all(AutonomyLevel::Budgeted).await;
    let first = app.capture("alan@initech.example", "", "Alan").await;
    let sent = app.draft_in(&first, DraftState::Sent).await;
    assert_eq!(sent.autonomy_level, AutonomyLevel::Budgeted as i32);
    assert_eq!(app.messages(&first).await.len(), 1);
    // The day's volume is spent: the next one waits for a person.
    let second = app.capture("edsger@initech.example", "", "Edsger").await;
    let waiting = app.draft_in(&second, DraftState::Pending).await;
    assert_eq!(waiting.autonomy_level, AutonomyLevel::Budgeted as i32);
    assert!(app.messages(&second).await.is_empty());
}

async fn at_l4_the_agent_never_sends_in_quiet_hours(backend: Backend) {
    let hour = chrono::Utc::now().hour();
    let app = App::with_agent(backend, |env| {
        // Quiet now and for the next hour, whatever the time of the run.
        env.settings.comms.outreach_quiet_hours = vec![hour, (hour + 2) % 24];
    })
    .await;
    app.promote_all(AutonomyLevel::Budgeted).await;
    let lead = app.capture("donald@initech.example", "", "Donald").await;
    app.draft_in(&lead, DraftState::Pending).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(app.messages(&lead).await.is_empty());
}

async fn bad_veto_and_list_requests_name_the_field(backend: Backend) {
    let app = App::with_agent(backend, |_| {}).await;
    let lead = app.capture("ada@initech.example", "", "Ada").await;
    let pending = app.draft_in(&lead, DraftState::Pending).await;
    let mut comms = app.comms().await;
    for (id, code) in [
        (String::new(), Code::InvalidArgument),
        ("not-a-uuid".to_owned(), Code::InvalidArgument),
        (uuid::Uuid::now_v7().to_string(), Code::NotFound),
        (pending.id.clone(), Code::FailedPrecondition),
    ] {
        let status = comms
            .veto_draft(app.env.request(TENANT, VetoDraftRequest { id: id.clone() }))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{id}: {status:?}");
        if code == Code::InvalidArgument {
            assert!(status.message().contains("id"), "{}", status.message());
        }
    }
    // A pending draft that could not be vetoed is unchanged.
    assert_eq!(
        app.draft_in(&lead, DraftState::Pending).await.update_time,
        pending.update_time
    );
    let status = comms
        .list_drafts(app.env.request(
            TENANT,
            ListDraftsRequest {
                page_size: 10,
                page_token: String::new(),
                filter: "colour = \"red\"".into(),
            },
        ))
        .await
        .expect_err("unknown filter field");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("colour"), "{}", status.message());
    let status = comms
        .list_drafts(app.env.request(
            TENANT,
            ListDraftsRequest {
                page_size: -1,
                page_token: String::new(),
                filter: String::new(),
            },
        ))
        .await
        .expect_err("negative page size");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("page_size"),
        "{}",
        status.message()
    );
    // Another tenant sees none of it.
    let theirs = comms
        .list_drafts(app.env.request(
            "globex",
            ListDraftsRequest {
                page_size: 10,
                page_token: String::new(),
                filter: String::new(),
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(theirs.drafts.is_empty());
    let status = comms
        .veto_draft(
            app.env
                .request("globex", VetoDraftRequest { id: pending.id }),
        )
        .await
        .expect_err("another tenant's draft");
    assert_eq!(status.code(), Code::NotFound);
}

aida_core::backend_pair_suite!(on_postgres_and_jetstream, on_sqlite_and_in_process_bus:
    below_l3_the_agent_drafts_a_first_touch_for_a_person_and_sends_nothing,
    at_l3_the_agent_sends_after_the_veto_window_unless_vetoed_or_the_lead_is_rejected,
    at_l4_the_agent_sends_at_once_within_its_daily_volume,
    at_l4_the_agent_never_sends_in_quiet_hours,
    bad_veto_and_list_requests_name_the_field
);
