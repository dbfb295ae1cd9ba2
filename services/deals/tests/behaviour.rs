//! DealService's behaviour on PostgreSQL + JetStream and on SQLite + the in-process bus.

use aida_core::testing::{assert_violates, violated_fields};
use std::time::Duration;

use aida_core::bus::{DEALS_STREAM, OutgoingMessage};
use aida_core::db::{Count, Database, Sql};
use aida_core::testing::{Backend, RunningServer, TestEnv, eventually};
use aida_proto::aida::common::v1::Money;
use aida_proto::aida::deals::v1::deal_service_client::DealServiceClient;
use aida_proto::aida::deals::v1::{
    CreateDealRequest, CreatePipelineRequest, Deal, DealStatus, DeletePipelineRequest,
    GetDealRequest, ListDealsRequest, ListPipelinesRequest, LoseDealRequest, Pipeline,
    ProgressDealRequest, Stage, StageKind, UpdateDealRequest, UpdatePipelineRequest,
    WatchDealsRequest, WinDealRequest,
};
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::events::v1::{EventEnvelope, LeadQualified};
use aida_proto::aida::leads::v1::{Lead, LeadStatus};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

struct App {
    env: TestEnv,
    server: RunningServer,
    db: Database,
}

impl App {
    async fn spawn(backend: Backend) -> Self {
        let env = TestEnv::new(backend).await;
        let context = env
            .context(aida_deals::SERVICE, aida_deals::migrations())
            .await;
        let db = context.db.clone();
        let server = RunningServer::start(|listener, shutdown| {
            aida_deals::serve(context, listener, shutdown)
        })
        .await;
        Self { env, server, db }
    }

    async fn client(&self) -> DealServiceClient<Channel> {
        DealServiceClient::new(self.server.channel().await)
    }

    async fn count(&self, table: &str) -> i64 {
        let count: Count = self
            .db
            .fetch_one(Sql::new(format!("SELECT COUNT(*) AS count FROM {table}")))
            .await
            .expect("count");
        count.count
    }

    async fn deal_events(&self) -> Vec<(String, EventEnvelope)> {
        self.env.bus.events_on(DEALS_STREAM).await
    }

    async fn wait_for_deal_events(&self, count: usize) -> Vec<(String, EventEnvelope)> {
        self.env.bus.wait_for_events(DEALS_STREAM, count).await
    }

    async fn create(&self, tenant: &str, name: &str, amount: i64) -> Deal {
        self.client()
            .await
            .create_deal(self.env.request(
                tenant,
                CreateDealRequest {
                    deal: Some(deal(name, amount)),
                    request_id: String::new(),
                },
            ))
            .await
            .expect("create deal")
            .into_inner()
    }
}

fn euros(amount_minor: i64) -> Option<Money> {
    Some(Money {
        currency_code: "EUR".into(),
        amount_minor,
    })
}

fn deal(name: &str, amount: i64) -> Deal {
    Deal {
        name: name.into(),
        amount: euros(amount),
        ..Deal::default()
    }
}

async fn a_tenant_starts_with_the_default_pipeline(backend: Backend) {
    let app = App::spawn(backend).await;
    let pipelines = app
        .client()
        .await
        .list_pipelines(app.env.request("acme", ListPipelinesRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(pipelines.pipelines.len(), 1);
    let default = &pipelines.pipelines[0];
    assert!(default.is_default);
    let stages: Vec<(&str, i32)> = default
        .stages
        .iter()
        .map(|stage| (stage.name.as_str(), stage.probability))
        .collect();
    assert_eq!(
        stages,
        [
            ("Prospecting", 10),
            ("Qualification", 25),
            ("Proposal", 50),
            ("Negotiation", 75),
            ("Closed Won", 100),
            ("Closed Lost", 0)
        ]
    );
}

async fn deals_move_through_stages_close_and_publish_their_events(backend: Backend) {
    let app = App::spawn(backend).await;
    let mut client = app.client().await;
    let created = app.create("acme", "Big contract", 1_000_000).await;
    assert_eq!(
        (created.stage.as_str(), created.probability),
        ("Prospecting", 10)
    );
    assert_eq!(created.weighted_amount, euros(100_000));
    assert_eq!(created.status, DealStatus::Open as i32);

    let proposal = client
        .progress_deal(app.env.request(
            "acme",
            ProgressDealRequest {
                id: created.id.clone(),
                stage: "Proposal".into(),
                etag: created.etag.clone(),
            },
        ))
        .await
        .expect("progress")
        .into_inner();
    assert_eq!(
        (proposal.stage.as_str(), proposal.probability),
        ("Proposal", 50)
    );
    assert_eq!(proposal.weighted_amount, euros(500_000));
    assert_eq!(proposal.stage_history.len(), 2);
    assert!(proposal.stage_history[0].leave_time.is_some());

    let won = client
        .win_deal(app.env.request(
            "acme",
            WinDealRequest {
                id: created.id.clone(),
                etag: proposal.etag.clone(),
            },
        ))
        .await
        .expect("win")
        .into_inner();
    assert_eq!(
        (won.status, won.stage.as_str(), won.probability),
        (DealStatus::Won as i32, "Closed Won", 100)
    );
    assert!(won.close_time.is_some());

    let other = app.create("acme", "Small one", 5_000).await;
    let lost = client
        .lose_deal(app.env.request(
            "acme",
            LoseDealRequest {
                id: other.id.clone(),
                reason: "went with a competitor".into(),
                etag: String::new(),
            },
        ))
        .await
        .expect("lose")
        .into_inner();
    assert_eq!(
        (lost.status, lost.lost_reason.as_str()),
        (DealStatus::Lost as i32, "went with a competitor")
    );

    let events = app.wait_for_deal_events(5).await;
    let types: Vec<&str> = events.iter().map(|(subject, _)| subject.as_str()).collect();
    assert_eq!(
        types,
        [
            "deals.created",
            "deals.progressed",
            "deals.won",
            "deals.created",
            "deals.lost"
        ]
    );
    match &events[1].1.payload {
        Some(Payload::DealProgressed(progressed)) => {
            assert_eq!(
                (progressed.from_stage.as_str(), progressed.to_stage.as_str()),
                ("Prospecting", "Proposal")
            );
        }
        other => panic!("unexpected payload {other:?}"),
    }
}

async fn closed_deals_cannot_move_and_illegal_moves_change_nothing(backend: Backend) {
    let app = App::spawn(backend).await;
    let mut client = app.client().await;
    let created = app.create("acme", "Deal", 100).await;
    for (stage, code) in [
        ("Closed Won", Code::FailedPrecondition),
        ("Prospecting", Code::FailedPrecondition),
        ("Nowhere", Code::InvalidArgument),
    ] {
        let status = client
            .progress_deal(app.env.request(
                "acme",
                ProgressDealRequest {
                    id: created.id.clone(),
                    stage: stage.into(),
                    etag: String::new(),
                },
            ))
            .await
            .expect_err(stage);
        assert_eq!(status.code(), code, "{stage}");
    }
    let won = client
        .win_deal(app.env.request(
            "acme",
            WinDealRequest {
                id: created.id.clone(),
                etag: String::new(),
            },
        ))
        .await
        .expect("win")
        .into_inner();
    let moved = client
        .progress_deal(app.env.request(
            "acme",
            ProgressDealRequest {
                id: created.id.clone(),
                stage: "Proposal".into(),
                etag: String::new(),
            },
        ))
        .await
        .expect_err("closed deal moved");
    assert_eq!(moved.code(), Code::FailedPrecondition);
    let lost = client
        .lose_deal(app.env.request(
            "acme",
            LoseDealRequest {
                id: created.id.clone(),
                reason: "x".into(),
                etag: String::new(),
            },
        ))
        .await
        .expect_err("won deal lost");
    assert_eq!(lost.code(), Code::FailedPrecondition);
    let stale = client
        .win_deal(app.env.request(
            "acme",
            WinDealRequest {
                id: created.id.clone(),
                etag: created.etag.clone(),
            },
        ))
        .await
        .expect_err("stale etag");
    assert_eq!(stale.code(), Code::Aborted);
    let current = client
        .get_deal(app.env.request(
            "acme",
            GetDealRequest {
                id: created.id.clone(),
            },
        ))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(current, won, "nothing changed");
}

async fn bad_input_is_invalid_argument_naming_the_field_and_writes_nothing(backend: Backend) {
    let app = App::spawn(backend).await;
    let mut client = app.client().await;
    let cases: Vec<(&str, Deal, &str)> = vec![
        (
            "no name",
            Deal {
                name: " ".into(),
                ..deal("x", 1)
            },
            "deal.name",
        ),
        (
            "no amount",
            Deal {
                amount: None,
                ..deal("x", 1)
            },
            "deal.amount",
        ),
        ("negative amount", deal("x", -5), "deal.amount.amount_minor"),
        (
            "bad currency",
            Deal {
                amount: Some(Money {
                    currency_code: "euro".into(),
                    amount_minor: 1,
                }),
                ..deal("x", 1)
            },
            "deal.amount.currency_code",
        ),
        (
            "bad date",
            Deal {
                expected_close_date: "next week".into(),
                ..deal("x", 1)
            },
            "deal.expected_close_date",
        ),
        (
            "unknown stage",
            Deal {
                stage: "Heaven".into(),
                ..deal("x", 1)
            },
            "deal.stage",
        ),
        (
            "closing stage",
            Deal {
                stage: "Closed Won".into(),
                ..deal("x", 1)
            },
            "deal.stage",
        ),
        (
            "bad pipeline",
            Deal {
                pipeline_id: "nope".into(),
                ..deal("x", 1)
            },
            "deal.pipeline_id",
        ),
        (
            "bad probability",
            Deal {
                probability: 150,
                ..deal("x", 1)
            },
            "deal.probability",
        ),
        (
            "long name",
            Deal {
                name: "x".repeat(10_000),
                ..deal("x", 1)
            },
            "deal.name",
        ),
    ];
    for (name, input, field) in cases {
        let status = client
            .create_deal(app.env.request(
                "acme",
                CreateDealRequest {
                    deal: Some(input),
                    request_id: String::new(),
                },
            ))
            .await
            .expect_err(name);
        assert_violates(&status, field, name);
    }
    let empty = client
        .create_deal(app.env.request("acme", CreateDealRequest::default()))
        .await
        .expect_err("empty");
    assert_eq!(violated_fields(&empty), ["deal"]);
    let no_won = client
        .create_pipeline(app.env.request(
            "acme",
            CreatePipelineRequest {
                pipeline: Some(Pipeline {
                    name: "Broken".into(),
                    stages: vec![Stage {
                        name: "Only".into(),
                        probability: 10,
                        kind: StageKind::Open as i32,
                    }],
                    ..Pipeline::default()
                }),
            },
        ))
        .await
        .expect_err("pipeline without closing stages");
    assert_eq!(
        violated_fields(&no_won),
        ["pipeline.stages", "pipeline.stages"]
    );
    let bad_filter = client
        .list_deals(app.env.request(
            "acme",
            ListDealsRequest {
                filter: "amount_minor > lots".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("filter");
    assert_eq!(violated_fields(&bad_filter), ["filter"]);
    let created = app.create("acme", "Real", 10).await;
    let no_reason = client
        .lose_deal(app.env.request(
            "acme",
            LoseDealRequest {
                id: created.id.clone(),
                reason: String::new(),
                etag: String::new(),
            },
        ))
        .await
        .expect_err("reason");
    assert_eq!(violated_fields(&no_reason), ["reason"]);
    let no_stage = client
        .progress_deal(app.env.request(
            "acme",
            ProgressDealRequest {
                id: created.id.clone(),
                stage: String::new(),
                etag: String::new(),
            },
        ))
        .await
        .expect_err("stage");
    assert_eq!(violated_fields(&no_stage), ["stage"]);
    assert_eq!(app.count("deals").await, 1, "only the valid deal");
    assert_eq!(app.count("pipelines").await, 1, "only the default pipeline");
}

fn qualified_event(tenant: &str, event_id: &str, lead_id: &str) -> EventEnvelope {
    EventEnvelope {
        event_id: event_id.into(),
        event_type: "leads.qualified".into(),
        tenant_id: tenant.into(),
        payload: Some(Payload::LeadQualified(LeadQualified {
            lead: Some(Lead {
                id: lead_id.into(),
                email: "ada@example.com".into(),
                company: "Analytical Engines".into(),
                owner_id: "rep-7".into(),
                status: LeadStatus::Qualified as i32,
                ..Lead::default()
            }),
            previous_status: LeadStatus::New as i32,
            note: String::new(),
        })),
        ..EventEnvelope::default()
    }
}

async fn a_qualified_lead_becomes_one_deal_even_when_the_event_comes_twice(backend: Backend) {
    let app = App::spawn(backend).await;
    let bus = app.env.bus.shared();
    bus.ensure_streams().await.expect("streams");
    let lead_id = uuid::Uuid::now_v7().to_string();
    let event = qualified_event("acme", &uuid::Uuid::now_v7().to_string(), &lead_id);
    let payload = bytes::Bytes::from(event.encode_to_vec());
    // The same event under two message ids (past the bus's de-duplication), and a second
    // qualification of the same lead later.
    let second_qualification = qualified_event("acme", &uuid::Uuid::now_v7().to_string(), &lead_id);
    let messages = [
        OutgoingMessage {
            event_type: "leads.qualified".into(),
            message_id: "copy-1".into(),
            payload: payload.clone(),
            headers: vec![],
        },
        OutgoingMessage {
            event_type: "leads.qualified".into(),
            message_id: "copy-2".into(),
            payload,
            headers: vec![],
        },
        OutgoingMessage {
            event_type: "leads.qualified".into(),
            message_id: "again".into(),
            payload: bytes::Bytes::from(second_qualification.encode_to_vec()),
            headers: vec![],
        },
    ];
    for result in bus.publish(&messages).await {
        result.expect("publish");
    }
    let events = app.wait_for_deal_events(1).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.count("processed_events").await == 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count("deals").await, 1);
    assert_eq!(app.deal_events().await.len(), 1);
    let Some(Payload::DealCreated(created)) = &events[0].1.payload else {
        panic!("not deals.created")
    };
    let deal = created.deal.as_ref().expect("deal");
    assert_eq!(deal.lead_id, lead_id);
    assert_eq!(
        (
            deal.name.as_str(),
            deal.owner_id.as_str(),
            deal.stage.as_str()
        ),
        ("Analytical Engines", "rep-7", "Prospecting")
    );
    assert_eq!(deal.amount, euros(0));
}

async fn another_tenants_deal_is_not_found(backend: Backend) {
    let app = App::spawn(backend).await;
    let mut client = app.client().await;
    let mine = app.create("acme", "Mine", 10).await;
    let get = client
        .get_deal(app.env.request(
            "globex",
            GetDealRequest {
                id: mine.id.clone(),
            },
        ))
        .await
        .expect_err("get");
    assert_eq!(get.code(), Code::NotFound);
    let win = client
        .win_deal(app.env.request(
            "globex",
            WinDealRequest {
                id: mine.id.clone(),
                etag: String::new(),
            },
        ))
        .await
        .expect_err("win");
    assert_eq!(win.code(), Code::NotFound);
    let list = client
        .list_deals(app.env.request("globex", ListDealsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(list.deals.is_empty());
}

async fn watchers_see_their_tenants_deal_changes_as_they_happen(backend: Backend) {
    let app = App::spawn(backend).await;
    let mut watcher = app.client().await;
    let mut changes = watcher
        .watch_deals(app.env.request("acme", WatchDealsRequest::default()))
        .await
        .expect("watch")
        .into_inner();
    // The watch feed subscribes at start; give it a moment on a cold bus.
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.create("globex", "Not yours", 1).await;
    let created = app.create("acme", "Yours", 1).await;
    let first = tokio::time::timeout(Duration::from_secs(10), changes.message())
        .await
        .expect("in time")
        .expect("stream")
        .expect("change");
    assert_eq!(first.event_type, "deals.created");
    assert_eq!(
        first.deal.as_ref().map(|deal| deal.id.as_str()),
        Some(created.id.as_str())
    );
    app.client()
        .await
        .progress_deal(app.env.request(
            "acme",
            ProgressDealRequest {
                id: created.id.clone(),
                stage: "Negotiation".into(),
                etag: String::new(),
            },
        ))
        .await
        .expect("progress");
    let second = tokio::time::timeout(Duration::from_secs(10), changes.message())
        .await
        .expect("in time")
        .expect("stream")
        .expect("change");
    assert_eq!(second.event_type, "deals.progressed");
    assert_eq!(second.deal.expect("deal").stage, "Negotiation");
}

async fn pipelines_are_managed_and_protect_their_deals(backend: Backend) {
    let app = App::spawn(backend).await;
    let mut client = app.client().await;
    let custom = client
        .create_pipeline(app.env.request(
            "acme",
            CreatePipelineRequest {
                pipeline: Some(Pipeline {
                    name: "Renewals".into(),
                    stages: vec![
                        Stage {
                            name: "Notice".into(),
                            probability: 40,
                            kind: StageKind::Open as i32,
                        },
                        Stage {
                            name: "Offer".into(),
                            probability: 70,
                            kind: StageKind::Open as i32,
                        },
                        Stage {
                            name: "Renewed".into(),
                            probability: 100,
                            kind: StageKind::Won as i32,
                        },
                        Stage {
                            name: "Churned".into(),
                            probability: 0,
                            kind: StageKind::Lost as i32,
                        },
                    ],
                    rotting_days: 7,
                    ..Pipeline::default()
                }),
            },
        ))
        .await
        .expect("create pipeline")
        .into_inner();
    let renewal = client
        .create_deal(app.env.request(
            "acme",
            CreateDealRequest {
                deal: Some(Deal {
                    pipeline_id: custom.id.clone(),
                    stage: "Offer".into(),
                    ..deal("Renewal", 900)
                }),
                request_id: String::new(),
            },
        ))
        .await
        .expect("deal in custom pipeline")
        .into_inner();
    assert_eq!((renewal.stage.as_str(), renewal.probability), ("Offer", 70));

    let mut without_offer = custom.stages.clone();
    without_offer.remove(1);
    let removal = client
        .update_pipeline(app.env.request(
            "acme",
            UpdatePipelineRequest {
                pipeline: Some(Pipeline {
                    id: custom.id.clone(),
                    stages: without_offer,
                    ..Pipeline::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["stages".into()],
                }),
            },
        ))
        .await
        .expect_err("stage in use");
    assert_eq!(removal.code(), Code::FailedPrecondition);
    let renamed = client
        .update_pipeline(app.env.request(
            "acme",
            UpdatePipelineRequest {
                pipeline: Some(Pipeline {
                    id: custom.id.clone(),
                    name: "Renewals 2027".into(),
                    ..Pipeline::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .expect("rename")
        .into_inner();
    assert_eq!(renamed.name, "Renewals 2027");
    let in_use = client
        .delete_pipeline(app.env.request(
            "acme",
            DeletePipelineRequest {
                id: custom.id.clone(),
            },
        ))
        .await
        .expect_err("in use");
    assert_eq!(in_use.code(), Code::FailedPrecondition);
    let default_id = client
        .list_pipelines(app.env.request("acme", ListPipelinesRequest {}))
        .await
        .expect("list")
        .into_inner()
        .pipelines[0]
        .id
        .clone();
    let default = client
        .delete_pipeline(
            app.env
                .request("acme", DeletePipelineRequest { id: default_id }),
        )
        .await
        .expect_err("default");
    assert_eq!(default.code(), Code::FailedPrecondition);
    let empty = client
        .create_pipeline(app.env.request(
            "acme",
            CreatePipelineRequest {
                pipeline: Some(Pipeline {
                    name: "Empty".into(),
                    stages: custom.stages.clone(),
                    ..Pipeline::default()
                }),
            },
        ))
        .await
        .expect("create")
        .into_inner();
    client
        .delete_pipeline(
            app.env
                .request("acme", DeletePipelineRequest { id: empty.id }),
        )
        .await
        .expect("delete empty");
}

async fn list_and_update_deals_with_filters_masks_and_etags(backend: Backend) {
    let app = App::spawn(backend).await;
    let mut client = app.client().await;
    for index in 0..12 {
        app.create("acme", &format!("Deal {index:02}"), 1_000 * (index + 1))
            .await;
    }
    let big = client
        .list_deals(app.env.request(
            "acme",
            ListDealsRequest {
                filter: "amount_minor >= 6000 AND status = OPEN".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("filter")
        .into_inner();
    assert_eq!(big.total_size, 7);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_deals(app.env.request(
                "acme",
                ListDealsRequest {
                    page_size: 5,
                    page_token: token,
                    order_by: "amount_minor desc".into(),
                    ..Default::default()
                },
            ))
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.deals.iter().map(|deal| {
            deal.amount
                .as_ref()
                .map(|money| money.amount_minor)
                .unwrap_or(0)
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, (1..=12).rev().map(|n| n * 1_000).collect::<Vec<_>>());

    let target = app.create("acme", "Editable", 100).await;
    let updated = client
        .update_deal(app.env.request(
            "acme",
            UpdateDealRequest {
                deal: Some(Deal {
                    id: target.id.clone(),
                    probability: 90,
                    name: "ignored".into(),
                    etag: target.etag.clone(),
                    ..Deal::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["probability".into()],
                }),
            },
        ))
        .await
        .expect("override probability")
        .into_inner();
    assert_eq!(
        (
            updated.probability,
            updated.probability_overridden,
            updated.name.as_str()
        ),
        (90, true, "Editable")
    );
    let moved = client
        .progress_deal(app.env.request(
            "acme",
            ProgressDealRequest {
                id: target.id.clone(),
                stage: "Proposal".into(),
                etag: String::new(),
            },
        ))
        .await
        .expect("move")
        .into_inner();
    assert_eq!(moved.probability, 90, "an override survives stage moves");
    let stale = client
        .update_deal(app.env.request(
            "acme",
            UpdateDealRequest {
                deal: Some(Deal {
                    id: target.id.clone(),
                    name: "Late".into(),
                    etag: target.etag.clone(),
                    ..Deal::default()
                }),
                update_mask: None,
            },
        ))
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::Aborted);
    let bad_path = client
        .update_deal(app.env.request(
            "acme",
            UpdateDealRequest {
                deal: Some(Deal {
                    id: target.id.clone(),
                    ..Deal::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["stage".into()],
                }),
            },
        ))
        .await
        .expect_err("stage through update");
    assert_eq!(violated_fields(&bad_path), ["update_mask"]);
}

aida_core::backend_pair_suite!(on_postgres_and_jetstream, on_sqlite_and_in_process_bus:
    a_tenant_starts_with_the_default_pipeline,
    deals_move_through_stages_close_and_publish_their_events,
    closed_deals_cannot_move_and_illegal_moves_change_nothing,
    bad_input_is_invalid_argument_naming_the_field_and_writes_nothing,
    a_qualified_lead_becomes_one_deal_even_when_the_event_comes_twice,
    another_tenants_deal_is_not_found,
    watchers_see_their_tenants_deal_changes_as_they_happen,
    pipelines_are_managed_and_protect_their_deals,
    list_and_update_deals_with_filters_masks_and_etags
);
