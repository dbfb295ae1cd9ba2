//! AnalyticsService's behaviour, with events put on the bus directly: exact counts under
//! redelivery, dead letters for poison, alerts once per breach, snapshots, bad input.
//! On PostgreSQL + JetStream and on SQLite + the in-process bus, with a real DuckDB file.

use std::time::Duration;

use aida_core::bus::{DEAD_LETTER_STREAM, OutgoingMessage};
use aida_core::testing::{Backend, RunningServer, TestEnv, eventually};
use aida_proto::aida::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use aida_proto::aida::analytics::v1::{
    AlertKind, AlertRule, CreateAlertRuleRequest, DeleteAlertRuleRequest, GetFunnelRequest,
    GetWinRateRequest, GroupBy, ListAlertsRequest,
};
use aida_proto::aida::common::v1::Money;
use aida_proto::aida::deals::v1::Deal;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::events::v1::{DealCreated, DealLost, DealWon, EventEnvelope, LeadCaptured};
use aida_proto::aida::leads::v1::{Lead, LeadSource};
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

struct App {
    env: TestEnv,
    server: RunningServer,
}

impl App {
    async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Like [`App::spawn`], with the settings `configure` changes.
    async fn spawn_with(
        backend: Backend,
        configure: impl FnOnce(&mut aida_core::Settings),
    ) -> Self {
        let mut env = TestEnv::new(backend).await;
        env.settings.analytics.snapshot_interval_secs = 1;
        configure(&mut env.settings);
        env.bus.shared().ensure_streams().await.expect("streams");
        let context = env
            .context(aida_analytics::SERVICE, aida_analytics::migrations())
            .await;
        let server = RunningServer::start(|listener, shutdown| {
            aida_analytics::serve(context, listener, shutdown)
        })
        .await;
        Self { env, server }
    }

    async fn client(&self) -> AnalyticsServiceClient<Channel> {
        AnalyticsServiceClient::new(self.server.channel().await)
    }

    /// Another analytics instance on the same bus and database, with its own DuckDB file
    /// and the settings `configure` gives it.
    async fn replica(&self, configure: impl FnOnce(&mut aida_core::Settings)) -> RunningServer {
        let mut settings = self.env.settings.clone();
        configure(&mut settings);
        let context = aida_core::runtime::ServiceContext::start(
            &settings,
            aida_analytics::SERVICE,
            self.env.bus.shared(),
            aida_analytics::migrations(),
        )
        .await
        .expect("start the replica");
        RunningServer::start(|listener, shutdown| {
            aida_analytics::serve(context, listener, shutdown)
        })
        .await
    }

    async fn publish(&self, events: &[(String, EventEnvelope)]) {
        let messages: Vec<OutgoingMessage> = events
            .iter()
            .map(|(message_id, event)| OutgoingMessage {
                event_type: event.event_type.clone(),
                message_id: message_id.clone(),
                payload: bytes::Bytes::from(event.encode_to_vec()),
                headers: vec![],
            })
            .collect();
        for result in self.env.bus.shared().publish(&messages).await {
            result.expect("publish");
        }
    }

    async fn funnel(&self, tenant: &str) -> aida_proto::aida::analytics::v1::FunnelGroup {
        self.client()
            .await
            .get_funnel(self.env.request(tenant, GetFunnelRequest::default()))
            .await
            .expect("funnel")
            .into_inner()
            .total
            .expect("total")
    }
}

fn now() -> prost_types::Timestamp {
    aida_core::events::timestamp(chrono::Utc::now())
}

fn captured(tenant: &str, lead_id: &str, source: LeadSource) -> EventEnvelope {
    EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: "leads.captured".into(),
        tenant_id: tenant.into(),
        occurred_at: Some(now()),
        payload: Some(Payload::LeadCaptured(LeadCaptured {
            lead: Some(Lead {
                id: lead_id.into(),
                email: "secret@example.com".into(),
                source: source as i32,
                ..Lead::default()
            }),
        })),
        ..EventEnvelope::default()
    }
}

fn deal_event(tenant: &str, deal_id: &str, kind: &str) -> EventEnvelope {
    let deal = Some(Deal {
        id: deal_id.into(),
        pipeline_id: "p1".into(),
        stage: match kind {
            "deals.won" => "Closed Won",
            "deals.lost" => "Closed Lost",
            _ => "Prospecting",
        }
        .into(),
        amount: Some(Money {
            currency_code: "EUR".into(),
            amount_minor: 1000,
        }),
        ..Deal::default()
    });
    let payload = match kind {
        "deals.created" => Payload::DealCreated(DealCreated { deal }),
        "deals.won" => Payload::DealWon(DealWon {
            deal,
            from_stage: "Prospecting".into(),
        }),
        _ => Payload::DealLost(DealLost {
            deal,
            from_stage: "Prospecting".into(),
            reason: "price".into(),
        }),
    };
    EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: kind.into(),
        tenant_id: tenant.into(),
        occurred_at: Some(now()),
        payload: Some(payload),
        ..EventEnvelope::default()
    }
}

async fn a_redelivered_event_is_counted_once(backend: Backend) {
    let app = App::spawn(backend).await;
    let event = captured("acme", "lead-1", LeadSource::WebForm);
    let other = captured("acme", "lead-2", LeadSource::Referral);
    app.publish(&[
        ("copy-a".into(), event.clone()),
        ("copy-b".into(), event.clone()),
        ("other".into(), other),
    ])
    .await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.funnel("acme").await.captured == 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let funnel = app.funnel("acme").await;
    assert_eq!(funnel.captured, 2, "the copy did not count");
    let by_source = app
        .client()
        .await
        .get_funnel(app.env.request(
            "acme",
            GetFunnelRequest {
                group_by: GroupBy::Source as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("grouped")
        .into_inner();
    let keys: Vec<(&str, i64)> = by_source
        .groups
        .iter()
        .map(|group| (group.key.as_str(), group.captured))
        .collect();
    assert_eq!(keys, [("REFERRAL", 1), ("WEB_FORM", 1)]);
    assert_eq!(app.funnel("globex").await.captured, 0, "tenants are apart");
}

async fn a_poison_message_is_dead_lettered_and_ingestion_goes_on(backend: Backend) {
    let app = App::spawn(backend).await;
    let no_payload = EventEnvelope {
        event_id: "broken".into(),
        event_type: "leads.captured".into(),
        tenant_id: "acme".into(),
        occurred_at: Some(now()),
        ..EventEnvelope::default()
    };
    let garbage = OutgoingMessage {
        event_type: "leads.captured".into(),
        message_id: "garbage".into(),
        payload: bytes::Bytes::from_static(b"\x08\x96\x01 definitely not an envelope \xff"),
        headers: vec![],
    };
    for result in app.env.bus.shared().publish(&[garbage]).await {
        result.expect("publish");
    }
    app.publish(&[
        ("no-payload".into(), no_payload),
        ("good".into(), captured("acme", "lead-1", LeadSource::Event)),
    ])
    .await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.funnel("acme").await.captured == 1
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.env.bus.stored(DEAD_LETTER_STREAM).await.len() == 2
        })
        .await,
        "both poison messages dead-lettered"
    );
    let dead = app.env.bus.stored(DEAD_LETTER_STREAM).await;
    assert!(
        dead.iter()
            .all(|message| message.event_type == "dlq.analytics-leads")
    );
}

async fn an_alert_is_raised_once_per_breach_and_resolved(backend: Backend) {
    let app = App::spawn(backend).await;
    let mut client = app.client().await;
    client
        .create_alert_rule(app.env.request(
            "acme",
            CreateAlertRuleRequest {
                alert_rule: Some(AlertRule {
                    kind: AlertKind::WinRateBelow as i32,
                    threshold: 0.5,
                    window_days: 30,
                    ..AlertRule::default()
                }),
            },
        ))
        .await
        .expect("rule");
    let mut events = Vec::new();
    for (index, outcome) in ["deals.won", "deals.lost", "deals.lost", "deals.lost"]
        .into_iter()
        .enumerate()
    {
        let deal = format!("deal-{index}");
        events.push((
            format!("c{index}"),
            deal_event("acme", &deal, "deals.created"),
        ));
        events.push((format!("o{index}"), deal_event("acme", &deal, outcome)));
    }
    app.publish(&events).await;
    let alerts = || async {
        app.client()
            .await
            .list_alerts(app.env.request("acme", ListAlertsRequest::default()))
            .await
            .expect("alerts")
            .into_inner()
            .alerts
    };
    assert!(
        eventually(Duration::from_secs(15), || async {
            alerts().await.len() == 1
        })
        .await,
        "raised"
    );
    // Several evaluation rounds later, still one alert for the one breach.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let raised = alerts().await;
    assert_eq!(raised.len(), 1);
    assert!((raised[0].value - 0.25).abs() < 1e-9);
    assert!(raised[0].resolve_time.is_none());

    let mut wins = Vec::new();
    for index in 10..13 {
        let deal = format!("deal-{index}");
        wins.push((
            format!("c{index}"),
            deal_event("acme", &deal, "deals.created"),
        ));
        wins.push((format!("w{index}"), deal_event("acme", &deal, "deals.won")));
    }
    app.publish(&wins).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            alerts()
                .await
                .first()
                .is_some_and(|alert| alert.resolve_time.is_some())
        })
        .await,
        "resolved when the win rate recovered (4 of 7)"
    );
    // The resolution's event follows its commit through the relay.
    let alerted = || async {
        app.env
            .bus
            .stored("CRM_ANALYTICS")
            .await
            .iter()
            .filter(|message| message.event_type == "analytics.alerted")
            .count()
    };
    assert!(eventually(Duration::from_secs(10), || async { alerted().await == 2 }).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(alerted().await, 2, "raised once, resolved once");
    let published = app.env.bus.stored("CRM_ANALYTICS").await;
    assert!(
        published
            .iter()
            .any(|message| message.event_type == "analytics.computed"),
        "snapshots published"
    );
    let win_rate = client
        .get_win_rate(app.env.request("acme", GetWinRateRequest::default()))
        .await
        .expect("win rate")
        .into_inner()
        .total
        .expect("total");
    assert_eq!((win_rate.won, win_rate.lost), (4, 3));
}

async fn bad_input_is_invalid_argument_naming_the_field(backend: Backend) {
    let app = App::spawn(backend).await;
    let mut client = app.client().await;
    let violated = aida_core::testing::violated_fields;
    let unknown_group = client
        .get_funnel(app.env.request(
            "acme",
            GetFunnelRequest {
                group_by: 99,
                ..Default::default()
            },
        ))
        .await
        .expect_err("group");
    assert_eq!(violated(&unknown_group), ["group_by"]);
    let backwards = client
        .get_funnel(app.env.request(
            "acme",
            GetFunnelRequest {
                start_time: Some(prost_types::Timestamp {
                    seconds: 2_000_000_000,
                    nanos: 0,
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: 1_000_000_000,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ))
        .await
        .expect_err("range");
    assert_eq!(violated(&backwards), ["end_time"]);
    for (rule, field) in [
        (AlertRule::default(), "alert_rule.kind"),
        (
            AlertRule {
                kind: AlertKind::WinRateBelow as i32,
                threshold: 2.0,
                window_days: 30,
                ..AlertRule::default()
            },
            "alert_rule.threshold",
        ),
        (
            AlertRule {
                kind: AlertKind::NoNewLeads as i32,
                window_hours: 0,
                ..AlertRule::default()
            },
            "alert_rule.window_hours",
        ),
    ] {
        let status = client
            .create_alert_rule(app.env.request(
                "acme",
                CreateAlertRuleRequest {
                    alert_rule: Some(rule),
                },
            ))
            .await
            .expect_err(field);
        assert_eq!(violated(&status), [field]);
    }
    let missing = client
        .delete_alert_rule(app.env.request(
            "acme",
            DeleteAlertRuleRequest {
                id: uuid::Uuid::now_v7().to_string(),
            },
        ))
        .await
        .expect_err("missing rule");
    assert_eq!(missing.code(), Code::NotFound);
    let unauthenticated = client
        .get_funnel(tonic::Request::new(GetFunnelRequest::default()))
        .await
        .expect_err("no token");
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
}

async fn funnel_of(server: &RunningServer, env: &TestEnv, tenant: &str) -> i64 {
    AnalyticsServiceClient::new(server.channel().await)
        .get_funnel(env.request(tenant, GetFunnelRequest::default()))
        .await
        .expect("funnel")
        .into_inner()
        .total
        .map_or(0, |total| total.captured)
}

async fn every_analytics_replica_reads_every_event_into_its_own_duckdb(backend: Backend) {
    let app = App::spawn(backend).await;
    let dir = tempfile::tempdir().expect("replica dir");
    let path = dir.path().join("replica.duckdb");
    let replica = app
        .replica(|settings| {
            settings.analytics.instance = Some("r2".into());
            settings.analytics.duckdb_path = Some(path.clone());
            settings.analytics.monitor = false;
        })
        .await;
    let events: Vec<(String, EventEnvelope)> = (0..20)
        .map(|index| {
            (
                format!("replicated-{index}"),
                captured("acme", &format!("lead-{index}"), LeadSource::WebForm),
            )
        })
        .collect();
    app.publish(&events).await;
    for (name, server) in [("primary", &app.server), ("replica", &replica)] {
        assert!(
            eventually(Duration::from_secs(15), || async {
                funnel_of(server, &app.env, "acme").await == 20
            })
            .await,
            "the {name} counted {} of 20",
            funnel_of(server, &app.env, "acme").await
        );
    }
    assert!(path.exists(), "the replica writes its own DuckDB file");
}

async fn an_instance_that_does_not_monitor_publishes_no_snapshots(backend: Backend) {
    let app = App::spawn_with(backend, |settings| settings.analytics.monitor = false).await;
    app.publish(&[("one".into(), captured("acme", "lead-1", LeadSource::Event))])
        .await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.funnel("acme").await.captured == 1
        })
        .await
    );
    // Three snapshot intervals: a monitoring instance publishes one within the first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let published = app.env.bus.stored("CRM_ANALYTICS").await;
    assert!(
        published
            .iter()
            .all(|message| message.event_type != "analytics.computed"),
        "{} messages, a snapshot among them",
        published.len()
    );
}

/// An `audit.recorded` event as a service of the mesh writes it.
fn audit_event(tenant: &str, action: &str) -> EventEnvelope {
    use aida_proto::aida::audit::v1::{AuditActor, AuditRecord};
    use aida_proto::aida::events::v1::AuditRecorded;
    let id = uuid::Uuid::now_v7().to_string();
    EventEnvelope {
        event_id: id.clone(),
        event_type: "audit.recorded".into(),
        tenant_id: tenant.into(),
        occurred_at: Some(now()),
        payload: Some(Payload::AuditRecorded(AuditRecorded {
            record: Some(AuditRecord {
                id,
                occur_time: Some(now()),
                tenant_id: tenant.into(),
                actor: Some(AuditActor {
                    subject: "rep-7".into(),
                    roles: vec!["sales_rep".into()],
                    client_identity: "spiffe://aida/edge".into(),
                }),
                action: action.into(),
                resource: format!("leads/{}", uuid::Uuid::now_v7()),
                outcome: "OK".into(),
                request_id: "req-1".into(),
                recorded_by: "leads".into(),
                ..AuditRecord::default()
            }),
        })),
        ..EventEnvelope::default()
    }
}

/// Runs `statements` in one transaction past the append-only triggers, as someone with
/// the database's owner account could.
async fn tamper(db: &aida_core::db::Database, statements: &[String]) {
    let mut tx = db.begin().await.expect("begin");
    let bypass: &[&str] = match tx.engine() {
        aida_core::db::Engine::Postgres => &["SET LOCAL session_replication_role = replica"],
        aida_core::db::Engine::Sqlite => &[
            "DROP TRIGGER IF EXISTS audit_records_no_update",
            "DROP TRIGGER IF EXISTS audit_records_no_delete",
        ],
    };
    for statement in bypass
        .iter()
        .map(|s| (*s).to_owned())
        .chain(statements.iter().cloned())
    {
        tx.execute(aida_core::db::Sql::new(statement.clone()))
            .await
            .unwrap_or_else(|error| panic!("{statement}: {error}"));
    }
    tx.commit().await.expect("commit");
}

async fn the_audit_chain_names_the_first_altered_missing_reordered_or_cut_record(backend: Backend) {
    use aida_analytics::audit::verify;
    let app = App::spawn(backend).await;
    let tenants = ["intact", "altered", "deleted", "reordered", "cut"];
    let mut events = Vec::new();
    for tenant in tenants {
        for n in 0..5 {
            let event = audit_event(tenant, &format!("aida.leads.v1.LeadService/Call{n}"));
            events.push((format!("{}-copy", event.event_id), event.clone()));
            events.push((event.event_id.clone(), event));
        }
    }
    app.publish(&events).await;
    let db = aida_core::db::Database::connect(
        &app.env.settings.database_url_for(aida_analytics::SERVICE),
    )
    .await
    .expect("analytics database");
    let chained = eventually(Duration::from_secs(20), || async {
        let reports = verify(&db, None).await.expect("verify");
        reports.len() == tenants.len()
            && reports
                .iter()
                .all(|report| report.records == 5 && report.broken.is_none())
    })
    .await;
    assert!(chained, "{:?}", verify(&db, None).await);

    // The service's own account may not change or remove a record.
    for statement in [
        "UPDATE audit_records SET action = 'x' WHERE tenant_id = 'intact'",
        "DELETE FROM audit_records WHERE tenant_id = 'intact'",
    ] {
        let refused = db.execute(aida_core::db::Sql::new(statement)).await;
        let error = refused.expect_err(statement).to_string();
        assert!(error.contains("append-only"), "{statement}: {error}");
    }
    if db.engine() == aida_core::db::Engine::Postgres {
        let error = db
            .execute(aida_core::db::Sql::new("TRUNCATE audit_records"))
            .await
            .expect_err("truncate");
        assert!(error.to_string().contains("append-only"), "{error}");
    }

    // Behind the triggers' back: one record changed, one deleted, two swapped, the tail cut.
    tamper(
        &db,
        &[
            "UPDATE audit_records SET outcome = 'PERMISSION_DENIED' WHERE tenant_id = 'altered' AND seq = 3".into(),
            "DELETE FROM audit_records WHERE tenant_id = 'deleted' AND seq = 2".into(),
            "UPDATE audit_records SET seq = -seq WHERE tenant_id = 'reordered' AND seq IN (2, 3)".into(),
            "UPDATE audit_records SET seq = 5 + seq WHERE tenant_id = 'reordered' AND seq < 0".into(),
            "DELETE FROM audit_records WHERE tenant_id = 'cut' AND seq = 5".into(),
        ],
    )
    .await;
    let reports = verify(&db, None).await.expect("verify");
    let broken = |tenant: &str| {
        reports
            .iter()
            .find(|report| report.tenant_id == tenant)
            .and_then(|report| report.broken.clone())
            .map(|found| (found.sequence, found.reason))
    };
    assert_eq!(broken("intact"), None);
    let expect = [
        ("altered", 3, "altered"),
        ("deleted", 2, "missing"),
        ("reordered", 2, "previous hash"),
        ("cut", 5, "cut"),
    ];
    for (tenant, sequence, reason) in expect {
        let found = broken(tenant);
        assert!(
            found
                .as_ref()
                .is_some_and(|(at, why)| *at == sequence && why.contains(reason)),
            "{tenant}: {found:?}"
        );
    }
    let only = verify(&db, Some("altered")).await.expect("one tenant");
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].broken.as_ref().map(|found| found.sequence), Some(3));
}

async fn audit_records_are_listed_newest_first_in_pages_for_admins_only(backend: Backend) {
    use aida_proto::aida::audit::v1::ListAuditRecordsRequest;
    use aida_proto::aida::audit::v1::audit_service_client::AuditServiceClient;
    let app = App::spawn(backend).await;
    let events: Vec<(String, EventEnvelope)> = (0..5)
        .map(|n| audit_event("acme", &format!("aida.leads.v1.LeadService/Call{n}")))
        .chain([audit_event("globex", "aida.leads.v1.LeadService/Call9")])
        .map(|event| (event.event_id.clone(), event))
        .collect();
    app.publish(&events).await;
    let mut client = AuditServiceClient::new(app.server.channel().await);
    let list = |page_size: i32, page_token: String, filter: &str| ListAuditRecordsRequest {
        page_size,
        page_token,
        filter: filter.into(),
    };
    let arrived = eventually(Duration::from_secs(20), || {
        let mut client = client.clone();
        let request = app.env.request("acme", list(0, String::new(), ""));
        async move {
            client
                .list_audit_records(request)
                .await
                .is_ok_and(|response| response.into_inner().audit_records.len() == 5)
        }
    })
    .await;
    assert!(arrived, "five records chained");

    let mut sequences = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_audit_records(app.env.request("acme", list(2, token, "")))
            .await
            .expect("page")
            .into_inner();
        assert!(page.audit_records.len() <= 2);
        sequences.extend(page.audit_records.iter().map(|record| record.sequence));
        assert!(
            page.audit_records
                .iter()
                .all(|record| record.tenant_id == "acme")
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(sequences, [5, 4, 3, 2, 1]);

    let filtered = client
        .list_audit_records(app.env.request(
            "acme",
            list(0, String::new(), "sequence <= 2 AND actor = \"rep-7\""),
        ))
        .await
        .expect("filtered")
        .into_inner();
    let first = filtered.audit_records.last().cloned().unwrap_or_default();
    assert_eq!(filtered.audit_records.len(), 2);
    assert_eq!(
        first.previous_hash,
        vec![0; 32],
        "the first record starts the chain"
    );
    assert_eq!(first.hash.len(), 32);
    assert_eq!(
        first.actor.map(|actor| actor.client_identity).as_deref(),
        Some("spiffe://aida/edge")
    );

    let bad = client
        .list_audit_records(
            app.env
                .request("acme", list(0, String::new(), "colour = red")),
        )
        .await
        .expect_err("unknown field");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let manager = client
        .list_audit_records(app.env.request_as(
            "acme",
            "m-1",
            &["manager"],
            list(0, String::new(), ""),
        ))
        .await
        .expect_err("managers do not read the audit log");
    assert_eq!(manager.code(), Code::PermissionDenied);
}

aida_core::backend_pair_suite!(on_postgres_and_jetstream, on_sqlite_and_in_process_bus:
    the_audit_chain_names_the_first_altered_missing_reordered_or_cut_record,
    audit_records_are_listed_newest_first_in_pages_for_admins_only,
    every_analytics_replica_reads_every_event_into_its_own_duckdb,
    an_instance_that_does_not_monitor_publishes_no_snapshots,
    a_redelivered_event_is_counted_once,
    a_poison_message_is_dead_lettered_and_ingestion_goes_on,
    an_alert_is_raised_once_per_breach_and_resolved,
    bad_input_is_invalid_argument_naming_the_field
);
