//! A data-subject export (`POST /v1/subjects:export`) of a person with data in every
//! service: every source and count in the manifest, nobody else's data, admins only.

use super::*;

fn token_of(edge: &Edge, tenant: &str, subject: &str, roles: &[&str]) -> String {
    edge.env
        .issuer
        .mint(tenant, subject, roles, Duration::from_secs(600))
        .expect("mint")
}

/// The export's count of `source`.
fn counted(export: &Value, source: &str) -> i64 {
    export["manifest"]
        .as_array()
        .and_then(|manifest| manifest.iter().find(|entry| entry["source"] == source))
        .and_then(|entry| entry["count"].as_str())
        .and_then(|count| count.parse().ok())
        .unwrap_or(-1)
}

/// The length of the export's `field` array (camelCase JSON).
fn items(export: &Value, field: &str) -> i64 {
    export[field]
        .as_array()
        .map_or(0, |items| items.len() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_gathers_the_person_from_every_service_and_nobody_else() {
    let edge = Edge::start(|_| {}).await;
    let admin = token_of(&edge, "acme", "boss", &["admin"]);
    let post = |path: String, body: Value| {
        let admin = admin.clone();
        let edge = &edge;
        async move { edge.post(&path, &admin, body).await }
    };

    // The person: a lead, a duplicate merged into it, a deal, a message, a draft, a
    // consent, a suppression. Someone else in the tenant, and the same address elsewhere.
    let (status, _, ada) = post(
        "/v1/leads".into(),
        json!({"email": "Ada@Example.com", "phone": "+44 20 7946 0100", "firstName": "Ada", "company": "Engines"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ada}");
    let ada_id = ada["id"].as_str().expect("id").to_owned();
    let (_, _, twin) = post(
        "/v1/leads".into(),
        json!({"email": "ada.l@example.com", "firstName": "Ada", "lastName": "Lovelace"}),
    )
    .await;
    let twin_id = twin["id"].as_str().expect("id").to_owned();
    let (status, _, merged) = post(
        format!("/v1/leads/{ada_id}:merge"),
        json!({"mergedIds": [twin_id]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{merged}");
    let (_, _, other) = post("/v1/leads".into(), json!({"email": "grace@example.com"})).await;
    let other_id = other["id"].as_str().expect("id").to_owned();
    let globex = token_of(&edge, "globex", "g-admin", &["admin"]);
    let (status, _, _) = edge
        .post("/v1/leads", &globex, json!({"email": "ada@example.com"}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, sent) = post(
        "/v1/messages".into(),
        json!({"leadId": ada_id, "channel": "CHANNEL_EMAIL", "subject": "Hello", "body": "Hi Ada"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let (status, _, draft) = post(
        "/v1/drafts:generate".into(),
        json!({"leadId": ada_id, "purpose": "PURPOSE_FOLLOW_UP"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{draft}");
    let (status, _, consent) = post(
        format!("/v1/leads/{ada_id}/consents"),
        json!({"channel": "CHANNEL_EMAIL", "purpose": "marketing", "state": "CONSENT_STATE_GRANTED", "source": "web_form"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{consent}");
    let (status, _, _) = post(
        "/v1/suppressions".into(),
        json!({"address": "ada@example.com", "reason": "manual"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = post(format!("/v1/leads/{ada_id}:qualify"), json!({})).await;
    assert_eq!(status, StatusCode::OK);

    // The deal (made by DealService from leads.qualified), the score and the audit
    // records arrive through the bus.
    let export = |body: Value| edge.post("/v1/subjects:export", &admin, body);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (status, _, body) = export(json!({"email": "ADA@example.com "})).await;
        let complete = status == StatusCode::OK
            && counted(&body, "deals") == 1
            && counted(&body, "scores") >= 1
            && counted(&body, "audit_records") >= 4;
        if complete {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{body:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["schemaVersion"], "aida.privacy.v1.SubjectExport/1");
    let mut lead_ids: Vec<&str> = body["leads"]
        .as_array()
        .expect("leads")
        .iter()
        .filter_map(|lead| lead["id"].as_str())
        .collect();
    lead_ids.sort_unstable();
    let mut expected = vec![ada_id.as_str(), twin_id.as_str()];
    expected.sort_unstable();
    assert_eq!(
        lead_ids, expected,
        "the person and the lead merged into them"
    );
    for (source, field, count) in [
        ("leads", "leads", 2),
        ("deals", "deals", 1),
        ("messages", "messages", 1),
        ("consents", "consents", 1),
        ("suppressions", "suppressions", 1),
    ] {
        assert_eq!(counted(&body, source), count, "{source}");
        assert_eq!(items(&body, field), count, "{field}");
    }
    for (source, field) in [
        ("scores", "scores"),
        ("drafts", "drafts"),
        ("audit_records", "auditRecords"),
    ] {
        assert!(counted(&body, source) >= 1, "{source}");
        assert_eq!(counted(&body, source), items(&body, field), "{field}");
    }
    let text = body.to_string();
    assert!(
        !text.contains(&other_id) && !text.contains("grace@"),
        "nobody else"
    );
    assert!(
        body["auditRecords"]
            .as_array()
            .expect("records")
            .iter()
            .all(|record| record["tenantId"] == "acme"),
        "only the tenant's own records"
    );

    // The same person by phone and by lead id.
    for selector in [
        json!({"phone": "+44 (20) 7946-0100"}),
        json!({"leadId": ada_id}),
    ] {
        let (status, _, by) = export(selector.clone()).await;
        assert_eq!(status, StatusCode::OK, "{selector}: {by}");
        assert_eq!(counted(&by, "messages"), 1, "{selector}");
        assert_eq!(counted(&by, "deals"), 1, "{selector}");
    }

    // Exactly one selector; admins only; and every export is audited.
    let (status, _, none) = export(json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{none}");
    assert!(none.to_string().contains("lead_id"), "{none}");
    let (status, _, two) = export(json!({"email": "ada@example.com", "leadId": ada_id})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{two}");
    assert!(two.to_string().contains("only one"), "{two}");
    let (status, _, wild) = export(json!({"email": "a*@example.com"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{wild}");
    for roles in [["sales_rep"], ["viewer"]] {
        let token = token_of(&edge, "acme", "curious", &roles);
        let (status, _, _) = edge
            .post(
                "/v1/subjects:export",
                &token,
                json!({"email": "ada@example.com"}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{roles:?}");
    }
    let audited = eventually(Duration::from_secs(15), || async {
        let response = edge
            .http
            .get(format!("{}/v1/audit", edge.base))
            .query(&[(
                "filter",
                "action = \"aida.privacy.v1.PrivacyService/ExportSubjectData\"",
            )])
            .bearer_auth(&admin)
            .send()
            .await
            .expect("audit");
        let records: Value = response.json().await.expect("json");
        let records = records["auditRecords"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let outcome = |code: &str| records.iter().any(|record| record["outcome"] == code);
        outcome("OK") && outcome("PERMISSION_DENIED") && outcome("INVALID_ARGUMENT")
    })
    .await;
    assert!(
        audited,
        "exports, refused ones included, are in the audit log"
    );
}
