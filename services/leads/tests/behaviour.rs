//! LeadService's behaviour, run twice: on PostgreSQL + NATS JetStream, and on SQLite +
//! the in-process bus. Real gRPC over loopback, a fresh database and bus namespace per test.

use crate::support;

use std::time::Duration;

use aida_core::auth::Claims;
use aida_proto::aida::events::v1::event_envelope::Payload;
use aida_proto::aida::leads::v1::{
    CaptureLeadRequest, DeleteLeadRequest, GetLeadRequest, Lead, LeadSource, LeadStatus,
    ListLeadsRequest, QualifyLeadRequest, RejectLeadRequest,
};
use support::{Backend, TestApp, capture, lead, violated_fields, with_token};
use tonic::Code;

async fn capture_publishes_exactly_one_leads_captured_event_with_the_lead(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let captured = capture(&app, "acme", lead("  Ada@Example.com ")).await;
    assert_eq!(captured.email, "ada@example.com");
    assert_eq!(captured.phone, "+442079460958");
    assert_eq!(captured.status, LeadStatus::New as i32);
    assert!(!captured.etag.is_empty());

    let events = app.wait_for_lead_events(1).await;
    // Give a duplicate time to show up: there must be none.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events_after = app.lead_events().await;
    assert_eq!(events_after.len(), 1, "exactly one event");
    let (subject, message_id, envelope) = &events[0];
    assert_eq!(subject, "leads.captured");
    assert_eq!(
        message_id, &envelope.event_id,
        "Nats-Msg-Id is the event id"
    );
    assert_eq!(envelope.tenant_id, "acme");
    assert_eq!(envelope.subject, format!("leads/{}", captured.id));
    assert_eq!(
        envelope.actor.as_ref().map(|actor| actor.subject.as_str()),
        Some("tester")
    );
    match &envelope.payload {
        Some(Payload::LeadCaptured(payload)) => {
            // The lead, its contact details sealed under its own key.
            let mut lead = payload.lead.clone().expect("the lead");
            assert!(lead.email.starts_with("aes1."), "{}", lead.email);
            app.keys.open_lead("acme", &mut lead).await.expect("open");
            assert_eq!(lead, captured);
        }
        other => panic!("unexpected payload {other:?}"),
    }
}

async fn capture_retried_with_the_same_request_id_returns_the_first_lead_and_one_event(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let request = || CaptureLeadRequest {
        lead: Some(lead("grace@example.com")),
        request_id: "retry-1".into(),
    };
    let first = app
        .client()
        .await
        .capture_lead(app.request("acme", request()))
        .await
        .expect("first")
        .into_inner();
    let second = app
        .client()
        .await
        .capture_lead(app.request("acme", request()))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(first, second);

    // Fifty concurrent attempts of one new request: one lead, one event, one answer.
    let concurrent = || CaptureLeadRequest {
        lead: Some(lead("linus@example.com")),
        request_id: "burst-1".into(),
    };
    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut client = app.client().await;
        let request = app.request("acme", concurrent());
        calls.push(tokio::spawn(
            async move { client.capture_lead(request).await },
        ));
    }
    let mut ids = std::collections::BTreeSet::new();
    for call in calls {
        let lead = call.await.expect("join").expect("capture").into_inner();
        ids.insert(lead.id);
    }
    assert_eq!(ids.len(), 1, "every concurrent retry got the same lead");
    assert_eq!(app.count("leads").await, 2);
    app.wait_for_lead_events(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.lead_events().await.len(), 2);

    // The same request id with different content is refused, naming the field.
    let reused = app
        .client()
        .await
        .capture_lead(app.request(
            "acme",
            CaptureLeadRequest {
                lead: Some(lead("other@example.com")),
                request_id: "retry-1".into(),
            },
        ))
        .await
        .expect_err("reused id");
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&reused), vec!["request_id"]);
}

async fn invalid_input_is_invalid_argument_naming_the_field_and_writes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut client = app.client().await;
    let cases: Vec<(&str, CaptureLeadRequest, &str)> = vec![
        (
            "bad e-mail",
            CaptureLeadRequest {
                lead: Some(lead("not-an-email")),
                request_id: String::new(),
            },
            "lead.email",
        ),
        ("empty request", CaptureLeadRequest::default(), "lead"),
        (
            "no e-mail and no phone",
            CaptureLeadRequest {
                lead: Some(Lead {
                    first_name: "Nobody".into(),
                    ..Lead::default()
                }),
                request_id: String::new(),
            },
            "lead.email",
        ),
        (
            "10 KB name",
            CaptureLeadRequest {
                lead: Some(Lead {
                    first_name: "x".repeat(10 * 1024),
                    ..lead("long@example.com")
                }),
                request_id: String::new(),
            },
            "lead.first_name",
        ),
        (
            "unknown enum value",
            CaptureLeadRequest {
                lead: Some(Lead {
                    source: 42,
                    ..lead("enum@example.com")
                }),
                request_id: String::new(),
            },
            "lead.source",
        ),
        (
            "bad phone",
            CaptureLeadRequest {
                lead: Some(Lead {
                    phone: "call me".into(),
                    ..lead("phone@example.com")
                }),
                request_id: String::new(),
            },
            "lead.phone",
        ),
    ];
    for (name, request, field) in cases {
        let status = client
            .capture_lead(app.request("acme", request))
            .await
            .expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}");
        assert!(
            violated_fields(&status).contains(&field.to_owned()),
            "{name}: {:?}",
            violated_fields(&status)
        );
    }

    for (name, request, field) in [
        (
            "bad filter",
            ListLeadsRequest {
                filter: "status = ALIVE".into(),
                ..Default::default()
            },
            "filter",
        ),
        (
            "unparsable filter",
            ListLeadsRequest {
                filter: "status = (".into(),
                ..Default::default()
            },
            "filter",
        ),
        (
            "forged page token",
            ListLeadsRequest {
                page_token: "eyJmIjoiIn0.AAAAAAAAAAAAAAAAAAAAAA".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            "negative page size",
            ListLeadsRequest {
                page_size: -5,
                ..Default::default()
            },
            "page_size",
        ),
        (
            "bad order",
            ListLeadsRequest {
                order_by: "password".into(),
                ..Default::default()
            },
            "order_by",
        ),
    ] {
        let status = client
            .list_leads(app.request("acme", request))
            .await
            .expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}");
        assert_eq!(violated_fields(&status), vec![field.to_owned()], "{name}");
    }

    let status = app.get("acme", "not-a-uuid").await.expect_err("bad id");
    assert_eq!(violated_fields(&status), vec!["id"]);

    assert_eq!(app.count("leads").await, 0, "no lead written");
    assert_eq!(
        app.count("outbox WHERE event_type <> 'audit.recorded'")
            .await,
        0,
        "no event written"
    );
    // Only the refusals' audit records: one per refused call.
    assert!(
        app.count("outbox WHERE event_type = 'audit.recorded'")
            .await
            > 0
    );
}

async fn another_tenants_lead_is_not_found_for_get_update_qualify_reject_and_delete(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let mine = capture(&app, "acme", lead("mine@example.com")).await;
    let mut client = app.client().await;
    let get = app.get("globex", &mine.id).await.expect_err("get");
    assert_eq!(get.code(), Code::NotFound);
    let update = app
        .update(
            "globex",
            Lead {
                id: mine.id.clone(),
                company: "Stolen".into(),
                ..Lead::default()
            },
            &[],
        )
        .await
        .expect_err("update");
    assert_eq!(update.code(), Code::NotFound);
    let qualify = app.qualify("globex", &mine.id).await.expect_err("qualify");
    assert_eq!(qualify.code(), Code::NotFound);
    let reject = app
        .reject("globex", &mine.id, "x")
        .await
        .expect_err("reject");
    assert_eq!(reject.code(), Code::NotFound);
    let delete = app.delete("globex", &mine.id).await.expect_err("delete");
    assert_eq!(delete.code(), Code::NotFound);
    let list = client
        .list_leads(app.request("globex", ListLeadsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(list.leads.is_empty());

    let unchanged = app.get("acme", &mine.id).await.expect("get");
    // The score is computed asynchronously and is not part of the lead's state.
    let unchanged = Lead {
        score: None,
        ..unchanged
    };
    assert_eq!(unchanged, mine);
}

async fn missing_expired_and_wrong_audience_tokens_are_unauthenticated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut client = app.client().await;
    let now = aida_core::auth::unix_now();
    let claims = Claims {
        sub: "tester".into(),
        tenant_id: "acme".into(),
        roles: vec!["admin".into()],
        iss: app.env.settings.auth.issuer.clone(),
        aud: app.env.settings.auth.audience.clone(),
        exp: now + 600,
        iat: None,
        nbf: None,
    };
    let expired = app
        .env
        .issuer
        .sign(&Claims {
            exp: now - 3600,
            ..claims.clone()
        })
        .expect("sign");
    let wrong_audience = app
        .env
        .issuer
        .sign(&Claims {
            aud: "someone-else".into(),
            ..claims.clone()
        })
        .expect("sign");
    let wrong_issuer = app
        .env
        .issuer
        .sign(&Claims {
            iss: "evil".into(),
            ..claims.clone()
        })
        .expect("sign");

    let missing = client
        .get_lead(tonic::Request::new(GetLeadRequest::default()))
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::Unauthenticated);
    for (name, token) in [
        ("expired", expired),
        ("wrong audience", wrong_audience),
        ("wrong issuer", wrong_issuer),
        ("garbage", "abc.def.ghi".into()),
    ] {
        let status = client
            .capture_lead(with_token(
                &token,
                CaptureLeadRequest {
                    lead: Some(lead("x@example.com")),
                    request_id: String::new(),
                },
            ))
            .await
            .expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}");
    }
    assert_eq!(app.count("leads").await, 0);
}

async fn a_duplicate_email_is_already_exists_naming_the_existing_lead(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = capture(&app, "acme", lead("dup@example.com")).await;
    let status = app
        .client()
        .await
        .capture_lead(app.request(
            "acme",
            CaptureLeadRequest {
                lead: Some(lead("DUP@example.com")),
                request_id: String::new(),
            },
        ))
        .await
        .expect_err("duplicate");
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains(&first.id), "{}", status.message());
    use tonic_types::StatusExt;
    let info = status.get_details_error_info().expect("error info");
    assert_eq!(info.metadata.get("existing_id"), Some(&first.id));
    // Another tenant may hold the same e-mail.
    capture(&app, "globex", lead("dup@example.com")).await;
}

async fn qualify_and_reject_follow_the_life_cycle_and_emit_events(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut client = app.client().await;
    let captured = capture(&app, "acme", lead("cycle@example.com")).await;

    let no_reason = app
        .reject("acme", &captured.id, "  ")
        .await
        .expect_err("reason required");
    assert_eq!(violated_fields(&no_reason), vec!["reason"]);

    let rejected = client
        .reject_lead(app.request(
            "acme",
            RejectLeadRequest {
                id: captured.id.clone(),
                reason: "no budget".into(),
                etag: captured.etag.clone(),
            },
        ))
        .await
        .expect("reject")
        .into_inner();
    assert_eq!(rejected.status, LeadStatus::Rejected as i32);
    assert_eq!(rejected.rejection_reason, "no budget");

    let illegal = app
        .qualify("acme", &captured.id)
        .await
        .expect_err("rejected cannot be qualified");
    assert_eq!(illegal.code(), Code::FailedPrecondition);

    let reopened = app
        .update(
            "acme",
            Lead {
                id: captured.id.clone(),
                status: LeadStatus::New as i32,
                ..Lead::default()
            },
            &["status"],
        )
        .await
        .expect("reopen");
    assert_eq!(reopened.status, LeadStatus::New as i32);
    assert_eq!(reopened.rejection_reason, "");

    let qualified = client
        .qualify_lead(app.request(
            "acme",
            QualifyLeadRequest {
                id: captured.id.clone(),
                etag: reopened.etag.clone(),
                note: "budget found".into(),
            },
        ))
        .await
        .expect("qualify")
        .into_inner();
    assert_eq!(qualified.status, LeadStatus::Qualified as i32);

    let events = app.wait_for_lead_events(4).await;
    let types: Vec<&str> = events
        .iter()
        .map(|(subject, _, _)| subject.as_str())
        .collect();
    assert_eq!(
        types,
        vec![
            "leads.captured",
            "leads.rejected",
            "leads.updated",
            "leads.qualified"
        ]
    );
    match &events[3].2.payload {
        Some(Payload::LeadQualified(payload)) => {
            assert_eq!(payload.previous_status, LeadStatus::New as i32);
            assert_eq!(payload.note, "budget found");
        }
        other => panic!("unexpected payload {other:?}"),
    }
}

async fn update_honours_the_mask_and_a_stale_etag_is_aborted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let captured = capture(&app, "acme", lead("mask@example.com")).await;

    let updated = app
        .update(
            "acme",
            Lead {
                id: captured.id.clone(),
                company: "New Co".into(),
                title: "ignored: not in the mask".into(),
                etag: captured.etag.clone(),
                ..Lead::default()
            },
            &["company"],
        )
        .await
        .expect("update");
    assert_eq!(updated.company, "New Co");
    assert_eq!(updated.title, captured.title);
    assert_eq!(updated.email, captured.email);
    assert_ne!(updated.etag, captured.etag);

    let stale = app
        .update(
            "acme",
            Lead {
                id: captured.id.clone(),
                company: "Lost Update".into(),
                etag: captured.etag.clone(),
                ..Lead::default()
            },
            &["company"],
        )
        .await
        .expect_err("stale etag");
    assert_eq!(stale.code(), Code::Aborted);

    let unknown = app
        .update(
            "acme",
            Lead {
                id: captured.id.clone(),
                ..Lead::default()
            },
            &["create_time"],
        )
        .await
        .expect_err("unknown path");
    assert_eq!(violated_fields(&unknown), vec!["update_mask"]);

    let bad_email = app
        .update(
            "acme",
            Lead {
                id: captured.id.clone(),
                email: "broken".into(),
                ..Lead::default()
            },
            &["email"],
        )
        .await
        .expect_err("bad email");
    assert_eq!(violated_fields(&bad_email), vec!["lead.email"]);

    let current = app.get("acme", &captured.id).await.expect("get");
    // The score is computed asynchronously and is not part of the lead's state.
    let current = Lead {
        score: None,
        ..current
    };
    assert_eq!(current, updated, "failed updates changed nothing");
}

async fn list_filters_orders_and_pages_through_every_lead_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut client = app.client().await;
    for index in 0..23 {
        let source = if index % 2 == 0 {
            LeadSource::WebForm
        } else {
            LeadSource::Referral
        };
        let mut new_lead = lead(&format!("person{index:02}@example.com"));
        new_lead.source = source as i32;
        new_lead.company = format!("Company {}", index % 5);
        new_lead.attributes.insert(
            "tier".into(),
            if index < 5 {
                "gold".into()
            } else {
                "silver".into()
            },
        );
        capture(&app, "acme", new_lead).await;
    }
    capture(&app, "globex", lead("outsider@example.com")).await;

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_leads(app.request(
                "acme",
                ListLeadsRequest {
                    page_size: 5,
                    page_token: token.clone(),
                    filter: String::new(),
                    order_by: "email".into(),
                },
            ))
            .await
            .expect("page")
            .into_inner();
        assert_eq!(page.total_size, 23);
        seen.extend(page.leads.into_iter().map(|lead| lead.email));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "every lead once, in order");
    assert_eq!(seen.len(), 23);

    let web = client
        .list_leads(app.request(
            "acme",
            ListLeadsRequest {
                filter: r#"status = "NEW" AND source = "WEB_FORM""#.into(),
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .expect("filter")
        .into_inner();
    assert_eq!(web.leads.len(), 12);
    assert!(
        web.leads
            .iter()
            .all(|lead| lead.source == LeadSource::WebForm as i32)
    );

    let gold = client
        .list_leads(app.request(
            "acme",
            ListLeadsRequest {
                filter: "attributes.tier = gold".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("map filter")
        .into_inner();
    assert_eq!(gold.leads.len(), 5);

    let recent = client
        .list_leads(app.request(
            "acme",
            ListLeadsRequest {
                filter: r#"create_time > "2026-01-01T00:00:00Z" AND company:"company 3""#.into(),
                ..Default::default()
            },
        ))
        .await
        .expect("time filter")
        .into_inner();
    assert_eq!(recent.leads.len(), 4, "indexes 3, 8, 13 and 18");

    let newest_first = client
        .list_leads(app.request(
            "acme",
            ListLeadsRequest {
                page_size: 3,
                ..Default::default()
            },
        ))
        .await
        .expect("default order")
        .into_inner();
    assert_eq!(newest_first.leads[0].email, "person22@example.com");

    let changed = client
        .list_leads(app.request(
            "acme",
            ListLeadsRequest {
                page_size: 5,
                page_token: newest_first.next_page_token.clone(),
                order_by: "email".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("token from another ordering");
    assert_eq!(violated_fields(&changed), vec!["page_token"]);
}

async fn delete_removes_the_lead_frees_its_email_and_emits_an_event(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut client = app.client().await;
    let captured = capture(&app, "acme", lead("gone@example.com")).await;
    client
        .delete_lead(app.request(
            "acme",
            DeleteLeadRequest {
                id: captured.id.clone(),
                etag: captured.etag.clone(),
            },
        ))
        .await
        .expect("delete");
    let gone = app.get("acme", &captured.id).await.expect_err("gone");
    assert_eq!(gone.code(), Code::NotFound);
    capture(&app, "acme", lead("gone@example.com")).await;
    let events = app.wait_for_lead_events(3).await;
    assert_eq!(events[1].0, "leads.deleted");
}

async fn health_and_reflection_answer_without_a_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.server.address))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "aida.leads.v1.LeadService".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        response.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

async fn a_graceful_stop_publishes_what_was_committed(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    for index in 0..10 {
        capture(&app, "acme", lead(&format!("late{index}@example.com"))).await;
    }
    app.stop().await;
    assert_eq!(app.count("outbox WHERE published_at IS NULL").await, 0);
    assert_eq!(app.lead_events().await.len(), 10);
}

async fn a_deal_created_for_a_qualified_lead_converts_it_once(backend: Backend) {
    use aida_core::bus::OutgoingMessage;
    use aida_proto::aida::deals::v1::Deal;
    use aida_proto::aida::events::v1::{DealCreated, EventEnvelope};
    use prost::Message;

    let app = TestApp::spawn(backend).await;
    let captured = capture(&app, "acme", lead("convert@example.com")).await;
    app.qualify("acme", &captured.id).await.expect("qualify");
    let event = EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: "deals.created".into(),
        tenant_id: "acme".into(),
        payload: Some(Payload::DealCreated(DealCreated {
            deal: Some(Deal {
                id: uuid::Uuid::now_v7().to_string(),
                lead_id: captured.id.clone(),
                ..Deal::default()
            }),
        })),
        ..EventEnvelope::default()
    };
    let payload = bytes::Bytes::from(event.encode_to_vec());
    let bus = app.env.bus.shared();
    bus.ensure_streams().await.expect("streams");
    let copies: Vec<OutgoingMessage> = ["one", "two"]
        .into_iter()
        .map(|id| OutgoingMessage {
            event_type: "deals.created".into(),
            message_id: id.into(),
            payload: payload.clone(),
            headers: vec![],
        })
        .collect();
    for result in bus.publish(&copies).await {
        result.expect("publish");
    }
    let events = app.wait_for_lead_events(3).await;
    assert_eq!(events[2].0, "leads.converted");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.lead_events().await.len(), 3, "converted once");
    let lead = app.get("acme", &captured.id).await.expect("get");
    assert_eq!(lead.status, LeadStatus::Converted as i32);
}

async fn roles_and_ownership_limit_what_a_caller_sees_and_changes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut client = app.client().await;
    let env = &app.env;

    // A sales rep's capture is theirs; capturing for someone else is refused.
    let mine = client
        .capture_lead(env.request_as(
            "acme",
            "rep-1",
            &["sales_rep"],
            CaptureLeadRequest {
                lead: Some(lead("mine@example.com")),
                request_id: String::new(),
            },
        ))
        .await
        .expect("capture as rep")
        .into_inner();
    assert_eq!(mine.owner_id, "rep-1");
    let for_other = client
        .capture_lead(env.request_as(
            "acme",
            "rep-1",
            &["sales_rep"],
            CaptureLeadRequest {
                lead: Some(Lead {
                    owner_id: "rep-2".into(),
                    ..lead("x@example.com")
                }),
                request_id: String::new(),
            },
        ))
        .await
        .expect_err("for another rep");
    assert_eq!(for_other.code(), Code::PermissionDenied);
    let theirs = capture(
        &app,
        "acme",
        Lead {
            owner_id: "rep-2".into(),
            ..lead("theirs@example.com")
        },
    )
    .await;

    // Another rep's lead does not exist for rep-1.
    let listed = client
        .list_leads(env.request_as("acme", "rep-1", &["sales_rep"], ListLeadsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed
            .leads
            .iter()
            .map(|lead| lead.id.as_str())
            .collect::<Vec<_>>(),
        [mine.id.as_str()]
    );
    assert_eq!(listed.total_size, 1);
    for status in [
        client
            .get_lead(env.request_as(
                "acme",
                "rep-1",
                &["sales_rep"],
                GetLeadRequest {
                    id: theirs.id.clone(),
                },
            ))
            .await
            .expect_err("get"),
        client
            .qualify_lead(env.request_as(
                "acme",
                "rep-1",
                &["sales_rep"],
                QualifyLeadRequest {
                    id: theirs.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err("qualify"),
    ] {
        assert_eq!(status.code(), Code::NotFound);
    }

    // A viewer reads leads without e-mail or phone, and cannot change them.
    let seen = client
        .get_lead(env.request_as(
            "acme",
            "v",
            &["viewer"],
            GetLeadRequest {
                id: theirs.id.clone(),
            },
        ))
        .await
        .expect("viewer reads")
        .into_inner();
    assert_eq!(
        (
            seen.email.as_str(),
            seen.phone.as_str(),
            seen.company.as_str()
        ),
        ("", "", theirs.company.as_str())
    );
    let refused = client
        .capture_lead(env.request_as(
            "acme",
            "v",
            &["viewer"],
            CaptureLeadRequest {
                lead: Some(lead("v@example.com")),
                request_id: String::new(),
            },
        ))
        .await
        .expect_err("viewer captures");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let delete = client
        .delete_lead(env.request_as(
            "acme",
            "rep-1",
            &["sales_rep"],
            DeleteLeadRequest {
                id: mine.id.clone(),
                etag: String::new(),
            },
        ))
        .await
        .expect_err("reps do not delete");
    assert_eq!(delete.code(), Code::PermissionDenied);
    let no_roles = client
        .get_lead(env.request_as(
            "acme",
            "nobody",
            &[],
            GetLeadRequest {
                id: mine.id.clone(),
            },
        ))
        .await
        .expect_err("no role");
    assert_eq!(no_roles.code(), Code::PermissionDenied);
    let analyst = client
        .get_lead(env.request_as(
            "acme",
            "a",
            &["analyst"],
            GetLeadRequest {
                id: theirs.id.clone(),
            },
        ))
        .await
        .expect("analyst reads")
        .into_inner();
    assert_eq!(analyst.email, "theirs@example.com");
}

aida_core::backend_pair_suite!(on_postgres_and_jetstream, on_sqlite_and_in_process_bus:
    capture_publishes_exactly_one_leads_captured_event_with_the_lead,
    capture_retried_with_the_same_request_id_returns_the_first_lead_and_one_event,
    invalid_input_is_invalid_argument_naming_the_field_and_writes_nothing,
    another_tenants_lead_is_not_found_for_get_update_qualify_reject_and_delete,
    missing_expired_and_wrong_audience_tokens_are_unauthenticated,
    a_duplicate_email_is_already_exists_naming_the_existing_lead,
    qualify_and_reject_follow_the_life_cycle_and_emit_events,
    update_honours_the_mask_and_a_stale_etag_is_aborted,
    list_filters_orders_and_pages_through_every_lead_once,
    delete_removes_the_lead_frees_its_email_and_emits_an_event,
    health_and_reflection_answer_without_a_token,
    a_graceful_stop_publishes_what_was_committed,
    a_deal_created_for_a_qualified_lead_converts_it_once,
    roles_and_ownership_limit_what_a_caller_sees_and_changes
);
