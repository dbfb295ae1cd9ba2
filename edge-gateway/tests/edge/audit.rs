//! The audit log seen from outside: changes, refusals at the edge and in the services,
//! listed by `GET /v1/audit` for the tenant's admins only, and a chain that verifies.

use super::*;

impl Edge {
    fn token_of(&self, tenant: &str, subject: &str, roles: &[&str]) -> String {
        self.env
            .issuer
            .mint(tenant, subject, roles, Duration::from_secs(600))
            .expect("mint")
    }

    /// The tenant's audit records (`GET /v1/audit?filter=…` as `admin`), newest first.
    async fn audit_records(&self, admin: &str, filter: &str) -> Vec<Value> {
        let response = self
            .http
            .get(format!("{}/v1/audit", self.base))
            .query(&[("filter", filter), ("pageSize", "500")])
            .bearer_auth(admin)
            .send()
            .await
            .expect("audit");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        body["auditRecords"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `admin`'s tenant has a record matching `filter` whose fields include
    /// `expected`; that record.
    async fn audited(&self, admin: &str, filter: &str, expected: Value) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let records = self.audit_records(admin, filter).await;
            if let Some(found) = records.iter().find(|record| contains(record, &expected)) {
                return found.clone();
            }
            if std::time::Instant::now() > deadline {
                let all = self.audit_records(admin, "").await;
                panic!("no record like {expected} among {all:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether every field of `expected` is in `record` with the same value.
fn contains(record: &Value, expected: &Value) -> bool {
    match (record, expected) {
        (Value::Object(record), Value::Object(expected)) => expected
            .iter()
            .all(|(key, value)| record.get(key).is_some_and(|field| contains(field, value))),
        _ => record == expected,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_refusals_are_audited_and_only_admins_read_the_chain() {
    let edge = Edge::start(|_| {}).await;
    let admin = edge.token_of("acme", "boss", &["admin"]);
    let rep = edge.token_of("acme", "rep-a", &["sales_rep"]);
    let viewer = edge.token_of("acme", "watcher", &["viewer"]);
    let outsider = edge.token_of("globex", "spy", &["admin"]);

    // A change: recorded in the transaction that made it, about the lead it made.
    let response = edge
        .http
        .post(format!("{}/v1/leads", edge.base))
        .bearer_auth(&rep)
        .header("x-request-id", "req-audit-capture")
        .json(&json!({"email": "audited@example.com", "firstName": "Audra"}))
        .send()
        .await
        .expect("capture");
    assert_eq!(response.status(), StatusCode::OK);
    let lead: Value = response.json().await.expect("lead");
    let lead_id = lead["id"].as_str().expect("id").to_owned();
    let captured = edge
        .audited(
            &admin,
            "action = \"aida.leads.v1.LeadService/CaptureLead\"",
            json!({
                "outcome": "OK",
                "resource": format!("leads/{lead_id}"),
                "requestId": "req-audit-capture",
                "recordedBy": "leads",
                "tenantId": "acme",
                "actor": {"subject": "rep-a", "roles": ["sales_rep"]},
            }),
        )
        .await;
    assert!(
        !captured.to_string().contains("audited@example.com")
            && !captured.to_string().contains("Audra"),
        "no personal data in a record: {captured}"
    );

    // A failed change: recorded with its code.
    let (status, _, _) = edge
        .post("/v1/leads", &rep, json!({"email": "not an address"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    edge.audited(
        &admin,
        "outcome = \"INVALID_ARGUMENT\"",
        json!({"action": "aida.leads.v1.LeadService/CaptureLead", "actor": {"subject": "rep-a"}}),
    )
    .await;

    // A change without an event of its own names its resource from the request.
    let (status, _, rule) = edge
        .post(
            "/v1/analytics/alertRules",
            &admin,
            json!({"kind": "ALERT_KIND_WIN_RATE_BELOW", "threshold": 0.2, "windowDays": 7}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    let rule_id = rule["id"].as_str().expect("rule id").to_owned();
    let (status, _, _) = edge
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/analytics/alertRules/{rule_id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    edge.audited(
        &admin,
        "action = \"aida.analytics.v1.AnalyticsService/DeleteAlertRule\"",
        json!({"outcome": "OK", "recordedBy": "analytics", "resource": format!("alertRules/{rule_id}")}),
    )
    .await;

    // Refused at the edge: a wrong role, a bad token (no tenant to charge it to).
    let (status, _, _) = edge
        .post("/v1/leads", &viewer, json!({"email": "v@example.com"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    edge.audited(
        &admin,
        "outcome = \"PERMISSION_DENIED\" AND recorded_by = \"edge\"",
        json!({"action": "aida.leads.v1.LeadService/CaptureLead", "actor": {"subject": "watcher", "roles": ["viewer"]}}),
    )
    .await;
    let response = edge.get_as("/v1/leads", "not-a-token").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Another tenant's lead is not found, and that is recorded in the caller's chain.
    let response = edge
        .get_as(&format!("/v1/leads/{lead_id}"), &outsider)
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    edge.audited(
        &outsider,
        "outcome = \"NOT_FOUND\"",
        json!({"action": "aida.leads.v1.LeadService/GetLead", "actor": {"subject": "spy"}, "recordedBy": "leads"}),
    )
    .await;

    // Only admins read the log; the attempt is itself recorded.
    let response = edge.get_as("/v1/audit", &rep).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    edge.audited(
        &admin,
        "action = \"aida.audit.v1.AuditService/ListAuditRecords\"",
        json!({"outcome": "PERMISSION_DENIED", "actor": {"subject": "rep-a"}}),
    )
    .await;
    // The tenant's chain: sequences without gaps, each record linked to the one before.
    let records = edge.audit_records(&admin, "").await;
    assert!(records.len() >= 5, "{records:#?}");
    for pair in records.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        let sequence = |record: &Value| {
            record["sequence"]
                .as_str()
                .and_then(|s| s.parse::<i64>().ok())
        };
        assert_eq!(sequence(newer), sequence(older).map(|s| s + 1));
        assert_eq!(newer["previousHash"], older["hash"]);
    }
    assert!(
        records.iter().all(|record| record["tenantId"] == "acme"),
        "only the caller's tenant"
    );
    let bad = edge
        .get_as("/v1/audit?filter=colour%20%3D%20red", &admin)
        .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // Every chain verifies, the unauthenticated calls' one included.
    let db = aida_core::db::Database::connect(&edge.env.settings.database_url_for("analytics"))
        .await
        .expect("analytics database");
    let chains_intact = eventually(Duration::from_secs(15), || async {
        let reports = aida_analytics::audit::verify(&db, None)
            .await
            .expect("verify");
        let unauthenticated = reports
            .iter()
            .any(|report| report.tenant_id.is_empty() && report.records > 0);
        reports.iter().all(|report| report.broken.is_none()) && unauthenticated
    })
    .await;
    assert!(
        chains_intact,
        "every chain intact, the bad token's record among them: {:?}",
        aida_analytics::audit::verify(&db, None).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_audit_switched_off_nothing_is_recorded() {
    let edge = Edge::start(|settings| settings.audit.enabled = false).await;
    let admin = edge.token_of("acme", "boss", &["admin"]);
    let viewer = edge.token_of("acme", "watcher", &["viewer"]);
    let (status, _, _) = edge
        .post("/v1/leads", &admin, json!({"email": "quiet@example.com"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = edge
        .post("/v1/leads", &viewer, json!({"email": "v@example.com"}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(edge.audit_records(&admin, "").await.is_empty());
}
