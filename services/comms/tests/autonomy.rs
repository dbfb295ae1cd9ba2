//! AutonomyService's behaviour over real gRPC: on PostgreSQL + JetStream and on SQLite +
//! the in-process bus. Earned autonomy: promotion proposed by the evidence and applied by a
//! person's sign-off, demotion by incidents, breaches and version changes, the kill switch,
//! the decision ledger, events and validation.

use aida_core::testing::violated_fields;
use std::time::Duration;

use aida_core::bus::COMMS_STREAM;
use aida_core::testing::{Backend, RunningServer, TestEnv, eventually};
use aida_proto::aida::ai::v1::autonomy_service_client::AutonomyServiceClient;
use aida_proto::aida::ai::v1::{
    Autonomy, AutonomyLevel, Decision, DemoteAutonomyRequest, GetAutonomyRequest, IncidentKind,
    KillAutonomyRequest, ListAutonomyRequest, ListDecisionsRequest, ListTransitionsRequest,
    Outcome, RecordOutcomeRequest, RecordReviewRequest, ReportIncidentRequest, Review,
    ReviveAutonomyRequest, SignOffPromotionRequest,
};
use aida_proto::aida::events::v1::EventEnvelope;
use aida_proto::aida::events::v1::event_envelope::Payload;
use tonic::Code;
use tonic::transport::Channel;

const AGENT: &str = "outreach";
const ACTION: &str = "send_first_touch";
const SEGMENT: &str = "tier_a";
const TENANT: &str = "acme";

struct App {
    env: TestEnv,
    comms: RunningServer,
}

impl App {
    /// CommsService with AutonomyService; no time at level is required, and
    /// `min_decisions` counted reviews per level.
    async fn spawn(backend: Backend, min_decisions: [u32; 4]) -> Self {
        let mut env = TestEnv::new(backend).await;
        env.settings.comms.autonomy_min_hours_at_level = vec![0, 0, 0, 0];
        env.settings.comms.autonomy_min_decisions = min_decisions.to_vec();
        // Nothing here reads leads: a lazy channel to a closed port is enough.
        env.settings.services.leads_url = "http://127.0.0.1:9".into();
        let context = env
            .context(aida_comms::SERVICE, aida_comms::migrations())
            .await;
        let comms = RunningServer::start(|listener, shutdown| {
            aida_comms::serve(context, listener, shutdown)
        })
        .await;
        Self { env, comms }
    }

    async fn client(&self) -> AutonomyServiceClient<Channel> {
        AutonomyServiceClient::new(self.comms.channel().await)
    }

    async fn get(&self, tenant: &str) -> Autonomy {
        self.client()
            .await
            .get_autonomy(self.env.request(
                tenant,
                GetAutonomyRequest {
                    agent: AGENT.into(),
                    action: ACTION.into(),
                    segment: SEGMENT.into(),
                },
            ))
            .await
            .expect("get autonomy")
            .into_inner()
    }

    async fn review_as(
        &self,
        roles: &[&str],
        request: RecordReviewRequest,
    ) -> Result<Decision, tonic::Status> {
        self.client()
            .await
            .record_review(self.env.request_as(TENANT, "reviewer-1", roles, request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// `count` reviews of `review` that took `seconds` each; the last decision.
    async fn reviews(&self, count: usize, review: Review, seconds: i64, sent: bool) -> Decision {
        let mut client = self.client().await;
        let mut last = None;
        for _ in 0..count {
            let mut request = review_request(review, seconds);
            request.sent = sent;
            last = Some(
                client
                    .record_review(self.env.request_as(
                        TENANT,
                        "reviewer-1",
                        &["sales_rep"],
                        request,
                    ))
                    .await
                    .expect("record review")
                    .into_inner(),
            );
        }
        last.expect("at least one review")
    }

    async fn sign_off(&self) -> Result<Autonomy, tonic::Status> {
        self.client()
            .await
            .sign_off_promotion(self.env.request_as(
                TENANT,
                "manager-1",
                &["manager"],
                SignOffPromotionRequest {
                    agent: AGENT.into(),
                    action: ACTION.into(),
                    segment: SEGMENT.into(),
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn outcome(&self, decision: &str, outcome: Outcome) -> Result<Decision, tonic::Status> {
        self.client()
            .await
            .record_outcome(self.env.request(
                TENANT,
                RecordOutcomeRequest {
                    decision_id: decision.into(),
                    outcome: outcome as i32,
                },
            ))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn transitions(&self) -> Vec<(i32, i32, String, String)> {
        self.client()
            .await
            .list_transitions(self.env.request(
                TENANT,
                ListTransitionsRequest {
                    agent: AGENT.into(),
                    action: ACTION.into(),
                    segment: SEGMENT.into(),
                    page_size: 100,
                    page_token: String::new(),
                },
            ))
            .await
            .expect("list transitions")
            .into_inner()
            .transitions
            .into_iter()
            .map(|t| (t.from_level, t.to_level, t.cause, t.actor))
            .collect()
    }

    async fn autonomy_events(&self) -> Vec<EventEnvelope> {
        self.env
            .bus
            .events_on(COMMS_STREAM)
            .await
            .into_iter()
            .map(|(_, event)| event)
            .filter(|event| event.event_type.starts_with("comms.autonomy_"))
            .collect()
    }

    async fn wait_for_autonomy_events(&self, count: usize) -> Vec<EventEnvelope> {
        assert!(
            eventually(Duration::from_secs(10), || async {
                self.autonomy_events().await.len() >= count
            })
            .await,
            "{count} autonomy events, saw {:?}",
            self.autonomy_events()
                .await
                .iter()
                .map(|event| event.event_type.clone())
                .collect::<Vec<_>>()
        );
        self.autonomy_events().await
    }

    /// Reviews enough to be proposed from L1 and signs off: the key is at L2.
    async fn reach_draft_level(&self, min_decisions: u32) {
        let last = self
            .reviews(min_decisions as usize, Review::ApprovedUnchanged, 30, false)
            .await;
        assert!(last.autonomy.expect("autonomy").proposal.is_some());
        let autonomy = self.sign_off().await.expect("sign off");
        assert_eq!(autonomy.level, AutonomyLevel::Draft as i32);
    }
}

fn review_request(review: Review, seconds: i64) -> RecordReviewRequest {
    RecordReviewRequest {
        agent: AGENT.into(),
        action: ACTION.into(),
        segment: SEGMENT.into(),
        subject: "messages/0190aa00-0000-7000-8000-000000000001".into(),
        review: review as i32,
        review_duration: Some(prost_types::Duration { seconds, nanos: 0 }),
        model_version: "moonshotai/kimi-k2".into(),
        prompt_version: "first-touch-v1".into(),
        sent: false,
        request_id: String::new(),
    }
}

fn evidence_counted(autonomy: &Autonomy) -> i32 {
    autonomy.evidence.as_ref().map_or(0, |e| e.counted)
}

async fn two_hundred_unchanged_approvals_at_l2_propose_l3_and_one_incident_sends_it_back_to_l1(
    backend: Backend,
) {
    // The default evidence: 100 reviews to leave L1, 200 to leave L2.
    let app = App::spawn(backend, [50, 100, 200, 500]).await;
    let fresh = app.get(TENANT).await;
    assert_eq!(fresh.level, AutonomyLevel::Suggest as i32);
    assert_eq!(fresh.effective_level, AutonomyLevel::Suggest as i32);
    assert_eq!(fresh.promotion_blocker, "0 of 100 counted reviews at L1");

    let at_99 = app.reviews(99, Review::ApprovedUnchanged, 30, false).await;
    assert!(
        at_99
            .autonomy
            .as_ref()
            .expect("autonomy")
            .proposal
            .is_none()
    );
    assert!(
        app.sign_off()
            .await
            .is_err_and(|status| status.code() == Code::FailedPrecondition),
        "no sign-off without a proposal"
    );
    let at_100 = app.reviews(1, Review::ApprovedUnchanged, 30, false).await;
    let proposal = at_100
        .autonomy
        .as_ref()
        .and_then(|a| a.proposal)
        .expect("100 approvals at L1 propose L2");
    assert_eq!(
        (proposal.from_level, proposal.to_level),
        (AutonomyLevel::Suggest as i32, AutonomyLevel::Draft as i32)
    );
    assert!(at_100.counted);
    assert_eq!(at_100.reviewer, "reviewer-1");
    // Proposed is not promoted: a person signs off.
    assert_eq!(app.get(TENANT).await.level, AutonomyLevel::Suggest as i32);
    let promoted = app.sign_off().await.expect("sign off");
    assert_eq!(promoted.level, AutonomyLevel::Draft as i32);
    assert_eq!(evidence_counted(&promoted), 0, "evidence starts afresh");

    let at_199 = app.reviews(199, Review::ApprovedUnchanged, 45, false).await;
    assert!(
        at_199
            .autonomy
            .as_ref()
            .expect("autonomy")
            .proposal
            .is_none()
    );
    let at_200 = app.reviews(1, Review::ApprovedUnchanged, 45, false).await;
    let autonomy = at_200.autonomy.expect("autonomy");
    let proposal = autonomy.proposal.expect("200 approvals at L2 propose L3");
    assert_eq!(
        (proposal.from_level, proposal.to_level),
        (
            AutonomyLevel::Draft as i32,
            AutonomyLevel::VetoWindow as i32
        )
    );
    assert_eq!(evidence_counted(&autonomy), 200);

    let after_incident = app
        .client()
        .await
        .report_incident(app.env.request_as(
            TENANT,
            "compliance-bot",
            &["service"],
            ReportIncidentRequest {
                agent: AGENT.into(),
                action: ACTION.into(),
                segment: SEGMENT.into(),
                kind: IncidentKind::Critical as i32,
                description: "tried to e-mail a suppressed address".into(),
            },
        ))
        .await
        .expect("report incident")
        .into_inner();
    assert_eq!(after_incident.level, AutonomyLevel::Suggest as i32);
    assert!(after_incident.proposal.is_none(), "the proposal is void");
    assert_eq!(evidence_counted(&after_incident), 0);
    assert!(
        app.sign_off()
            .await
            .is_err_and(|status| status.code() == Code::FailedPrecondition)
    );

    assert_eq!(
        app.transitions().await,
        vec![
            (
                AutonomyLevel::Draft as i32,
                AutonomyLevel::Suggest as i32,
                "CRITICAL_INCIDENT".to_owned(),
                "compliance-bot".to_owned()
            ),
            (
                AutonomyLevel::Suggest as i32,
                AutonomyLevel::Draft as i32,
                "PROMOTED".to_owned(),
                "manager-1".to_owned()
            ),
        ]
    );
    let events = app.wait_for_autonomy_events(4).await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "comms.autonomy_proposed",
            "comms.autonomy_changed",
            "comms.autonomy_proposed",
            "comms.autonomy_changed"
        ]
    );
    let Some(Payload::AutonomyChanged(changed)) = &events[3].payload else {
        panic!("autonomy_changed payload");
    };
    let transition = changed.transition.as_ref().expect("transition");
    assert_eq!(transition.cause, "CRITICAL_INCIDENT");
    assert_eq!(transition.detail, "tried to e-mail a suppressed address");
    assert_eq!(
        events[3].subject,
        "autonomy/outreach/send_first_touch/tier_a"
    );

    // The ledger keeps every reviewed decision, newest first, in pages.
    let mut client = app.client().await;
    let mut seen = 0;
    let mut token = String::new();
    loop {
        let page = client
            .list_decisions(app.env.request(
                TENANT,
                ListDecisionsRequest {
                    agent: AGENT.into(),
                    action: ACTION.into(),
                    segment: SEGMENT.into(),
                    page_size: 200,
                    page_token: token.clone(),
                },
            ))
            .await
            .expect("list decisions")
            .into_inner();
        seen += page.decisions.len();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, 300);
}

async fn rubber_stamps_and_retired_versions_are_not_evidence_and_a_new_version_costs_a_level(
    backend: Backend,
) {
    let app = App::spawn(backend, [3, 3, 3, 3]).await;
    app.reach_draft_level(3).await;

    let stamped = app.reviews(1, Review::ApprovedUnchanged, 1, false).await;
    assert!(!stamped.counted, "approved in one second is a rubber stamp");
    let autonomy = stamped.autonomy.expect("autonomy");
    assert_eq!(evidence_counted(&autonomy), 0);
    assert_eq!(autonomy.evidence.expect("evidence").rubber_stamps, 1);
    // A fast rejection still says something: it counts.
    let rejected = app.reviews(1, Review::Rejected, 1, false).await;
    assert!(rejected.counted);

    let mut new_prompt = review_request(Review::ApprovedUnchanged, 30);
    new_prompt.prompt_version = "first-touch-v2".into();
    let after_change = app
        .review_as(&["sales_rep"], new_prompt)
        .await
        .expect("review");
    let autonomy = after_change.autonomy.expect("autonomy");
    assert_eq!(
        autonomy.level,
        AutonomyLevel::Suggest as i32,
        "a new prompt costs a level"
    );
    assert_eq!(autonomy.prompt_version, "first-touch-v2");
    assert_eq!(
        evidence_counted(&autonomy),
        1,
        "the new version's review counts"
    );
    assert_eq!(after_change.level, AutonomyLevel::Suggest as i32);

    // A late review of the retired prompt's draft is kept, not counted, and changes nothing.
    let late = app
        .review_as(
            &["sales_rep"],
            review_request(Review::ApprovedUnchanged, 30),
        )
        .await
        .expect("late review");
    assert!(!late.counted);
    let autonomy = late.autonomy.expect("autonomy");
    assert_eq!(autonomy.level, AutonomyLevel::Suggest as i32);
    assert_eq!(autonomy.prompt_version, "first-touch-v2");
    assert_eq!(evidence_counted(&autonomy), 1);
    let causes: Vec<String> = app.transitions().await.into_iter().map(|t| t.2).collect();
    assert_eq!(causes, ["VERSION_CHANGED", "PROMOTED"]);

    // A retried review with the same request id is recorded once.
    let mut once = review_request(Review::ApprovedUnchanged, 30);
    once.prompt_version = "first-touch-v2".into();
    once.request_id = "review-42".into();
    let first = app
        .review_as(&["sales_rep"], once.clone())
        .await
        .expect("first");
    let again = app.review_as(&["sales_rep"], once).await.expect("retry");
    assert_eq!(first.id, again.id);
    assert_eq!(evidence_counted(&app.get(TENANT).await), 2);
}

async fn unsubscribes_over_the_limit_demote_one_level_and_the_kill_switch_holds_until_revived(
    backend: Backend,
) {
    let app = App::spawn(backend, [3, 3, 3, 3]).await;
    app.reach_draft_level(3).await;
    let mut sent = Vec::new();
    let mut client = app.client().await;
    for _ in 0..50 {
        let mut request = review_request(Review::ApprovedUnchanged, 20);
        request.sent = true;
        sent.push(
            client
                .record_review(app.env.request(TENANT, request))
                .await
                .expect("review")
                .into_inner(),
        );
    }
    // 50 sends with a proposal pending: outcomes still count and can demote.
    let replied = app
        .outcome(&sent[0].id, Outcome::Replied)
        .await
        .expect("reply");
    assert_eq!(replied.outcome, Outcome::Replied as i32);
    // The same outcome again is a no-op; another one is refused.
    let again = app
        .outcome(&sent[0].id, Outcome::Replied)
        .await
        .expect("again");
    assert_eq!(
        again
            .autonomy
            .expect("autonomy")
            .evidence
            .expect("e")
            .replies,
        1
    );
    let other = app
        .outcome(&sent[0].id, Outcome::Bounced)
        .await
        .expect_err("other");
    assert_eq!(other.code(), Code::FailedPrecondition);

    let first = app
        .outcome(&sent[1].id, Outcome::Unsubscribed)
        .await
        .expect("unsub");
    assert_eq!(
        first.autonomy.expect("autonomy").level,
        AutonomyLevel::Draft as i32,
        "1 of 50 (2 %) is at the limit, not over it"
    );
    let second = app
        .outcome(&sent[2].id, Outcome::Unsubscribed)
        .await
        .expect("unsub");
    let autonomy = second.autonomy.expect("autonomy");
    assert_eq!(
        autonomy.level,
        AutonomyLevel::Suggest as i32,
        "4 % demotes one level"
    );
    assert_eq!(app.transitions().await[0].2, "THRESHOLD_BREACH");
    // Outcomes of decisions made at the old level are kept but are not evidence now.
    let late = app
        .outcome(&sent[3].id, Outcome::Unsubscribed)
        .await
        .expect("late");
    assert_eq!(
        late.autonomy.expect("a").evidence.expect("e").unsubscribes,
        0
    );

    let unsent = app.reviews(1, Review::Edited, 30, false).await;
    let refused = app
        .outcome(&unsent.id, Outcome::Replied)
        .await
        .expect_err("unsent");
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let killed = app
        .client()
        .await
        .kill_autonomy(app.env.request_as(
            TENANT,
            "rep-7",
            &["sales_rep"],
            KillAutonomyRequest {
                agent: AGENT.into(),
                action: ACTION.into(),
                segment: SEGMENT.into(),
                reason: "wrong tone in three drafts".into(),
            },
        ))
        .await
        .expect("kill")
        .into_inner();
    assert!(killed.killed);
    assert_eq!(killed.effective_level, AutonomyLevel::Shadow as i32);
    assert_eq!(killed.level, AutonomyLevel::Suggest as i32);
    // Enough evidence while killed proposes nothing.
    let while_killed = app.reviews(3, Review::ApprovedUnchanged, 30, false).await;
    let autonomy = while_killed.autonomy.expect("autonomy");
    assert!(autonomy.proposal.is_none());
    assert_eq!(
        autonomy.promotion_blocker,
        "switched off by the kill switch"
    );

    let revive = |roles: &'static [&'static str]| {
        let app = &app;
        async move {
            app.client()
                .await
                .revive_autonomy(app.env.request_as(
                    TENANT,
                    "boss",
                    roles,
                    ReviveAutonomyRequest {
                        agent: AGENT.into(),
                        action: ACTION.into(),
                        segment: SEGMENT.into(),
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let denied = revive(&["sales_rep"])
        .await
        .expect_err("sales_rep may not revive");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let revived = revive(&["manager"]).await.expect("revive");
    assert!(!revived.killed);
    assert_eq!(revived.effective_level, AutonomyLevel::Suggest as i32);
    assert_eq!(evidence_counted(&revived), 0);
    let again = revive(&["manager"]).await.expect_err("not killed");
    assert_eq!(again.code(), Code::FailedPrecondition);

    let demoted = app
        .client()
        .await
        .demote_autonomy(app.env.request_as(
            TENANT,
            "boss",
            &["manager"],
            DemoteAutonomyRequest {
                agent: AGENT.into(),
                action: ACTION.into(),
                segment: SEGMENT.into(),
                reason: "pause suggestions during the re-brand".into(),
            },
        ))
        .await
        .expect("demote")
        .into_inner();
    assert_eq!(demoted.level, AutonomyLevel::Shadow as i32);
    let causes: Vec<String> = app.transitions().await.into_iter().map(|t| t.2).collect();
    assert_eq!(
        causes,
        [
            "DEMOTED",
            "REVIVED",
            "KILLED",
            "THRESHOLD_BREACH",
            "PROMOTED"
        ]
    );
}

async fn bad_input_is_invalid_argument_naming_the_field_and_changes_nothing(backend: Backend) {
    let app = App::spawn(backend, [3, 3, 3, 3]).await;
    let mut client = app.client().await;

    let mut request = review_request(Review::Unspecified, 30);
    request.agent = "Outreach!".into();
    request.segment = String::new();
    request.review_duration = Some(prost_types::Duration {
        seconds: -1,
        nanos: 0,
    });
    request.model_version = String::new();
    let status = app
        .review_as(&["sales_rep"], request)
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        [
            "agent",
            "segment",
            "review",
            "review_duration",
            "model_version"
        ]
    );

    let mut request = review_request(Review::ApprovedUnchanged, 30);
    request.review_duration = None;
    let status = app
        .review_as(&["sales_rep"], request)
        .await
        .expect_err("invalid");
    assert_eq!(violated_fields(&status), ["review_duration"]);

    let status = app
        .outcome("not-a-uuid", Outcome::Unspecified)
        .await
        .expect_err("invalid");
    assert_eq!(violated_fields(&status), ["decision_id", "outcome"]);
    let status = app
        .outcome("0190aa00-0000-7000-8000-000000000001", Outcome::Replied)
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);

    let status = client
        .report_incident(app.env.request(
            TENANT,
            ReportIncidentRequest {
                agent: AGENT.into(),
                action: ACTION.into(),
                segment: SEGMENT.into(),
                kind: 0,
                description: " ".into(),
            },
        ))
        .await
        .expect_err("invalid");
    assert_eq!(violated_fields(&status), ["kind", "description"]);
    let status = client
        .demote_autonomy(app.env.request(
            TENANT,
            DemoteAutonomyRequest {
                agent: AGENT.into(),
                action: ACTION.into(),
                segment: SEGMENT.into(),
                reason: String::new(),
            },
        ))
        .await
        .expect_err("invalid");
    assert_eq!(violated_fields(&status), ["reason"]);

    // A viewer may read but not review; nothing was written by any of the above.
    let status = app
        .review_as(&["viewer"], review_request(Review::ApprovedUnchanged, 30))
        .await
        .expect_err("viewer");
    assert_eq!(status.code(), Code::PermissionDenied);
    let listed = client
        .list_autonomy(app.env.request_as(
            TENANT,
            "v",
            &["viewer"],
            ListAutonomyRequest {
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .expect("viewer lists")
        .into_inner();
    assert!(listed.autonomy.is_empty());
    assert!(app.transitions().await.is_empty());
}

async fn tenants_never_see_each_others_autonomy_or_decisions(backend: Backend) {
    let app = App::spawn(backend, [3, 3, 3, 3]).await;
    let mut request = review_request(Review::ApprovedUnchanged, 30);
    request.sent = true;
    let decision = app
        .review_as(&["sales_rep"], request)
        .await
        .expect("review");
    for segment in ["tier_b", "tier_c"] {
        let mut request = review_request(Review::Edited, 30);
        request.segment = segment.into();
        app.review_as(&["sales_rep"], request)
            .await
            .expect("review");
    }

    assert_eq!(evidence_counted(&app.get(TENANT).await), 1);
    assert_eq!(evidence_counted(&app.get("globex").await), 0);
    let status = app
        .client()
        .await
        .record_outcome(app.env.request(
            "globex",
            RecordOutcomeRequest {
                decision_id: decision.id.clone(),
                outcome: Outcome::Replied as i32,
            },
        ))
        .await
        .expect_err("another tenant's decision");
    assert_eq!(status.code(), Code::NotFound);

    // Listing pages through the tenant's keys only, in key order.
    let mut client = app.client().await;
    let first = client
        .list_autonomy(app.env.request(
            TENANT,
            ListAutonomyRequest {
                page_size: 2,
                page_token: String::new(),
            },
        ))
        .await
        .expect("list")
        .into_inner();
    let second = client
        .list_autonomy(app.env.request(
            TENANT,
            ListAutonomyRequest {
                page_size: 2,
                page_token: first.next_page_token.clone(),
            },
        ))
        .await
        .expect("list")
        .into_inner();
    let segments: Vec<String> = first
        .autonomy
        .iter()
        .chain(&second.autonomy)
        .map(|a| a.segment.clone())
        .collect();
    assert_eq!(segments, ["tier_a", "tier_b", "tier_c"]);
    assert!(second.next_page_token.is_empty());
    let other = client
        .list_autonomy(app.env.request(
            "globex",
            ListAutonomyRequest {
                page_size: 0,
                page_token: String::new(),
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert!(other.autonomy.is_empty());
}

aida_core::backend_pair_suite!(on_postgres_and_jetstream, on_sqlite_and_in_process_bus:
    two_hundred_unchanged_approvals_at_l2_propose_l3_and_one_incident_sends_it_back_to_l1,
    rubber_stamps_and_retired_versions_are_not_evidence_and_a_new_version_costs_a_level,
    unsubscribes_over_the_limit_demote_one_level_and_the_kill_switch_holds_until_revived,
    bad_input_is_invalid_argument_naming_the_field_and_changes_nothing,
    tenants_never_see_each_others_autonomy_or_decisions
);
