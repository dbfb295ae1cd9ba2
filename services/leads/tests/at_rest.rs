//! Encryption at rest of leads: what the database holds of a person is ciphertext, and
//! everything that finds them (the one-lead-per-address rule, filters, ordering) still
//! works through blind indexes; rows from before encryption are sealed at start.

use aida_core::db::Sql;
use aida_proto::aida::leads::v1::{CaptureLeadRequest, Lead, ListLeadsRequest, ListLeadsResponse};
use tonic::Code;
use uuid::Uuid;

use crate::support::{Backend, TestApp, capture, lead, violated_fields};

#[derive(sqlx::FromRow)]
struct Stored {
    email: String,
    first_name: String,
    last_name: String,
    phone: String,
    email_index: String,
}

async fn stored(app: &TestApp, id: &str) -> Stored {
    app.db
        .fetch_one(
            Sql::new(
                "SELECT email, first_name, last_name, phone, email_index FROM leads WHERE id = $1",
            )
            .bind(Uuid::parse_str(id).expect("id")),
        )
        .await
        .expect("row")
}

fn person(email: &str, first: &str, last: &str, phone: &str) -> Lead {
    Lead {
        first_name: first.into(),
        last_name: last.into(),
        phone: phone.into(),
        ..lead(email)
    }
}

async fn list(
    app: &TestApp,
    filter: &str,
    order_by: &str,
    page_size: i32,
    token: &str,
) -> Result<ListLeadsResponse, tonic::Status> {
    app.client()
        .await
        .list_leads(app.request(
            "acme",
            ListLeadsRequest {
                page_size,
                page_token: token.into(),
                filter: filter.into(),
                order_by: order_by.into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

fn assert_ciphertext(row: &Stored, secrets: &[&str]) {
    for value in [&row.email, &row.first_name, &row.last_name, &row.phone] {
        assert!(value.starts_with("aes1."), "sealed: {value}");
        for secret in secrets {
            assert!(
                !value.to_lowercase().contains(&secret.to_lowercase()),
                "{secret} in {value}"
            );
        }
    }
    assert_eq!(row.email_index.len(), 32, "a blind index, not the address");
}

async fn contact_details_are_ciphertext_in_the_database_and_still_found_by_equality(
    backend: Backend,
) {
    let app = TestApp::spawn(backend).await;
    let ada = capture(
        &app,
        "acme",
        person(
            "Ada.Lovelace@Example.com",
            "Ada",
            "Lovelace",
            "+44 20 7946 0100",
        ),
    )
    .await;
    assert_eq!(ada.email, "ada.lovelace@example.com");
    let row = stored(&app, &ada.id).await;
    assert_ciphertext(&row, &["ada.lovelace", "lovelace", "2079460100"]);
    let read = app.get("acme", &ada.id).await.expect("get");
    assert_eq!(
        (
            read.email.as_str(),
            read.first_name.as_str(),
            read.last_name.as_str(),
            read.phone.as_str()
        ),
        (
            "ada.lovelace@example.com",
            "Ada",
            "Lovelace",
            "+442079460100"
        )
    );

    // One lead per address, whatever its case.
    let again = app
        .client()
        .await
        .capture_lead(app.request(
            "acme",
            CaptureLeadRequest {
                lead: Some(person("ADA.LOVELACE@example.COM", "A", "L", "")),
                request_id: String::new(),
            },
        ))
        .await
        .expect_err("second lead with the address");
    assert_eq!(again.code(), Code::AlreadyExists);
    assert!(again.message().contains(&ada.id), "{}", again.message());
    // Another tenant may hold the same address: its blind index differs.
    let globex = capture(
        &app,
        "globex",
        person("ada.lovelace@example.com", "Ada", "Lovelace", ""),
    )
    .await;
    assert_ne!(stored(&app, &globex.id).await.email_index, row.email_index);

    for (name, first, last) in [
        ("grace@example.com", "Grace", "Hopper"),
        ("alan@example.com", "Alan", "Turing"),
        ("edsger@example.com", "Edsger", "Dijkstra"),
        ("barbara@example.com", "Barbara", "Liskov"),
    ] {
        capture(&app, "acme", person(name, first, last, "")).await;
    }
    for (filter, expected) in [
        (r#"email = "ADA.Lovelace@example.com""#, vec!["Lovelace"]),
        (r#"phone = "+44 20 7946 0100""#, vec!["Lovelace"]),
        (r#"last_name = "HOPPER""#, vec!["Hopper"]),
        (
            r#"first_name = "alan" OR last_name = "liskov""#,
            vec!["Liskov", "Turing"],
        ),
        (r#"email = "nobody@example.com""#, vec![]),
    ] {
        let page = list(&app, filter, "last_name", 50, "").await.expect(filter);
        let names: Vec<&str> = page.leads.iter().map(|l| l.last_name.as_str()).collect();
        assert_eq!(names, expected, "{filter}");
        assert_eq!(page.total_size as usize, expected.len(), "{filter}");
    }
    let others = list(&app, r#"email != "ada.lovelace@example.com""#, "", 50, "")
        .await
        .expect("not equal");
    assert_eq!(others.total_size, 4);

    // What a blind index cannot answer is refused, naming the filter.
    for filter in [r#"email:"ada""#, r#"email = "ada*""#, r#"last_name > "M""#] {
        let refused = list(&app, filter, "", 10, "").await.expect_err(filter);
        assert_eq!(refused.code(), Code::InvalidArgument, "{filter}");
        assert_eq!(violated_fields(&refused), vec!["filter"], "{filter}");
        assert!(
            refused.message().contains("encrypted at rest"),
            "{filter}: {}",
            refused.message()
        );
    }

    // Ordered by a sealed field: pages in order, every lead once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(&app, "", "last_name desc", 2, &token)
            .await
            .expect("page");
        assert_eq!(page.total_size, 5);
        seen.extend(page.leads.into_iter().map(|l| l.last_name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["Turing", "Lovelace", "Liskov", "Hopper", "Dijkstra"]);

    // The events carry the same details sealed under the lead's key: a copy left in the
    // stream reads as nothing, and the key's holder opens it.
    let events = app.wait_for_lead_events(6).await;
    let captured = events
        .iter()
        .find_map(|(_, _, envelope)| match &envelope.payload {
            Some(aida_proto::aida::events::v1::event_envelope::Payload::LeadCaptured(captured))
                if captured.lead.as_ref().is_some_and(|lead| lead.id == ada.id) =>
            {
                captured.lead.clone()
            }
            _ => None,
        })
        .expect("ada's leads.captured");
    for value in [
        &captured.email,
        &captured.first_name,
        &captured.last_name,
        &captured.phone,
    ] {
        assert!(value.starts_with("aes1."), "sealed in the event: {value}");
    }
    assert_eq!(
        captured.company, "Analytical Engines",
        "what is not personal stays readable"
    );
    let mut opened = captured.clone();
    app.keys.open_lead("acme", &mut opened).await.expect("open");
    assert_eq!(
        (
            opened.email.as_str(),
            opened.last_name.as_str(),
            opened.phone.as_str()
        ),
        ("ada.lovelace@example.com", "Lovelace", "+442079460100")
    );

    // A sealed value moved to another row does not open there.
    app.db
        .execute(
            Sql::new("UPDATE leads SET email = $1 WHERE id = $2")
                .bind(row.email.as_str())
                .bind(Uuid::parse_str(&globex.id).expect("id")),
        )
        .await
        .expect("move ciphertext");
    let moved = app
        .get("globex", &globex.id)
        .await
        .expect_err("moved ciphertext");
    assert_eq!(moved.code(), Code::Internal);
}

async fn leads_stored_before_encryption_are_sealed_when_the_service_starts(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let ada = capture(
        &app,
        "acme",
        person("ada@example.com", "Ada", "Lovelace", "+44 20 7946 0100"),
    )
    .await;
    // The row as a release before encryption at rest wrote it.
    app.db
        .execute(
            Sql::new(
                "UPDATE leads SET email = 'ada@example.com', first_name = 'Ada', last_name = 'Lovelace', \
                 phone = '+442079460100', email_index = '', phone_index = '', first_name_index = '', \
                 last_name_index = '', email_local_index = '' WHERE id = $1",
            )
            .bind(Uuid::parse_str(&ada.id).expect("id")),
        )
        .await
        .expect("plaintext row");
    assert!(stored(&app, &ada.id).await.email.contains("ada@"));

    app.restart().await;
    // The service answers only once it has sealed what it found.
    let read = app.get("acme", &ada.id).await.expect("get");
    assert_eq!(
        (read.email.as_str(), read.phone.as_str()),
        ("ada@example.com", "+442079460100")
    );
    assert_ciphertext(
        &stored(&app, &ada.id).await,
        &["ada@", "lovelace", "2079460100"],
    );
    let found = list(&app, r#"email = "ada@example.com""#, "", 10, "")
        .await
        .expect("filter");
    assert_eq!(found.total_size, 1);
    let again = app
        .client()
        .await
        .capture_lead(app.request(
            "acme",
            CaptureLeadRequest {
                lead: Some(lead("Ada@Example.com")),
                request_id: String::new(),
            },
        ))
        .await
        .expect_err("duplicate of a sealed legacy row");
    assert_eq!(again.code(), Code::AlreadyExists);
}

aida_core::backend_pair_suite!(on_postgres_and_jetstream, on_sqlite_and_in_process_bus:
    contact_details_are_ciphertext_in_the_database_and_still_found_by_equality,
    leads_stored_before_encryption_are_sealed_when_the_service_starts,
);
